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
    start_with(sandbox, false).await
}

async fn start_with(
    sandbox: &Sandbox,
    allow_reactivation: bool,
) -> (
    offboarder::pipeline::PipelineHandle,
    tokio::task::JoinHandle<()>,
) {
    let mut config = sandbox.config("schedule");
    config.policy.allow_reactivation = allow_reactivation;
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
    assert!(
        acted["reason"]
            .as_str()
            .is_some_and(|r| r.contains("scheduled for")),
        "{acted}"
    );
    assert!(!sandbox.sim.user(&user(1)).unwrap().active);
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
    let (worker, task) = start_with(&sandbox, true).await;
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
    let (worker, task) = start_with(&sandbox, false).await;
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
    let mut config = sandbox.config("drift");
    config.policy.reassert = true;
    config.pipeline.shutdown_grace = Duration::from_secs(1);
    let client = sandbox.client(&config).expect("client");
    let pipeline = Pipeline::new(&config, client).await.expect("pipeline");
    let handle = pipeline.handle();
    let task = tokio::spawn(async move {
        pipeline.run().await.expect("clean stop");
    });
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
