//! The whole worker end to end: librdkafka's in-process mock cluster, the real pipeline, and the
//! Netskope tenant simulator over HTTP. These are the acceptance tests of the pipeline: one final
//! outcome per event, dead letters, per-user order, no loss across an abrupt stop, dry-run, and
//! configuration faults that stop the worker without losing events.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use secrecy::SecretString;
use serde_json::{Value, json};

use netskope::{NetskopeClient, NetskopeError, Tokens};
use netskope_sim::SimArgs;
use offboarder::config::Config;
use offboarder::pipeline::{Pipeline, PipelineError, Summary};
use offboarder::sandbox::{self, Sandbox};
use offboarder::verify::VerifyMode;

const GROUP: &str = "Quarantine_HighRisk";
const WAIT: Duration = Duration::from_secs(60);

fn termination(id: &str, user: &str) -> Vec<u8> {
    json!({"event_id": id, "occurred_at": "2026-11-25T09:00:00Z",
           "user": {"user_name": user}, "source": "workday"})
    .to_string()
    .into_bytes()
}

fn signal(id: &str, user: &str, fields: Value) -> Vec<u8> {
    let mut e = json!({"event_id": id, "occurred_at": "2026-11-25T09:00:00Z",
                       "user": {"user_name": user}, "source": "crowdstrike"});
    if let (Some(e), Some(f)) = (e.as_object_mut(), fields.as_object()) {
        e.extend(f.clone());
    }
    e.to_string().into_bytes()
}

fn user(n: usize) -> String {
    format!("user{n}@example.com")
}

async fn sandbox_with(users: usize, tweak: impl FnOnce(&mut SimArgs)) -> Sandbox {
    // Logs show with RUST_LOG=offboarder=info and --nocapture.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    // No request budget: these tests are about the pipeline, not Netskope's rate limit (the
    // client's tests cover that), and 300 requests a minute would make them take minutes.
    let mut args = SimArgs {
        users,
        rate_limit_per_min: 0,
        ..SimArgs::default()
    };
    tweak(&mut args);
    Sandbox::start(args, 3).await.expect("sandbox")
}

fn config(sandbox: &Sandbox, group: &str) -> Config {
    let mut c = sandbox.config(group);
    c.pipeline.shutdown_grace = Duration::from_secs(10);
    c.netskope.requests_per_minute = 600_000;
    // The action phase is what these tests are about; tests/verification.rs covers the rest.
    c.verify.mode = VerifyMode::Off;
    // Bursts of a hundred terminations are these tests' normal; tests/guard.rs covers the
    // blast-radius guard.
    c.guard.max_deactivations = 100_000;
    c
}

/// A record for the terminations topic, keyed by user.
fn hr(sandbox: &Sandbox, user: &str, payload: Vec<u8>) -> (String, String, Vec<u8>) {
    (
        sandbox.topics.terminations.clone(),
        user.to_lowercase(),
        payload,
    )
}

/// A record for the risk-signals topic, keyed by user.
fn xdr(sandbox: &Sandbox, user: &str, payload: Vec<u8>) -> (String, String, Vec<u8>) {
    (
        sandbox.topics.risk_signals.clone(),
        user.to_lowercase(),
        payload,
    )
}

/// One termination for each of these users, with event ids `hr-<n>`.
fn terminations(
    sandbox: &Sandbox,
    users: std::ops::RangeInclusive<usize>,
) -> Vec<(String, String, Vec<u8>)> {
    users
        .map(|n| hr(sandbox, &user(n), termination(&format!("hr-{n}"), &user(n))))
        .collect()
}

fn json_of(m: &OwnedMessage) -> Value {
    serde_json::from_str(&sandbox::text(m)).expect("outcome is JSON")
}

/// `(topic, partition, offset)` of the input event an outcome is about.
fn source_of(o: &Value) -> (String, i64, i64) {
    (
        o["source"]["topic"].as_str().expect("topic").to_string(),
        o["source"]["partition"].as_i64().expect("partition"),
        o["source"]["offset"].as_i64().expect("offset"),
    )
}

fn distinct_sources(read: &[OwnedMessage]) -> usize {
    read.iter()
        .map(|m| source_of(&json_of(m)))
        .collect::<HashSet<_>>()
        .len()
}

/// Runs a pipeline until `expected` distinct input events have an outcome, stops it gracefully,
/// and returns its summary with every outcome record read.
async fn run_until(
    sandbox: &Sandbox,
    config: &Config,
    client: Arc<NetskopeClient>,
    expected: usize,
) -> (Summary, Vec<OwnedMessage>) {
    let pipeline = Pipeline::new(config, client).await.expect("pipeline");
    let handle = pipeline.handle();
    let worker = tokio::spawn(pipeline.run());
    let outcomes = sandbox
        .read(&sandbox.topics.outcomes, WAIT, |read| {
            distinct_sources(read) >= expected
        })
        .await
        .expect("read outcomes");
    handle.stop();
    let summary = worker.await.expect("joined").expect("clean stop");
    (summary, outcomes)
}

fn outcome_validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(include_str!("../schemas/outcome.v1.json")).unwrap();
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_events_get_one_outcome_each_and_the_tenant_matches() {
    let sandbox = sandbox_with(60, |_| {}).await;
    let mut records = terminations(&sandbox, 1..=20);
    for n in 21..=40 {
        let e = signal(&format!("q-{n}"), &user(n), json!({"risk_score": 95}));
        records.push(xdr(&sandbox, &user(n), e));
    }
    for n in 41..=50 {
        let e = signal(&format!("low-{n}"), &user(n), json!({"risk_score": 10}));
        records.push(xdr(&sandbox, &user(n), e));
    }
    for n in 31..=40 {
        let e = signal(
            &format!("clr-{n}"),
            &user(n),
            json!({"severity": "high", "state": "cleared"}),
        );
        records.push(xdr(&sandbox, &user(n), e));
    }
    sandbox.publish(&records).await.unwrap();
    let config = config(&sandbox, "mixed");
    let client = sandbox.client(&config).unwrap();

    let (summary, outcomes) = run_until(&sandbox, &config, client, records.len()).await;

    assert_eq!(
        outcomes.len(),
        records.len(),
        "exactly one outcome per event"
    );
    assert_eq!(distinct_sources(&outcomes), records.len());
    let validator = outcome_validator();
    let mut statuses: BTreeMap<(String, String), usize> = BTreeMap::new();
    for m in &outcomes {
        let o = json_of(m);
        let errors: Vec<String> = validator.iter_errors(&o).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{o}: {errors:?}");
        assert_eq!(
            m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            Some(o["user_name"].as_str().unwrap().to_lowercase()),
            "outcomes are keyed by user"
        );
        *statuses
            .entry((
                o["action"].as_str().unwrap().into(),
                o["status"].as_str().unwrap().into(),
            ))
            .or_default() += 1;
    }
    let expect = |a: &str, s: &str| statuses.get(&(a.into(), s.into())).copied().unwrap_or(0);
    assert_eq!(expect("deactivate", "applied"), 20, "{statuses:?}");
    assert_eq!(expect("quarantine", "applied"), 20, "{statuses:?}");
    assert_eq!(expect("release", "applied"), 10, "{statuses:?}");
    assert_eq!(expect("none", "skipped"), 10, "{statuses:?}");
    assert_eq!(summary.received, records.len() as u64);
    assert_eq!(summary.left_open, 0);

    let members: HashSet<String> = sandbox
        .sim
        .group_members(GROUP)
        .unwrap()
        .into_iter()
        .collect();
    for n in 1..=60 {
        let u = sandbox.sim.user(&user(n)).unwrap();
        assert_eq!(u.active, n > 20, "{} active", u.user_name);
        assert_eq!(
            members.contains(&u.id),
            (21..=30).contains(&n),
            "{} quarantined",
            u.user_name
        );
    }
    // Twenty quarantines in a burst travel in far fewer than twenty PATCHes.
    let stats = sandbox.sim.stats();
    let group_patches = stats.count("PATCH /api/v2/scim/Groups/{id}");
    println!("group PATCHes for 20 quarantines and 10 releases: {group_patches}");
    assert!(group_patches < 30, "{group_patches}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_go_to_the_dead_letter_topic_with_their_reason() {
    let sandbox = sandbox_with(5, |_| {}).await;
    let oversized = signal(
        "big",
        &user(1),
        json!({"risk_score": 90, "padding": "x".repeat(3000)}),
    );
    let bad: Vec<(String, String, Vec<u8>, &str)> = vec![
        (
            sandbox.topics.terminations.clone(),
            "k1".into(),
            b"{not json".to_vec(),
            "invalid_json",
        ),
        (
            sandbox.topics.terminations.clone(),
            "k2".into(),
            br#"{"event_id":"x","occurred_at":"2026-11-25T09:00:00Z","user":{}}"#.to_vec(),
            "schema_violation",
        ),
        (
            sandbox.topics.risk_signals.clone(),
            "k3".into(),
            oversized,
            "oversized",
        ),
        (
            sandbox.topics.risk_signals.clone(),
            "k4".into(),
            signal("ctl", "evil\u{7}@example.com", json!({"risk_score": 99})),
            "schema_violation",
        ),
    ];
    let mut records: Vec<(String, String, Vec<u8>)> = bad
        .iter()
        .map(|(t, k, p, _)| (t.clone(), k.clone(), p.clone()))
        .collect();
    records.push(hr(&sandbox, &user(2), termination("ok-1", &user(2))));
    sandbox.publish(&records).await.unwrap();
    let mut config = config(&sandbox, "dlq");
    config.pipeline.max_event_bytes = 2048;
    let client = sandbox.client(&config).unwrap();

    let (summary, outcomes) = run_until(&sandbox, &config, client, 1).await;
    let dead = sandbox
        .read(&sandbox.topics.dead_letter, WAIT, |r| r.len() >= bad.len())
        .await
        .unwrap();

    assert_eq!(outcomes.len(), 1, "only the valid event has an outcome");
    assert_eq!(json_of(&outcomes[0])["source_event_id"], "ok-1");
    assert_eq!(summary.dead_letters, bad.len() as u64);
    assert_eq!(dead.len(), bad.len());
    for (topic, key, payload, reason) in &bad {
        let d = dead
            .iter()
            .find(|m| m.key() == Some(key.as_bytes()))
            .unwrap_or_else(|| panic!("no dead letter for {key}"));
        assert_eq!(
            d.payload(),
            Some(payload.as_slice()),
            "original bytes, unchanged"
        );
        assert_eq!(
            sandbox::header(d, "offboarder-reason").as_deref(),
            Some(*reason)
        );
        assert_eq!(
            sandbox::header(d, "offboarder-source-topic").as_ref(),
            Some(topic)
        );
        assert!(sandbox::header(d, "offboarder-source-partition").is_some());
        assert!(sandbox::header(d, "offboarder-source-offset").is_some());
        assert!(
            !sandbox::header(d, "offboarder-error")
                .unwrap_or_default()
                .is_empty()
        );
    }
    assert!(sandbox.sim.user(&user(2)).is_some_and(|u| !u.active));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_invalid_events_stops_reading_instead_of_dead_lettering_the_topic() {
    let sandbox = sandbox_with(5, |_| {}).await;
    let flood: Vec<(String, String, Vec<u8>)> = (0..200)
        .map(|n| {
            (
                sandbox.topics.terminations.clone(),
                format!("k{n}"),
                format!("{{not json {n}").into_bytes(),
            )
        })
        .collect();
    sandbox.publish(&flood).await.unwrap();
    let mut config = config(&sandbox, "dlq-flood");
    config.pipeline.dead_letter_window = 100;
    config.pipeline.dead_letter_max_ratio = 0.5;
    let pipeline = Pipeline::new(&config, sandbox.client(&config).unwrap())
        .await
        .unwrap();
    let handle = pipeline.handle();
    let worker = tokio::spawn(pipeline.run());
    let readiness = handle.readiness();
    let mut reasons = Vec::new();
    for _ in 0..300 {
        reasons = readiness.check().err().unwrap_or_default();
        if reasons.iter().any(|r| r.contains("dead-letter limit")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reasons.iter().any(|r| r.contains("deployment fault")),
        "{reasons:?}"
    );
    // A moment for anything that should not happen.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!worker.is_finished(), "the worker stays up");
    handle.stop();
    let summary = worker.await.unwrap().unwrap();
    let dead = sandbox
        .read(&sandbox.topics.dead_letter, Duration::from_secs(3), |r| {
            r.len() > 50
        })
        .await
        .unwrap();
    println!(
        "dead letters before the stop: {} of {}; summary {summary:?}",
        dead.len(),
        flood.len()
    );
    assert_eq!(dead.len(), 50, "half of the 100-event window, then a stop");
    assert_eq!(summary.dead_letters, 50);

    // The producer is fixed (here: the limit is lifted) and the worker restarted: it goes on
    // from the event it stopped at, and nothing is dead-lettered twice.
    config.pipeline.dead_letter_max_ratio = 1.0;
    let pipeline = Pipeline::new(&config, sandbox.client(&config).unwrap())
        .await
        .unwrap();
    let handle = pipeline.handle();
    let worker = tokio::spawn(pipeline.run());
    let dead = sandbox
        .read(&sandbox.topics.dead_letter, WAIT, |r| {
            r.len() >= flood.len()
        })
        .await
        .unwrap();
    handle.stop();
    worker.await.unwrap().unwrap();
    let sources: BTreeSet<(String, String)> = dead
        .iter()
        .map(|d| {
            (
                sandbox::header(d, "offboarder-source-partition").unwrap_or_default(),
                sandbox::header(d, "offboarder-source-offset").unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(dead.len(), flood.len(), "every event dead-lettered once");
    assert_eq!(sources.len(), flood.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_one_user_are_applied_in_arrival_order() {
    let sandbox = sandbox_with(40, |args| args.latency_ms = 2).await;
    let target = user(7);
    let mut records = Vec::new();
    // Quarantine, release, quarantine, ... 21 times, ending quarantined; other users' events
    // in between keep the lanes busy.
    for i in 0..21 {
        let state = if i % 2 == 0 { "open" } else { "cleared" };
        let e = signal(
            &format!("u7-{i}"),
            &target,
            json!({"risk_score": 99, "state": state}),
        );
        records.push(xdr(&sandbox, &target, e));
        let other = user(10 + i);
        records.push(hr(
            &sandbox,
            &other,
            termination(&format!("other-{i}"), &other),
        ));
    }
    sandbox.publish(&records).await.unwrap();
    let mut config = config(&sandbox, "order");
    // One lane runs all 21 of user7's events one after the other, each waiting out the window.
    config.pipeline.batch_window = Duration::from_millis(20);
    let client = sandbox.client(&config).unwrap();

    let (_, outcomes) = run_until(&sandbox, &config, client, records.len()).await;

    // The lane publishes each outcome before it takes the user's next event, and outcomes are
    // keyed by user, so their order on the outcomes topic is the order of execution.
    let mine: Vec<Value> = outcomes
        .iter()
        .map(json_of)
        .filter(|o| o["user_name"] == target.as_str())
        .collect();
    let ids: Vec<&str> = mine
        .iter()
        .map(|o| o["source_event_id"].as_str().unwrap())
        .collect();
    let wanted: Vec<String> = (0..21).map(|i| format!("u7-{i}")).collect();
    assert_eq!(ids, wanted, "executed in arrival order");
    assert!(mine.iter().all(|o| o["status"] == "applied"), "{mine:?}");
    let acted: Vec<&str> = mine
        .iter()
        .map(|o| o["timestamps"]["acted"].as_str().unwrap())
        .collect();
    let mut sorted = acted.clone();
    sorted.sort();
    assert_eq!(acted, sorted, "acted timestamps follow the same order");
    let u = sandbox.sim.user(&target).unwrap();
    assert!(
        sandbox.sim.group_members(GROUP).unwrap().contains(&u.id),
        "last event was a quarantine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abrupt_stop_loses_nothing_and_repeats_only_idempotent_requests() {
    let sandbox = sandbox_with(200, |args| args.latency_ms = 5).await;
    let mut records = terminations(&sandbox, 1..=100);
    for n in 101..=200 {
        let e = signal(&format!("q-{n}"), &user(n), json!({"severity": "critical"}));
        records.push(xdr(&sandbox, &user(n), e));
    }
    sandbox.publish(&records).await.unwrap();
    let mut config = config(&sandbox, "crash");
    config.pipeline.max_concurrent_users = 4;
    config.pipeline.batch_window = Duration::from_millis(20);

    // First worker: killed once about a third of the outcomes are out.
    let first = Pipeline::new(&config, sandbox.client(&config).unwrap())
        .await
        .unwrap();
    let handle = first.handle();
    let worker = tokio::spawn(first.run());
    let before = sandbox
        .read(&sandbox.topics.outcomes, WAIT, |r| r.len() >= 60)
        .await
        .unwrap();
    handle.kill();
    let _ = worker.await.unwrap();
    let after_kill = sandbox.sim.stats();
    assert!(before.len() < records.len(), "killed mid-run");

    // Second worker, same group: picks up from the committed offsets.
    let (_, outcomes) = run_until(
        &sandbox,
        &config,
        sandbox.client(&config).unwrap(),
        records.len(),
    )
    .await;
    let sources: BTreeSet<(String, i64, i64)> =
        outcomes.iter().map(|m| source_of(&json_of(m))).collect();
    assert_eq!(sources.len(), records.len(), "every event has an outcome");
    let repeated = outcomes.len() - sources.len();
    println!(
        "outcomes before the kill: {}, after both runs: {}, events processed twice: {repeated}",
        before.len(),
        outcomes.len()
    );

    let stats = sandbox.sim.stats();
    let methods: BTreeSet<String> = stats
        .requests
        .keys()
        .filter_map(|endpoint| endpoint.split(' ').next().map(str::to_string))
        .collect();
    let allowed: BTreeSet<String> = ["GET", "PATCH", "POST"].map(String::from).into();
    assert!(methods.is_subset(&allowed), "{methods:?}");
    // The one non-idempotent request, group creation, happened once: the second worker found
    // the group.
    assert_eq!(stats.count("POST /api/v2/scim/Groups"), 1);
    println!(
        "PATCH /Users: {} before the kill, {} in all (100 users)",
        after_kill.count("PATCH /api/v2/scim/Users/{id}"),
        stats.count("PATCH /api/v2/scim/Users/{id}")
    );
    let members = sandbox.sim.group_members(GROUP).unwrap();
    assert_eq!(members.len(), 100);
    for n in 1..=100 {
        assert!(
            !sandbox.sim.user(&user(n)).unwrap().active,
            "user{n} deactivated"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_sends_no_mutating_request() {
    let sandbox = sandbox_with(10, |_| {}).await;
    let records = vec![
        hr(&sandbox, &user(1), termination("hr-1", &user(1))),
        hr(
            &sandbox,
            "ghost@example.com",
            termination("hr-2", "ghost@example.com"),
        ),
        xdr(
            &sandbox,
            &user(2),
            signal("q-2", &user(2), json!({"risk_score": 99})),
        ),
        xdr(
            &sandbox,
            &user(3),
            signal("low-3", &user(3), json!({"risk_score": 1})),
        ),
        xdr(
            &sandbox,
            &user(4),
            signal(
                "clr-4",
                &user(4),
                json!({"risk_score": 1, "state": "cleared"}),
            ),
        ),
    ];
    sandbox.publish(&records).await.unwrap();
    let mut config = config(&sandbox, "dry");
    config.policy.dry_run = true;
    let client = sandbox.client(&config).unwrap();

    let (_, outcomes) = run_until(&sandbox, &config, client, records.len()).await;

    let stats = sandbox.sim.stats();
    let mutating: Vec<&String> = stats
        .requests
        .keys()
        .filter(|e| !e.starts_with("GET "))
        .collect();
    assert!(mutating.is_empty(), "{mutating:?}");
    let by_id: BTreeMap<String, Value> = outcomes
        .iter()
        .map(json_of)
        .map(|o| (o["source_event_id"].as_str().unwrap().to_string(), o))
        .collect();
    assert_eq!(by_id["hr-1"]["status"], "dry_run");
    assert_eq!(by_id["hr-1"]["request"]["method"], "PATCH");
    assert!(
        by_id["hr-1"]["request"]["path"]
            .as_str()
            .unwrap()
            .starts_with("/Users/")
    );
    assert_eq!(
        by_id["hr-1"]["request"]["body"]["Operations"][0]["path"],
        "active"
    );
    assert_eq!(by_id["hr-2"]["status"], "failed");
    assert_eq!(by_id["q-2"]["status"], "dry_run");
    assert_eq!(
        by_id["q-2"]["request"]["method"], "POST",
        "the group would be created first"
    );
    assert_eq!(by_id["low-3"]["status"], "skipped");
    assert_eq!(
        by_id["clr-4"]["status"], "skipped",
        "no group, nothing to release"
    );
    assert!(sandbox.sim.user(&user(1)).unwrap().active);
    assert!(sandbox.sim.group_id(GROUP).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_stops_the_worker_and_keeps_the_events() {
    let sandbox = sandbox_with(5, |_| {}).await;
    let records = terminations(&sandbox, 1..=3);
    sandbox.publish(&records).await.unwrap();
    let config = config(&sandbox, "revoked");
    let wrong = NetskopeClient::builder(&config.netskope)
        .tokens(Tokens {
            scim: SecretString::from("revoked-token-value"),
            events: None,
        })
        .build()
        .unwrap();

    let pipeline = Pipeline::new(&config, Arc::new(wrong)).await.unwrap();
    let result = tokio::time::timeout(WAIT, pipeline.run())
        .await
        .expect("stops by itself");
    let error = result.expect_err("a 401 stops the worker");
    assert!(error.is_config(), "{error}");
    assert!(
        matches!(
            error,
            PipelineError::Netskope(NetskopeError::Unauthorized { .. })
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("401"), "{error}");
    assert!(!error.to_string().contains("revoked-token-value"));
    let none = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(1), |r| {
            !r.is_empty()
        })
        .await
        .unwrap();
    assert!(
        none.is_empty(),
        "no outcome for events that could not be acted on"
    );

    // With the right token, the same group gets every event: none was committed.
    let (_, outcomes) = run_until(&sandbox, &config, sandbox.client(&config).unwrap(), 3).await;
    assert_eq!(distinct_sources(&outcomes), 3);
    assert!(outcomes.iter().all(|m| json_of(m)["status"] == "applied"));
}

/// Runs `records` through a pipeline with `max_in_flight = 8` and two lanes, sampling the
/// in-flight count; returns the peak, whether the partitions were ever paused, and the outcomes.
async fn run_bounded(
    sandbox: &Sandbox,
    group: &str,
    expected: usize,
    pause_after: Duration,
) -> (usize, bool, Vec<OwnedMessage>) {
    let mut config = config(sandbox, group);
    config.pipeline.max_in_flight = 8;
    config.pipeline.max_concurrent_users = 2;
    config.pipeline.pause_after = pause_after;
    let pipeline = Pipeline::new(&config, sandbox.client(&config).unwrap())
        .await
        .unwrap();
    let handle = pipeline.handle();
    let peak = Arc::new(AtomicUsize::new(0));
    let was_paused = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (handle, peak, was_paused) = (handle.clone(), peak.clone(), was_paused.clone());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(handle.in_flight(), Ordering::SeqCst);
                if handle.paused() {
                    was_paused.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let worker = tokio::spawn(pipeline.run());
    let outcomes = sandbox
        .read(&sandbox.topics.outcomes, WAIT, |r| {
            distinct_sources(r) >= expected
        })
        .await
        .unwrap();
    handle.stop();
    worker.await.unwrap().unwrap();
    sampler.abort();
    (
        peak.load(Ordering::SeqCst),
        was_paused.load(Ordering::SeqCst),
        outcomes,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_stops_at_the_in_flight_bound() {
    let sandbox = sandbox_with(60, |args| args.latency_ms = 10).await;
    let records = terminations(&sandbox, 1..=60);
    sandbox.publish(&records).await.unwrap();

    let (peak, paused, outcomes) =
        run_bounded(&sandbox, "bounded", records.len(), Duration::from_secs(5)).await;

    assert_eq!(distinct_sources(&outcomes), records.len());
    println!("peak in-flight events: {peak} (bound 8)");
    assert_eq!(peak, 8, "the bound was reached and held");
    assert!(
        !paused,
        "events kept finishing: no need to pause the partitions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_at_the_bound_pauses_the_partitions_and_loses_nothing() {
    // Every request takes half a second: at the bound, nothing finishes for longer than
    // pause_after.
    let sandbox = sandbox_with(10, |args| args.latency_ms = 500).await;
    let records = terminations(&sandbox, 1..=10);
    sandbox.publish(&records).await.unwrap();

    let (peak, paused, outcomes) = run_bounded(
        &sandbox,
        "stalled",
        records.len(),
        Duration::from_millis(300),
    )
    .await;

    assert_eq!(distinct_sources(&outcomes), records.len());
    assert!(peak <= 8, "peak {peak}");
    assert!(
        paused,
        "the partitions were paused while the worker stalled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_waited_out_without_failing_events() {
    let sandbox = sandbox_with(30, |args| {
        args.fault_rate = 0.3;
        args.seed = Some(7);
    })
    .await;
    let records = terminations(&sandbox, 1..=30);
    sandbox.publish(&records).await.unwrap();
    let mut config = config(&sandbox, "faults");
    config.netskope.retry.initial_delay = Duration::from_millis(10);
    config.netskope.retry.max_delay = Duration::from_millis(100);
    let client = sandbox.client(&config).unwrap();

    let (_, outcomes) = run_until(&sandbox, &config, client, records.len()).await;

    assert!(outcomes.iter().all(|m| json_of(m)["status"] == "applied"));
    let stats = sandbox.sim.stats();
    let errors: u64 = stats
        .requests
        .values()
        .flat_map(|by_status| by_status.iter())
        .filter(|(status, _)| (500..600).contains(*status))
        .map(|(_, n)| *n)
        .sum();
    println!("5xx answers absorbed: {errors}");
    assert!(errors > 0, "faults were injected");
    for n in 1..=30 {
        assert!(!sandbox.sim.user(&user(n)).unwrap().active);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_transient_retry_for_fails_the_event_and_keeps_it_for_replay() {
    let sandbox = sandbox_with(3, |args| args.fault_rate = 1.0).await;
    let records = terminations(&sandbox, 1..=1);
    sandbox.publish(&records).await.unwrap();
    let mut config = config(&sandbox, "outage");
    config.netskope.retry.max_attempts = 1;
    config.pipeline.transient_retry_for = Duration::from_secs(1);
    let client = sandbox.client(&config).unwrap();

    let (summary, outcomes) = run_until(&sandbox, &config, client, 1).await;

    let o = json_of(&outcomes[0]);
    assert_eq!(o["status"], "failed", "{o}");
    assert_eq!(o["error"]["kind"], "transient", "{o}");
    assert!(o["reason"].as_str().unwrap().contains("dead-letter"), "{o}");
    assert_eq!(summary.dead_letters, 1);
    let dead = sandbox
        .read(&sandbox.topics.dead_letter, WAIT, |r| !r.is_empty())
        .await
        .unwrap();
    assert_eq!(
        dead[0].payload(),
        Some(records[0].2.as_slice()),
        "replayable as is"
    );
    assert_eq!(
        sandbox::header(&dead[0], "offboarder-reason").as_deref(),
        Some("retries_exhausted")
    );
}
