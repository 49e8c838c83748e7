//! Trace context across Kafka, and the admin listener's `/readyz`, with the whole worker on the
//! mock Kafka cluster and the tenant simulator. (`/metrics` has its own test binary,
//! `tests/metrics.rs`, because the metrics recorder is global to a process.)

use std::time::Duration;

use serde_json::{Value, json};

use netskope_sim::SimArgs;
use offboarder::admin::{self, AdminConfig};
use offboarder::pipeline::Pipeline;
use offboarder::sandbox::{self, Sandbox};
use offboarder::verify::VerifyMode;

const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

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
    .unwrap()
}

/// `(trace id, parent span id)` of a `traceparent` value.
fn parts(traceparent: &str) -> (String, String) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    (fields[1].to_string(), fields[2].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_on_the_input_continues_on_the_outcome_and_the_dead_letter() {
    let sandbox = sandbox().await;
    let parent = format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01");
    let event = json!({"event_id": "hr-1", "occurred_at": "2026-11-25T09:00:00Z",
                       "user": {"user_name": "user1@example.com"}});
    sandbox
        .publish_with_headers(
            &sandbox.topics.terminations,
            "user1@example.com",
            event.to_string().as_bytes(),
            &[("traceparent", &parent), ("x-origin", "workday")],
        )
        .await
        .unwrap();
    let other_trace = "0af7651916cd43dd8448eb211c80319c";
    let bad_parent = format!("00-{other_trace}-b7ad6b7169203331-01");
    sandbox
        .publish_with_headers(
            &sandbox.topics.terminations,
            "bad",
            b"not json",
            &[("traceparent", &bad_parent), ("x-origin", "workday")],
        )
        .await
        .unwrap();
    let mut config = sandbox.config("trace");
    config.verify.mode = VerifyMode::Off;
    let pipeline = Pipeline::new(&config, sandbox.client(&config).unwrap())
        .await
        .unwrap();
    let handle = pipeline.handle();
    let worker = tokio::spawn(pipeline.run());
    let outcomes = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |r| {
            !r.is_empty()
        })
        .await
        .unwrap();
    let dead = sandbox
        .read(&sandbox.topics.dead_letter, Duration::from_secs(60), |r| {
            !r.is_empty()
        })
        .await
        .unwrap();
    handle.stop();
    worker.await.unwrap().unwrap();

    let outcome = &outcomes[0];
    let body: Value = serde_json::from_str(&sandbox::text(outcome)).unwrap();
    assert_eq!(body["trace_id"], PARENT_TRACE, "same trace in the body");
    let header = sandbox::header(outcome, "traceparent").expect("traceparent header");
    let (trace, span) = parts(&header);
    assert_eq!(trace, PARENT_TRACE, "same trace in the header");
    assert_ne!(
        span, PARENT_SPAN,
        "the outcome's parent is the event's own span"
    );

    let dead = &dead[0];
    let header = sandbox::header(dead, "traceparent").expect("traceparent header");
    assert_eq!(parts(&header).0, other_trace);
    assert_eq!(
        sandbox::header(dead, "x-origin").as_deref(),
        Some("workday"),
        "other headers are kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_not_ready_when_the_simulator_is_down() {
    let sandbox = sandbox().await;
    let config = sandbox.config("ready");
    let client = sandbox.client(&config).unwrap();
    let pipeline = Pipeline::new(&config, client.clone()).await.unwrap();
    let handle = pipeline.handle();
    let admin_config = AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        probe_interval: Duration::from_millis(300),
        ..AdminConfig::default()
    };
    let addr = admin::serve(
        &admin_config,
        handle.readiness(),
        client,
        None,
        handle.guard(),
        None,
    )
    .await
    .unwrap();
    let worker = tokio::spawn(pipeline.run());
    offboarder_base::tls::install();
    let http = reqwest::Client::new();
    let readyz = format!("http://{addr}/readyz");
    let get = |url: String| {
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let wait_for = |want: u16| {
        let get = &get;
        let readyz = readyz.clone();
        async move {
            for _ in 0..100 {
                let (status, body) = get(readyz.clone()).await;
                if status == want {
                    return body;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("/readyz never answered {want}");
        }
    };

    wait_for(200).await;
    // Only the simulator goes; the Kafka cluster in the rest of the sandbox stays up.
    let sim = sandbox.sim;
    sim.shutdown().await;
    let body = wait_for(503).await;
    let reasons = body["reasons"].to_string();
    assert!(reasons.contains("Netskope unreachable"), "{reasons}");
    let health = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200, "alive, only not ready");

    handle.stop();
    worker.await.unwrap().unwrap();
}
