//! `[kafka] exactly_once` on librdkafka's mock cluster, through the real binary.
//!
//! What the mock can show, and what it cannot: it speaks the transaction protocol
//! (InitProducerId, AddPartitionsToTxn, TxnOffsetCommit, EndTxn) and fences a producer whose
//! epoch was bumped, so the worker's transactions and their failures run for real here. But its
//! TxnOffsetCommit stores no offset and its EndTxn writes no marker (librdkafka 2.12.1,
//! `rdkafka_mock_handlers.c`): offsets committed in a transaction are not seen by a restarted
//! consumer, and an aborted record stays visible to a `read_committed` reader. The crash
//! guarantee itself (SIGKILL, restart, one final outcome per event) therefore needs a broker
//! with transactions; neither the mock nor tansu 0.6.0 (no EndTxn) is one.

mod support;
use support::{free_port, is_final, source_of, until_final};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use netskope_sim::SimArgs;
use offboarder::sandbox::{Sandbox, text};

const BIN: &str = env!("CARGO_BIN_EXE_offboarder");

fn user(n: usize) -> String {
    format!("user{n}@example.com")
}

/// Terminations for users `from..=to`, then as many risk signals for the users after them,
/// every other one below the quarantine threshold.
fn events(sandbox: &Sandbox, from: usize, to: usize) -> Vec<(String, String, Vec<u8>)> {
    let mut records = Vec::new();
    let count = to - from + 1;
    for n in from..=to {
        let e = support::event(&format!("hr-{n}"), &user(n), json!({"source": "workday"}));
        records.push((sandbox.topics.terminations.clone(), user(n), e));
    }
    for n in to + 1..=to + count {
        let score = if n % 2 == 0 { 95 } else { 5 };
        let e = support::event(
            &format!("xdr-{n}"),
            &user(n),
            json!({"source": "crowdstrike", "risk_score": score}),
        );
        records.push((sandbox.topics.risk_signals.clone(), user(n), e));
    }
    records
}

/// The mock cluster (three partitions a topic) and a simulator of `users` users, without a
/// request budget.
async fn sandbox(users: usize) -> Sandbox {
    Sandbox::start(
        SimArgs {
            users,
            rate_limit_per_min: 0,
            latency_ms: 1,
            ..SimArgs::default()
        },
        3,
    )
    .await
    .expect("sandbox")
}

/// A config file for a worker with `exactly_once` and `transactional_id`.
fn config_file(sandbox: &Sandbox, name: &str, group: &str, transactional_id: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("offboarder-eos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{name}.toml"));
    let config = format!(
        "{}\n[guard]\nmax_deactivations = 100000\n",
        sandbox.config_toml(group)
    )
    .replacen(
        "[netskope]\n",
        "[netskope]\nrequests_per_minute = 6000000\n",
        1,
    )
    .replacen(
        "[kafka]\n",
        &format!("[kafka]\nexactly_once = true\ntransactional_id = \"{transactional_id}\"\n"),
        1,
    );
    std::fs::write(&path, config).expect("config file");
    path
}

/// A worker process; its log goes to `config` with `.log` appended.
fn start_worker(sandbox: &Sandbox, config: &Path, admin: &str) -> Child {
    let log = std::fs::File::create(log_of(config)).expect("log file");
    Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .envs(sandbox.token_env())
        .env("OFFBOARDER_ADMIN__LISTEN", admin)
        .env("OFFBOARDER_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn,offboarder=info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("the worker starts")
}

fn log_of(config: &Path) -> PathBuf {
    config.with_extension("log")
}

/// Final outcome records per input event, every record counted.
fn finals(outcomes: &[rdkafka::message::OwnedMessage]) -> BTreeMap<(String, i64, i64), usize> {
    let mut finals = BTreeMap::new();
    for m in outcomes {
        let o: Value = serde_json::from_str(&text(m)).expect("an outcome");
        if is_final(o["status"].as_str().unwrap_or_default()) {
            *finals.entry(source_of(&o)).or_default() += 1;
        }
    }
    finals
}

async fn metric(admin: &str, name: &str) -> f64 {
    offboarder_base::tls::install();
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("a body");
    offboarder::sandbox::prometheus_sum(&text, name, &[])
}

/// A run with `exactly_once`: every event ends with one final outcome, published in
/// transactions that committed, none aborted; a graceful stop commits the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_gets_one_final_outcome_through_committed_transactions() {
    const USERS: usize = 300;
    let sandbox = sandbox(2 * USERS).await;
    let records = events(&sandbox, 1, USERS);
    let total = records.len();
    sandbox.publish(&records).await.expect("publish");
    let path = config_file(&sandbox, "one", "eos-one", "eos-one-worker");
    let admin = format!("127.0.0.1:{}", free_port());
    let mut worker = start_worker(&sandbox, &path, &admin);

    let (outcomes, last) = until_final(&sandbox, total, Duration::from_secs(120)).await;
    let committed = metric(
        &admin,
        "offboarder_transactions_total{result=\"committed\"}",
    )
    .await;
    let aborted = metric(&admin, "offboarder_transactions_total{result=\"aborted\"}").await;
    let pid = worker.id().expect("running").to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status().await;
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("the worker stops within 30 s")
        .expect("exit status");
    let finals = finals(&outcomes);
    let by_status = support::tally(&last);
    println!(
        "exactly_once: {total} events, {} outcome records, final statuses {by_status:?}; \
         transactions committed {committed}, aborted {aborted}",
        outcomes.len()
    );
    assert!(status.success(), "a clean stop: {status:?}");
    assert_eq!(finals.len(), total, "every event has a final outcome");
    assert!(
        finals.values().all(|n| *n == 1),
        "one final outcome per event"
    );
    assert_eq!(by_status.get("verified"), Some(&(USERS + USERS / 2)));
    assert_eq!(by_status.get("skipped"), Some(&(USERS / 2)));
    assert!(
        committed >= 1.0,
        "outcomes went out in committed transactions"
    );
    assert_eq!(aborted, 0.0);
}

/// A fenced producer (as when a second worker started with a copied `transactional_id`): the
/// brokers refuse the worker's next EndTxn with PRODUCER_FENCED. The worker stops with exit
/// code 1 and an error that names the cause and the setting, instead of going on beside
/// another producer; the restarted worker finishes every event. The fence is injected: the
/// mock gives each producer a new producer id, so two real ones would not fence each other
/// there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_producer_stops_the_worker_and_the_restart_finishes_every_event() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    const USERS: usize = 100;
    let sandbox = sandbox(4 * USERS).await;
    let mock = sandbox.kafka().expect("the mock cluster");
    let first_batch = events(&sandbox, 1, USERS);
    sandbox.publish(&first_batch).await.expect("publish");
    let path = config_file(&sandbox, "fenced", "eos-fenced", "eos-fenced-worker");
    let mut first = start_worker(&sandbox, &path, &format!("127.0.0.1:{}", free_port()));
    let _ = until_final(&sandbox, first_batch.len(), Duration::from_secs(120)).await;

    // Idle now: the next transaction to end is the second batch's.
    mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
    );
    let second_batch = events(&sandbox, 2 * USERS + 1, 3 * USERS);
    sandbox.publish(&second_batch).await.expect("publish");
    let exited = tokio::time::timeout(Duration::from_secs(60), first.wait()).await;
    if exited.is_err() {
        let _ = first.start_kill();
    }
    let log = std::fs::read_to_string(log_of(&path)).unwrap_or_default();
    let exited = exited
        .unwrap_or_else(|_| panic!("the fenced worker stops within a minute; its log:\n{log}"))
        .expect("exit status");
    let error = log
        .lines()
        .find(|l| l.contains("stopping the worker"))
        .unwrap_or_default()
        .to_string();

    mock.clear_request_errors(RDKafkaApiKey::EndTxn);
    let mut second = start_worker(&sandbox, &path, &format!("127.0.0.1:{}", free_port()));
    let total = first_batch.len() + second_batch.len();
    let (outcomes, _) = until_final(&sandbox, total, Duration::from_secs(120)).await;
    let pid = second.id().expect("the restarted worker runs").to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status().await;
    let _ = tokio::time::timeout(Duration::from_secs(30), second.wait()).await;
    let finals = finals(&outcomes);
    println!(
        "fenced worker: {exited:?}; its error: {error}; after the restart {} of {total} events final",
        finals.len(),
    );
    assert_eq!(exited.code(), Some(1), "stopped with an error");
    assert!(
        error.contains("fenced") && error.contains("kafka.transactional_id"),
        "the error names the cause and the setting: {error:?}"
    );
    assert_eq!(finals.len(), total, "every event has a final outcome");
}
