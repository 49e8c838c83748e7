//! Helpers shared by the integration tests that need them.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tracing_subscriber::fmt::MakeWriter;

/// `(topic, partition, offset)` of the input event an outcome is about (empty or -1 where a
/// field is missing, so that a malformed outcome shows up as its own source).
pub fn source_of(outcome: &Value) -> (String, i64, i64) {
    let source = &outcome["source"];
    (
        source["topic"].as_str().unwrap_or_default().to_string(),
        source["partition"].as_i64().unwrap_or(-1),
        source["offset"].as_i64().unwrap_or(-1),
    )
}

/// `(topic, partition, offset)` of each input event → the last status seen for it, where a
/// final status (the event's last) is never replaced by a non-final one from a redelivery.
pub type Statuses = BTreeMap<(String, i64, i64), String>;

/// `(topic, partition, offset)` → the last status seen for that input event.
pub fn last_status(outcomes: &[rdkafka::message::OwnedMessage]) -> Statuses {
    let mut last = BTreeMap::new();
    add_statuses(&mut last, outcomes);
    last
}

/// Folds more outcome records into `last`.
pub fn add_statuses(last: &mut Statuses, outcomes: &[rdkafka::message::OwnedMessage]) {
    for m in outcomes {
        let Ok(o) = serde_json::from_str::<Value>(&offboarder::sandbox::text(m)) else {
            continue;
        };
        let source = source_of(&o);
        let mut status = o["status"].as_str().unwrap_or_default().to_string();
        // A redelivered delete that found its user gone: final, with nothing left to verify.
        if status == "applied"
            && o["reason"]
                .as_str()
                .is_some_and(|r| r.contains("an earlier delivery of this event"))
        {
            status = DONE_EARLIER.to_string();
        }
        // A verification phase ends an event; an `applied` seen after it (a redelivery) does
        // not undo that.
        let entry = last.entry(source).or_default();
        if !is_final(entry) || is_final(&status) {
            *entry = status;
        }
    }
}

/// How [`add_statuses`] names an `applied` outcome that is final: a delete whose user an
/// earlier delivery of the same event removed.
pub const DONE_EARLIER: &str = "applied (done by an earlier delivery)";

pub fn is_final(status: &str) -> bool {
    matches!(
        status,
        "verified" | "unverified" | "superseded" | "skipped" | "failed" | DONE_EARLIER
    )
}

/// Reads the outcomes topic until `total` input events have a final status, or `wait` passes
/// (the caller checks which). Records are folded in as they come: decoding every record read
/// so far after each one would be quadratic. Returns the records and the folded statuses.
pub async fn until_final(
    sandbox: &offboarder::sandbox::Sandbox,
    total: usize,
    wait: std::time::Duration,
) -> (Vec<rdkafka::message::OwnedMessage>, Statuses) {
    let seen = std::cell::RefCell::new((0usize, Statuses::new()));
    let records = sandbox
        .read(&sandbox.topics.outcomes, wait, |r| {
            let mut seen = seen.borrow_mut();
            let (done, statuses) = &mut *seen;
            add_statuses(statuses, &r[*done..]);
            *done = r.len();
            statuses.values().filter(|s| is_final(s)).count() >= total
        })
        .await
        .expect("the outcomes topic can be read");
    (records, seen.into_inner().1)
}

/// How many input events ended with each status.
pub fn tally(statuses: &Statuses) -> BTreeMap<&str, usize> {
    let mut by_status = BTreeMap::new();
    for s in statuses.values() {
        *by_status.entry(s.as_str()).or_default() += 1;
    }
    by_status
}

/// A stand-in OpenTelemetry collector: records the bodies POSTed to `/v1/traces`.
pub async fn fake_collector() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post({
            let received = received.clone();
            move |body: axum::body::Bytes| {
                let received = received.clone();
                async move {
                    received.lock().unwrap().push(body.to_vec());
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), received)
}

/// The value of a peer's environment variable, set by `scripts/test` once it has started the
/// peer. Unset: `None` when `OFFBOARDER_SKIP_PEERS` is set (the caller then skips), otherwise a
/// panic that says how to run the interoperability tests. A missing peer is never a silent pass.
pub fn peer(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if std::env::var_os("OFFBOARDER_SKIP_PEERS").is_some() => {
            eprintln!("SKIPPED: {var} is not set and OFFBOARDER_SKIP_PEERS is");
            None
        }
        _ => panic!(
            "{var} is not set. The interoperability tests need real peers: run them with \
             scripts/test, which installs and starts them, or point {var} at a running one \
             (see docs/testing.md). OFFBOARDER_SKIP_PEERS=1 skips them."
        ),
    }
}

/// The sandbox's worker config for a real broker, consumer group `group`: no Netskope budget
/// or guard limit in the way, and quick fetches.
pub fn broker_config(
    sandbox: &offboarder::sandbox::Sandbox,
    group: &str,
) -> offboarder::config::Config {
    let mut c = sandbox.config(group);
    c.pipeline.shutdown_grace = std::time::Duration::from_secs(10);
    c.netskope.requests_per_minute = 600_000;
    c.guard.max_deactivations = 100_000;
    // tansu holds a fetch that has data for about half of fetch.wait.max.ms (500 ms by
    // default) before answering; a short wait keeps these tests quick.
    c.kafka
        .consumer_properties
        .insert("fetch.wait.max.ms".into(), "20".into());
    c
}

/// An input event's bytes: `event_id`, `occurred_at`, the user, a source, and `fields` merged in
/// (a risk score, a severity, a state).
pub fn event(id: &str, user: &str, fields: Value) -> Vec<u8> {
    let mut e = serde_json::json!({"event_id": id, "occurred_at": "2026-12-01T09:00:00Z",
                                   "user": {"user_name": user}, "source": "interop"});
    if let (Some(e), Some(f)) = (e.as_object_mut(), fields.as_object()) {
        e.extend(f.clone());
    }
    e.to_string().into_bytes()
}

/// A log sink for a test's tracing subscriber: everything written stays in memory, for the test
/// to search (for a token that must not be there, or a warning that must).
#[derive(Clone, Default)]
pub struct CapturedLogs(pub Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A loopback port nothing listens on now, for a worker's admin listener.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs a script of `tests/` with the peers' Python (`PEERS_PYTHON`), `input` on its stdin;
/// returns its stdout, and fails the test if the script fails.
pub fn run_python_script(python: &str, script: &str, input: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let mut child = Command::new(python)
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the peers' python runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("the input is written");
    let out = child.wait_with_output().expect("the script ends");
    assert!(out.status.success(), "{script} failed");
    out.stdout
}
