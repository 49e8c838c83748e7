//! The `offboarder` binary as an operator runs it: `check-config` and `run` against an
//! in-process Kafka cluster and tenant simulator, with tokens from the environment, SIGTERM for
//! a clean stop, and exit codes that tell configuration faults apart.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use netskope_sim::SimArgs;
use offboarder::sandbox::{self, Sandbox};

mod support;
use support::{fake_collector, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_offboarder");

async fn sandbox() -> Sandbox {
    Sandbox::start(
        SimArgs {
            users: 5,
            rate_limit_per_min: 0,
            ..SimArgs::default()
        },
        1,
    )
    .await
    .expect("sandbox")
}

/// Writes the sandbox's config file; `extra` is appended as TOML (tables it does not have yet).
fn config_file(sandbox: &Sandbox, name: &str, extra: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("offboarder-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("offboarder.toml");
    let text = format!("{}\n{extra}", sandbox.config_toml(&format!("cli-{name}")));
    std::fs::write(&path, text).unwrap();
    path
}

/// Publishes terminations `hr-1` … `hr-<n>` for user1@example.com … user<n>@example.com.
async fn publish_terminations(sandbox: &Sandbox, n: usize) {
    publish_terminations_of(sandbox, 1..=n).await;
}

/// Publishes terminations `hr-<k>` for user<k>@example.com, for each k of `users`.
async fn publish_terminations_of(sandbox: &Sandbox, users: std::ops::RangeInclusive<usize>) {
    let records: Vec<(String, String, Vec<u8>)> = users
        .map(|n| {
            let user = format!("user{n}@example.com");
            let event = json!({"event_id": format!("hr-{n}"), "occurred_at": "2026-11-25T09:00:00Z",
                               "user": {"user_name": user}});
            (
                sandbox.topics.terminations.clone(),
                user,
                event.to_string().into_bytes(),
            )
        })
        .collect();
    sandbox.publish(&records).await.unwrap();
}

fn command(sandbox: &Sandbox, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .envs(sandbox.token_env())
        .env("OFFBOARDER_LOG_FORMAT", "json")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_probes_kafka_and_netskope() {
    let sandbox = sandbox().await;
    let good = config_file(&sandbox, "good", "");
    let out = command(
        &sandbox,
        &["check-config", "--config", good.to_str().unwrap()],
    )
    .output()
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all five topics exist"), "{stdout}");
    // The mock cluster does not answer DescribeConfigs: check-config says so and goes on.
    assert!(
        stdout.contains("cannot read its cleanup.policy")
            && stdout.contains("make sure it is compact"),
        "{stdout}"
    );
    assert!(stdout.contains("SCIM (GET /Users): reachable"), "{stdout}");
    assert!(
        stdout.contains("audit (GET events/data/audit): reachable"),
        "{stdout}"
    );

    let typo = config_file(
        &sandbox,
        "typo",
        "[kafka.topics]\noutcomes = \"offboarder.outcome\"\n",
    );
    let out = command(
        &sandbox,
        &["check-config", "--config", typo.to_str().unwrap()],
    )
    .output()
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing topic is a configuration fault: {stdout}"
    );
    assert!(
        stdout.contains("offboarder.outcome (kafka.topics.outcomes): does not exist"),
        "{stdout}"
    );
    // Every table is validated, [verify] included: a page size Netskope refuses stops here,
    // not at `run`.
    let out = command(
        &sandbox,
        &["check-config", "--config", good.to_str().unwrap()],
    )
    .env("OFFBOARDER_VERIFY__PAGE_LIMIT", "0")
    .output()
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("verify.page_limit: must be between 1 and 5000"),
        "{stderr}"
    );
    // check-config acts on nothing.
    let mutating = sandbox
        .sim
        .stats()
        .requests
        .keys()
        .filter(|e| !e.starts_with("GET "))
        .count();
    assert_eq!(mutating, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reads_every_transmitters_keys() {
    use base64::Engine as _;
    let sandbox = sandbox().await;
    let dir = std::env::temp_dir().join(format!("offboarder-cli-{}-jwks", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    // A JWKS as a transmitter publishes one: an RSA key (check-config verifies nothing with it).
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xC5u8; 256]);
    let set = json!({"keys": [{"kty": "RSA", "n": n, "e": "AQAB", "kid": "k1", "use": "sig"},
                              {"kty": "oct", "k": "c2VjcmV0", "kid": "shared"}]});
    std::fs::write(&jwks, set.to_string()).unwrap();
    let ssf = |source: &str, algorithms: &str| {
        format!(
            "[ssf]\naudience = [\"https://offboarder.example.com/ssf\"]\n\n[[ssf.transmitters]]\nname = \"idp\"\nissuer = \"https://idp.example.com/\"\n{source}\nalgorithms = [{algorithms}]\n"
        )
    };
    let check = |name: &str, extra: String| {
        let path = config_file(&sandbox, name, &extra);
        let mut c = command(
            &sandbox,
            &["check-config", "--config", path.to_str().unwrap()],
        );
        async move { c.output().await.unwrap() }
    };

    let file = format!("jwks_file = {:?}", jwks.to_str().unwrap());
    let out = check("ssf-good", ssf(&file, "\"RS256\"")).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("SSF transmitter idp (https://idp.example.com/): 1 usable keys"),
        "the symmetric key is not counted: {stdout}"
    );

    let out = check(
        "ssf-down",
        ssf("jwks_url = \"http://127.0.0.1:9/jwks\"", "\"RS256\""),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("SSF: FAILED") && stdout.contains("http://127.0.0.1:9/jwks"),
        "{stdout}"
    );

    let out = check("ssf-hmac", ssf(&file, "\"HS256\"")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("\"HS256\" is not an accepted"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_acts_then_stops_cleanly_on_sigterm() {
    let sandbox = sandbox().await;
    publish_terminations(&sandbox, 3).await;
    let path = config_file(&sandbox, "run", "");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = command(&sandbox, &["run", "--config", path.to_str().unwrap()])
        .env("OFFBOARDER_ADMIN__LISTEN", &listen)
        .spawn()
        .unwrap();

    // Each event: "applied", then "verified" once the audit trail shows the PATCH.
    let outcomes = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |r| {
            r.len() >= 6
        })
        .await
        .unwrap();
    let statuses = statuses(&outcomes);
    let count = |s: &str| statuses.iter().filter(|x| *x == s).count();
    assert_eq!(
        (count("applied"), count("verified")),
        (3, 3),
        "{statuses:?}"
    );
    // Every alert-worthy series exists at 0 from the start, in the binary's own start-up
    // order, so that `increase()` sees the first skip after a restart.
    offboarder_base::tls::install();
    let metrics = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let skipped = format!(
        "offboarder_resume_skipped_offsets_total{{topic=\"{}\"}} 0",
        sandbox.topics.terminations
    );
    assert!(metrics.contains(&skipped), "{skipped} missing:\n{metrics}");
    assert!(
        metrics.contains("offboarder_guard_halts_total 0"),
        "{metrics}"
    );
    let pid = child.id().expect("running").to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("signal received"), "{stderr}");
    assert!(stderr.contains("\"message\":\"stopped\""), "{stderr}");
    assert!(!stderr.contains("sim-scim-token") && !stderr.contains("sim-events-token"));
    for n in 1..=3 {
        assert!(
            !sandbox
                .sim
                .user(&format!("user{n}@example.com"))
                .unwrap()
                .active
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_a_bad_config_with_exit_code_2() {
    let sandbox = sandbox().await;
    let path = config_file(
        &sandbox,
        "bad",
        "[policy]\nprotected_users = [\"adm*@corp.com\"]\n",
    );
    let out = command(&sandbox, &["run", "--config", path.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("protected_users"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exports_the_event_span_over_otlp_in_the_input_trace() {
    let (endpoint, received) = fake_collector().await;
    let sandbox = sandbox().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let event = json!({"event_id": "hr-otel", "occurred_at": "2026-11-25T09:00:00Z",
                       "user": {"user_name": "user1@example.com"}});
    sandbox
        .publish_with_headers(
            &sandbox.topics.terminations,
            "user1@example.com",
            event.to_string().as_bytes(),
            &[("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01"))],
        )
        .await
        .unwrap();
    let path = config_file(&sandbox, "otel", "");
    let mut child = command(&sandbox, &["run", "--config", path.to_str().unwrap()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_SERVICE_NAME", "offboarder-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .spawn()
        .unwrap();
    let outcomes = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |r| {
            r.len() >= 2
        })
        .await
        .unwrap();
    for m in &outcomes {
        let o: Value = serde_json::from_str(&sandbox::text(m)).unwrap();
        assert_eq!(o["trace_id"], trace_id, "{o}");
    }
    let pid = child.id().expect("running").to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert_eq!(status.code(), Some(0));

    // The spans arrive as OTLP protobuf, where a trace id is its 16 raw bytes.
    let raw: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let bodies = received.lock().unwrap().clone();
    assert!(!bodies.is_empty(), "spans were exported");
    // Every span carries its trace id: the event span and its SCIM calls (resolve, PATCH) make
    // at least three in the input's trace.
    let in_trace: usize = bodies
        .iter()
        .map(|b| b.windows(16).filter(|w| *w == raw.as_slice()).count())
        .sum();
    assert!(in_trace >= 3, "{in_trace} spans in the input's trace");
    let all: Vec<u8> = bodies.concat();
    for name in ["offboarder.event", "PATCH /Users/{id}", "offboarder-test"] {
        assert!(
            all.windows(name.len()).any(|w| w == name.as_bytes()),
            "{name} in the exported spans"
        );
    }
    assert!(
        !all.windows(14).any(|w| w == b"sim-scim-token"),
        "no token in any span"
    );
}

/// Statuses of the outcomes read so far, in order.
fn statuses(outcomes: &[rdkafka::message::OwnedMessage]) -> Vec<String> {
    outcomes
        .iter()
        .map(|m| {
            let o: Value = serde_json::from_str(&sandbox::text(m)).unwrap();
            o["status"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Netskope rotates the SCIM token while the worker runs: the worker reads its token file again
/// on the 401 and goes on acting without a restart, and `/metrics` counts the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_follows_a_rotated_token_file_without_a_restart() {
    let sandbox = sandbox().await;
    let dir = std::env::temp_dir().join(format!("offboarder-cli-{}-rotate", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("scim-token");
    let (scim_env, scim_token) = sandbox.token_env()[0].clone();
    std::fs::write(&token_file, &scim_token).unwrap();
    let text = sandbox.config_toml("cli-rotate").replace(
        &format!("scim_token = {{ env = \"{scim_env}\" }}"),
        &format!(
            "scim_token = {{ file = {:?} }}",
            token_file.display().to_string()
        ),
    );
    assert!(
        text.contains("file ="),
        "the sandbox's config changed shape:\n{text}"
    );
    let path = dir.join("offboarder.toml");
    std::fs::write(&path, text).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = command(&sandbox, &["run", "--config", path.to_str().unwrap()])
        .env("OFFBOARDER_ADMIN__LISTEN", &listen)
        .spawn()
        .unwrap();

    publish_terminations_of(&sandbox, 1..=2).await;
    let wait = Duration::from_secs(60);
    let topic = &sandbox.topics.outcomes;
    sandbox.read(topic, wait, |r| r.len() >= 4).await.unwrap();
    // The secret store gets the new token, then the old one is revoked.
    std::fs::write(&token_file, "rotated-scim-token\n").unwrap();
    assert!(sandbox.sim.rotate_token(&scim_token, "rotated-scim-token"));
    publish_terminations_of(&sandbox, 3..=4).await;
    let outcomes = sandbox.read(topic, wait, |r| r.len() >= 8).await.unwrap();
    let statuses = statuses(&outcomes);
    let count = |s: &str| statuses.iter().filter(|x| *x == s).count();
    assert_eq!(
        (count("applied"), count("verified")),
        (4, 4),
        "{statuses:?}"
    );
    assert!(!sandbox.sim.user("user4@example.com").unwrap().active);

    offboarder_base::tls::install();
    let metrics = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("offboarder_token_reloads_total{token=\"SCIM\"} 1"),
        "{metrics}"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the worker is still running"
    );
    child.start_kill().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(!stderr.contains("rotated-scim-token") && !stderr.contains(&scim_token));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_status_and_release_drive_a_halted_worker() {
    const TOKEN: &str = "cli-admin-token-93ab";
    let sandbox = sandbox().await;
    publish_terminations(&sandbox, 4).await;
    let path = config_file(
        &sandbox,
        "guard",
        "[guard]\nmax_deactivations = 2\nwindow = \"10m\"\n",
    );
    let config = path.to_str().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let operator = |args: &[&str], token: Option<&str>| {
        let mut c = command(&sandbox, args);
        c.env("OFFBOARDER_ADMIN__LISTEN", &listen);
        match token {
            Some(t) => c.env("OFFBOARDER_ADMIN_TOKEN", t),
            None => c.env_remove("OFFBOARDER_ADMIN_TOKEN"),
        };
        c
    };
    let mut worker = operator(&["run", "--config", config], Some(TOKEN))
        .spawn()
        .unwrap();
    let statuses = |outcomes: &[rdkafka::message::OwnedMessage]| -> Vec<String> {
        outcomes
            .iter()
            .map(|m| {
                let o: Value = serde_json::from_str(&sandbox::text(m)).unwrap();
                o["status"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let halted = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |r| {
            statuses(r).iter().any(|s| s == "halted")
        })
        .await
        .unwrap();
    assert!(statuses(&halted).contains(&"halted".to_string()));

    let status = operator(&["guard", "status", "--config", config], None)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("HALTED"), "{stdout}");

    let no_token = operator(&["guard", "release", "--config", config], None)
        .output()
        .await
        .unwrap();
    assert_eq!(
        no_token.status.code(),
        Some(2),
        "no admin token: a config fault"
    );
    let wrong = operator(&["guard", "release", "--config", config], Some("wrong"))
        .output()
        .await
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1), "a wrong token is refused");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));

    let released = operator(&["guard", "release", "--config", config], Some(TOKEN))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&released.stdout);
    assert_eq!(released.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("released"), "{stdout}");

    // After the release every termination is applied, then verified.
    let outcomes = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |r| {
            statuses(r).iter().filter(|s| *s == "verified").count() >= 4
        })
        .await
        .unwrap();
    let all = statuses(&outcomes);
    let count = |s: &str| all.iter().filter(|x| *x == s).count();
    assert_eq!(
        (count("halted"), count("applied"), count("verified")),
        (1, 4, 4),
        "{all:?}"
    );
    let pid = worker.id().expect("running").to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await;
    let mut stderr = String::new();
    worker
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("blast-radius guard"), "{stderr}");
    assert!(
        !stderr.contains(TOKEN),
        "the admin token never shows in the log"
    );
}
