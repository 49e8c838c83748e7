//! The operator tools, as the binary runs them against a worker on the mock cluster: an
//! operator's action goes through the worker like any event and shows in the user's history;
//! dead letters are listed with their reasons and replayed, fixed, into their own outcomes.

mod support;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;

use netskope_sim::SimArgs;
use offboarder::pipeline::Pipeline;
use offboarder::sandbox::{self, Sandbox};

const BIN: &str = env!("CARGO_BIN_EXE_offboarder");

fn config_file(sandbox: &Sandbox, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("offboarder-tools-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("offboarder.toml");
    std::fs::write(&path, sandbox.config_toml(&format!("tools-{name}"))).unwrap();
    path
}

/// Runs the binary with `args` and the config; no Netskope token in its environment (the
/// tools need none).
async fn tool(config: &PathBuf, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env("OFFBOARDER_LOG_FORMAT", "json")
        .env_remove("NETSKOPE_SCIM_TOKEN")
        .output()
        .await
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Reads the outcomes until `done` holds for the parsed outcomes.
async fn outcomes_until(sandbox: &Sandbox, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let parse = |read: &[rdkafka::message::OwnedMessage]| -> Vec<Value> {
        read.iter()
            .filter_map(|m| serde_json::from_str(&sandbox::text(m)).ok())
            .collect()
    };
    let read = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |r| {
            done(&parse(r))
        })
        .await
        .expect("outcomes");
    parse(&read)
}

fn has(outcomes: &[Value], event_prefix: &str, status: &str) -> bool {
    outcomes.iter().any(|o| {
        o["status"] == status
            && o["source_event_id"]
                .as_str()
                .is_some_and(|id| id.starts_with(event_prefix))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_history_and_dead_letter_replay() {
    let sandbox = Sandbox::start(
        SimArgs {
            users: 3,
            rate_limit_per_min: 0,
            ..SimArgs::default()
        },
        1,
    )
    .await
    .expect("sandbox");
    let config = config_file(&sandbox, "all");
    let mut worker_config = sandbox.config("tools-all");
    worker_config.pipeline.shutdown_grace = Duration::from_secs(1);
    let client = sandbox.client(&worker_config).expect("client");
    let pipeline = Pipeline::new(&worker_config, client)
        .await
        .expect("pipeline");
    let handle = pipeline.handle();
    let worker = tokio::spawn(pipeline.run());

    // An operator deactivates user1: an input event, handled like any other.
    let out = tool(
        &config,
        &[
            "act",
            "deactivate",
            "--user",
            "user1@example.com",
            "--reason",
            "ticket SEC-7",
            "--operator",
            "jo",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("source operator:jo"),
        "{}",
        text(&out.stdout)
    );
    let refused = tool(
        &config,
        &[
            "act",
            "quarantine",
            "--user",
            "user2@example.com",
            "--reason",
            " ",
        ],
    )
    .await;
    assert_eq!(refused.status.code(), Some(2), "a reason is required");

    // A risk signal without its required `source`: a dead letter.
    let bad = json!({"event_id": "xdr-bad", "occurred_at": "2026-11-25T09:00:00Z",
                     "user": {"user_name": "user2@example.com"}, "risk_score": 95});
    sandbox
        .publish(&[(
            sandbox.topics.risk_signals.clone(),
            "user2@example.com".to_string(),
            bad.to_string().into_bytes(),
        )])
        .await
        .expect("publish");
    outcomes_until(&sandbox, |o| has(o, "operator-", "verified")).await;
    sandbox
        .read(&sandbox.topics.dead_letter, Duration::from_secs(30), |r| {
            !r.is_empty()
        })
        .await
        .expect("a dead letter");
    assert!(!sandbox.sim.user("user1@example.com").expect("user1").active);

    // The history: oldest first, the operator named in each record.
    let out = tool(&config, &["history", "--user", "USER1@example.com"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = text(&out.stdout);
    let statuses: Vec<&str> = lines
        .lines()
        .map(|l| {
            if l.contains("verified") {
                "verified"
            } else if l.contains("applied") {
                "applied"
            } else {
                "?"
            }
        })
        .collect();
    assert_eq!(statuses, ["applied", "verified"], "{lines}");
    let out = tool(
        &config,
        &["history", "--user", "user1@example.com", "--json"],
    )
    .await;
    for line in text(&out.stdout).lines() {
        let o: Value = serde_json::from_str(line).expect("an outcome per line");
        assert_eq!(o["requested_by"], "operator:jo", "{o}");
    }

    // The dead letter, listed with its reason; replay needs a selection.
    let out = tool(&config, &["dead-letters", "list"]).await;
    let listed = text(&out.stdout);
    assert!(listed.contains("schema_violation"), "{listed}");
    assert!(
        listed.contains(&format!("from {}/0/", sandbox.topics.risk_signals)),
        "{listed}"
    );
    let out = tool(&config, &["dead-letters", "replay"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // Replayed with the missing field set: the worker quarantines user2, in its own outcome.
    let out = tool(
        &config,
        &[
            "dead-letters",
            "replay",
            "--reason",
            "schema_violation",
            "--set",
            "/source=\"crowdstrike\"",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("replayed"),
        "{}",
        text(&out.stdout)
    );
    let outcomes = outcomes_until(&sandbox, |o| has(o, "xdr-bad", "verified")).await;
    let replayed = outcomes
        .iter()
        .find(|o| o["source_event_id"] == "xdr-bad" && o["status"] == "applied")
        .expect("the replayed event's outcome");
    assert_eq!(replayed["action"], "quarantine", "{replayed}");
    assert_eq!(replayed["requested_by"], "crowdstrike");

    handle.stop();
    worker.await.expect("joined").expect("clean stop");
}
