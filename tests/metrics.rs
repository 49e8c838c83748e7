//! `/metrics` after a demo-sized run: the counters agree with what was published. A test binary
//! of its own, because the metrics recorder is global to a process and other tests' events would
//! be counted too.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use netskope_sim::SimArgs;
use offboarder::admin::{self, AdminConfig};
use offboarder::pipeline::Pipeline;
use offboarder::sandbox::prometheus_sum as sum;
use offboarder::sandbox::{self, Sandbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_the_outcomes_of_a_run() {
    let handle = offboarder::metrics::install().expect("the only recorder in this process");
    let sandbox = Sandbox::start(
        SimArgs {
            users: 10,
            rate_limit_per_min: 0,
            audit_lag_secs: 1,
            ..SimArgs::default()
        },
        3,
    )
    .await
    .unwrap();
    let event = |id: &str, user: &str, extra: Value| {
        let mut e = json!({"event_id": id, "occurred_at": "2026-11-25T09:00:00Z",
                           "user": {"user_name": user}, "source": "edr"});
        if let (Some(e), Some(extra)) = (e.as_object_mut(), extra.as_object()) {
            e.extend(extra.clone());
        }
        e.to_string().into_bytes()
    };
    let hr = &sandbox.topics.terminations;
    let xdr = &sandbox.topics.risk_signals;
    let records: Vec<(String, String, Vec<u8>)> = vec![
        (
            hr.clone(),
            "u1".into(),
            event("hr-1", "user1@example.com", json!({})),
        ),
        (
            hr.clone(),
            "u2".into(),
            event("hr-2", "user2@example.com", json!({})),
        ),
        (
            hr.clone(),
            "nobody".into(),
            event("hr-3", "nobody@example.com", json!({})),
        ),
        (
            xdr.clone(),
            "u3".into(),
            event("x-1", "user3@example.com", json!({"severity": "critical"})),
        ),
        (
            xdr.clone(),
            "u4".into(),
            event("x-2", "user4@example.com", json!({"risk_score": 95})),
        ),
        (
            xdr.clone(),
            "u5".into(),
            event("x-3", "user5@example.com", json!({"risk_score": 5})),
        ),
        (hr.clone(), "bad".into(), b"not json".to_vec()),
        (
            xdr.clone(),
            "bad2".into(),
            event("x-4", "user6@example.com", json!({})),
        ),
    ];
    sandbox.publish(&records).await.unwrap();
    let mut config = sandbox.config("metrics");
    // Lag comes from librdkafka's statistics; ask for them often enough to see some.
    config
        .kafka
        .consumer_properties
        .insert("statistics.interval.ms".into(), "200".into());
    let client = sandbox.client(&config).unwrap();
    let pipeline = Pipeline::new(&config, client.clone()).await.unwrap();
    let pipeline_handle = pipeline.handle();
    let admin_config = AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        // One probe at the start, then none: a probe caught between its request counter and
        // its timing would make the two disagree in a scrape.
        probe_interval: Duration::from_secs(3600),
        ..AdminConfig::default()
    };
    let addr = admin::serve(
        &admin_config,
        pipeline_handle.readiness(),
        client,
        Some(handle),
        pipeline_handle.guard(),
        None,
    )
    .await
    .unwrap();
    let worker = tokio::spawn(pipeline.run());
    // 6 valid events: 4 applied (each then verified), 1 failed, 1 skipped: 10 outcomes.
    let outcomes = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |r| {
            r.len() >= 10
        })
        .await
        .unwrap();
    let dead = sandbox
        .read(&sandbox.topics.dead_letter, Duration::from_secs(30), |r| {
            r.len() >= 2
        })
        .await
        .unwrap();
    pipeline_handle.stop();
    worker.await.unwrap().unwrap();

    offboarder_base::tls::install();
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut by_status: BTreeMap<String, f64> = BTreeMap::new();
    for m in &outcomes {
        let o: Value = serde_json::from_str(&sandbox::text(m)).unwrap();
        *by_status
            .entry(o["status"].as_str().unwrap().to_string())
            .or_default() += 1.0;
    }
    println!("outcomes by status: {by_status:?}");
    assert_eq!(
        sum(&text, "offboarder_outcomes_total", &[]),
        outcomes.len() as f64,
        "{text}"
    );
    for (status, n) in &by_status {
        let label = format!("status=\"{status}\"");
        assert_eq!(
            sum(&text, "offboarder_outcomes_total", &[&label]),
            *n,
            "{status}"
        );
    }
    assert_eq!(
        sum(&text, "offboarder_events_consumed_total", &[]),
        records.len() as f64
    );
    assert_eq!(
        sum(
            &text,
            "offboarder_events_consumed_total",
            &["result=\"dead_letter\""]
        ),
        dead.len() as f64
    );
    assert_eq!(
        sum(&text, "offboarder_dead_letters_total", &[]),
        dead.len() as f64
    );
    assert_eq!(
        sum(
            &text,
            "offboarder_verification_latency_seconds_count",
            &["result=\"verified\""]
        ),
        by_status["verified"]
    );
    assert!(
        sum(
            &text,
            "offboarder_scim_requests_total",
            &["op=\"deactivate\"", "status=\"204\""]
        ) >= 2.0
    );
    assert!(
        sum(
            &text,
            "offboarder_scim_requests_total",
            &["op=\"audit_page\""]
        ) >= 1.0
    );
    // Every request Netskope answered is timed once; those that got no answer are not.
    let answered = sum(&text, "offboarder_scim_requests_total", &[])
        - sum(
            &text,
            "offboarder_scim_requests_total",
            &["status=\"error\""],
        );
    assert!(answered > 0.0);
    assert_eq!(
        sum(&text, "offboarder_scim_request_seconds_count", &[]),
        answered
    );
    assert!(
        text.contains("offboarder_rate_limiter_wait_seconds_bucket"),
        "{text}"
    );
    assert_eq!(sum(&text, "offboarder_in_flight_events", &[]), 0.0);
    assert_eq!(sum(&text, "offboarder_pending_verifications", &[]), 0.0);
    assert!(
        text.contains("# HELP offboarder_outcomes_total"),
        "described"
    );
}
