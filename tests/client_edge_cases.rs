//! The Netskope client against `wiremock`, for the edge cases a real tenant rarely shows on
//! demand. Every test asserts the exact number of calls the server saw, and every wait runs on
//! paused tokio time (the client's request timeout is off, since a paused runtime fires armed
//! timers as soon as it idles on a socket).

use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::time::Instant;
use wiremock::matchers::{body_json, header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

use netskope::config::{AuthHeader, PagingParam, RemoveStyle};
use netskope::{ErrorClass, Inserted, NetskopeClient, NetskopeConfig, NetskopeError, Tokens};

const TOKEN: &str = "test-token-9f8e7d6c";
const USERS: &str = "/api/v2/scim/Users";
const GROUPS: &str = "/api/v2/scim/Groups";
const AUDIT: &str = "/api/v2/events/data/audit";

fn config(server: &MockServer) -> NetskopeConfig {
    let mut c = NetskopeConfig {
        tenant_url: Some(server.uri()),
        allow_insecure_http: true,
        ..Default::default()
    };
    c.retry.max_attempts = 4;
    c.retry.initial_delay = Duration::from_secs(1);
    c.retry.max_delay = Duration::from_secs(60);
    c
}

fn client_with(cfg: &NetskopeConfig) -> NetskopeClient {
    NetskopeClient::builder(cfg)
        .tokens(Tokens {
            scim: SecretString::from(TOKEN),
            events: None,
        })
        .without_request_timeout()
        .build()
        .expect("client")
}

fn client(server: &MockServer) -> NetskopeClient {
    client_with(&config(server))
}

fn list(resources: Value) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": resources.as_array().map(|a| a.len()).unwrap_or(0),
        "Resources": resources,
    })
}

#[tokio::test(start_paused = true)]
async fn patch_answered_204_or_200_both_count_as_done() {
    let server = MockServer::start().await;
    let deactivate = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "active", "value": false}],
    });
    Mock::given(method("PATCH"))
        .and(path(format!("{USERS}/u-204")))
        .and(header("Netskope-Api-Token", TOKEN))
        .and(body_json(&deactivate))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{USERS}/u-200")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "u-200", "userName": "b@x.com", "active": false})),
        )
        .expect(1)
        .mount(&server)
        .await;
    // A 200 whose body says the user is still active is not a success.
    Mock::given(method("PATCH"))
        .and(path(format!("{USERS}/u-lies")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "u-lies", "userName": "c@x.com", "active": true})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    c.deactivate("u-204").await.expect("204");
    c.deactivate("u-200").await.expect("200 with body");
    let err = c.deactivate("u-lies").await.unwrap_err();
    assert!(
        matches!(err, NetskopeError::InvalidResponse { .. }),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Permanent);
}

#[tokio::test(start_paused = true)]
async fn group_create_409_means_look_it_up_again() {
    let server = MockServer::start().await;
    let filter = r#"displayName eq "Quarantine_HighRisk""#;
    // First lookup: not there yet. Someone else creates it before our POST.
    Mock::given(method("GET"))
        .and(path(GROUPS))
        .and(query_param("filter", filter))
        .and(query_param("excludedAttributes", "members"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(json!([]))))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(GROUPS))
        .respond_with(ResponseTemplate::new(409).set_body_json(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
            "status": "409", "scimType": "uniqueness", "detail": "group exists",
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(GROUPS))
        .and(query_param("filter", filter))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(json!([
            {"id": "g-1", "displayName": "quarantine_highrisk"}
        ]))))
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    assert_eq!(c.ensure_group("Quarantine_HighRisk").await.unwrap(), "g-1");
    // Cached: no further request.
    assert_eq!(c.ensure_group("QUARANTINE_HIGHRISK").await.unwrap(), "g-1");
}

#[tokio::test(start_paused = true)]
async fn group_create_when_missing_uses_the_new_id() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(GROUPS))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(json!([]))))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(GROUPS))
        .and(body_json(json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": "Quarantine_HighRisk",
        })))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"id": "g-new", "displayName": "Quarantine_HighRisk"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    assert_eq!(
        c.ensure_group("Quarantine_HighRisk").await.unwrap(),
        "g-new"
    );
}

#[tokio::test(start_paused = true)]
async fn forbidden_with_an_empty_body_names_the_endpoint_and_is_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(AUDIT))
        .respond_with(ResponseTemplate::new(403))
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    let err = c
        .audit_page(
            Inserted {
                from: 1,
                to: Some(2),
            },
            100,
            0,
        )
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Config);
    let msg = err.to_string();
    assert!(msg.contains("/api/v2/events/data/audit"), "{msg}");
    assert!(msg.contains("SCIM token"), "{msg}");
    assert!(msg.contains("read"), "{msg}");
    assert!(msg.contains("events_token"), "suggests the fix: {msg}");
}

#[tokio::test(start_paused = true)]
async fn unauthorized_is_a_config_fault_and_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(401).set_body_string("token expired"))
        .expect(1)
        .mount(&server)
        .await;
    let err = client(&server).deactivate("u1").await.unwrap_err();
    assert!(matches!(err, NetskopeError::Unauthorized { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Config);
}

#[tokio::test(start_paused = true)]
async fn two_429s_without_retry_after_then_success_slows_the_whole_token() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(429))
        .up_to_n_times(2)
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    let before = c.scim_limiter().current_per_min();
    let t0 = Instant::now();
    c.deactivate("u1").await.expect("third call succeeds");
    // Two backoffs happened (jittered, from 1 s): time passed, and the token's rate was halved
    // twice (the success afterwards is not enough to climb back yet).
    assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(c.scim_limiter().throttled_total(), 2);
    assert_eq!(before, 300);
    assert_eq!(c.scim_limiter().current_per_min(), 75);
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_other_requests_of_the_same_token() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "30"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{USERS}/u2")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "u2", "userName": "b@x.com", "active": true})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    let t0 = Instant::now();
    c.deactivate("u1").await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_secs(30),
        "Retry-After honoured: {:?}",
        t0.elapsed()
    );
    // The pause was set on the token: a request issued while it is in force waits too.
    c.scim_limiter().on_throttled(Some(Duration::from_secs(45)));
    let t1 = Instant::now();
    c.get_user("u2").await.unwrap();
    assert!(
        t1.elapsed() >= Duration::from_secs(45),
        "{:?}",
        t1.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limit_headers_pause_before_a_429_happens() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("{USERS}/u1")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "u1", "userName": "a@x.com", "active": true}))
                .insert_header("ratelimit-remaining", "0")
                .insert_header("ratelimit-reset", "20"),
        )
        .expect(2)
        .mount(&server)
        .await;
    let c = client(&server);
    c.get_user("u1").await.unwrap();
    let t0 = Instant::now();
    c.get_user("u1").await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_secs(20),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn server_errors_are_retried_until_the_attempts_run_out() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(503))
        .expect(4)
        .mount(&server)
        .await;
    let err = client(&server).deactivate("u1").await.unwrap_err();
    match &err {
        NetskopeError::Transient {
            status, attempts, ..
        } => {
            assert_eq!(*status, Some(503));
            assert_eq!(*attempts, 4);
        }
        other => panic!("expected transient, got {other}"),
    }
    assert_eq!(err.class(), ErrorClass::Transient);
}

#[tokio::test(start_paused = true)]
async fn a_502_then_success_is_one_success() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    // 404 on DELETE: already gone, which is what we wanted.
    client(&server).delete_user("u1").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn audit_pages_parse_under_result_or_data_with_the_configured_paging_name() {
    let event = json!({
        "_id": "e1", "timestamp": 1_700_000_100, "type": "admin_audit_logs", "user": "svc",
        "audit_log_event": "Rest API V2 Call",
        "supporting_data": {"data_type": "api", "data_values": [204, "PATCH", "/api/v2/scim/Users/u1", "trid=1"]},
    });
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(AUDIT))
        .and(query_param("offset", "0"))
        .and(query_param("limit", "5000"))
        .and(query_param("insertionstarttime", "1700000000"))
        .and(query_param("insertionendtime", "1700000200"))
        .and(query_param_is_missing("skip"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": 1, "result": [event]})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(AUDIT))
        .and(query_param("skip", "100"))
        .and(query_param_is_missing("offset"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": 1, "data": [event]})))
        .expect(1)
        .mount(&server)
        .await;
    let window = Inserted {
        from: 1_700_000_000,
        to: Some(1_700_000_200),
    };
    let with_offset = client(&server);
    let a = with_offset.audit_page(window, 10_000, 0).await.unwrap();
    let mut cfg = config(&server);
    cfg.audit_paging_param = PagingParam::Skip;
    let with_skip = client_with(&cfg);
    let b = with_skip.audit_page(window, 100, 100).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].id, "e1");
    assert_eq!(a[0].audit_log_event.as_deref(), Some("Rest API V2 Call"));
}

#[tokio::test(start_paused = true)]
async fn a_filter_value_with_quote_and_backslash_stays_one_literal() {
    let server = MockServer::start().await;
    let tricky = r#"a"b\c@x.com"#;
    // The exact filter text the server receives (after URL decoding).
    Mock::given(method("GET"))
        .and(path(USERS))
        .and(query_param("filter", r#"userName eq "a\"b\\c@x.com""#))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(json!([
            {"id": "u-t", "userName": tricky, "active": true}
        ]))))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(USERS))
        .and(query_param("filter", r#"userName eq "x\" or userName pr""#))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(json!([]))))
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    assert_eq!(c.resolve_user(tricky).await.unwrap().id, "u-t");
    let err = c.resolve_user(r#"x" or userName pr"#).await.unwrap_err();
    assert!(matches!(err, NetskopeError::NotFound { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn resolve_is_case_insensitive_cached_and_refuses_ambiguity() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(USERS))
        .and(query_param("filter", r#"userName eq "Alice@Corp.com""#))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(json!([
            {"id": "u-a", "userName": "alice@corp.com", "active": true}
        ]))))
        .expect(1)
        .mount(&server)
        .await;
    // A server with case-sensitive user names can hold two spellings of one address.
    Mock::given(method("GET"))
        .and(path(USERS))
        .and(query_param("filter", r#"userName eq "bob@corp.com""#))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(json!([
            {"id": "u-b1", "userName": "bob@corp.com"},
            {"id": "u-b2", "userName": "Bob@corp.com"},
            {"id": "u-other", "userName": "bobby@corp.com"}
        ]))))
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    let a = c.resolve_user("Alice@Corp.com").await.unwrap();
    assert_eq!(a.id, "u-a");
    assert_eq!(a.user_name, "alice@corp.com");
    // Any spelling hits the cache, which does not claim to know whether the user is active.
    let cached = c.resolve_user("ALICE@corp.com").await.unwrap();
    assert_eq!((&cached.id, &cached.user_name), (&a.id, &a.user_name));
    assert_eq!(cached.active, None);
    let err = c.resolve_user("bob@corp.com").await.unwrap_err();
    assert!(
        matches!(err, NetskopeError::Ambiguous { count: 2, .. }),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Permanent);
}

#[tokio::test(start_paused = true)]
async fn the_user_cache_expires() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(USERS))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(json!([
            {"id": "u-a", "userName": "a@x.com"}
        ]))))
        .expect(2)
        .mount(&server)
        .await;
    let mut cfg = config(&server);
    cfg.user_cache_ttl = Duration::from_secs(60);
    let c = client_with(&cfg);
    c.resolve_user("a@x.com").await.unwrap();
    c.resolve_user("a@x.com").await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    c.resolve_user("a@x.com").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn members_travel_in_batches_and_both_remove_styles_are_well_formed() {
    let server = MockServer::start().await;
    let ids: Vec<String> = (1..=7).map(|i| format!("u{i}")).collect();
    Mock::given(method("PATCH"))
        .and(path(format!("{GROUPS}/g-1")))
        .and(body_json(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "add", "path": "members", "value": [{"value": "u1"}, {"value": "u2"}, {"value": "u3"}]}],
        })))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{GROUPS}/g-1")))
        .and(body_json(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [
                {"op": "remove", "path": "members[value eq \"u1\"]"},
                {"op": "remove", "path": "members[value eq \"u2\"]"},
                {"op": "remove", "path": "members[value eq \"u3\"]"},
            ],
        })))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{GROUPS}/g-1")))
        .and(body_json(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "remove", "path": "members", "value": [{"value": "u1"}, {"value": "u2"}, {"value": "u3"}]}],
        })))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    // Every other batch.
    Mock::given(method("PATCH"))
        .and(path(format!("{GROUPS}/g-1")))
        .respond_with(ResponseTemplate::new(204))
        .expect(6)
        .mount(&server)
        .await;
    let mut cfg = config(&server);
    cfg.members_batch_size = 3;
    let path_filter = client_with(&cfg);
    assert_eq!(
        path_filter.add_members("g-1", &ids).await.unwrap().requests,
        3
    );
    assert_eq!(
        path_filter
            .remove_members("g-1", &ids)
            .await
            .unwrap()
            .requests,
        3
    );
    cfg.member_remove_style = RemoveStyle::ValueList;
    let value_list = client_with(&cfg);
    assert_eq!(
        value_list
            .remove_members("g-1", &ids)
            .await
            .unwrap()
            .requests,
        3
    );
    assert_eq!(
        value_list.add_members("g-1", &[]).await.unwrap().requests,
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_gone_group_is_not_found() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    let err = client(&server)
        .add_members("g-gone", &["u1".to_string()])
        .await
        .unwrap_err();
    assert!(matches!(err, NetskopeError::NotFound { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn read_back_user_and_group_members() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("{USERS}/u1")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "u1", "userName": "a@x.com", "active": false})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{USERS}/gone")))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{GROUPS}/g-1")))
        .and(query_param("attributes", "members"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "g-1", "displayName": "Q", "members": [{"value": "u1"}, {"value": "u9"}],
        })))
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    assert_eq!(c.get_user("u1").await.unwrap().unwrap().active, Some(false));
    assert_eq!(c.get_user("gone").await.unwrap(), None);
    assert_eq!(c.group_members("g-1").await.unwrap(), vec!["u1", "u9"]);
}

#[tokio::test(start_paused = true)]
async fn bearer_auth_header_when_configured() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(header("Authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"id": "u1", "userName": "a@x.com"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let mut cfg = config(&server);
    cfg.auth_header = AuthHeader::Bearer;
    client_with(&cfg).get_user("u1").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn redirects_are_not_followed() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(302).insert_header("Location", "https://elsewhere.example/steal"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let err = client(&server).get_user("u1").await.unwrap_err();
    assert!(matches!(err, NetskopeError::Redirect { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Config);
}

#[tokio::test(start_paused = true)]
async fn oversized_bodies_are_refused() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("x".repeat(200_000)))
        .expect(1)
        .mount(&server)
        .await;
    let mut cfg = config(&server);
    cfg.max_response_bytes = 100_000;
    let err = client_with(&cfg).get_user("u1").await.unwrap_err();
    assert!(
        matches!(err, NetskopeError::InvalidResponse { .. }),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_scim_error_detail_is_kept() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
            "status": "400", "scimType": "invalidValue", "detail": "active is read-only here",
        })))
        .expect(1)
        .mount(&server)
        .await;
    let err = client(&server).deactivate("u1").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    let msg = err.to_string();
    assert!(msg.contains("active is read-only here"), "{msg}");
    assert!(msg.contains("invalidValue"), "{msg}");
}
