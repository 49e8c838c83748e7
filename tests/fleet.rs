//! Several workers in one consumer group, on the mock cluster: what they share and how they
//! split it. (The blast-radius guard shared through the state topic is in `tests/guard.rs`.)

use std::sync::Arc;
use std::time::Duration;

use netskope::NetskopeClient;
use netskope_sim::SimArgs;
use offboarder::pipeline::{Pipeline, PipelineHandle};
use offboarder::sandbox::Sandbox;

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
