//! Scheduled terminations on the mock cluster: a termination dated in the future finishes at
//! once as `scheduled` and acts when it comes due, even when the worker that scheduled it is
//! gone by then; the latest HR event for a user wins; a backdated one acts at once and says so.

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

async fn start(
    sandbox: &Sandbox,
) -> (
    offboarder::pipeline::PipelineHandle,
    tokio::task::JoinHandle<()>,
) {
    let mut config = sandbox.config("schedule");
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
