//! Scheduled terminations on the mock cluster: a termination dated in the future finishes at
//! once as `scheduled` and acts when it comes due, even when the worker that scheduled it is
//! gone by then; the latest HR event for a user wins; a backdated one acts at once and says so.
//! Rescinds: before the date they cancel, after it they reactivate only what offboarder itself
//! deactivated, and only with `policy.allow_reactivation`.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use netskope_sim::SimArgs;
use offboarder::pipeline::Pipeline;
use offboarder::sandbox::{self, Sandbox};

fn user(n: usize) -> String {
    format!("user{n}@example.com")
}

fn termination(
    sandbox: &Sandbox,
    id: &str,
    n: usize,
    effective_in: time::Duration,
) -> (String, String, Vec<u8>) {
    let effective = (OffsetDateTime::now_utc() + effective_in)
        .format(&Rfc3339)
        .unwrap();
    let e = json!({"event_id": id, "occurred_at": "2026-11-25T09:00:00Z",
                   "effective_at": effective, "user": {"user_name": user(n)}, "source": "workday"});
    (
        sandbox.topics.terminations.clone(),
        user(n),
        e.to_string().into_bytes(),
    )
}

fn rescind(sandbox: &Sandbox, id: &str, n: usize) -> (String, String, Vec<u8>) {
    let e = json!({"event_id": id, "occurred_at": "2026-11-26T09:00:00Z",
                   "user": {"user_name": user(n)}, "source": "workday", "rescinded": true});
    (
        sandbox.topics.terminations.clone(),
        user(n),
        e.to_string().into_bytes(),
    )
}

async fn start(
    sandbox: &Sandbox,
) -> (
    offboarder::pipeline::PipelineHandle,
    tokio::task::JoinHandle<()>,
) {
    start_with(sandbox, |_| {}).await
}

/// A worker on the sandbox, with `configure` applied to its config.
async fn start_with(
    sandbox: &Sandbox,
    configure: impl FnOnce(&mut offboarder::config::Config),
) -> (
    offboarder::pipeline::PipelineHandle,
    tokio::task::JoinHandle<()>,
) {
    let mut config = sandbox.config("schedule");
    configure(&mut config);
    config.pipeline.shutdown_grace = Duration::from_secs(1);
    let client = sandbox.client(&config).expect("client");
    let pipeline = Pipeline::new(&config, client).await.expect("pipeline");
    let handle = pipeline.handle();
    let task = tokio::spawn(async move {
        pipeline.run().await.expect("clean stop");
    });
    (handle, task)
}

fn outcomes(read: &[rdkafka::message::OwnedMessage]) -> Vec<Value> {
    read.iter()
        .filter_map(|m| serde_json::from_str(&sandbox::text(m)).ok())
        .collect()
}

fn find<'a>(all: &'a [Value], id: &str, status: &str) -> Option<&'a Value> {
    all.iter()
        .find(|o| o["source_event_id"] == id && o["status"] == status)
}

async fn until(sandbox: &Sandbox, what: &[(&str, &str)]) -> Vec<Value> {
    let read = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |r| {
            let all = outcomes(r);
            what.iter()
                .all(|(id, status)| find(&all, id, status).is_some())
        })
        .await
        .unwrap_or_else(|e| panic!("waiting for {what:?}: {e}"));
    outcomes(&read)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_termination_acts_when_due_across_a_restart_and_the_latest_event_wins() {
    let sandbox = Sandbox::start(
        SimArgs {
            users: 3,
            rate_limit_per_min: 0,
            ..SimArgs::default()
        },
        2,
    )
    .await
    .expect("sandbox");
    let (first, first_task) = start(&sandbox).await;
    let published = std::time::Instant::now();
    sandbox
        .publish(&[
            termination(&sandbox, "t-1", 1, time::Duration::seconds(5)),
            termination(&sandbox, "t-2", 2, time::Duration::hours(-2)),
            termination(&sandbox, "t-3", 3, time::Duration::seconds(4)),
            termination(&sandbox, "t-3b", 3, time::Duration::days(1)),
        ])
        .await
        .expect("publish");
    let all = until(
        &sandbox,
        &[
            ("t-1", "scheduled"),
            ("t-2", "verified"),
            ("t-3", "scheduled"),
            ("t-3b", "scheduled"),
        ],
    )
    .await;
    let scheduled = find(&all, "t-1", "scheduled").unwrap();
    assert!(
        scheduled["timestamps"]["effective"].is_string(),
        "{scheduled}"
    );
    let backdated = find(&all, "t-2", "applied").expect("t-2 acted at once");
    assert!(
        backdated["reason"]
            .as_str()
            .is_some_and(|r| r.contains("effective_at was in the past")),
        "{backdated}"
    );
    assert!(
        sandbox.sim.user(&user(1)).unwrap().active,
        "not before its date"
    );

    // The worker that scheduled it stops; another one, started later, acts on it when due.
    first.stop();
    first_task.await.expect("joined");
    let (second, second_task) = start(&sandbox).await;
    let all = until(&sandbox, &[("t-1", "verified")]).await;
    assert!(
        published.elapsed() >= Duration::from_secs(4),
        "acted {:?} after publishing, before its date",
        published.elapsed()
    );
    let acted = find(&all, "t-1", "applied").unwrap();
    let at = |v: &Value| OffsetDateTime::parse(v.as_str().unwrap_or_default(), &Rfc3339).ok();
    if let (Some(effective), Some(done)) = (
        at(&acted["timestamps"]["effective"]),
        at(&acted["timestamps"]["acted"]),
    ) {
        // Printed, not asserted: a figure of this machine's speed (the tick is 1 s).
        println!("t-1 acted {} after its effective_at", done - effective);
    }
    assert!(
        acted["reason"]
            .as_str()
            .is_some_and(|r| r.contains("scheduled for")),
        "{acted}"
    );
    assert!(!sandbox.sim.user(&user(1)).unwrap().active);
    // The due t-1 published a second time (as two owners of its partition around a rebalance
    // would): it acts once.
    let fired_again = termination(&sandbox, "t-1", 1, time::Duration::seconds(-5));
    sandbox
        .publish_with_header(&fired_again, ("offboarder-scheduled", "t-1"))
        .await
        .expect("publish");
    let all = until(&sandbox, &[("t-1", "skipped")]).await;
    assert!(
        find(&all, "t-1", "skipped").unwrap()["reason"]
            .as_str()
            .is_some_and(|r| r.contains("published twice")),
        "{all:?}"
    );
    assert_eq!(
        all.iter()
            .filter(|o| o["source_event_id"] == "t-1" && o["status"] == "applied")
            .count(),
        1
    );
    // t-3 was replaced by t-3b (a day later): past t-3's date, user3 is still active.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let read = sandbox
        // Everything published so far: read until the timeout.
        .read(&sandbox.topics.outcomes, Duration::from_secs(3), |_| false)
        .await
        .expect("outcomes");
    let all = outcomes(&read);
    assert!(
        find(&all, "t-3", "applied").is_none(),
        "the replaced date did not act"
    );
    assert!(sandbox.sim.user(&user(3)).unwrap().active);
    second.stop();
    second_task.await.expect("joined");
}

fn reason<'a>(all: &'a [Value], id: &str, status: &str) -> &'a str {
    find(all, id, status).unwrap_or_else(|| panic!("no {status} outcome of {id}"))["reason"]
        .as_str()
        .unwrap_or_default()
}

/// Rescinds in both policy settings, on one sandbox: before the date (cancelled, nothing
/// sent), after an immediate deactivation and after a scheduled one that fired (reactivated
/// only when allowed), of a user someone else disabled (never reactivated), and of a user who
/// was already inactive when offboarder deactivated them (never reactivated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescind_cancels_before_the_date_and_reactivates_only_what_offboarder_did() {
    let sandbox = Sandbox::start(
        SimArgs {
            users: 12,
            rate_limit_per_min: 0,
            ..SimArgs::default()
        },
        2,
    )
    .await
    .expect("sandbox");
    let active = |n| sandbox.sim.user(&user(n)).expect("user").active;
    // user4 was disabled by someone else; user5 too, before offboarder's own deactivation.
    sandbox.sim.set_user_active(&user(4), false);
    sandbox.sim.set_user_active(&user(5), false);
    let (worker, task) = start_with(&sandbox, |c| c.policy.allow_reactivation = true).await;
    sandbox
        .publish(&[
            termination(&sandbox, "t-1", 1, time::Duration::days(3)),
            termination(&sandbox, "t-2", 2, time::Duration::hours(-1)),
            termination(&sandbox, "t-3", 3, time::Duration::seconds(3)),
            termination(&sandbox, "t-5", 5, time::Duration::hours(-1)),
            termination(&sandbox, "t-6", 6, time::Duration::days(3)),
            termination(&sandbox, "t-7", 7, time::Duration::hours(-1)),
        ])
        .await
        .expect("publish");
    until(
        &sandbox,
        &[
            ("t-1", "scheduled"),
            ("t-2", "verified"),
            ("t-3", "verified"),
            ("t-5", "verified"),
            ("t-6", "scheduled"),
            ("t-7", "verified"),
        ],
    )
    .await;
    assert!(!active(2) && !active(3) && !active(7));
    sandbox
        .publish(&[
            rescind(&sandbox, "r-1", 1),
            rescind(&sandbox, "r-2", 2),
            rescind(&sandbox, "r-3", 3),
            rescind(&sandbox, "r-4", 4),
            rescind(&sandbox, "r-5", 5),
        ])
        .await
        .expect("publish");
    let all = until(
        &sandbox,
        &[
            ("r-1", "cancelled"),
            ("r-2", "verified"),
            ("r-3", "verified"),
            ("r-4", "skipped"),
            ("r-5", "skipped"),
        ],
    )
    .await;
    let cancelled = find(&all, "r-1", "cancelled").unwrap();
    assert_eq!(cancelled["action"], "deactivate", "{cancelled}");
    assert!(
        reason(&all, "r-1", "cancelled").contains("nothing was sent"),
        "{cancelled}"
    );
    assert!(
        cancelled["timestamps"]["effective"].is_string(),
        "{cancelled}"
    );
    for id in ["r-2", "r-3"] {
        let applied = find(&all, id, "applied").unwrap();
        assert_eq!(applied["action"], "reactivate", "{applied}");
        assert_eq!(applied["request"]["body"]["Operations"][0]["value"], true);
        assert!(
            reason(&all, id, "applied").contains("rescinded after offboarder deactivated"),
            "{applied}"
        );
    }
    assert!(active(2) && active(3), "reactivated");
    assert!(
        reason(&all, "r-4", "skipped").contains("never reactivated"),
        "{}",
        reason(&all, "r-4", "skipped")
    );
    assert!(!active(4), "someone else's deactivation stands");
    assert!(
        reason(&all, "r-5", "skipped").contains("already inactive"),
        "{}",
        reason(&all, "r-5", "skipped")
    );
    assert!(!active(5));
    worker.stop();
    task.await.expect("joined");

    // The same, with reactivation off (the default): a rescind still cancels what waits, and
    // says why it leaves a deactivation in place.
    let (worker, task) = start(&sandbox).await;
    sandbox
        .publish(&[rescind(&sandbox, "r-6", 6), rescind(&sandbox, "r-7", 7)])
        .await
        .expect("publish");
    let all = until(&sandbox, &[("r-6", "cancelled"), ("r-7", "skipped")]).await;
    let kept = reason(&all, "r-7", "skipped");
    assert!(kept.contains("policy.allow_reactivation is off"), "{kept}");
    assert_eq!(
        find(&all, "r-7", "skipped").unwrap()["action"],
        "reactivate"
    );
    assert!(!active(7), "stays deactivated");
    // Past t-6's date nothing fires: it was cancelled. (Its date is days away; what matters is
    // that the schedule no longer holds it.)
    assert!(find(&all, "t-6", "applied").is_none());
    assert!(active(6) && active(1));
    worker.stop();
    task.await.expect("joined");
}

/// The drift watch end to end: an IdP re-enables a user the worker deactivated; the worker
/// publishes `reverted` naming the IdP and, with `policy.reassert`, deactivates the user once
/// more (a new event, through the guard); when the IdP re-enables them again, `reverted` says
/// it is not repeated a second time, and the user stays as the IdP left them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivation_undone_by_another_actor_is_reverted_and_reasserted_once() {
    let sandbox = Sandbox::start(
        SimArgs {
            users: 2,
            rate_limit_per_min: 0,
            ..SimArgs::default()
        },
        1,
    )
    .await
    .expect("sandbox");
    let (handle, task) = start_with(&sandbox, |c| c.policy.reassert = true).await;
    let active = |n| sandbox.sim.user(&user(n)).expect("user").active;
    sandbox
        .publish(&[termination(&sandbox, "t-1", 1, time::Duration::hours(-1))])
        .await
        .expect("publish");
    until(&sandbox, &[("t-1", "verified")]).await;
    assert!(
        sandbox
            .sim
            .set_user_active_as("okta-provisioning", &user(1), true)
    );
    let all = until(
        &sandbox,
        &[("t-1", "reverted"), ("t-1.reassert", "verified")],
    )
    .await;
    let reverted = find(&all, "t-1", "reverted").unwrap();
    let why = reverted["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("re-enabled by \"okta-provisioning\""),
        "{reverted}"
    );
    assert!(why.contains("acting once more"), "{reverted}");
    assert_eq!(reverted["verification"]["method"], "audit", "{reverted}");
    let repeat = find(&all, "t-1.reassert", "applied").unwrap();
    assert_eq!(repeat["requested_by"], "offboarder:reassert", "{repeat}");
    assert!(!active(1), "deactivated once more");

    assert!(
        sandbox
            .sim
            .set_user_active_as("okta-provisioning", &user(1), true)
    );
    let all = until(&sandbox, &[("t-1.reassert", "reverted")]).await;
    let again = find(&all, "t-1.reassert", "reverted").unwrap();
    assert!(
        again["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not repeated again")),
        "{again}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        active(1),
        "one repeat only: the IdP's change stands, and is reported"
    );
    handle.stop();
    task.await.expect("joined");
}

/// 1,000 terminations spread over 30 days, played on the schedule's calendar in ten steps of
/// three days (the calendar runs ahead of wall time; Kafka and the simulator run in real
/// time). At each step every termination due by then acts, and none due later; the worker is
/// restarted after day 12 and a second one joins after day 21 (a rebalance). At the end each of
/// the 1,000 acted exactly once and every user is inactive. The guard is raised to 10,000:
/// the test plays 30 days in about a minute of the guard's real-time window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_days_of_scheduled_terminations_act_on_their_day_across_a_restart_and_a_rebalance() {
    const N: usize = 1_000;
    const DAY: i64 = 24 * 3600;
    let sandbox = Sandbox::start(
        SimArgs {
            users: N,
            rate_limit_per_min: 0,
            ..SimArgs::default()
        },
        3,
    )
    .await
    .expect("sandbox");
    let start_worker = |ahead: Duration| {
        let mut config = sandbox.config("schedule-30d");
        config.guard.max_deactivations = 10_000;
        config.netskope.requests_per_minute = 60_000;
        config.pipeline.shutdown_grace = Duration::from_secs(5);
        let client = sandbox.client(&config).expect("client");
        async move {
            let pipeline = Pipeline::new(&config, client).await.expect("pipeline");
            let calendar = pipeline.calendar();
            calendar.set_ahead(ahead);
            let handle = pipeline.handle();
            let task = tokio::spawn(async move {
                pipeline.run().await.expect("clean stop");
            });
            (handle, task, calendar)
        }
    };
    let t0 = OffsetDateTime::now_utc();
    let started = std::time::Instant::now();
    // One due every 43 minutes or so, the first an hour from now.
    let due: Vec<OffsetDateTime> = (0..N)
        .map(|i| {
            t0 + time::Duration::hours(1) + time::Duration::seconds(30 * DAY * i as i64 / N as i64)
        })
        .collect();
    let records: Vec<_> = (0..N)
        .map(|i| {
            let e = json!({"event_id": format!("d-{i}"), "occurred_at": "2026-11-25T09:00:00Z",
                           "effective_at": due[i].format(&Rfc3339).unwrap(),
                           "user": {"user_name": user(i + 1)}, "source": "workday"});
            (
                sandbox.topics.terminations.clone(),
                user(i + 1),
                e.to_string().into_bytes(),
            )
        })
        .collect();
    let mut workers = vec![start_worker(Duration::ZERO).await];
    sandbox.publish(&records).await.expect("publish");
    // Reads the outcomes until `n` distinct events have one with `status`; counted as the
    // records come (parsing everything read at each record would cost seconds).
    let read_until = |status: &'static str, n: usize| {
        let sandbox = &sandbox;
        async move {
            let seen = std::sync::Mutex::new(std::collections::HashSet::new());
            let read = sandbox
                .read(&sandbox.topics.outcomes, Duration::from_secs(120), |r| {
                    let mut seen = seen.lock().unwrap();
                    if let Some(o) = r
                        .last()
                        .and_then(|m| serde_json::from_str::<Value>(&sandbox::text(m)).ok())
                        && o["status"] == status
                    {
                        seen.insert(o["source_event_id"].as_str().unwrap_or("").to_string());
                    }
                    seen.len() >= n
                })
                .await
                .expect("outcomes");
            outcomes(&read)
        }
    };
    read_until("scheduled", N).await;
    println!("{N} scheduled, {:?} after the start", started.elapsed());
    for step in 1..=10i64 {
        let ahead = Duration::from_secs((3 * DAY * step) as u64);
        if step == 5 {
            // A restart: the worker stops, and another one starts on the same schedule.
            let (handle, task, _) = workers.pop().expect("a worker");
            handle.stop();
            task.await.expect("joined");
            workers.push(start_worker(ahead).await);
        }
        if step == 8 {
            // A second worker joins: the partitions (and who fires what) are rebalanced.
            workers.push(start_worker(ahead).await);
        }
        for (_, _, calendar) in &workers {
            calendar.set_ahead(ahead);
        }
        let now = t0 + time::Duration::seconds(3 * DAY * step);
        let due_now = due.iter().filter(|d| **d <= now).count();
        let all = read_until("verified", due_now).await;
        let acted: Vec<&Value> = all.iter().filter(|o| o["status"] == "applied").collect();
        for o in &acted {
            let i: usize = o["source_event_id"].as_str().unwrap()[2..].parse().unwrap();
            assert!(
                due[i] <= now + time::Duration::minutes(1),
                "step {step}: d-{i} acted before its day ({})",
                due[i]
            );
        }
        println!(
            "day {}: {} of {N} acted, {:?} after the start",
            3 * step,
            acted.len(),
            started.elapsed()
        );
    }
    // The last ones are due in the hour after day 30.
    for (_, _, calendar) in &workers {
        calendar.set_ahead(Duration::from_secs((31 * DAY) as u64));
    }
    let all = read_until("verified", N).await;
    let mut applied = std::collections::HashMap::<String, usize>::new();
    for o in all.iter().filter(|o| o["status"] == "applied") {
        *applied
            .entry(o["source_event_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(applied.len(), N, "every termination acted");
    let twice: Vec<_> = applied.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "acted twice: {twice:?}");
    for i in 1..=N {
        assert!(
            !sandbox.sim.user(&user(i)).unwrap().active,
            "{} active",
            user(i)
        );
    }
    for (handle, task, _) in workers {
        handle.stop();
        task.await.expect("joined");
    }
}
