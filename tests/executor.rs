//! The executor and the group batcher against `wiremock`: retries by error class, dry-run,
//! coalescing of repeat quarantines, stale ids, and how group PATCHes are gathered and split.
//! Every test asserts the exact number of calls the server saw, and every wait runs on paused
//! tokio time (the client's request timeout is off, since a paused runtime fires armed timers as
//! soon as it idles on a socket).

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::time::Instant;
use wiremock::matchers::{body_json, method, path, query_param};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

use netskope::{ErrorClass, NetskopeClient, NetskopeConfig, NetskopeError, Tokens};
use offboarder::guard::memory::Position;
use offboarder::outcome::{Action, RequestDescription, Status};
use offboarder::pipeline::batcher::{Applied, Change, GroupBatcher};
use offboarder::pipeline::config::PipelineConfig;
use offboarder::pipeline::executor::Executor;
use offboarder::policy::Decision;

const TOKEN: &str = "test-token-executor-1a2b";
const USERS: &str = "/api/v2/scim/Users";
const GROUPS: &str = "/api/v2/scim/Groups";
const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// A client whose every call is one HTTP attempt, so that retries seen by the server are the
/// executor's own.
fn config(server: &MockServer) -> NetskopeConfig {
    let mut c = NetskopeConfig {
        tenant_url: Some(server.uri()),
        allow_insecure_http: true,
        ..Default::default()
    };
    c.retry.max_attempts = 1;
    c.retry.initial_delay = Duration::from_millis(100);
    c.retry.max_delay = Duration::from_secs(1);
    c
}

fn client(server: &MockServer) -> Arc<NetskopeClient> {
    Arc::new(
        NetskopeClient::builder(&config(server))
            .tokens(Tokens {
                scim: SecretString::from(TOKEN),
                events: None,
            })
            .without_request_timeout()
            .build()
            .expect("client"),
    )
}

fn executor(server: &MockServer, dry_run: bool, pipeline: PipelineConfig) -> Executor {
    Executor::new(client(server), dry_run, &pipeline)
}

fn list(resources: Value) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": resources.as_array().map(|a| a.len()).unwrap_or(0),
        "Resources": resources,
    })
}

fn user_filter(name: &str) -> String {
    format!(r#"userName eq "{name}""#)
}

fn group_filter(name: &str) -> String {
    format!(r#"displayName eq "{name}""#)
}

/// Resolving `name` finds the user `id`, exactly `times` times.
async fn mount_user(server: &MockServer, name: &str, id: &str, times: u64) {
    Mock::given(method("GET"))
        .and(path(USERS))
        .and(query_param("filter", user_filter(name).as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(json!([
            {"id": id, "userName": name, "active": true}
        ]))))
        .expect(times)
        .mount(server)
        .await;
}

/// Looking up the group `name` finds `id`, exactly `times` times.
async fn mount_group(server: &MockServer, name: &str, id: &str, times: u64) {
    Mock::given(method("GET"))
        .and(path(GROUPS))
        .and(query_param("filter", group_filter(name).as_str()))
        .and(query_param("excludedAttributes", "members"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(json!([
            {"id": id, "displayName": name}
        ]))))
        .expect(times)
        .mount(server)
        .await;
}

fn deactivate_body() -> Value {
    json!({
        "schemas": [PATCH_OP],
        "Operations": [{"op": "replace", "path": "active", "value": false}],
    })
}

fn add_body(ids: &[&str]) -> Value {
    let members: Vec<Value> = ids.iter().map(|id| json!({"value": id})).collect();
    json!({
        "schemas": [PATCH_OP],
        "Operations": [{"op": "add", "path": "members", "value": members}],
    })
}

fn remove_body(ids: &[&str]) -> Value {
    let ops: Vec<Value> = ids
        .iter()
        .map(|id| json!({"op": "remove", "path": format!("members[value eq \"{id}\"]")}))
        .collect();
    json!({"schemas": [PATCH_OP], "Operations": ops})
}

fn scim_error(status: u16, detail: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
        "status": status.to_string(), "scimType": "invalidValue", "detail": detail,
    }))
}

/// The member ids a group PATCH carries, sorted.
fn member_ids(request: &Request) -> Vec<String> {
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let mut ids: Vec<String> = body["Operations"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|op| op["value"].as_array().cloned().unwrap_or_default())
        .filter_map(|m| m["value"].as_str().map(String::from))
        .collect();
    ids.sort();
    ids
}

/// Matches a group PATCH whose members are exactly these (in any order).
struct Members(&'static [&'static str]);

impl Match for Members {
    fn matches(&self, request: &Request) -> bool {
        let mut want: Vec<&str> = self.0.to_vec();
        want.sort();
        member_ids(request) == want
    }
}

/// Matches a group PATCH that carries at least this many members.
struct AtLeastMembers(usize);

impl Match for AtLeastMembers {
    fn matches(&self, request: &Request) -> bool {
        member_ids(request).len() >= self.0
    }
}

/// Under paused time the runtime jumps to the next armed timer whenever it idles on a socket,
/// and the HTTP client's connection pool keeps a 90 s idle timer: one request to wiremock could
/// seem to take 90 s. This ticker keeps every such jump to 1 ms, so that elapsed time and the
/// executor's deadline reflect its own waits. Dropped with the runtime at the end of the test.
fn fine_grained_clock() {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.expect("recording is on")
}

async fn count(server: &MockServer, verb: &str, route: &str) -> usize {
    requests(server)
        .await
        .iter()
        .filter(|r| r.method.as_str() == verb && r.url.path() == route)
        .count()
}

fn quarantine(group: &str) -> Decision {
    Decision::Quarantine {
        group: group.into(),
    }
}

fn release(group: &str) -> Decision {
    Decision::Release {
        group: group.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Executor: errors by class
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn transient_faults_are_retried_with_growing_backoff_until_applied() {
    let server = MockServer::start().await;
    mount_user(&server, "a@x.com", "u1", 1).await;
    Mock::given(method("PATCH"))
        .and(path(format!("{USERS}/u1")))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(3)
        .expect(3)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{USERS}/u1")))
        .and(body_json(deactivate_body()))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let ex = executor(&server, false, PipelineConfig::default());
    let t0 = Instant::now();
    let report = ex
        .execute("a@x.com", &Decision::Deactivate, &Position::default())
        .await
        .unwrap();
    let elapsed = t0.elapsed();
    assert_eq!(report.status, Status::Applied, "{report:?}");
    assert_eq!(report.attempts, 4);
    assert_eq!(report.scim_user_id.as_deref(), Some("u1"));
    assert_eq!(report.error, None);
    assert!(!report.retries_exhausted);
    assert!(report.acted_at.is_some());
    assert_eq!(
        report.request,
        Some(RequestDescription {
            method: "PATCH",
            path: "/Users/u1".into(),
            body: Some(deactivate_body()),
        })
    );
    // Three waits of at least 2 s, 4 s and 8 s (jitter only lengthens them).
    assert!(elapsed >= Duration::from_secs(14), "{elapsed:?}");
    assert_eq!(count(&server, "PATCH", &format!("{USERS}/u1")).await, 4);
}

#[tokio::test(start_paused = true)]
async fn transient_faults_end_as_failed_once_transient_retry_for_runs_out() {
    let server = MockServer::start().await;
    mount_user(&server, "a@x.com", "u1", 1).await;
    Mock::given(method("PATCH"))
        .and(path(format!("{USERS}/u1")))
        .respond_with(ResponseTemplate::new(503))
        .expect(2..)
        .mount(&server)
        .await;
    let retry_for = Duration::from_secs(60);
    fine_grained_clock();
    let ex = executor(
        &server,
        false,
        PipelineConfig {
            transient_retry_for: retry_for,
            ..Default::default()
        },
    );
    let t0 = Instant::now();
    let report = ex
        .execute("a@x.com", &Decision::Deactivate, &Position::default())
        .await
        .unwrap();
    let elapsed = t0.elapsed();
    assert_eq!(report.status, Status::Failed, "{report:?}");
    assert!(report.retries_exhausted);
    let error = report.error.as_ref().expect("an error");
    assert!(error.is_transient(), "{error}");
    assert_eq!(error.http_status(), Some(503));
    assert!(report.attempts > 1, "{} {elapsed:?}", report.attempts);
    assert!(
        report
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("transient_retry_for")),
        "{:?}",
        report.reason
    );
    assert_eq!(report.acted_at, None);
    // The executor never starts a wait that would end past the deadline, so this is stricter
    // than "deadline plus one max delay".
    assert!(
        elapsed < retry_for,
        "no sleep crosses the deadline: {elapsed:?}"
    );
    assert_eq!(
        count(&server, "PATCH", &format!("{USERS}/u1")).await,
        report.attempts as usize
    );
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_is_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(USERS))
        .and(query_param("filter", user_filter("ghost@x.com").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(json!([]))))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&server)
        .await;
    let ex = executor(&server, false, PipelineConfig::default());
    fine_grained_clock();
    let t0 = Instant::now();
    let report = ex
        .execute("ghost@x.com", &Decision::Deactivate, &Position::default())
        .await
        .unwrap();
    assert_eq!(report.status, Status::Failed, "{report:?}");
    assert_eq!(report.error.as_ref().map(|e| e.kind()), Some("not_found"));
    assert_eq!(report.attempts, 1);
    assert!(!report.retries_exhausted);
    assert_eq!(report.scim_user_id, None);
    // The first backoff would be at least 2 s.
    let elapsed = t0.elapsed();
    assert!(
        elapsed < Duration::from_secs(1),
        "no backoff for a permanent error: {elapsed:?}"
    );
}

// A revoked or under-scoped token fails every event: the worker must stop, not dead-letter
// the whole topic.
#[tokio::test(start_paused = true)]
async fn unauthorized_and_forbidden_are_returned_as_errors_not_failed_reports() {
    let server = MockServer::start().await;
    mount_user(&server, "a@x.com", "u1", 1).await;
    mount_user(&server, "b@x.com", "u2", 1).await;
    Mock::given(method("PATCH"))
        .and(path(format!("{USERS}/u1")))
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{USERS}/u2")))
        .respond_with(ResponseTemplate::new(403))
        .expect(1)
        .mount(&server)
        .await;
    let ex = executor(&server, false, PipelineConfig::default());
    let e401 = ex
        .execute("a@x.com", &Decision::Deactivate, &Position::default())
        .await
        .unwrap_err();
    assert!(matches!(e401, NetskopeError::Unauthorized { .. }), "{e401}");
    assert_eq!(e401.class(), ErrorClass::Config);
    let e403 = ex
        .execute("b@x.com", &Decision::Deactivate, &Position::default())
        .await
        .unwrap_err();
    assert!(matches!(e403, NetskopeError::Forbidden { .. }), "{e403}");
    assert_eq!(e403.class(), ErrorClass::Config);
}

#[tokio::test(start_paused = true)]
async fn a_skip_decision_sends_nothing() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let ex = executor(&server, false, PipelineConfig::default());
    let decision = Decision::Skip {
        action: Action::Deactivate,
        reason: "the user is in policy.protected_users".into(),
    };
    let report = ex
        .execute("admin@x.com", &decision, &Position::default())
        .await
        .unwrap();
    assert_eq!(report.status, Status::Skipped);
    assert_eq!(
        report.reason.as_deref(),
        Some("the user is in policy.protected_users")
    );
    assert_eq!(report.attempts, 0);
    assert_eq!(report.scim_user_id, None);
    assert_eq!(report.request, None);
    assert_eq!(report.error, None);
    assert_eq!(report.acted_at, None);
    assert!(requests(&server).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Executor: dry run, coalescing, stale ids
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn dry_run_describes_the_request_and_sends_nothing_that_mutates() {
    let server = MockServer::start().await;
    mount_user(&server, "a@x.com", "u1", 1).await;
    // Looked up once: the id is cached for the second decision on the group.
    mount_group(&server, "Q-exists", "g-1", 1).await;
    Mock::given(method("GET"))
        .and(path(GROUPS))
        .and(query_param("filter", group_filter("Q-missing").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(json!([]))))
        .expect(2)
        .mount(&server)
        .await;
    for verb in ["PATCH", "POST", "DELETE", "PUT"] {
        Mock::given(method(verb))
            .respond_with(ResponseTemplate::new(204))
            .expect(0)
            .mount(&server)
            .await;
    }
    let ex = executor(&server, true, PipelineConfig::default());

    let r = ex
        .execute("a@x.com", &Decision::Deactivate, &Position::default())
        .await
        .unwrap();
    assert_eq!(r.status, Status::DryRun, "{r:?}");
    assert_eq!(r.scim_user_id.as_deref(), Some("u1"));
    assert_eq!(
        r.request,
        Some(RequestDescription {
            method: "PATCH",
            path: "/Users/u1".into(),
            body: Some(deactivate_body()),
        })
    );

    let r = ex
        .execute("a@x.com", &Decision::Delete, &Position::default())
        .await
        .unwrap();
    assert_eq!(r.status, Status::DryRun, "{r:?}");
    assert_eq!(
        r.request,
        Some(RequestDescription {
            method: "DELETE",
            path: "/Users/u1".into(),
            body: None,
        })
    );

    let r = ex
        .execute("a@x.com", &quarantine("Q-exists"), &Position::default())
        .await
        .unwrap();
    assert_eq!(r.status, Status::DryRun, "{r:?}");
    assert_eq!(r.reason, None);
    assert_eq!(
        r.request,
        Some(RequestDescription {
            method: "PATCH",
            path: "/Groups/g-1".into(),
            body: Some(add_body(&["u1"])),
        })
    );

    let r = ex
        .execute("a@x.com", &release("Q-exists"), &Position::default())
        .await
        .unwrap();
    assert_eq!(r.status, Status::DryRun, "{r:?}");
    assert_eq!(
        r.request,
        Some(RequestDescription {
            method: "PATCH",
            path: "/Groups/g-1".into(),
            body: Some(remove_body(&["u1"])),
        })
    );

    let r = ex
        .execute("a@x.com", &quarantine("Q-missing"), &Position::default())
        .await
        .unwrap();
    assert_eq!(r.status, Status::DryRun, "{r:?}");
    assert_eq!(
        r.request,
        Some(RequestDescription {
            method: "POST",
            path: "/Groups".into(),
            body: Some(json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                "displayName": "Q-missing",
            })),
        })
    );
    let reason = r.reason.expect("a reason");
    assert!(reason.contains("does not exist"), "{reason}");

    let r = ex
        .execute("a@x.com", &release("Q-missing"), &Position::default())
        .await
        .unwrap();
    assert_eq!(
        r.status,
        Status::Skipped,
        "the real run would send nothing either: {r:?}"
    );
    assert_eq!(r.request, None, "nothing to release");
    assert!(r.reason.is_some());

    let verbs: Vec<String> = requests(&server)
        .await
        .iter()
        .map(|r| r.method.to_string())
        .collect();
    assert_eq!(verbs.len(), 4, "{verbs:?}");
    assert!(verbs.iter().all(|v| v == "GET"), "{verbs:?}");
}

/// The position of the `offset`th risk signal of one partition.
fn at(offset: i64) -> Position {
    Position {
        topic: "risk".into(),
        partition: 0,
        offset,
    }
}

// A burst of risk signals about one user must not spend one PATCH per signal.
#[tokio::test(start_paused = true)]
async fn a_repeat_quarantine_is_coalesced_until_a_release() {
    let server = MockServer::start().await;
    mount_user(&server, "a@x.com", "u1", 1).await;
    mount_group(&server, "Q", "g-1", 1).await;
    Mock::given(method("PATCH"))
        .and(path(format!("{GROUPS}/g-1")))
        .and(body_json(add_body(&["u1"])))
        .respond_with(ResponseTemplate::new(204))
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{GROUPS}/g-1")))
        .and(body_json(remove_body(&["u1"])))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let ex = executor(&server, false, PipelineConfig::default());

    let first = ex
        .execute("a@x.com", &quarantine("Q"), &at(1))
        .await
        .unwrap();
    assert_eq!(first.status, Status::Applied, "{first:?}");
    assert_eq!(
        first.request,
        Some(RequestDescription {
            method: "PATCH",
            path: "/Groups/g-1".into(),
            body: Some(add_body(&["u1"])),
        })
    );

    // The group name is matched case-insensitively, like the group itself.
    let second = ex
        .execute("a@x.com", &quarantine("q"), &at(2))
        .await
        .unwrap();
    assert_eq!(second.status, Status::Skipped, "{second:?}");
    let reason = second.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("already quarantined"), "{reason}");
    assert_eq!(second.request, None);
    assert_eq!(count(&server, "PATCH", &format!("{GROUPS}/g-1")).await, 1);

    let released = ex.execute("a@x.com", &release("Q"), &at(3)).await.unwrap();
    assert_eq!(released.status, Status::Applied, "{released:?}");

    let again = ex
        .execute("a@x.com", &quarantine("Q"), &at(4))
        .await
        .unwrap();
    assert_eq!(again.status, Status::Applied, "{again:?}");
    assert_eq!(count(&server, "PATCH", &format!("{GROUPS}/g-1")).await, 3);
}

#[tokio::test(start_paused = true)]
async fn the_quarantine_memory_expires() {
    let server = MockServer::start().await;
    mount_user(&server, "a@x.com", "u1", 1).await;
    mount_group(&server, "Q", "g-1", 1).await;
    Mock::given(method("PATCH"))
        .and(path(format!("{GROUPS}/g-1")))
        .and(body_json(add_body(&["u1"])))
        .respond_with(ResponseTemplate::new(204))
        .expect(2)
        .mount(&server)
        .await;
    let ex = executor(
        &server,
        false,
        PipelineConfig {
            quarantine_memory: Duration::from_secs(60),
            ..Default::default()
        },
    );
    let q = quarantine("Q");
    assert_eq!(
        ex.execute("a@x.com", &q, &at(5)).await.unwrap().status,
        Status::Applied
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(
        ex.execute("a@x.com", &q, &at(6)).await.unwrap().status,
        Status::Skipped
    );
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(
        ex.execute("a@x.com", &q, &at(7)).await.unwrap().status,
        Status::Applied
    );
}

// A user deleted and re-created gets a new id; a cached old id must not fail the event.
#[tokio::test(start_paused = true)]
async fn a_stale_cached_user_id_is_resolved_afresh_once() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(USERS))
        .and(query_param("filter", user_filter("a@x.com").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(json!([
            {"id": "A", "userName": "a@x.com", "active": true}
        ]))))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    mount_user(&server, "a@x.com", "B", 1).await;
    Mock::given(method("PATCH"))
        .and(path(format!("{USERS}/A")))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{USERS}/B")))
        .and(body_json(deactivate_body()))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let ex = executor(&server, false, PipelineConfig::default());
    let report = ex
        .execute("a@x.com", &Decision::Deactivate, &Position::default())
        .await
        .unwrap();
    assert_eq!(report.status, Status::Applied, "{report:?}");
    assert_eq!(report.scim_user_id.as_deref(), Some("B"));
    assert_eq!(report.attempts, 1);
    assert_eq!(report.request.map(|r| r.path), Some("/Users/B".to_string()));
}

// The same from the directory mirror: a listing's id gone by the PATCH is resolved once with
// a filter (past the mirror, which would answer the same stale id), then the PATCH goes again.
#[tokio::test(start_paused = true)]
async fn a_stale_mirrored_user_id_is_resolved_afresh_with_a_filter() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(USERS))
        .and(query_param("startIndex", "1"))
        .and(query_param("attributes", "id,userName,active"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(json!([
            {"id": "A", "userName": "a@x.com", "active": true},
            {"id": "C", "userName": "c@x.com", "active": true},
        ]))))
        .expect(1)
        .mount(&server)
        .await;
    mount_user(&server, "a@x.com", "B", 1).await;
    Mock::given(method("PATCH"))
        .and(path(format!("{USERS}/A")))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{USERS}/B")))
        .and(body_json(deactivate_body()))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let ex = executor(&server, false, PipelineConfig::default());
    let deactivate = Decision::Deactivate;
    // Three events announced at once, in a tenant of unknown size: worth the first page.
    let demands: Vec<_> = (0..3).map(|_| ex.expect_resolve(&deactivate)).collect();
    let mut demands = demands.into_iter();
    let report = ex
        .execute_with_demand(
            "a@x.com",
            &deactivate,
            &Position::default(),
            demands.next().flatten(),
        )
        .await
        .unwrap();
    assert_eq!(report.status, Status::Applied, "{report:?}");
    assert_eq!(report.scim_user_id.as_deref(), Some("B"));
    assert_eq!(report.attempts, 1);
    assert!(
        ex.expect_resolve(&Decision::Reactivate).is_none(),
        "a known id needs no resolve"
    );
}

#[tokio::test(start_paused = true)]
async fn an_id_that_resolves_the_same_and_stays_gone_is_not_found() {
    let server = MockServer::start().await;
    mount_user(&server, "a@x.com", "A", 2).await;
    Mock::given(method("PATCH"))
        .and(path(format!("{USERS}/A")))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    let ex = executor(&server, false, PipelineConfig::default());
    let report = ex
        .execute("a@x.com", &Decision::Deactivate, &Position::default())
        .await
        .unwrap();
    assert_eq!(report.status, Status::Failed, "{report:?}");
    assert_eq!(report.error.as_ref().map(|e| e.kind()), Some("not_found"));
    assert_eq!(report.attempts, 1);
}

// ---------------------------------------------------------------------------------------------
// Group batcher
// ---------------------------------------------------------------------------------------------

const WINDOW: Duration = Duration::from_millis(200);

#[tokio::test(start_paused = true)]
async fn concurrent_adds_within_the_window_travel_in_one_patch() {
    let server = MockServer::start().await;
    mount_group(&server, "Q", "g-1", 1).await;
    Mock::given(method("PATCH"))
        .and(path(format!("{GROUPS}/g-1")))
        .and(Members(&["u1", "u2", "u3"]))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&server)
        .await;
    let b = GroupBatcher::spawn(client(&server), "Q".into(), WINDOW, 500);
    let (r1, r2, r3) = tokio::join!(
        b.submit(Change::Add, "u1".into()),
        b.submit(Change::Add, "u2".into()),
        b.submit(Change::Add, "u3".into()),
    );
    let (r1, r2, r3) = (r1.unwrap(), r2.unwrap(), r3.unwrap());
    let expected = Applied {
        group_id: Some("g-1".into()),
        batch_size: 3,
        // One PATCH: one request, whose audit event verifies all three, in one window.
        request_seq: r1.request_seq,
        server_window: r1.server_window,
    };
    assert_eq!(r1, expected);
    assert_eq!(r2, expected);
    assert_eq!(r3, expected);
}

#[tokio::test(start_paused = true)]
async fn batch_max_members_caps_the_members_of_one_patch() {
    let server = MockServer::start().await;
    mount_group(&server, "Q", "g-1", 1).await;
    Mock::given(method("PATCH"))
        .and(path(format!("{GROUPS}/g-1")))
        .and(AtLeastMembers(3))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{GROUPS}/g-1")))
        .respond_with(ResponseTemplate::new(204))
        .expect(2)
        .mount(&server)
        .await;
    let b = GroupBatcher::spawn(client(&server), "Q".into(), WINDOW, 2);
    let (r1, r2, r3) = tokio::join!(
        b.submit(Change::Add, "u1".into()),
        b.submit(Change::Add, "u2".into()),
        b.submit(Change::Add, "u3".into()),
    );
    let mut sizes = vec![
        r1.unwrap().batch_size,
        r2.unwrap().batch_size,
        r3.unwrap().batch_size,
    ];
    sizes.sort();
    assert_eq!(sizes, vec![1, 2, 2]);
    let mut sent: Vec<Vec<String>> = requests(&server)
        .await
        .iter()
        .filter(|r| r.method.as_str() == "PATCH")
        .map(member_ids)
        .collect();
    sent.sort();
    let all: Vec<String> = sent.concat();
    assert_eq!(sent.len(), 2);
    assert_eq!(all.len(), 3, "each member sent once: {sent:?}");
}

#[tokio::test(start_paused = true)]
async fn adds_and_removes_in_one_window_go_in_separate_patches() {
    let server = MockServer::start().await;
    mount_group(&server, "Q", "g-1", 1).await;
    Mock::given(method("PATCH"))
        .and(path(format!("{GROUPS}/g-1")))
        .and(body_json(add_body(&["u1", "u3"])))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{GROUPS}/g-1")))
        .and(body_json(remove_body(&["u2"])))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let b = GroupBatcher::spawn(client(&server), "Q".into(), WINDOW, 500);
    let (r1, r2, r3) = tokio::join!(
        b.submit(Change::Add, "u1".into()),
        b.submit(Change::Remove, "u2".into()),
        b.submit(Change::Add, "u3".into()),
    );
    assert_eq!(r1.unwrap().batch_size, 2);
    assert_eq!(r2.unwrap().batch_size, 1);
    assert_eq!(r3.unwrap().batch_size, 2);
}

// One bad member id must not fail everyone else in the batch.
#[tokio::test(start_paused = true)]
async fn a_refused_batch_is_retried_member_by_member() {
    let server = MockServer::start().await;
    mount_group(&server, "Q", "g-1", 1).await;
    Mock::given(method("PATCH"))
        .and(path(format!("{GROUPS}/g-1")))
        .and(AtLeastMembers(2))
        .respond_with(scim_error(400, "member bad does not exist"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{GROUPS}/g-1")))
        .and(Members(&["bad"]))
        .respond_with(scim_error(400, "member bad does not exist"))
        .expect(1)
        .mount(&server)
        .await;
    for good in [&["u1"], &["u2"]] {
        Mock::given(method("PATCH"))
            .and(path(format!("{GROUPS}/g-1")))
            .and(Members(good))
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
    }
    let b = GroupBatcher::spawn(client(&server), "Q".into(), WINDOW, 500);
    let (r1, rbad, r2) = tokio::join!(
        b.submit(Change::Add, "u1".into()),
        b.submit(Change::Add, "bad".into()),
        b.submit(Change::Add, "u2".into()),
    );
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert_ne!(r1.request_seq, r2.request_seq, "sent alone: two requests");
    for r in [r1, r2] {
        assert_eq!(r.group_id.as_deref(), Some("g-1"));
        assert_eq!(r.batch_size, 1);
    }
    let err = rbad.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert_eq!(count(&server, "PATCH", &format!("{GROUPS}/g-1")).await, 4);
}

// Someone deleted the quarantine group in the console: it must come back, not fail quarantines.
#[tokio::test(start_paused = true)]
async fn a_deleted_group_is_looked_up_again_and_recreated() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(GROUPS))
        .and(query_param("filter", group_filter("Q").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(json!([
            {"id": "g-old", "displayName": "Q"}
        ]))))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(GROUPS))
        .and(query_param("filter", group_filter("Q").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(json!([]))))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{GROUPS}/g-old")))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(GROUPS))
        .and(body_json(json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": "Q",
        })))
        .respond_with(
            ResponseTemplate::new(201).set_body_json(json!({"id": "g-new", "displayName": "Q"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{GROUPS}/g-new")))
        .and(body_json(add_body(&["u1"])))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let b = GroupBatcher::spawn(client(&server), "Q".into(), WINDOW, 500);
    let applied = b.submit(Change::Add, "u1".into()).await.unwrap();
    assert_eq!(applied.group_id.as_deref(), Some("g-new"));
    assert_eq!(applied.batch_size, 1);
}

#[tokio::test(start_paused = true)]
async fn a_transient_batch_failure_reaches_every_member_once() {
    let server = MockServer::start().await;
    mount_group(&server, "Q", "g-1", 1).await;
    Mock::given(method("PATCH"))
        .and(path(format!("{GROUPS}/g-1")))
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&server)
        .await;
    let b = GroupBatcher::spawn(client(&server), "Q".into(), WINDOW, 500);
    let (r1, r2) = tokio::join!(
        b.submit(Change::Add, "u1".into()),
        b.submit(Change::Add, "u2".into()),
    );
    // A transient fault is the executor's to wait out: no member-by-member retry here.
    for r in [r1, r2] {
        let e = r.unwrap_err();
        assert!(e.is_transient(), "{e}");
    }
}

// Dry-run says a release from a missing group sends nothing; the real run must agree, and must
// not create a group just to remove someone from it.
#[tokio::test(start_paused = true)]
async fn releasing_from_a_missing_group_creates_nothing() {
    let server = MockServer::start().await;
    mount_user(&server, "a@x.com", "u1", 2).await;
    Mock::given(method("GET"))
        .and(path(GROUPS))
        .and(query_param("filter", group_filter("Q").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(json!([]))))
        .expect(1..)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(GROUPS))
        .respond_with(
            ResponseTemplate::new(201).set_body_json(json!({"id": "g-new", "displayName": "Q"})),
        )
        .expect(0)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&server)
        .await;
    let dry = executor(&server, true, PipelineConfig::default());
    let described = dry
        .execute("a@x.com", &release("Q"), &Position::default())
        .await
        .unwrap();
    assert_eq!(described.request, None, "dry-run: nothing would be sent");

    let real = executor(&server, false, PipelineConfig::default());
    let report = real
        .execute("a@x.com", &release("Q"), &Position::default())
        .await
        .unwrap();
    assert_ne!(report.status, Status::Failed, "{report:?}");
    let mutating: Vec<String> = requests(&server)
        .await
        .iter()
        .filter(|r| r.method.as_str() != "GET")
        .map(|r| format!("{} {}", r.method, r.url.path()))
        .collect();
    assert!(mutating.is_empty(), "sent {mutating:?}");
}

/// A reactivation goes to the id offboarder deactivated, with no lookup; when that id is gone
/// it fails, and never falls back on whoever holds the name now (a new account is someone
/// else). A fresh lookup reports whether the user was active before the action; a cached one
/// does not claim to know.
#[tokio::test(start_paused = true)]
async fn a_reactivation_goes_to_the_recorded_id_and_never_to_a_new_holder_of_the_name() {
    let server = MockServer::start().await;
    let body = json!({
        "schemas": [PATCH_OP],
        "Operations": [{"op": "replace", "path": "active", "value": true}],
    });
    Mock::given(method("PATCH"))
        .and(path(format!("{USERS}/u-old")))
        .and(body_json(body.clone()))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{USERS}/u-gone")))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    // The name now resolves to a new account; the executor must not look it up.
    mount_user(&server, "a@x.com", "u-new", 0).await;
    let ex = executor(&server, false, PipelineConfig::default());
    let report = ex
        .reactivate("a@x.com", "u-old", &Position::default())
        .await
        .unwrap();
    assert_eq!(report.status, Status::Applied, "{report:?}");
    assert_eq!(report.scim_user_id.as_deref(), Some("u-old"));
    assert_eq!(report.request.and_then(|r| r.body), Some(body));
    let gone = ex
        .reactivate("a@x.com", "u-gone", &Position::default())
        .await
        .unwrap();
    assert_eq!(gone.status, Status::Failed, "{gone:?}");
    assert!(matches!(gone.error, Some(NetskopeError::NotFound { .. })));
    assert_eq!(count(&server, "PATCH", &format!("{USERS}/u-new")).await, 0);
    assert_eq!(count(&server, "GET", USERS).await, 0);
}

#[tokio::test(start_paused = true)]
async fn only_a_fresh_lookup_says_whether_the_user_was_active_before() {
    let server = MockServer::start().await;
    mount_user(&server, "a@x.com", "u1", 1).await;
    Mock::given(method("PATCH"))
        .and(path(format!("{USERS}/u1")))
        .respond_with(ResponseTemplate::new(204))
        .expect(2)
        .mount(&server)
        .await;
    let ex = executor(&server, false, PipelineConfig::default());
    let fresh = ex
        .execute("a@x.com", &Decision::Deactivate, &Position::default())
        .await
        .unwrap();
    assert_eq!(fresh.user_was_active, Some(true));
    let cached = ex
        .execute("a@x.com", &Decision::Deactivate, &Position::default())
        .await
        .unwrap();
    assert_eq!(cached.status, Status::Applied);
    assert_eq!(
        cached.user_was_active, None,
        "the cache's state may be stale"
    );
}
