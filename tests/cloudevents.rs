//! CloudEvents outcomes on a real broker: the worker runs against tansu (`KAFKA_BOOTSTRAP`) with
//! `[outcomes] format = "cloudevents"`, in binary and in structured mode, and every outcome and
//! dead letter it publishes is parsed by the CloudEvents Python SDK's Kafka protocol binding
//! (`PEERS_PYTHON`, from the peers' virtualenv): an implementation independent of the
//! worker's. The records are read from the broker here and handed to the SDK as they are
//! (headers, key, value), since the SDK has no Kafka client of its own.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};
use serde_json::{Value, json};

use netskope_sim::SimArgs;
use offboarder::pipeline::Pipeline;
use offboarder::pipeline::envelope::{Format, Mode, OutcomesConfig};
use offboarder::sandbox::Sandbox;
use offboarder::verify::VerifyMode;

const WAIT: Duration = Duration::from_secs(90);

fn user(n: usize) -> String {
    format!("user{n}@example.com")
}

/// Each record as the SDK parsed it: `{"attributes": ..., "data": ...}` or `{"error": ...}`.
fn parse_with_the_sdk(python: &str, records: &[OwnedMessage]) -> Vec<Value> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut input = String::new();
    for m in records {
        let headers: Vec<Value> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| json!([h.key, b64(h.value.unwrap_or_default())]))
                    .collect()
            })
            .unwrap_or_default();
        let line = json!({
            "headers": headers,
            "key": m.key().map(b64),
            "value": b64(m.payload().unwrap_or_default()),
        });
        input.push_str(&line.to_string());
        input.push('\n');
    }
    let out = support::run_python_script(python, "cloudevents/parse_records.py", input.as_bytes());
    String::from_utf8_lossy(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    offboarder::sandbox::header(m, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_and_dead_letter_parses_as_a_cloudevent_in_both_modes() {
    let Some(bootstrap) = support::peer("KAFKA_BOOTSTRAP") else {
        return;
    };
    let Some(python) = support::peer("PEERS_PYTHON") else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    for mode in [Mode::Binary, Mode::Structured] {
        let sim = SimArgs {
            users: 10,
            rate_limit_per_min: 0,
            ..SimArgs::default()
        };
        let sandbox = Sandbox::start_on_broker(&bootstrap, sim, 2)
            .await
            .expect("sandbox on the broker");
        let records = vec![
            (
                sandbox.topics.terminations.clone(),
                user(1),
                support::event("hr-1", &user(1), json!({})),
            ),
            (
                sandbox.topics.terminations.clone(),
                user(2),
                support::event("hr-2", &user(2), json!({})),
            ),
            (
                sandbox.topics.risk_signals.clone(),
                user(3),
                support::event("xdr-3", &user(3), json!({"risk_score": 95})),
            ),
            (
                sandbox.topics.risk_signals.clone(),
                user(4),
                support::event("xdr-4", &user(4), json!({"risk_score": 5})),
            ),
            (
                sandbox.topics.risk_signals.clone(),
                user(5),
                b"{ not json".to_vec(),
            ),
        ];
        sandbox.publish(&records).await.expect("published");
        let mut config = support::broker_config(&sandbox, "cloudevents");
        config.verify.mode = VerifyMode::Off;
        config.outcomes = OutcomesConfig {
            format: Format::Cloudevents,
            mode,
            source: Some("//offboarder.example.com/test".into()),
        };
        let client = sandbox.client(&config).expect("client");
        let pipeline = Pipeline::new(&config, client).await.expect("pipeline");
        let handle = pipeline.handle();
        let worker = tokio::spawn(pipeline.run());
        let outcomes = sandbox
            .read(&sandbox.topics.outcomes, WAIT, |r| r.len() >= 4)
            .await
            .expect("outcomes");
        let dead = sandbox
            .read(&sandbox.topics.dead_letter, WAIT, |r| !r.is_empty())
            .await
            .expect("dead letters");
        handle.stop();
        let _ = worker.await;
        assert_eq!((outcomes.len(), dead.len()), (4, 1), "{mode:?}");

        let parsed = parse_with_the_sdk(&python, &outcomes);
        let mut ids = HashSet::new();
        for (m, p) in outcomes.iter().zip(&parsed) {
            assert!(
                p.get("error").is_none(),
                "{mode:?}: the SDK refused an outcome: {p}"
            );
            let a = &p["attributes"];
            let data = &p["data"];
            assert_eq!(a["specversion"], "1.0");
            assert_eq!(a["source"], "//offboarder.example.com/test");
            assert_eq!(a["id"], data["outcome_id"], "{p}");
            assert!(
                ids.insert(a["id"].to_string()),
                "ce_id is unique per outcome: {p}"
            );
            assert_eq!(
                a["type"].as_str(),
                Some(
                    format!(
                        "com.offboarder.outcome.{}",
                        data["status"].as_str().unwrap_or("?")
                    )
                    .as_str()
                )
            );
            assert_eq!(a["subject"], data["user_name"]);
            assert_eq!(
                a["dataschema"],
                "https://offboarder.dev/schemas/outcome.v1.json"
            );
            assert!(a["time"].as_str().is_some_and(|t| !t.is_empty()));
            assert_eq!(
                a["traceparent"].as_str().map(str::to_string),
                header(m, "traceparent"),
                "the trace context as the distributed-tracing extension"
            );
            match mode {
                Mode::Binary => {
                    let value: Value =
                        serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON");
                    assert_eq!(&value, data, "binary mode leaves the value as the outcome");
                }
                Mode::Structured => assert_eq!(
                    header(m, "content-type").as_deref(),
                    Some("application/cloudevents+json; charset=UTF-8")
                ),
            }
        }
        assert_eq!(ids.len(), 4);

        let parsed = parse_with_the_sdk(&python, &dead);
        let p = &parsed[0];
        assert!(
            p.get("error").is_none(),
            "{mode:?}: the SDK refused the dead letter: {p}"
        );
        let a = &p["attributes"];
        assert_eq!(a["type"], "com.offboarder.deadletter.invalid_json");
        assert_eq!(a["subject"], user(5).as_str());
        assert!(
            a["id"]
                .as_str()
                .is_some_and(|id| id.starts_with(&format!("{}/", sandbox.topics.risk_signals))),
            "{p}"
        );
        assert_eq!(p["data"], "{ not json", "the original bytes, as text");
    }
}
