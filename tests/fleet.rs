//! Several workers in one consumer group, on the mock cluster: what they share and how they
//! split it. (The blast-radius guard shared through the state topic is in `tests/guard.rs`.)

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use netskope::NetskopeClient;
use netskope_sim::SimArgs;
use offboarder::config::Config;
use offboarder::pipeline::{Pipeline, PipelineHandle};
use offboarder::sandbox::{self, Sandbox};
use offboarder::verify::VerifyMode;

/// Starts a worker of group `fleet-budget`; returns its handle, its client and its task.
async fn worker(
    sandbox: &Sandbox,
) -> (
    PipelineHandle,
    Arc<NetskopeClient>,
    tokio::task::JoinHandle<()>,
) {
    let mut config = sandbox.config("fleet-budget");
    config.netskope.requests_per_minute = 300;
    start(sandbox, config).await
}

async fn start(
    sandbox: &Sandbox,
    mut config: Config,
) -> (
    PipelineHandle,
    Arc<NetskopeClient>,
    tokio::task::JoinHandle<()>,
) {
    config.pipeline.shutdown_grace = Duration::from_secs(1);
    let client = sandbox.client(&config).expect("client");
    let pipeline = Pipeline::new(&config, client.clone())
        .await
        .expect("pipeline");
    let handle = pipeline.handle();
    let task = tokio::spawn(async move {
        pipeline.run().await.expect("clean stop");
    });
    (handle, client, task)
}

/// Waits until `done` holds, polling every 50 ms, for at most 20 s.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two workers split one token's 300 requests a minute by the partitions each holds, so that
/// together they stay within it; when one leaves, the other takes the whole budget again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_split_the_request_budget_by_their_partitions() {
    let sandbox = Sandbox::start(SimArgs::default(), 4)
        .await
        .expect("sandbox");
    let (first, first_client, first_task) = worker(&sandbox).await;
    until("the first worker holds every partition", || {
        first_client.scim_limiter().ceiling_per_min() == 300 && first.in_flight() == 0
    })
    .await;
    let (second, second_client, second_task) = worker(&sandbox).await;
    let ceilings = || {
        (
            first_client.scim_limiter().ceiling_per_min(),
            second_client.scim_limiter().ceiling_per_min(),
        )
    };
    // 8 input partitions (two topics of 4) between two workers.
    until("both workers hold partitions", || {
        let (a, b) = ceilings();
        a < 300 && b < 300 && a + b == 300
    })
    .await;
    let (a, b) = ceilings();
    println!("two workers: {a} + {b} requests a minute of the token's 300");
    assert!(
        a >= 15 && b >= 15,
        "each keeps at least the floor: {a}, {b}"
    );
    // The events token (separate in the sandbox) is split the same way.
    assert_eq!(
        first_client.events_limiter().ceiling_per_min()
            + second_client.events_limiter().ceiling_per_min(),
        300
    );

    second.stop();
    second_task.await.expect("joined");
    until("the first worker takes the whole budget back", || {
        first_client.scim_limiter().ceiling_per_min() == 300
    })
    .await;
    first.stop();
    first_task.await.expect("joined");
}

/// A burst on one partition: the worker that holds it takes the budget the idle worker does
/// not use, through the demand both publish on the state topic, instead of working at its
/// partition share while the other idles. Together they stay within the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_with_the_backlog_takes_the_budget_the_idle_one_does_not_use() {
    let sandbox = Sandbox::start(
        SimArgs {
            users: 200,
            ..SimArgs::default()
        },
        4,
    )
    .await
    .expect("sandbox");
    let (first, first_client, first_task) = worker(&sandbox).await;
    let (second, second_client, second_task) = worker(&sandbox).await;
    let ceilings = || {
        (
            first_client.scim_limiter().ceiling_per_min(),
            second_client.scim_limiter().ceiling_per_min(),
        )
    };
    until("both workers hold partitions", || {
        let (a, b) = ceilings();
        a < 300 && b < 300 && a + b == 300
    })
    .await;
    let by_partitions = ceilings();
    // One key: every termination lands on one partition, so on one worker. 200 terminations
    // at two requests each take over a minute at 300 requests a minute.
    let records: Vec<(String, String, Vec<u8>)> = (1..=200)
        .map(|n| {
            let e = support::event(
                &format!("burst-{n}"),
                &user(n),
                json!({"source": "workday"}),
            );
            (
                sandbox.topics.terminations.clone(),
                "one-key".to_string(),
                e,
            )
        })
        .collect();
    sandbox.publish(&records).await.expect("publish");
    until("the busy worker takes most of the budget", || {
        let (a, b) = ceilings();
        a.max(b) >= 270 && a + b <= 300
    })
    .await;
    let by_demand = ceilings();
    println!(
        "a burst on one partition: by partitions {by_partitions:?}, by demand {by_demand:?} \
         requests a minute of the token's 300"
    );
    let (a, b) = by_demand;
    assert!(a.min(b) >= 15, "the idle worker keeps its floor: {a}, {b}");
    assert!(a + b <= 300, "within the budget: {a} + {b}");
    first.stop();
    second.stop();
    first_task.await.expect("joined");
    second_task.await.expect("joined");
    // A worker that stops withdraws its demand: the last entry of each `demand/` key is a
    // tombstone, so that compaction drops it rather than keep one key per start.
    let state = sandbox
        .read(&sandbox.topics.state, Duration::from_secs(3), |_| false)
        .await
        .expect("the state topic");
    let mut last: HashMap<Vec<u8>, bool> = HashMap::new();
    for m in &state {
        use rdkafka::Message;
        if let Some(key) = m.key().filter(|k| k.starts_with(b"demand/")) {
            last.insert(key.to_vec(), m.payload().is_none());
        }
    }
    assert_eq!(last.len(), 2, "one demand key per worker");
    assert!(last.values().all(|tombstone| *tombstone), "both withdrawn");
}

fn user(n: usize) -> String {
    format!("user{n}@example.com")
}

/// Two workers, a steady stream of quarantine and release signals for the same users, and
/// forced rebalances (a third worker joins and leaves, three times, while the stream flows).
/// Partitions move back and forth with events in flight on them, yet every user ends in the
/// quarantine group exactly when their last signal was a quarantine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalances_keep_each_users_signals_in_order_across_the_group() {
    const USERS: usize = 24;
    const ROUNDS: usize = 8;
    let sandbox = Sandbox::start(
        SimArgs {
            users: USERS,
            rate_limit_per_min: 0,
            latency_ms: 20,
            ..SimArgs::default()
        },
        4,
    )
    .await
    .expect("sandbox");
    let config = || {
        let mut c = sandbox.config("fleet-order");
        c.netskope.requests_per_minute = 6_000_000;
        c.verify.mode = VerifyMode::Off;
        c.pipeline.revoke_grace = Duration::from_secs(2);
        c
    };
    // Quarantine when round + user is even, else release: each user alternates.
    let quarantine = |round: usize, n: usize| (round + n).is_multiple_of(2);
    let (a, _, a_task) = start(&sandbox, config()).await;
    let (b, _, b_task) = start(&sandbox, config()).await;
    // A fifth of the requests fail (5xx or 429): events sit in retries, some of them across a
    // rebalance, which is when a worker that kept acting on a revoked partition would land a
    // quarantine after the new owner's release.
    sandbox.sim.set_fault_throttle(true);
    sandbox.sim.set_fault_rate(0.2);

    let publish = async {
        let topic = &sandbox.topics.risk_signals;
        for round in 0..ROUNDS {
            let records: Vec<(String, String, Vec<u8>)> = (1..=USERS)
                .map(|n| {
                    let signal = if quarantine(round, n) {
                        json!({"risk_score": 95})
                    } else {
                        json!({"severity": "high", "state": "cleared"})
                    };
                    let mut e = json!({"event_id": format!("x-{round}-{n}"),
                        "occurred_at": "2026-11-25T09:00:00Z",
                        "user": {"user_name": user(n)}, "source": "crowdstrike"});
                    if let (Some(e), Some(s)) = (e.as_object_mut(), signal.as_object()) {
                        e.extend(s.clone());
                    }
                    (topic.clone(), user(n), e.to_string().into_bytes())
                })
                .collect();
            sandbox.publish(&records).await.expect("publish");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let rebalance = async {
        for _ in 0..3 {
            let (c, _, c_task) = start(&sandbox, config()).await;
            tokio::time::sleep(Duration::from_millis(800)).await;
            c.stop();
            c_task.await.expect("joined");
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    };
    tokio::join!(publish, rebalance);

    // Every signal has an outcome that ends it (verification is off: `applied` does).
    let outcomes = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(120), |read| {
            let done: HashSet<_> = read
                .iter()
                .filter_map(|m| serde_json::from_str::<Value>(&sandbox::text(m)).ok())
                .filter(|o| o["status"] != "halted")
                .map(|o| support::source_of(&o))
                .collect();
            done.len() >= USERS * ROUNDS
        })
        .await
        .expect("an outcome for every signal");
    a.stop();
    b.stop();
    a_task.await.expect("joined");
    b_task.await.expect("joined");

    let mut statuses: HashMap<String, usize> = HashMap::new();
    for o in outcomes
        .iter()
        .filter_map(|m| serde_json::from_str::<Value>(&sandbox::text(m)).ok())
    {
        *statuses
            .entry(o["status"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    let members: HashSet<String> = sandbox
        .sim
        .group_members("Quarantine_HighRisk")
        .unwrap_or_default()
        .into_iter()
        .collect();
    let wrong: Vec<String> = (1..=USERS)
        .filter(|n| {
            let id = sandbox.sim.user(&user(*n)).expect("user").id;
            members.contains(&id) != quarantine(ROUNDS - 1, *n)
        })
        .map(user)
        .collect();
    println!(
        "{} signals, 3 forced rebalances: {} outcome records {statuses:?}; users whose \
         membership differs from their last signal: {wrong:?}",
        USERS * ROUNDS,
        outcomes.len()
    );
    assert_eq!(statuses.get("failed"), None);
    assert!(
        wrong.is_empty(),
        "membership differs from the last signal for {wrong:?}"
    );
}

/// A rebalance takes partitions from a worker whose events are still acting (Netskope answers
/// in 4 s): it waits `revoke_grace` (1 s), then abandons them unpublished. The new owner does
/// them again, so each event ends with one outcome, not one from each worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_partitions_unfinished_events_are_left_to_the_new_owner() {
    const USERS: usize = 8;
    let sandbox = Sandbox::start(
        SimArgs {
            users: USERS,
            rate_limit_per_min: 0,
            ..SimArgs::default()
        },
        4,
    )
    .await
    .expect("sandbox");
    let config = || {
        let mut c = sandbox.config("fleet-revoke");
        c.netskope.requests_per_minute = 6_000_000;
        c.verify.mode = VerifyMode::Off;
        c.pipeline.revoke_grace = Duration::from_secs(1);
        c
    };
    let (a, _, a_task) = start(&sandbox, config()).await;
    // Every request now takes 4 s: the first worker is still acting when the rebalance comes.
    sandbox.sim.set_latency(Duration::from_secs(4));
    let records: Vec<(String, String, Vec<u8>)> = (1..=USERS)
        .map(|n| {
            let e = json!({"event_id": format!("x-{n}"), "occurred_at": "2026-11-25T09:00:00Z",
                           "user": {"user_name": user(n)}, "source": "crowdstrike",
                           "risk_score": 95});
            (
                sandbox.topics.risk_signals.clone(),
                user(n),
                e.to_string().into_bytes(),
            )
        })
        .collect();
    sandbox.publish(&records).await.expect("publish");
    until("the first worker is acting on every event", || {
        a.in_flight() == USERS
    })
    .await;
    let (b, _, b_task) = start(&sandbox, config()).await;
    let outcomes = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |read| {
            read.len() >= USERS
        })
        .await
        .expect("outcomes");
    // Time for a second outcome of any event to show up, had the first worker kept going.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let outcomes = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(2), |r| {
            r.len() > outcomes.len() + USERS
        })
        .await
        .expect("outcomes");
    a.stop();
    b.stop();
    a_task.await.expect("joined");
    b_task.await.expect("joined");
    let mut per_source: HashMap<(String, i64, i64), usize> = HashMap::new();
    for o in outcomes
        .iter()
        .filter_map(|m| serde_json::from_str::<Value>(&sandbox::text(m)).ok())
    {
        *per_source.entry(support::source_of(&o)).or_default() += 1;
    }
    println!(
        "{USERS} events, a rebalance while all were acting: outcomes per event {per_source:?}"
    );
    assert_eq!(per_source.len(), USERS, "every event has its outcome");
    assert!(
        per_source.values().all(|n| *n == 1),
        "no event has an outcome from both workers: {per_source:?}"
    );
}

/// The quarantine memory is the fleet's and outlives each worker: a repeat critical signal
/// handled by another worker, after the first one stopped, sends no second PATCH; a release
/// through that worker clears it for every worker, so the next critical signal acts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quarantine_memory_is_shared_by_the_fleet_and_outlives_each_worker() {
    let sandbox = Sandbox::start(
        SimArgs {
            users: 2,
            rate_limit_per_min: 0,
            ..SimArgs::default()
        },
        2,
    )
    .await
    .expect("sandbox");
    let config = || {
        let mut c = sandbox.config("fleet-memory");
        c.verify.mode = VerifyMode::Off;
        c
    };
    let signal = |id: &str, critical: bool| {
        let mut e = json!({"event_id": id, "occurred_at": "2026-11-25T09:00:00Z",
            "user": {"user_name": user(1)}, "source": "crowdstrike"});
        if critical {
            e["risk_score"] = json!(95);
        } else {
            e["severity"] = json!("high");
            e["state"] = json!("cleared");
        }
        (
            sandbox.topics.risk_signals.clone(),
            user(1),
            e.to_string().into_bytes(),
        )
    };
    // Publishes one signal through a worker started for it alone, and returns its outcome.
    let through_a_new_worker = |id: &'static str, critical: bool| {
        let (sandbox, record) = (&sandbox, signal(id, critical));
        let config = config();
        async move {
            let (handle, _, task) = start(sandbox, config).await;
            sandbox.publish(&[record]).await.expect("publish");
            let read = sandbox
                .read(&sandbox.topics.outcomes, Duration::from_secs(30), |read| {
                    read.iter().any(|m| sandbox::text(m).contains(id))
                })
                .await
                .expect("the outcome");
            handle.stop();
            task.await.expect("joined");
            read.iter()
                .filter_map(|m| serde_json::from_str::<Value>(&sandbox::text(m)).ok())
                .find(|o| o["source_event_id"] == id)
                .expect("an outcome of the signal")
        }
    };
    let group_patches = || sandbox.sim.stats().count("PATCH /api/v2/scim/Groups/{id}");

    let first = through_a_new_worker("x-1", true).await;
    assert_eq!(first["status"], "applied", "{first}");
    assert_eq!(group_patches(), 1);

    let repeat = through_a_new_worker("x-2", true).await;
    assert_eq!(repeat["status"], "skipped", "{repeat}");
    assert!(
        repeat["reason"]
            .as_str()
            .is_some_and(|r| r.contains("already quarantined")),
        "{repeat}"
    );
    assert_eq!(group_patches(), 1, "no second PATCH");

    let release = through_a_new_worker("x-3", false).await;
    assert_eq!(release["status"], "applied", "{release}");
    assert_eq!(group_patches(), 2);

    let again = through_a_new_worker("x-4", true).await;
    assert_eq!(again["status"], "applied", "{again}");
    assert_eq!(group_patches(), 3);
}
