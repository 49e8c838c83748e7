//! The Netskope client against the tenant simulator, over real HTTP on loopback: every
//! operation, the Netskope-shaped variants (PATCH 204 or 200, `offset` or `skip`, `result` or
//! `data`), token scopes, rate limits and injected faults.

use std::time::Duration;

use secrecy::SecretString;

use netskope::config::{PagingParam, RemoveStyle};
use netskope::{ErrorClass, Inserted, NetskopeClient, NetskopeConfig, NetskopeError, Tokens};
use netskope_sim::{AuditPaging, AuditWrapper, SimArgs, SimHandle};

const SCIM_TOKEN: &str = "sim-scim-token";
const EVENTS_TOKEN: &str = "sim-events-token";

fn config(sim: &SimHandle) -> NetskopeConfig {
    let mut c = NetskopeConfig {
        tenant_url: Some(sim.base_url()),
        allow_insecure_http: true,
        ..Default::default()
    };
    c.retry.initial_delay = Duration::from_millis(200);
    c
}

fn client_with(cfg: &NetskopeConfig, scim: &str, events: Option<&str>) -> NetskopeClient {
    NetskopeClient::builder(cfg)
        .tokens(Tokens {
            scim: SecretString::from(scim.to_string()),
            events: events.map(|e| SecretString::from(e.to_string())),
        })
        .without_request_timeout()
        .build()
        .expect("client")
}

fn client(sim: &SimHandle) -> NetskopeClient {
    client_with(&config(sim), SCIM_TOKEN, Some(EVENTS_TOKEN))
}

async fn sim_with(args: SimArgs) -> SimHandle {
    netskope_sim::start(args).await.expect("simulator starts")
}

async fn seeded(users: usize) -> SimHandle {
    sim_with(SimArgs {
        users,
        ..Default::default()
    })
    .await
}

/// Requests the simulator answered with a status matching `pick`, over every route.
fn answered(sim: &SimHandle, pick: impl Fn(u16) -> bool) -> u64 {
    sim.stats()
        .requests
        .values()
        .flat_map(|by_status| by_status.iter())
        .filter(|(status, _)| pick(**status))
        .map(|(_, n)| *n)
        .sum()
}

/// All events in a wide window, paged.
async fn all_audit_events(c: &NetskopeClient, limit: u32) -> Vec<netskope::AuditEvent> {
    let window = Inserted { from: 0, to: None };
    let mut out = Vec::new();
    let mut offset = 0;
    for _ in 0..50 {
        let page = c.audit_page(window, limit, offset).await.unwrap();
        let n = page.len();
        out.extend(page);
        if n < limit as usize {
            break;
        }
        offset += n as u64;
    }
    out
}

#[tokio::test]
async fn resolve_deactivate_and_read_back() {
    let sim = seeded(10).await;
    let c = client(&sim);
    let user = c.resolve_user("User3@Example.COM").await.unwrap();
    assert_eq!(user.user_name, "user3@example.com");
    assert_eq!(user.id, sim.user("user3@example.com").unwrap().id);

    c.deactivate(&user.id).await.unwrap();
    assert!(!sim.user("user3@example.com").unwrap().active);
    // Redelivery: the same PATCH again is harmless.
    c.deactivate(&user.id).await.unwrap();
    assert_eq!(
        c.get_user(&user.id).await.unwrap().unwrap().active,
        Some(false)
    );

    let stats = sim.stats();
    assert_eq!(stats.count_status("PATCH /api/v2/scim/Users/{id}", 204), 2);
    assert_eq!(
        stats.count("GET /api/v2/scim/Users"),
        1,
        "resolved once, then cached"
    );

    let err = c.resolve_user("nobody@example.com").await.unwrap_err();
    assert!(matches!(err, NetskopeError::NotFound { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);
}

#[tokio::test]
async fn an_injection_attempt_is_a_valid_filter_that_matches_nobody() {
    let sim = seeded(3).await;
    let c = client(&sim);
    for hostile in [
        r#"x" or userName pr"#,
        r#"user1@example.com" or "1" eq "1"#,
        r#"\"#,
    ] {
        let err = c.resolve_user(hostile).await.unwrap_err();
        assert!(
            matches!(err, NetskopeError::NotFound { .. }),
            "{hostile}: {err}"
        );
    }
    // The server parsed every filter (200), none was rejected as invalid (400).
    let stats = sim.stats();
    assert_eq!(stats.count_status("GET /api/v2/scim/Users", 200), 3);
    assert_eq!(stats.count_status("GET /api/v2/scim/Users", 400), 0);
}

#[tokio::test]
async fn patch_answered_with_200_and_the_resource_also_works() {
    let sim = sim_with(SimArgs {
        users: 2,
        patch_status: 200,
        ..Default::default()
    })
    .await;
    let c = client(&sim);
    let u = c.resolve_user("user1@example.com").await.unwrap();
    c.deactivate(&u.id).await.unwrap();
    assert!(!sim.user("user1@example.com").unwrap().active);
    assert_eq!(
        sim.stats()
            .count_status("PATCH /api/v2/scim/Users/{id}", 200),
        1
    );
}

#[tokio::test]
async fn delete_is_done_even_when_already_gone() {
    let sim = seeded(2).await;
    let c = client(&sim);
    let u = c.resolve_user("user2@example.com").await.unwrap();
    c.delete_user(&u.id).await.unwrap();
    assert!(sim.user("user2@example.com").is_none());
    c.delete_user(&u.id).await.unwrap();
    assert_eq!(c.get_user(&u.id).await.unwrap(), None);
    let stats = sim.stats();
    assert_eq!(stats.count_status("DELETE /api/v2/scim/Users/{id}", 204), 1);
    assert_eq!(stats.count_status("DELETE /api/v2/scim/Users/{id}", 404), 1);
    // A PATCH on the deleted id is a NotFound, not a success.
    let err = c.deactivate(&u.id).await.unwrap_err();
    assert!(matches!(err, NetskopeError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn quarantine_and_release_in_both_remove_styles() {
    let sim = seeded(6).await;
    let mut cfg = config(&sim);
    let c = client_with(&cfg, SCIM_TOKEN, None);
    let group = c.ensure_group("Quarantine_HighRisk").await.unwrap();
    assert_eq!(
        sim.group_id("Quarantine_HighRisk").as_deref(),
        Some(group.as_str())
    );

    let mut ids = Vec::new();
    for n in 1..=6 {
        ids.push(
            c.resolve_user(&format!("user{n}@example.com"))
                .await
                .unwrap()
                .id,
        );
    }
    assert_eq!(
        c.add_members(&group, &ids).await.unwrap().requests,
        1,
        "one PATCH for six users"
    );
    assert_eq!(
        c.add_members(&group, &ids[..2]).await.unwrap().requests,
        1,
        "re-adding is harmless"
    );
    let mut members = c.group_members(&group).await.unwrap();
    members.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(members, expected);

    // RFC 7644 filter paths (the default).
    c.remove_members(&group, &ids[..2]).await.unwrap();
    // The Netskope/Azure value list.
    cfg.member_remove_style = RemoveStyle::ValueList;
    let v = client_with(&cfg, SCIM_TOKEN, None);
    v.remove_members(&group, &ids[2..4]).await.unwrap();
    let left = sim.group_members("Quarantine_HighRisk").unwrap();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&ids[4]) && left.contains(&ids[5]));

    // A second worker finds the existing group instead of creating another.
    let other = client_with(&config(&sim), SCIM_TOKEN, None);
    assert_eq!(
        other.ensure_group("quarantine_highrisk").await.unwrap(),
        group
    );
    assert_eq!(sim.stats().count("POST /api/v2/scim/Groups"), 1);
}

#[tokio::test]
async fn concurrent_group_creation_converges_on_one_group() {
    let sim = seeded(0).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let c = client(&sim);
        tasks.spawn(async move { c.ensure_group("Quarantine_HighRisk").await });
    }
    let ids: Vec<String> = tasks
        .join_all()
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(sim.stats().count_status("POST /api/v2/scim/Groups", 201), 1);
}

#[tokio::test]
async fn audit_events_page_with_offset_and_record_each_call() {
    let sim = seeded(8).await;
    let c = client(&sim);
    for n in 1..=8 {
        let u = c
            .resolve_user(&format!("user{n}@example.com"))
            .await
            .unwrap();
        c.deactivate(&u.id).await.unwrap();
    }
    let events = all_audit_events(&c, 3).await;
    assert_eq!(events.len(), 8, "8 PATCHes, paged 3 at a time");
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 8, "no page repeated another");
    let e = &events[0];
    assert_eq!(e.audit_log_event.as_deref(), Some("Rest API V2 Call"));
    assert_eq!(e.user.as_deref(), Some(netskope_sim::SCIM_TOKEN_NAME));
    let values = &e.supporting_data.as_ref().unwrap().data_values;
    assert_eq!(values[0], 204);
    assert_eq!(values[1], "PATCH");
    assert!(
        values[2]
            .as_str()
            .unwrap()
            .starts_with("/api/v2/scim/Users/")
    );
    // ceil(8 / 3) = 3 pages; the last is short, so no fourth request.
    assert_eq!(sim.stats().count("GET /api/v2/events/data/audit"), 3);
}

#[tokio::test]
async fn audit_with_skip_paging_and_the_data_wrapper() {
    let sim = sim_with(SimArgs {
        users: 5,
        audit_paging: AuditPaging::Skip,
        audit_wrapper: AuditWrapper::Data,
        ..Default::default()
    })
    .await;
    let mut cfg = config(&sim);
    cfg.audit_paging_param = PagingParam::Skip;
    let c = client_with(&cfg, SCIM_TOKEN, Some(EVENTS_TOKEN));
    for n in 1..=5 {
        let u = c
            .resolve_user(&format!("user{n}@example.com"))
            .await
            .unwrap();
        c.deactivate(&u.id).await.unwrap();
    }
    let events = all_audit_events(&c, 2).await;
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5);
}

#[tokio::test]
async fn audit_events_wait_for_the_indexing_lag() {
    let sim = sim_with(SimArgs {
        users: 1,
        audit_lag_secs: 60,
        ..Default::default()
    })
    .await;
    let c = client(&sim);
    let u = c.resolve_user("user1@example.com").await.unwrap();
    c.deactivate(&u.id).await.unwrap();
    assert!(
        all_audit_events(&c, 100).await.is_empty(),
        "not indexed yet"
    );
    assert_eq!(sim.audit_event_count(), 1, "but recorded");
}

#[tokio::test]
async fn a_scim_only_token_gets_a_scope_error_on_audit() {
    let sim = seeded(1).await;
    let c = client_with(&config(&sim), SCIM_TOKEN, None);
    let err = c
        .audit_page(
            Inserted {
                from: 0,
                to: Some(1),
            },
            10,
            0,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, NetskopeError::Forbidden { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Config);
    assert!(
        err.to_string().contains("/api/v2/events/data/audit"),
        "{err}"
    );
    assert_eq!(
        sim.stats()
            .count_status("GET /api/v2/events/data/audit", 403),
        1,
        "not retried"
    );

    // And the events token cannot do SCIM.
    let wrong = client_with(&config(&sim), EVENTS_TOKEN, None);
    let err = wrong.resolve_user("user1@example.com").await.unwrap_err();
    assert!(err.to_string().contains("/api/v2/scim/Users"), "{err}");

    let unknown = client_with(&config(&sim), "not-a-token", None);
    let err = unknown.resolve_user("user1@example.com").await.unwrap_err();
    assert!(matches!(err, NetskopeError::Unauthorized { .. }), "{err}");
}

#[tokio::test]
async fn one_token_with_both_scopes_serves_both_with_one_budget() {
    let sim = sim_with(SimArgs {
        users: 1,
        scim_token: "both".into(),
        events_token: "both".into(),
        ..Default::default()
    })
    .await;
    let c = client_with(&config(&sim), "both", Some("both"));
    assert!(!c.has_separate_events_token());
    assert!(std::ptr::eq(c.scim_limiter(), c.events_limiter()));
    let u = c.resolve_user("user1@example.com").await.unwrap();
    c.deactivate(&u.id).await.unwrap();
    let events = all_audit_events(&c, 10).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].user.as_deref(),
        Some(netskope_sim::COMBINED_TOKEN_NAME)
    );
}

/// The simulator allows 20 requests a minute; the client believes it has 600. The client must
/// absorb the 429s (no Retry-After), slow the token down, and finish every action.
#[tokio::test(start_paused = true)]
async fn the_client_absorbs_429s_and_slows_down() {
    let sim = sim_with(SimArgs {
        users: 15,
        rate_limit_per_min: 20,
        ..Default::default()
    })
    .await;
    let mut cfg = config(&sim);
    cfg.requests_per_minute = 600;
    cfg.retry.max_attempts = 10;
    let c = client_with(&cfg, SCIM_TOKEN, None);
    for n in 1..=15 {
        let u = c
            .resolve_user(&format!("user{n}@example.com"))
            .await
            .unwrap();
        c.deactivate(&u.id).await.unwrap();
    }
    for n in 1..=15 {
        assert!(!sim.user(&format!("user{n}@example.com")).unwrap().active);
    }
    let throttled = answered(&sim, |s| s == 429);
    assert!(throttled > 0, "the budget was exceeded: {:?}", sim.stats());
    assert_eq!(c.scim_limiter().throttled_total(), throttled);
    assert!(
        c.scim_limiter().current_per_min() < 600,
        "the token slowed down"
    );
}

/// With rate-limit headers, the client pauses when the budget is spent instead of running into
/// a 429.
#[tokio::test(start_paused = true)]
async fn rate_limit_headers_avoid_429s() {
    let sim = sim_with(SimArgs {
        users: 15,
        rate_limit_per_min: 20,
        rate_limit_headers: true,
        ..Default::default()
    })
    .await;
    let mut cfg = config(&sim);
    cfg.requests_per_minute = 600;
    let c = client_with(&cfg, SCIM_TOKEN, None);
    for n in 1..=15 {
        let u = c
            .resolve_user(&format!("user{n}@example.com"))
            .await
            .unwrap();
        c.deactivate(&u.id).await.unwrap();
    }
    let stats = sim.stats();
    assert_eq!(answered(&sim, |s| s == 429), 0, "{stats:?}");
    assert_eq!(stats.count_status("PATCH /api/v2/scim/Users/{id}", 204), 15);
}

/// A third of all calls fail with a 5xx; retries carry every action through.
#[tokio::test(start_paused = true)]
async fn injected_server_errors_are_retried_through() {
    let sim = sim_with(SimArgs {
        users: 20,
        fault_rate: 0.33,
        seed: Some(7),
        rate_limit_per_min: 0,
        ..Default::default()
    })
    .await;
    let mut cfg = config(&sim);
    cfg.retry.max_attempts = 12;
    let c = client_with(&cfg, SCIM_TOKEN, None);
    for n in 1..=20 {
        let u = c
            .resolve_user(&format!("user{n}@example.com"))
            .await
            .unwrap();
        c.deactivate(&u.id).await.unwrap();
    }
    let stats = sim.stats();
    let faults = answered(&sim, |s| s >= 500);
    assert!(faults > 5, "faults were injected: {stats:?}");
    assert_eq!(stats.count_status("PATCH /api/v2/scim/Users/{id}", 204), 20);
    for n in 1..=20 {
        assert!(!sim.user(&format!("user{n}@example.com")).unwrap().active);
    }
}

/// A token from a file follows a rotation without a restart: after the tenant replaces the
/// token, the next request's 401 reads the file again and, once the file holds the new token,
/// sends the request once more with it. A file still holding the refused token is a 401 that
/// says so; a token from an env var (or the caller) is never read again.
#[tokio::test]
async fn a_token_file_is_read_again_after_a_401() {
    let sim = seeded(5).await;
    let dir = std::env::temp_dir().join(format!("offboarder-token-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scim_file = dir.join("scim-token");
    let events_file = dir.join("events-token");
    std::fs::write(&scim_file, format!("{SCIM_TOKEN}\n")).unwrap();
    std::fs::write(&events_file, EVENTS_TOKEN).unwrap();
    let mut cfg = config(&sim);
    cfg.scim_token.file = Some(scim_file.clone());
    cfg.events_token.file = Some(events_file.clone());
    let from_files = NetskopeClient::builder(&cfg)
        .without_request_timeout()
        .build()
        .expect("client");
    let handed_in = client(&sim);
    from_files.resolve_user("user1@example.com").await.unwrap();

    assert!(sim.rotate_token(SCIM_TOKEN, "rotated-scim-token"));
    // The file has not been updated yet: refused, and the message says the file was read.
    // (Each step resolves a user not resolved before: the client caches users.)
    let err = from_files
        .resolve_user("user2@example.com")
        .await
        .unwrap_err();
    assert!(matches!(err, NetskopeError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("holds the same token"), "{err}");
    assert!(!err.to_string().contains("rotated-scim-token"), "{err}");

    // The secret store updates the mounted file: the next request succeeds without a restart,
    // after exactly one refused attempt.
    std::fs::write(&scim_file, "rotated-scim-token\n").unwrap();
    let before = sim.stats().count_status("GET /api/v2/scim/Users", 401);
    from_files.resolve_user("user3@example.com").await.unwrap();
    assert_eq!(
        sim.stats().count_status("GET /api/v2/scim/Users", 401),
        before + 1
    );
    // The new token stays in use: no further 401.
    from_files.resolve_user("user4@example.com").await.unwrap();
    assert_eq!(
        sim.stats().count_status("GET /api/v2/scim/Users", 401),
        before + 1
    );
    // The events token was not touched.
    from_files.probe_audit().await.unwrap();

    // A token handed in (or from an env var) has nothing to read again.
    let err = handed_in
        .resolve_user("user5@example.com")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("restart"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The server's `Date` tells when it handled a change, by its own clock: the audit event of
/// that change is timestamped inside the window the client derives from it, whatever this
/// host's clock says.
#[tokio::test]
async fn a_change_reports_when_the_server_handled_it_and_its_audit_event_lies_inside() {
    let sim = sim_with(SimArgs {
        users: 2,
        audit_lag_secs: 0,
        ..Default::default()
    })
    .await;
    let c = client(&sim);
    let u = c.resolve_user("user1@example.com").await.unwrap();
    let sent = c.deactivate(&u.id).await.unwrap();
    let window = sent.server_window.expect("the simulator sends Date");
    assert!(window.end - window.start <= 8, "{window:?}");
    let path = format!("/api/v2/scim/Users/{}", u.id);
    let event = all_audit_events(&c, 100)
        .await
        .into_iter()
        .find(|e| {
            e.supporting_data
                .as_ref()
                .is_some_and(|d| d.data_values.get(2).and_then(|v| v.as_str()) == Some(&path))
        })
        .expect("the PATCH is audited");
    assert!(
        window.contains(event.timestamp),
        "{} outside {window:?}",
        event.timestamp
    );
    assert_eq!(sent.requests, 1);
}
