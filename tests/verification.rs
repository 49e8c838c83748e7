//! Verification: one shared audit poller and read-back as the second witness.
//!
//! The verifier is driven against the tenant simulator over HTTP, and against `wiremock` for
//! paging quirks, under paused time: minutes of audit lag and poll intervals pass in
//! milliseconds. The last test runs the whole pipeline on the mock Kafka cluster to show that an
//! event's offset waits for its verification.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::OwnedMessage;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::time::Instant;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use netskope::{AuditWindow, NetskopeClient, NetskopeConfig, Tokens};
use netskope_sim::{SimArgs, SimHandle};
use offboarder::pipeline::Pipeline;
use offboarder::sandbox::{self, Sandbox};
use offboarder::verify::{
    self, Check, Expected, Pending, RequestKey, Verification, Verifier, VerifyConfig, VerifyMode,
};
use offboarder_base::clock::WallClock;
use support::CapturedLogs;

const POLL: Duration = Duration::from_secs(15);

/// Under paused time the runtime jumps to the next timer whenever it waits for a socket; this
/// keeps every jump to a millisecond, so that a poll interval is not skipped past while a
/// request is in flight.
fn fine_grained_clock() {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
}

fn client_for(base: &str, scim: &str, events: Option<&str>) -> Arc<NetskopeClient> {
    let config = NetskopeConfig {
        tenant_url: Some(base.to_string()),
        allow_insecure_http: true,
        requests_per_minute: 600_000,
        ..NetskopeConfig::default()
    };
    let client = NetskopeClient::builder(&config)
        .tokens(Tokens {
            scim: SecretString::from(scim.to_string()),
            events: events.map(|e| SecretString::from(e.to_string())),
        })
        .without_request_timeout()
        .build()
        .unwrap();
    Arc::new(client)
}

async fn simulator(users: usize, audit_lag_secs: u64) -> (SimHandle, Arc<NetskopeClient>) {
    let args = SimArgs {
        users,
        audit_lag_secs,
        rate_limit_per_min: 0,
        ..SimArgs::default()
    };
    let (scim, events) = (args.scim_token.clone(), args.events_token.clone());
    let sim = netskope_sim::start(args).await.unwrap();
    let client = client_for(&sim.base_url(), &scim, Some(&events));
    (sim, client)
}

fn config(mode: VerifyMode) -> VerifyConfig {
    VerifyConfig {
        mode,
        poll_interval: POLL,
        ..VerifyConfig::default()
    }
}

/// Deactivates a sim user through the client, as the executor would, and returns what the
/// verifier needs.
async fn deactivate(client: &NetskopeClient, user_name: &str) -> Pending {
    let user = client.resolve_user(user_name).await.unwrap();
    let sent = client.deactivate(&user.id).await.unwrap();
    Pending {
        expected: Expected {
            request: RequestKey {
                method: "PATCH",
                path: format!("/api/v2/scim/Users/{}", user.id),
                seq: verify::next_request_seq(),
            },
            check: Check::UserInactive { user_id: user.id },
            server_window: sent.server_window,
        },
        acted_at: WallClock::new().now_secs(),
        watch: None,
    }
}

fn user(n: usize) -> String {
    format!("user{n}@example.com")
}

async fn answers(receivers: Vec<oneshot::Receiver<Verification>>) -> Vec<Verification> {
    let mut out = Vec::new();
    for r in receivers {
        out.push(r.await.expect("an answer"));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn five_hundred_actions_cost_one_audit_poll_per_interval() {
    fine_grained_clock();
    let (sim, client) = simulator(500, 60).await;
    let mut cfg = config(VerifyMode::AuditThenReadback);
    cfg.page_limit = 200;
    let verifier = Verifier::spawn(client.clone(), cfg.clone(), cfg.mode);
    let started = Instant::now();
    let mut receivers = Vec::new();
    for n in 1..=500 {
        let pending = deactivate(&client, &user(n)).await;
        receivers.push(verifier.submit(pending).await);
    }
    assert_eq!(verifier.pending(), 500);

    let results = answers(receivers).await;
    let elapsed = started.elapsed();

    assert!(
        results.iter().all(|v| v.verified && v.method == "audit"),
        "{:?}",
        results.iter().find(|v| !v.verified)
    );
    let ids: HashSet<&str> = results
        .iter()
        .filter_map(|v| v.audit_event_id.as_deref())
        .collect();
    assert_eq!(ids.len(), 500, "each action has its own audit event");
    let audit_requests = sim.stats().count("GET /api/v2/events/data/audit");
    // 500 events in pages of 200: at most 3 pages per poll.
    let polls = elapsed.as_secs().div_ceil(POLL.as_secs());
    println!(
        "500 actions verified in {elapsed:?} of simulated time (audit lag 60 s) with {audit_requests} audit requests; bound {polls} polls x 3 pages"
    );
    assert!(
        elapsed >= Duration::from_secs(60),
        "not before the audit lag"
    );
    assert!(
        audit_requests <= polls * 3,
        "{audit_requests} > {polls} x 3"
    );
    assert!(
        audit_requests < 50,
        "one poll serves every action, not one request per action"
    );
    assert_eq!(verifier.pending(), 0);
}

/// Each audit event is read once. 3,000 unrelated events precede the actions in the trail:
/// more than one poll reads (5 pages of 100). Re-reading from the window's start at every poll
/// would never get past them; the cursor does, and every action is verified by audit, with
/// the pages read near the trail's volume over the page size, in either order of results.
#[tokio::test(start_paused = true)]
async fn the_audit_trail_is_read_once_whatever_its_volume_and_order() {
    fine_grained_clock();
    for order in [
        netskope_sim::AuditOrder::OldestFirst,
        netskope_sim::AuditOrder::NewestFirst,
    ] {
        let args = SimArgs {
            users: 20,
            audit_lag_secs: 5,
            rate_limit_per_min: 0,
            audit_order: order,
            ..SimArgs::default()
        };
        let (scim, events) = (args.scim_token.clone(), args.events_token.clone());
        let sim = netskope_sim::start(args).await.unwrap();
        let client = client_for(&sim.base_url(), &scim, Some(&events));
        sim.record_unrelated_audit("another-admin", 3_000);
        let mut cfg = config(VerifyMode::AuditThenReadback);
        cfg.page_limit = 100;
        cfg.max_pages = 5;
        let verifier = Verifier::spawn(client.clone(), cfg.clone(), cfg.mode);
        let started = Instant::now();
        let mut receivers = Vec::new();
        for n in 1..=20 {
            let pending = deactivate(&client, &user(n)).await;
            receivers.push(verifier.submit(pending).await);
        }
        let results = answers(receivers).await;
        let elapsed = started.elapsed();
        assert!(
            results.iter().all(|v| v.verified && v.method == "audit"),
            "{order:?}: {:?}",
            results
                .iter()
                .find(|v| !(v.verified && v.method == "audit"))
        );
        let pages = sim.stats().count("GET /api/v2/events/data/audit");
        let polls = elapsed.as_secs().div_ceil(POLL.as_secs());
        println!(
            "{order:?}: 20 actions behind 3,000 unrelated audit events verified in {elapsed:?} with {pages} audit pages ({polls} polls)"
        );
        assert!(
            pages <= 3_020 / 100 + 1 + polls,
            "{order:?}: {pages} pages for 3,020 events in {polls} polls"
        );
    }
}

/// Serves the audit endpoint from a script of pages keyed by offset; events are
/// `Rest API V2 Call`s for `PATCH /api/v2/scim/Users/<user>`.
fn audit_event(id: &str, user_id: &str, now: u64) -> Value {
    json!({
        "_id": id, "timestamp": now, "type": "admin_audit_logs", "user": "offboarder",
        "audit_log_event": "Rest API V2 Call",
        "supporting_data": {"data_type": "api",
            "data_values": [204, "PATCH", format!("/api/v2/scim/Users/{user_id}"), "trid=1"]}
    })
}

fn pending_for(user_id: &str, now: u64) -> Pending {
    Pending {
        expected: Expected {
            request: RequestKey {
                method: "PATCH",
                path: format!("/api/v2/scim/Users/{user_id}"),
                seq: verify::next_request_seq(),
            },
            check: Check::UserInactive {
                user_id: user_id.to_string(),
            },
            server_window: None,
        },
        acted_at: now,
        watch: None,
    }
}

#[tokio::test(start_paused = true)]
async fn paging_with_duplicates_finds_every_match_and_ends() {
    fine_grained_clock();
    let server = MockServer::start().await;
    let now = WallClock::new().now_secs();
    // Page 2 repeats the last event of page 1: events shifted while the pages were read.
    let pages = [
        (
            "0",
            vec![
                audit_event("a", "x1", now),
                audit_event("b", "other", now),
                audit_event("c", "x2", now),
            ],
        ),
        (
            "3",
            vec![
                audit_event("c", "x2", now),
                audit_event("d", "x3", now),
                audit_event("e", "other", now),
            ],
        ),
        ("6", vec![audit_event("f", "x4", now)]),
    ];
    for (offset, events) in pages {
        Mock::given(method("GET"))
            .and(path("/api/v2/events/data/audit"))
            .and(query_param("offset", offset))
            .and(query_param("limit", "3"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"ok": 1, "result": events})),
            )
            .expect(1)
            .mount(&server)
            .await;
    }
    let client = client_for(&server.uri(), "t", None);
    let mut cfg = config(VerifyMode::Audit);
    cfg.page_limit = 3;
    let verifier = Verifier::spawn(client, cfg.clone(), cfg.mode);
    let mut receivers = Vec::new();
    for id in ["x1", "x2", "x3", "x4"] {
        receivers.push(verifier.submit(pending_for(id, now)).await);
    }
    let results = answers(receivers).await;
    let ids: Vec<Option<&str>> = results
        .iter()
        .map(|v| v.audit_event_id.as_deref())
        .collect();
    assert_eq!(ids, [Some("a"), Some("c"), Some("d"), Some("f")]);
    // One poll: three pages, the last one short; the mocks' `expect(1)` check that on drop.
}

#[tokio::test(start_paused = true)]
async fn a_tenant_that_ignores_the_offset_cannot_make_a_poll_loop() {
    fine_grained_clock();
    let server = MockServer::start().await;
    let now = WallClock::new().now_secs();
    let page = vec![audit_event("a", "x1", now), audit_event("b", "x2", now)];
    Mock::given(method("GET"))
        .and(path("/api/v2/events/data/audit"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": 1, "result": page})))
        .mount(&server)
        .await;
    let client = client_for(&server.uri(), "t", None);
    let mut cfg = config(VerifyMode::Audit);
    cfg.page_limit = 2;
    cfg.timeout = Duration::from_secs(60);
    let verifier = Verifier::spawn(client, cfg.clone(), cfg.mode);
    let found = verifier.submit(pending_for("x2", now)).await;
    let missing = verifier.submit(pending_for("x9", now)).await;
    let results = answers(vec![found, missing]).await;
    assert_eq!(results[0].audit_event_id.as_deref(), Some("b"));
    assert!(
        !results[1].verified,
        "never in the trail: unverified at the timeout"
    );
    assert!(
        results[1].evidence.contains("no audit event"),
        "{}",
        results[1].evidence
    );
    let requests = server.received_requests().await.unwrap().len();
    // Each poll stops at the second, identical page; the timeout is 4 polls away.
    println!("audit requests with the offset ignored: {requests}");
    assert!(requests <= 2 * 5, "{requests}");
}

/// An audit event of `actor` for `PATCH /api/v2/scim/Users/<user_id>` at `timestamp`.
fn audit_event_by(id: &str, actor: &str, user_id: &str, timestamp: u64) -> Value {
    let mut e = audit_event(id, user_id, timestamp);
    e["user"] = json!(actor);
    e
}

/// `verified` proves our request, not just any request of the same path: an IdP's PATCH of the
/// same user a few seconds before or after ours (outside the window the server's answer gave
/// ours) never verifies it, and once the worker has learned whose audit events are its own,
/// another actor's event inside a window does not either.
#[tokio::test(start_paused = true)]
async fn another_actors_change_of_the_same_user_never_verifies_ours() {
    fine_grained_clock();
    let server = MockServer::start().await;
    let now = WallClock::new().now_secs();
    let t = now - 60;
    let events = vec![
        // u-a: only the IdP touched it, 5 s before and 5 s after our request.
        audit_event_by("idp-before", "okta-provisioning", "u-a", t - 5),
        audit_event_by("idp-after", "okta-provisioning", "u-a", t + 5),
        // u-b: our own request, in its window: verifies, and teaches the actor.
        audit_event_by("ours", "offboarder-scim", "u-b", t + 10),
        // u-c: the IdP inside our window, and our own event missing.
        audit_event_by("idp-inside", "okta-provisioning", "u-c", t + 20),
    ];
    Mock::given(method("GET"))
        .and(path("/api/v2/events/data/audit"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": 1, "result": events})))
        .mount(&server)
        .await;
    let client = client_for(&server.uri(), "t", None);
    let mut cfg = config(VerifyMode::Audit);
    cfg.timeout = Duration::from_secs(30);
    let verifier = Verifier::spawn(client, cfg.clone(), cfg.mode);
    let ours = |user_id: &str, at: u64| {
        let mut p = pending_for(user_id, now);
        p.expected.server_window = Some(AuditWindow {
            start: at,
            end: at + 1,
        });
        p
    };
    let results = answers(vec![
        verifier.submit(ours("u-a", t)).await,
        verifier.submit(ours("u-b", t + 10)).await,
        verifier.submit(ours("u-c", t + 20)).await,
    ])
    .await;
    assert_eq!(
        results.iter().map(Verification::result).collect::<Vec<_>>(),
        ["unverified", "verified", "unverified"],
        "{results:#?}"
    );
    assert_eq!(results[1].audit_event_id.as_deref(), Some("ours"));
    assert!(
        results[1].evidence.contains("\"offboarder-scim\""),
        "{}",
        results[1].evidence
    );
}

#[tokio::test(start_paused = true)]
async fn without_an_audit_event_read_back_decides() {
    fine_grained_clock();
    // The audit trail lags by a day: nothing shows up within the timeout.
    let (sim, client) = simulator(3, 86_400).await;
    let mut cfg = config(VerifyMode::AuditThenReadback);
    cfg.timeout = Duration::from_secs(60);
    let verifier = Verifier::spawn(client.clone(), cfg.clone(), cfg.mode);
    let kept = deactivate(&client, &user(1)).await;
    let undone = deactivate(&client, &user(2)).await;
    // Someone re-activates user2 behind our back.
    assert!(sim.set_user_active(&user(2), true));
    let started = Instant::now();
    let results = answers(vec![
        verifier.submit(kept).await,
        verifier.submit(undone).await,
    ])
    .await;

    assert!(
        started.elapsed() >= Duration::from_secs(60),
        "audit first, until the timeout"
    );
    assert!(results[0].verified, "{:?}", results[0]);
    assert_eq!(results[0].method, "readback");
    assert!(
        results[0].evidence.contains("active=false"),
        "{}",
        results[0].evidence
    );
    assert!(!results[1].verified, "{:?}", results[1]);
    assert_eq!(results[1].method, "readback");
    assert!(
        results[1].evidence.contains("active=true"),
        "{}",
        results[1].evidence
    );
}

#[tokio::test(start_paused = true)]
async fn a_token_without_the_audit_scope_falls_back_to_read_back_with_one_warning() {
    let logs = CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    fine_grained_clock();
    let args = SimArgs {
        users: 3,
        rate_limit_per_min: 0,
        ..SimArgs::default()
    };
    let scim_only = args.scim_token.clone();
    let sim = netskope_sim::start(args).await.unwrap();
    let client = client_for(&sim.base_url(), &scim_only, None);
    let cfg = config(VerifyMode::AuditThenReadback);

    let mode = verify::effective_mode(&client, &cfg).await;
    assert_eq!(mode, VerifyMode::Readback);
    let verifier = Verifier::spawn(client.clone(), cfg, mode);
    let mut receivers = Vec::new();
    for n in 1..=3 {
        let pending = deactivate(&client, &user(n)).await;
        receivers.push(verifier.submit(pending).await);
    }
    let results = answers(receivers).await;

    assert!(results.iter().all(|v| v.verified && v.method == "readback"));
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("read-back only"), "{}", warnings[0]);
    assert!(
        warnings[0].contains("/api/v2/events/data/audit"),
        "names the scope: {}",
        warnings[0]
    );
    assert_eq!(
        sim.stats().count("GET /api/v2/events/data/audit"),
        1,
        "only the probe"
    );
}

/// Read-back of group changes: one read of the members serves every check on the group, and
/// a quarantine followed by the same user's release before verification ends `superseded`.
#[tokio::test(start_paused = true)]
async fn group_changes_are_read_back_from_the_members() {
    fine_grained_clock();
    let (sim, client) = simulator(3, 86_400).await;
    let cfg = config(VerifyMode::Readback);
    let verifier = Verifier::spawn(client.clone(), cfg.clone(), cfg.mode);
    let group_id = client.ensure_group("Q").await.unwrap();
    let u1 = client.resolve_user(&user(1)).await.unwrap();
    let u2 = client.resolve_user(&user(2)).await.unwrap();
    client
        .add_members(&group_id, std::slice::from_ref(&u1.id))
        .await
        .unwrap();
    let expect = |check| Pending {
        expected: Expected {
            request: RequestKey {
                method: "PATCH",
                path: format!("/api/v2/scim/Groups/{group_id}"),
                seq: verify::next_request_seq(),
            },
            check,
            server_window: None,
        },
        acted_at: WallClock::new().now_secs(),
        watch: None,
    };
    let results = answers(vec![
        verifier
            .submit(expect(Check::InGroup {
                group_id: group_id.clone(),
                user_id: u1.id.clone(),
            }))
            .await,
        verifier
            .submit(expect(Check::InGroup {
                group_id: group_id.clone(),
                user_id: u2.id.clone(),
            }))
            .await,
        verifier
            .submit(expect(Check::NotInGroup {
                group_id: group_id.clone(),
                user_id: u2.id.clone(),
            }))
            .await,
    ])
    .await;
    // user 2's quarantine was followed by its release before either was verified: read-back
    // would see the release and call the quarantine undone, a false alarm. It is superseded,
    // not read back.
    assert_eq!(
        results.iter().map(Verification::result).collect::<Vec<_>>(),
        ["verified", "superseded", "verified"]
    );
    assert!(
        results[1].evidence.contains("a later release of user"),
        "{}",
        results[1].evidence
    );
    // Two checks on one group read its members once.
    assert_eq!(sim.stats().count("GET /api/v2/scim/Groups/{id}"), 1);
}

fn status_of(m: &OwnedMessage) -> String {
    let o: Value = serde_json::from_str(&sandbox::text(m)).unwrap();
    o["status"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_wait_for_verification_so_a_restart_re_verifies() {
    // The audit trail lags by an hour: nothing is verified before the first worker stops.
    let sandbox = Sandbox::start(
        SimArgs {
            users: 5,
            rate_limit_per_min: 0,
            audit_lag_secs: 3600,
            ..SimArgs::default()
        },
        3,
    )
    .await
    .unwrap();
    let records: Vec<(String, String, Vec<u8>)> = (1..=5)
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
    sandbox.publish(&records).await.unwrap();
    let mut config = sandbox.config("verify-restart");
    config.verify.mode = VerifyMode::Audit;
    config.verify.timeout = Duration::from_secs(3600);
    config.pipeline.shutdown_grace = Duration::from_secs(1);

    let first = Pipeline::new(&config, sandbox.client(&config).unwrap())
        .await
        .unwrap();
    let handle = first.handle();
    let worker = tokio::spawn(first.run());
    let applied = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |r| {
            r.len() >= 5
        })
        .await
        .unwrap();
    assert!(applied.iter().all(|m| status_of(m) == "applied"));
    handle.stop();
    let summary = worker.await.unwrap().unwrap();
    assert_eq!(
        summary.left_open, 5,
        "applied but unverified: offsets not stored"
    );

    // The second worker reads back instead: the same events come again and end verified.
    config.verify.mode = VerifyMode::Readback;
    let second = Pipeline::new(&config, sandbox.client(&config).unwrap())
        .await
        .unwrap();
    let handle = second.handle();
    let worker = tokio::spawn(second.run());
    let all = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |r| {
            r.iter().filter(|m| status_of(m) == "verified").count() >= 5
        })
        .await
        .unwrap();
    handle.stop();
    let summary = worker.await.unwrap().unwrap();
    assert_eq!(summary.left_open, 0);
    let verified: HashSet<String> = all
        .iter()
        .filter(|m| status_of(m) == "verified")
        .map(|m| {
            let o: Value = serde_json::from_str(&sandbox::text(m)).unwrap();
            assert_eq!(o["verification"]["method"], "readback");
            o["source_event_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(verified.len(), 5, "every event verified after the restart");
    println!(
        "outcomes across both runs: {} (5 applied twice, 5 verified)",
        all.len()
    );
}

/// A quarantine that read-back shows undone (an administrator took the user out of the group
/// meanwhile) is forgotten: the next critical signal for that user acts again instead of being
/// `skipped` as "already quarantined" for the rest of `quarantine_memory`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantine_read_back_as_undone_is_forgotten_so_the_next_signal_acts() {
    // No audit event within the run: every action is read back once `timeout` has passed.
    let sandbox = Sandbox::start(
        SimArgs {
            users: 2,
            rate_limit_per_min: 0,
            audit_lag_secs: 3600,
            ..SimArgs::default()
        },
        1,
    )
    .await
    .unwrap();
    let signal = |id: &str| {
        let e = json!({"event_id": id, "occurred_at": "2026-11-25T09:00:00Z",
                       "user": {"user_name": user(1)}, "source": "crowdstrike",
                       "severity": "critical"});
        (
            sandbox.topics.risk_signals.clone(),
            user(1),
            e.to_string().into_bytes(),
        )
    };
    let mut config = sandbox.config("forget-undone");
    config.verify.mode = VerifyMode::AuditThenReadback;
    config.verify.timeout = Duration::from_secs(5);
    let client = sandbox.client(&config).unwrap();
    let pipeline = Pipeline::new(&config, client.clone()).await.unwrap();
    let handle = pipeline.handle();
    let worker = tokio::spawn(pipeline.run());

    sandbox.publish(&[signal("q-1")]).await.unwrap();
    sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |r| {
            r.iter().any(|m| status_of(m) == "applied")
        })
        .await
        .unwrap();
    // Before the read-back is due, an administrator undoes the quarantine.
    let group = &config.policy.quarantine_group;
    let group_id = sandbox.sim.group_id(group).expect("the group was created");
    let user_id = sandbox.sim.user(&user(1)).unwrap().id;
    client
        .remove_members(&group_id, std::slice::from_ref(&user_id))
        .await
        .unwrap();
    sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |r| {
            r.iter().any(|m| status_of(m) == "unverified")
        })
        .await
        .unwrap();

    sandbox.publish(&[signal("q-2")]).await.unwrap();
    let all = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |r| {
            r.iter().any(|m| {
                let o: Value = serde_json::from_str(&sandbox::text(m)).unwrap();
                o["source_event_id"] == "q-2"
            })
        })
        .await
        .unwrap();
    handle.stop();
    worker.await.unwrap().unwrap();
    let second: Vec<Value> = all
        .iter()
        .map(|m| serde_json::from_str(&sandbox::text(m)).unwrap())
        .filter(|o: &Value| o["source_event_id"] == "q-2")
        .collect();
    assert_eq!(second[0]["status"], "applied", "{second:?}");
    assert!(
        sandbox.sim.group_members(group).unwrap().contains(&user_id),
        "the user is quarantined again"
    );
}

fn watched(user_name: &str) -> Box<offboarder::verify::drift::Watched> {
    use offboarder::outcome::{Action, Outcome, SourceRef, Status, Timestamps};
    Box::new(offboarder::verify::drift::Watched {
        outcome: Outcome {
            outcome_id: "o1".into(),
            source_event_id: format!("t-{user_name}"),
            source: SourceRef {
                topic: "hr".into(),
                partition: 0,
                offset: 0,
            },
            requested_by: None,
            user_name: user_name.into(),
            scim_user_id: None,
            action: Action::Deactivate,
            status: Status::Applied,
            group: None,
            reason: None,
            error: None,
            request: None,
            verification: None,
            attempts: 1,
            timestamps: Timestamps {
                received: time::OffsetDateTime::UNIX_EPOCH,
                acted: None,
                verified: None,
                effective: None,
            },
            trace_id: "0".repeat(32),
        },
        may_reassert: true,
    })
}

/// The drift watch, in the audit events the poller reads anyway: another actor re-enabling a
/// user offboarder deactivated is reported with the actor and the audit event; another actor's
/// change that leaves the user inactive is not; nor is a re-enable after `drift_watch` ended,
/// nor one of a user whose action was not watched.
#[tokio::test(start_paused = true)]
async fn another_actor_re_enabling_a_deactivated_user_is_reported_within_the_watch() {
    fine_grained_clock();
    let (sim, client) = simulator(4, 5).await;
    let mut cfg = config(VerifyMode::AuditThenReadback);
    cfg.drift_watch = Duration::from_secs(600);
    let verifier = Verifier::spawn(client.clone(), cfg.clone(), cfg.mode);
    let mut drifts = verifier.take_drifts().expect("the reports");
    assert!(verifier.take_drifts().is_none(), "taken once");
    let mut receivers = Vec::new();
    for n in 1..=4 {
        let mut pending = deactivate(&client, &user(n)).await;
        if n != 4 {
            pending.watch = Some(watched(&user(n)));
        }
        receivers.push(verifier.submit(pending).await);
    }
    let results = answers(receivers).await;
    assert!(results.iter().all(|v| v.verified && v.method == "audit"));

    // user1: re-enabled by the IdP. user2: the IdP changes it but it stays inactive.
    // user4: re-enabled, but its deactivation was not watched.
    assert!(sim.set_user_active_as("okta-provisioning", &user(1), true));
    assert!(sim.set_user_active_as("okta-provisioning", &user(2), false));
    assert!(sim.set_user_active_as("okta-provisioning", &user(4), true));
    let drift = tokio::time::timeout(Duration::from_secs(120), drifts.recv())
        .await
        .expect("a report within a few polls")
        .expect("a report");
    assert_eq!(drift.watched.outcome.user_name, user(1));
    assert_eq!(drift.actor, "okta-provisioning");
    assert!(drift.evidence.contains("active=true"), "{}", drift.evidence);
    tokio::time::sleep(3 * POLL).await;
    assert!(
        drifts.try_recv().is_err(),
        "user2 stayed inactive; user4 was not watched"
    );

    // Past the watch, a re-enable of user3 is no longer reported.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(sim.set_user_active_as("okta-provisioning", &user(3), true));
    tokio::time::sleep(3 * POLL).await;
    assert!(drifts.try_recv().is_err(), "the watch had ended");
}

/// The drift watch on a quarantine: an administrator taking the quarantined user out of the
/// group is reported; the same administrator taking someone else out of it (the user stays in)
/// is not.
#[tokio::test(start_paused = true)]
async fn another_actor_taking_a_quarantined_user_out_of_the_group_is_reported() {
    fine_grained_clock();
    let (sim, client) = simulator(3, 5).await;
    let mut cfg = config(VerifyMode::AuditThenReadback);
    cfg.drift_watch = Duration::from_secs(600);
    let verifier = Verifier::spawn(client.clone(), cfg.clone(), cfg.mode);
    let mut drifts = verifier.take_drifts().expect("the reports");
    let group_id = client.ensure_group("Quarantine_HighRisk").await.unwrap();
    let u1 = client.resolve_user(&user(1)).await.unwrap();
    let sent = client
        .add_members(&group_id, std::slice::from_ref(&u1.id))
        .await
        .unwrap();
    let mut watch = watched(&user(1));
    watch.outcome.action = offboarder::outcome::Action::Quarantine;
    let pending = Pending {
        expected: Expected {
            request: RequestKey {
                method: "PATCH",
                path: format!("/api/v2/scim/Groups/{group_id}"),
                seq: verify::next_request_seq(),
            },
            check: Check::InGroup {
                group_id: group_id.clone(),
                user_id: u1.id.clone(),
            },
            server_window: sent.server_window,
        },
        acted_at: WallClock::new().now_secs(),
        watch: Some(watch),
    };
    let result = answers(vec![verifier.submit(pending).await]).await;
    assert!(
        result[0].verified && result[0].method == "audit",
        "{result:?}"
    );

    // The administrator takes someone else out of the group: user1 stays in.
    let u2 = client.resolve_user(&user(2)).await.unwrap();
    client.add_members(&group_id, &[u2.id]).await.unwrap();
    assert!(sim.remove_member_as("it-admin", "Quarantine_HighRisk", &user(2)));
    tokio::time::sleep(3 * POLL).await;
    assert!(drifts.try_recv().is_err(), "user1 is still quarantined");
    assert!(sim.remove_member_as("it-admin", "Quarantine_HighRisk", &user(1)));
    let drift = tokio::time::timeout(Duration::from_secs(120), drifts.recv())
        .await
        .expect("a report within a few polls")
        .expect("a report");
    assert_eq!(drift.actor, "it-admin");
    assert!(
        drift.evidence.contains("no longer a member"),
        "{}",
        drift.evidence
    );
}
