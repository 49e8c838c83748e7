//! The blast-radius guard end to end: the real pipeline over librdkafka's mock cluster, the
//! tenant simulator, and the admin listener that releases a halt.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::message::OwnedMessage;
use secrecy::SecretString;
use serde_json::{Value, json};

use netskope_sim::SimArgs;
use offboarder::admin::{self, AdminConfig};
use offboarder::pipeline::Pipeline;
use offboarder::sandbox::{self, Sandbox};
use offboarder::verify::VerifyMode;

const ADMIN_TOKEN: &str = "test-admin-token-7c1e";
const PATCH_USER: &str = "PATCH /api/v2/scim/Users/{id}";

fn user(n: usize) -> String {
    format!("user{n}@example.com")
}

fn json_of(m: &OwnedMessage) -> Value {
    serde_json::from_str(&sandbox::text(m)).expect("outcome is JSON")
}

/// Status → number of distinct input events with an outcome of that status.
fn by_status(outcomes: &[OwnedMessage]) -> BTreeMap<String, usize> {
    let mut seen: BTreeMap<String, HashSet<(String, i64, i64)>> = BTreeMap::new();
    for o in outcomes.iter().map(json_of) {
        let source = support::source_of(&o);
        let status = o["status"].as_str().unwrap_or_default().to_string();
        seen.entry(status).or_default().insert(source);
    }
    seen.into_iter().map(|(k, v)| (k, v.len())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_10000_terminations_stops_at_the_limit_until_released() {
    const TERMINATIONS: usize = 10_000;
    const SIGNALS: usize = 20;
    const LIMIT: usize = 50;
    let sandbox = Sandbox::start(
        SimArgs {
            users: TERMINATIONS + SIGNALS,
            rate_limit_per_min: 0,
            ..SimArgs::default()
        },
        3,
    )
    .await
    .expect("sandbox");
    let mut records: Vec<(String, String, Vec<u8>)> = (1..=TERMINATIONS)
        .map(|n| {
            let event = json!({"event_id": format!("hr-{n}"), "occurred_at": "2026-11-25T09:00:00Z",
                               "user": {"user_name": user(n)}, "source": "workday"});
            (
                sandbox.topics.terminations.clone(),
                user(n),
                event.to_string().into_bytes(),
            )
        })
        .collect();
    // Risk signals behind the burst: quarantines are not destructive and must go on.
    for n in TERMINATIONS + 1..=TERMINATIONS + SIGNALS {
        let event = json!({"event_id": format!("xdr-{n}"), "occurred_at": "2026-11-25T09:00:00Z",
                           "user": {"user_name": user(n)}, "source": "crowdstrike",
                           "risk_score": 95});
        records.push((
            sandbox.topics.risk_signals.clone(),
            user(n),
            event.to_string().into_bytes(),
        ));
    }
    sandbox.publish(&records).await.expect("publish");

    let mut config = sandbox.config("guard-burst");
    config.netskope.requests_per_minute = 6_000_000;
    config.verify.mode = VerifyMode::Off;
    config.pipeline.shutdown_grace = Duration::from_secs(10);
    config.guard.max_deactivations = LIMIT;
    config.guard.window = Duration::from_secs(600);
    let client = sandbox.client(&config).expect("client");
    let pipeline = Pipeline::new(&config, client.clone())
        .await
        .expect("pipeline");
    let handle = pipeline.handle();
    let admin_config = AdminConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..AdminConfig::default()
    };
    let addr = admin::serve(
        &admin_config,
        handle.readiness(),
        client,
        None,
        handle.guard(),
        Some(SecretString::from(ADMIN_TOKEN)),
    )
    .await
    .expect("admin listener");
    let started = Instant::now();
    let worker = tokio::spawn(pipeline.run());

    // The halt: one `halted` outcome, and every quarantine done meanwhile.
    let before_release = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(120), |read| {
            let s = by_status(read);
            s.get("halted") == Some(&1) && s.get("applied").copied().unwrap_or(0) >= LIMIT + SIGNALS
        })
        .await
        .expect("outcomes before the release");
    let halted_after = started.elapsed();
    // Give stray deactivations a chance to show up, had the halt leaked any.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let patched = sandbox.sim.stats().count(PATCH_USER);
    let statuses = by_status(&before_release);
    println!(
        "halted after {halted_after:.1?}: {patched} users deactivated, outcomes by status {statuses:?}"
    );
    assert_eq!(
        patched, LIMIT as u64,
        "exactly max_deactivations users are deactivated before the halt"
    );
    assert_eq!(
        statuses.get("halted"),
        Some(&1),
        "one halted outcome per halt"
    );
    let halted: Vec<Value> = before_release
        .iter()
        .map(json_of)
        .filter(|o| o["status"] == "halted")
        .collect();
    assert_eq!(halted[0]["action"], "deactivate");
    assert!(
        halted[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("offboarder guard release")),
        "the halted outcome says how to resume: {}",
        halted[0]
    );
    let quarantined = sandbox
        .sim
        .group_members(&config.policy.quarantine_group)
        .map_or(0, |m| m.len());
    assert_eq!(quarantined, SIGNALS, "quarantines went on during the halt");
    assert!(handle.in_flight() > 0, "halted events keep their offsets");

    offboarder_base::tls::install();
    let http = reqwest::Client::new();
    let readyz = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(readyz.status(), 503);
    let body: Value = readyz.json().await.expect("readyz json");
    assert!(
        body["reasons"].to_string().contains("blast-radius guard"),
        "{body}"
    );
    let status: Value = http
        .get(format!("http://{addr}/guard"))
        .send()
        .await
        .expect("guard status")
        .json()
        .await
        .expect("guard json");
    assert_eq!(status["halted"], true);
    assert!(status["waiting"].as_u64().unwrap_or(0) > 0, "{status}");

    let release = format!("http://{addr}/guard/release");
    let refused = http.post(&release).send().await.expect("release");
    assert_eq!(refused.status(), 401, "no token, no release");
    let refused = http
        .post(&release)
        .bearer_auth("wrong-token")
        .send()
        .await
        .expect("release");
    assert_eq!(refused.status(), 401, "a wrong token, no release");
    assert_eq!(sandbox.sim.stats().count(PATCH_USER), LIMIT as u64);
    let released = http
        .post(&release)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("release");
    assert_eq!(released.status(), 200);

    let all = sandbox
        .read(
            &sandbox.topics.outcomes,
            Duration::from_secs(300),
            // Checked only once enough records are in: decoding them all after every record
            // would be quadratic.
            |read| {
                read.len() > TERMINATIONS + SIGNALS
                    && by_status(read).get("applied").copied().unwrap_or(0)
                        >= TERMINATIONS + SIGNALS
            },
        )
        .await
        .expect("outcomes after the release");
    handle.stop();
    let summary = worker.await.expect("joined").expect("clean stop");
    let statuses = by_status(&all);
    println!(
        "all done {:.1?} after the start; outcomes by status {statuses:?}; {} PATCHes of users",
        started.elapsed(),
        sandbox.sim.stats().count(PATCH_USER)
    );
    assert_eq!(
        statuses.get("applied"),
        Some(&(TERMINATIONS + SIGNALS)),
        "every event has its final outcome after the release"
    );
    assert_eq!(statuses.get("halted"), Some(&1), "still one halt");
    assert_eq!(
        sandbox.sim.stats().count(PATCH_USER),
        TERMINATIONS as u64,
        "one deactivation per user, no repeats"
    );
    for n in [1, LIMIT + 1, TERMINATIONS] {
        assert_eq!(
            sandbox.sim.user(&user(n)).map(|u| u.active),
            Some(false),
            "{}",
            user(n)
        );
    }
    assert_eq!(summary.left_open, 0);
    let readyz = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .expect("readyz");
    let body: Value = readyz.json().await.expect("readyz json");
    assert!(
        !body.to_string().contains("blast-radius guard"),
        "the halt no longer shows on /readyz: {body}"
    );
}

/// Opens a guard on the sandbox's state topic, as a worker with `config` does.
async fn open_guard(
    config: &offboarder::config::Config,
) -> std::sync::Arc<offboarder::guard::Guard> {
    let kafka = &config.kafka;
    offboarder::guard::ledger::open(
        &config.guard,
        offboarder::guard::ledger::Kafka {
            producer: kafka.producer_config().expect("producer config"),
            reader: kafka.state_reader_config().expect("reader config"),
            topic: kafka.topics.state.clone(),
            timeout: Duration::from_secs(10),
        },
    )
    .await
    .expect("the guard opens on its state topic")
}

/// Two workers share one guard through the state topic: together they admit exactly
/// `max_deactivations`, both see the halt, a worker started after both are gone (a restart)
/// is still halted with the same count, and a release through any worker lets every other go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_one_guard_through_the_state_topic_and_a_restart_keeps_the_halt() {
    use offboarder::guard::Admission;
    const LIMIT: usize = 5;
    let sandbox = Sandbox::start(SimArgs::default(), 1)
        .await
        .expect("sandbox");
    let mut config = sandbox.config("guard-fleet");
    config.guard.max_deactivations = LIMIT;
    config.guard.window = Duration::from_secs(600);
    let a = open_guard(&config).await;
    let b = open_guard(&config).await;

    // Twenty destructive actions at once, half on each worker.
    let claims: Vec<_> = (0..20)
        .map(|n| {
            let g = if n % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { g.try_admit(&format!("t/{n}")).await })
        })
        .collect();
    let mut verdicts = Vec::new();
    for c in claims {
        verdicts.push(c.await.expect("joined").expect("decided"));
    }
    let admitted = verdicts
        .iter()
        .filter(|v| **v == Admission::Admitted)
        .count();
    let tripped = verdicts
        .iter()
        .filter(|v| **v == Admission::Halted { tripped: true })
        .count();
    println!("2 workers, 20 claims: {admitted} admitted, {tripped} tripped the halt");
    assert_eq!(
        admitted, LIMIT,
        "the fleet admits max_deactivations, not one per worker"
    );
    assert_eq!(tripped, 1, "one claim trips the halt");
    assert!(a.is_halted() && b.is_halted());
    assert_eq!(a.status().halts, 1);
    assert_eq!(b.status().in_window, LIMIT);
    assert!(
        b.status()
            .shared_through
            .contains(&config.kafka.topics.state)
    );
    drop((a, b));

    // Every worker gone; a new one replays the topic and starts where they were.
    let c = open_guard(&config).await;
    let status = c.status();
    assert!(
        status.halted,
        "a restart does not lift the halt: {status:?}"
    );
    assert_eq!((status.in_window, status.halts), (LIMIT, 1));
    assert_eq!(
        c.try_admit("t/late").await.expect("decided"),
        Admission::Halted { tripped: false }
    );
    let d = open_guard(&config).await;
    let waiter = {
        let d = d.clone();
        tokio::spawn(async move { d.admitted("t/waiting").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "halted: the action waits");
    assert_eq!(d.waiting(), 1);

    // A release through one worker lets the other go on.
    let before = c.release().await.expect("released");
    assert!(before.halted);
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter on the other worker goes on after the release")
        .expect("joined");
    assert!(!d.is_halted() && d.status().released);
    assert_eq!(
        d.try_admit("t/after").await.expect("decided"),
        Admission::Admitted
    );
}

/// The worker halts, stops (as in a crash or a rolling restart), and a new worker in its
/// place acts on nothing more until an operator releases: the count and the halt live in the
/// state topic, not in the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_is_still_halted_until_a_release() {
    const USERS: usize = 8;
    const LIMIT: usize = 3;
    let sandbox = Sandbox::start(
        SimArgs {
            users: USERS,
            rate_limit_per_min: 0,
            ..SimArgs::default()
        },
        1,
    )
    .await
    .expect("sandbox");
    let records: Vec<(String, String, Vec<u8>)> = (1..=USERS)
        .map(|n| {
            let event = json!({"event_id": format!("hr-{n}"), "occurred_at": "2026-11-25T09:00:00Z",
                               "user": {"user_name": user(n)}});
            (
                sandbox.topics.terminations.clone(),
                user(n),
                event.to_string().into_bytes(),
            )
        })
        .collect();
    sandbox.publish(&records).await.expect("publish");
    let mut config = sandbox.config("guard-restart");
    config.verify.mode = VerifyMode::Off;
    config.pipeline.shutdown_grace = Duration::from_secs(2);
    config.guard.max_deactivations = LIMIT;
    let client = sandbox.client(&config).expect("client");

    let first = Pipeline::new(&config, client.clone())
        .await
        .expect("pipeline");
    let handle = first.handle();
    let worker = tokio::spawn(first.run());
    sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |read| {
            let s = by_status(read);
            s.get("halted") == Some(&1) && s.get("applied") == Some(&LIMIT)
        })
        .await
        .expect("the first worker halts");
    handle.stop();
    worker.await.expect("joined").expect("stops");
    assert_eq!(sandbox.sim.stats().count(PATCH_USER), LIMIT as u64);

    let second = Pipeline::new(&config, client).await.expect("pipeline");
    let handle = second.handle();
    let guard = handle.guard();
    assert!(guard.is_halted(), "the new worker starts halted");
    assert_eq!(guard.status().in_window, LIMIT);
    let worker = tokio::spawn(second.run());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sandbox.sim.stats().count(PATCH_USER),
        LIMIT as u64,
        "no destructive action after the restart until a release"
    );
    assert!(guard.release().await.expect("released").halted);
    let all = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |read| {
            by_status(read).get("applied") == Some(&USERS)
        })
        .await
        .expect("every event acted on after the release");
    handle.stop();
    worker.await.expect("joined").expect("stops");
    assert_eq!(
        by_status(&all).get("halted"),
        Some(&1),
        "one halt, not one per start"
    );
    // Lanes run side by side, so the admitted three need not be the first three offsets: an
    // admitted event behind a halted one keeps its offset uncommitted, comes again to the
    // second worker, and repeats its (idempotent) PATCH.
    let patches = sandbox.sim.stats().count(PATCH_USER);
    assert!(
        (USERS as u64..=(USERS + LIMIT) as u64).contains(&patches),
        "{patches} PATCHes"
    );
    for n in 1..=USERS {
        assert_eq!(sandbox.sim.user(&user(n)).map(|u| u.active), Some(false));
    }
}
