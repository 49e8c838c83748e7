//! The Netskope simulator over real HTTP: every behaviour a client relies on (or must survive)
//! is asserted here against `netskope_sim::start`.
//!
//! These tests run on real time (the server and reqwest share one runtime, and paused time would
//! auto-advance while they wait on sockets). The audit lag and the rate limiter's refill are
//! tested with paused time in the sim's unit tests instead.

use std::time::{Duration, Instant};

use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

use netskope_sim::{AuditPaging, AuditWrapper, SimArgs, SimHandle, start};

const SCIM: &str = "sim-scim-token";
const EVENTS: &str = "sim-events-token";
const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

struct Tenant {
    sim: SimHandle,
    http: Client,
}

impl Tenant {
    async fn start(args: SimArgs) -> Self {
        let sim = start(args).await.expect("simulator starts");
        offboarder_base::tls::install();
        Self {
            sim,
            http: Client::new(),
        }
    }

    async fn with_users(n: usize) -> Self {
        Self::start(SimArgs {
            users: n,
            ..SimArgs::default()
        })
        .await
    }

    /// A SCIM request (path relative to `/api/v2/scim`) with the SCIM token.
    fn scim(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.sim.scim_base_url()))
            .header("Netskope-Api-Token", SCIM)
    }

    fn audit_request(&self, token: &str) -> RequestBuilder {
        self.http
            .get(self.sim.audit_url())
            .header("Netskope-Api-Token", token)
    }

    async fn audit(&self, query: &[(&str, String)]) -> Value {
        let response = self
            .audit_request(EVENTS)
            .query(query)
            .send()
            .await
            .expect("audit request");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("audit json")
    }

    async fn find_users(&self, filter: &str) -> Response {
        self.scim(Method::GET, "/Users")
            .query(&[("filter", filter)])
            .send()
            .await
            .expect("list users")
    }

    async fn create_user(&self, user_name: &str) -> String {
        let response = self
            .scim(Method::POST, "/Users")
            .json(&json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": user_name,
                "active": true,
                "emails": [{"value": user_name, "primary": true}],
            }))
            .send()
            .await
            .expect("create user");
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.expect("json");
        body["id"].as_str().expect("id").to_string()
    }

    async fn create_group(&self, name: &str, members: &[&str]) -> String {
        let members: Vec<Value> = members.iter().map(|id| json!({"value": id})).collect();
        let response = self
            .scim(Method::POST, "/Groups")
            .json(&json!({"displayName": name, "members": members}))
            .send()
            .await
            .expect("create group");
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.expect("json");
        body["id"].as_str().expect("id").to_string()
    }

    async fn patch(&self, path: &str, operations: Value) -> Response {
        self.scim(Method::PATCH, path)
            .json(&json!({"schemas": [PATCH_OP], "Operations": operations}))
            .send()
            .await
            .expect("patch")
    }

    fn id(&self, user_name: &str) -> String {
        self.sim.user(user_name).expect("user exists").id
    }
}

async fn scim_error(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/scim+json"),
        "content type {content_type}"
    );
    let body: Value = response.json().await.expect("error json");
    assert_eq!(
        body["schemas"],
        json!(["urn:ietf:params:scim:api:messages:2.0:Error"])
    );
    assert_eq!(body["status"], json!(status.as_u16().to_string()));
    (status, body)
}

// ---- auth and scopes ----------------------------------------------------------------------

#[tokio::test]
async fn missing_or_unknown_token_is_401_without_echo() {
    let t = Tenant::with_users(1).await;
    let url = format!("{}/Users", t.sim.scim_base_url());
    let response = t.http.get(&url).send().await.expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let response = t
        .http
        .get(&url)
        .header("Netskope-Api-Token", "wrong-secret-xyz")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body = response.text().await.expect("body");
    assert!(!body.contains("wrong-secret-xyz"));
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["status"], json!(401));
    // Unauthenticated calls never touch the audit trail.
    let response = t
        .http
        .delete(format!("{url}/{}", t.id("user1@example.com")))
        .header("Netskope-Api-Token", EVENTS.to_uppercase())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(t.sim.user("user1@example.com").is_some());
}

#[tokio::test]
async fn token_outside_its_scope_is_403_with_empty_body() {
    let t = Tenant::with_users(1).await;
    let response = t.audit_request(SCIM).send().await.expect("send");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.bytes().await.expect("body").is_empty());

    let response = t
        .http
        .get(format!("{}/Users", t.sim.scim_base_url()))
        .header("Netskope-Api-Token", EVENTS)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.bytes().await.expect("body").is_empty());
}

#[tokio::test]
async fn one_token_can_hold_both_scopes() {
    let t = Tenant::start(SimArgs {
        scim_token: "both".into(),
        events_token: "both".into(),
        users: 1,
        ..SimArgs::default()
    })
    .await;
    let id = t.id("user1@example.com");
    let response = t
        .http
        .patch(format!("{}/Users/{id}", t.sim.scim_base_url()))
        .header("Netskope-Api-Token", "both")
        .json(&json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "active", "value": false}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = t.audit_request("both").send().await.expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["result"][0]["user"], json!("offboarder"));
}

#[tokio::test]
async fn bearer_header_is_accepted() {
    let t = Tenant::with_users(2).await;
    let response = t
        .http
        .get(format!("{}/Users", t.sim.scim_base_url()))
        .bearer_auth(SCIM)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["totalResults"], json!(2));
}

// ---- filters ------------------------------------------------------------------------------

#[tokio::test]
async fn username_filter_is_case_insensitive() {
    let t = Tenant::with_users(3).await;
    let response = t.find_users(r#"userName eq "USER2@Example.COM""#).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["schemas"],
        json!(["urn:ietf:params:scim:api:messages:2.0:ListResponse"])
    );
    assert_eq!(body["totalResults"], json!(1));
    assert_eq!(body["itemsPerPage"], json!(1));
    assert_eq!(body["startIndex"], json!(1));
    assert_eq!(body["Resources"][0]["userName"], json!("user2@example.com"));
    assert_eq!(body["Resources"][0]["id"], json!(t.id("user2@example.com")));
}

#[tokio::test]
async fn escaped_quote_stays_inside_the_filter_literal() {
    let t = Tenant::with_users(3).await;
    let filter = r#"userName eq "x\" or userName pr""#;
    let response = t.find_users(filter).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["totalResults"], json!(0));
    assert_eq!(body["Resources"], json!([]));

    // The literal names exactly one user once that user exists.
    let id = t.create_user(r#"x" or userName pr"#).await;
    let body: Value = t.find_users(filter).await.json().await.expect("json");
    assert_eq!(body["totalResults"], json!(1));
    assert_eq!(body["Resources"][0]["id"], json!(id));
}

#[tokio::test]
async fn unsupported_filters_are_400_invalid_filter() {
    let t = Tenant::with_users(1).await;
    for filter in [
        r#"userName co "user""#,
        r#"userName eq "a" or userName eq "b""#,
        r#"userName eq "x" or userName pr""#,
        r#"nickName eq "x""#,
        "userName eq user1@example.com",
        r#"userName eq "user1@example.com" garbage"#,
    ] {
        let (status, body) = scim_error(t.find_users(filter).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{filter}");
        assert_eq!(body["scimType"], json!("invalidFilter"), "{filter}");
    }
}

// ---- users --------------------------------------------------------------------------------

#[tokio::test]
async fn created_user_is_scim_shaped_and_duplicates_conflict() {
    let t = Tenant::with_users(0).await;
    let response = t
        .scim(Method::POST, "/Users")
        .json(&json!({"userName": "alice@corp.com", "name": {"givenName": "Alice"}, "externalId": "e1", "x-custom": 7}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: Value = response.json().await.expect("json");
    let id = body["id"].as_str().expect("id");
    assert_eq!(id.len(), 36);
    assert_ne!(id, "alice@corp.com");
    assert_eq!(body["active"], json!(true));
    assert_eq!(body["externalId"], json!("e1"));
    assert_eq!(body["x-custom"], json!(7));
    assert_eq!(body["groups"], json!([]));
    assert_eq!(body["meta"]["resourceType"], json!("User"));
    assert_eq!(
        location.as_deref(),
        Some(format!("{}/Users/{id}", t.sim.scim_base_url()).as_str())
    );
    assert_eq!(body["meta"]["location"].as_str(), location.as_deref());

    let response = t
        .scim(Method::POST, "/Users")
        .json(&json!({"userName": "ALICE@corp.com"}))
        .send()
        .await
        .expect("send");
    let (status, body) = scim_error(response).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["scimType"], json!("uniqueness"));

    let response = t
        .scim(Method::POST, "/Users")
        .json(&json!({"active": true}))
        .send()
        .await
        .expect("send");
    assert_eq!(scim_error(response).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn patch_path_and_value_object_forms_answer_204() {
    let t = Tenant::with_users(2).await;
    let id = t.id("user1@example.com");
    let response = t
        .patch(
            &format!("/Users/{id}"),
            json!([{"op": "replace", "path": "active", "value": false}]),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response.bytes().await.expect("body").is_empty());
    assert_eq!(
        t.sim.user("user1@example.com").map(|u| u.active),
        Some(false)
    );

    let id2 = t.id("user2@example.com");
    let response = t
        .patch(
            &format!("/Users/{id2}"),
            json!([{"op": "Replace", "value": {"active": false, "name.givenName": "Bob"}}]),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let user: Value = t
        .scim(Method::GET, &format!("/Users/{id2}"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(user["active"], json!(false));
    assert_eq!(user["name"]["givenName"], json!("Bob"));
    assert_eq!(user["name"]["familyName"], json!("2"));

    // No PatchOp schema, a string boolean, an unknown user.
    let response = t
        .scim(Method::PATCH, &format!("/Users/{id}"))
        .json(&json!({"Operations": [{"op": "replace", "path": "active", "value": true}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(scim_error(response).await.0, StatusCode::BAD_REQUEST);
    let response = t
        .patch(
            &format!("/Users/{id}"),
            json!([{"op": "replace", "path": "active", "value": "True"}]),
        )
        .await;
    assert_eq!(scim_error(response).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        t.sim.user("user1@example.com").map(|u| u.active),
        Some(false)
    );
    let response = t
        .patch(
            "/Users/00000000-0000-4000-8000-000000000000",
            json!([{"op": "replace", "path": "active", "value": false}]),
        )
        .await;
    assert_eq!(scim_error(response).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn patch_status_200_returns_the_resource() {
    let t = Tenant::start(SimArgs {
        users: 1,
        patch_status: 200,
        ..SimArgs::default()
    })
    .await;
    let id = t.id("user1@example.com");
    let response = t
        .patch(
            &format!("/Users/{id}"),
            json!([{"op": "replace", "path": "active", "value": false}]),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["id"], json!(id));
    assert_eq!(body["active"], json!(false));
}

#[tokio::test]
async fn put_replaces_and_rejects_a_taken_user_name() {
    let t = Tenant::with_users(2).await;
    let id = t.id("user1@example.com");
    let response = t
        .scim(Method::PUT, &format!("/Users/{id}"))
        .json(&json!({"userName": "user1@example.com", "active": false}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["id"], json!(id));
    assert!(
        body.get("emails").is_none(),
        "PUT clears omitted attributes"
    );

    let response = t
        .scim(Method::PUT, &format!("/Users/{id}"))
        .json(&json!({"userName": "User2@example.com"}))
        .send()
        .await
        .expect("send");
    assert_eq!(scim_error(response).await.0, StatusCode::CONFLICT);
}

#[tokio::test]
async fn delete_then_404_and_membership_is_dropped() {
    let t = Tenant::with_users(2).await;
    let id = t.id("user1@example.com");
    t.create_group("Quarantine", &[&id]).await;
    let response = t
        .scim(Method::DELETE, &format!("/Users/{id}"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(t.sim.group_members("quarantine"), Some(vec![]));
    let response = t
        .scim(Method::GET, &format!("/Users/{id}"))
        .send()
        .await
        .expect("send");
    assert_eq!(scim_error(response).await.0, StatusCode::NOT_FOUND);
    let response = t
        .scim(Method::DELETE, &format!("/Users/{id}"))
        .send()
        .await
        .expect("send");
    assert_eq!(scim_error(response).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_bodies_are_scim_errors() {
    let t = Tenant::with_users(0).await;
    let response = t
        .scim(Method::POST, "/Users")
        .header("content-type", "application/scim+json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    let (status, body) = scim_error(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["scimType"], json!("invalidSyntax"));

    let big = format!(r#"{{"userName":"a","pad":"{}"}}"#, "x".repeat(1 << 20));
    let response = t
        .scim(Method::POST, "/Users")
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("send");
    assert_eq!(scim_error(response).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(t.sim.user("a").is_none());
}

// ---- groups -------------------------------------------------------------------------------

#[tokio::test]
async fn group_reads_show_members_only_when_asked() {
    let t = Tenant::with_users(2).await;
    let u1 = t.id("user1@example.com");
    let response = t
        .scim(Method::POST, "/Groups")
        .json(&json!({"displayName": "Quarantine_HighRisk", "members": [{"value": ""}, {"value": u1}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::CREATED);
    let gid = t.sim.group_id("quarantine_highrisk").expect("group");

    let get = |query: &'static [(&'static str, &'static str)]| {
        t.scim(Method::GET, &format!("/Groups/{gid}"))
            .query(query)
            .send()
    };
    let plain: Value = get(&[]).await.expect("send").json().await.expect("json");
    assert_eq!(plain["displayName"], json!("Quarantine_HighRisk"));
    assert_eq!(
        plain["schemas"],
        json!(["urn:ietf:params:scim:schemas:core:2.0:Group"])
    );
    assert!(plain.get("members").is_none());
    let with: Value = get(&[("attributes", "members")])
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(
        with["members"],
        json!([{"value": u1, "display": "user1@example.com", "$ref": format!("{}/Users/{u1}", t.sim.scim_base_url())}])
    );
    let excluded: Value = get(&[("attributes", "members"), ("excludedAttributes", "members")])
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert!(excluded.get("members").is_none());

    let list: Value = t
        .scim(Method::GET, "/Groups")
        .query(&[("filter", r#"displayName eq "QUARANTINE_HIGHRISK""#)])
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(list["totalResults"], json!(1));
    assert!(list["Resources"][0].get("members").is_none());

    let response = t
        .scim(Method::POST, "/Groups")
        .json(&json!({"displayName": "quarantine_highrisk"}))
        .send()
        .await
        .expect("send");
    let (status, body) = scim_error(response).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["scimType"], json!("uniqueness"));
}

#[tokio::test]
async fn member_add_and_both_remove_forms() {
    let t = Tenant::with_users(4).await;
    let ids: Vec<String> = (1..=4)
        .map(|i| t.id(&format!("user{i}@example.com")))
        .collect();
    let gid = t.create_group("Q", &[]).await;
    let path = format!("/Groups/{gid}");
    let members =
        |ids: &[&String]| -> Value { ids.iter().map(|id| json!({"value": id})).collect() };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };

    let response = t
        .patch(
            &path,
            json!([{"op": "add", "path": "members", "value": members(&[&ids[0], &ids[1], &ids[2]])}]),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    // Adding an existing member again is a no-op.
    let response = t
        .patch(
            &path,
            json!([{"op": "add", "path": "members", "value": members(&[&ids[0]])}]),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(t.sim.group_members("Q"), Some(sorted(ids[..3].to_vec())));

    // Netskope/Azure style: remove with a value list.
    let response = t
        .patch(
            &path,
            json!([{"op": "remove", "path": "members", "value": members(&[&ids[0]])}]),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    // RFC style: a filter path.
    let response = t
        .patch(
            &path,
            json!([{"op": "remove", "path": format!("members[value eq \"{}\"]", ids[1])}]),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(t.sim.group_members("Q"), Some(vec![ids[2].clone()]));

    // The user's computed `groups` follows membership.
    let user: Value = t
        .scim(Method::GET, &format!("/Users/{}", ids[2]))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(user["groups"][0]["value"], json!(gid));
    assert_eq!(user["groups"][0]["display"], json!("Q"));

    // Replace, then remove all.
    let response = t
        .patch(
            &path,
            json!([{"op": "replace", "path": "members", "value": members(&[&ids[3]])}]),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(t.sim.group_members("Q"), Some(vec![ids[3].clone()]));
    let response = t
        .patch(&path, json!([{"op": "remove", "path": "members"}]))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(t.sim.group_members("Q"), Some(vec![]));

    // All-or-nothing: the valid add is not applied when a later operation fails.
    let response = t
        .patch(
            &path,
            json!([
                {"op": "add", "path": "members", "value": members(&[&ids[0]])},
                {"op": "add", "path": "members", "value": [{"value": "not-a-user"}]},
            ]),
        )
        .await;
    let (status, body) = scim_error(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["scimType"], json!("invalidValue"));
    assert_eq!(t.sim.group_members("Q"), Some(vec![]));
}

// ---- audit trail --------------------------------------------------------------------------

/// Makes `n` audited calls (PATCHes of user1).
async fn audited_calls(t: &Tenant, n: usize) {
    let id = t.id("user1@example.com");
    for i in 0..n {
        let response = t
            .patch(
                &format!("/Users/{id}"),
                json!([{"op": "replace", "path": "active", "value": i % 2 == 1}]),
            )
            .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
}

fn paths(body: &Value, key: &str) -> Vec<String> {
    body[key]
        .as_array()
        .expect("events array")
        .iter()
        .map(|e| e["_id"].as_str().expect("_id").to_string())
        .collect()
}

#[tokio::test]
async fn successful_mutations_are_audited_like_netskope() {
    let t = Tenant::with_users(1).await;
    let id = t.id("user1@example.com");
    t.patch(
        &format!("/Users/{id}"),
        json!([{"op": "replace", "path": "active", "value": false}]),
    )
    .await;
    // Reads and failed writes are not audited.
    t.find_users(r#"userName eq "user1@example.com""#).await;
    t.patch(
        "/Users/nope",
        json!([{"op": "replace", "path": "active", "value": false}]),
    )
    .await;
    assert_eq!(t.sim.audit_event_count(), 1);

    let body = t.audit(&[]).await;
    assert_eq!(body["ok"], json!(1));
    let event = &body["result"][0];
    assert_eq!(event["type"], json!("admin_audit_logs"));
    assert_eq!(event["user"], json!("offboarder-scim"));
    assert_eq!(event["audit_log_event"], json!("Rest API V2 Call"));
    assert_eq!(event["severity_level"], json!(2));
    assert_eq!(event["supporting_data"]["data_type"], json!("api"));
    let values = &event["supporting_data"]["data_values"];
    assert_eq!(values[0], json!(204));
    assert_eq!(values[1], json!("PATCH"));
    assert_eq!(values[2], json!(format!("/api/v2/scim/Users/{id}")));
    assert!(values[3].as_str().is_some_and(|s| s.starts_with("trid=")));
    let ts = event["timestamp"].as_u64().expect("timestamp");
    assert_eq!(event["_insertion_epoch_timestamp"], json!(ts));
}

#[tokio::test]
async fn audit_events_wait_for_the_lag() {
    let t = Tenant::start(SimArgs {
        users: 1,
        audit_lag_secs: 3600,
        ..SimArgs::default()
    })
    .await;
    audited_calls(&t, 2).await;
    assert_eq!(t.sim.audit_event_count(), 2);
    let body = t.audit(&[]).await;
    assert_eq!(body["result"], json!([]));
}

#[tokio::test]
async fn audit_paging_with_offset() {
    let t = Tenant::with_users(1).await;
    audited_calls(&t, 5).await;
    let all = paths(&t.audit(&[("limit", "10".into())]).await, "result");
    assert_eq!(all.len(), 5);
    let page = paths(
        &t.audit(&[("limit", "2".into()), ("offset", "2".into())])
            .await,
        "result",
    );
    assert_eq!(page, all[2..4]);
    // `skip` means nothing to a tenant that reads `offset`.
    let page = paths(
        &t.audit(&[("limit", "2".into()), ("skip", "2".into())])
            .await,
        "result",
    );
    assert_eq!(page, all[..2]);
}

#[tokio::test]
async fn audit_paging_with_skip_and_data_wrapper() {
    let t = Tenant::start(SimArgs {
        users: 1,
        audit_paging: AuditPaging::Skip,
        audit_wrapper: AuditWrapper::Data,
        ..SimArgs::default()
    })
    .await;
    audited_calls(&t, 4).await;
    let body = t.audit(&[("limit", "10".into())]).await;
    assert!(body.get("result").is_none());
    let all = paths(&body, "data");
    assert_eq!(all.len(), 4);
    let page = paths(
        &t.audit(&[("limit", "3".into()), ("skip", "3".into())])
            .await,
        "data",
    );
    assert_eq!(page, all[3..]);
    let page = paths(
        &t.audit(&[("limit", "3".into()), ("offset", "3".into())])
            .await,
        "data",
    );
    assert_eq!(page, all[..3]);
}

#[tokio::test]
async fn audit_paging_ignored_always_returns_the_first_page() {
    let t = Tenant::start(SimArgs {
        users: 1,
        audit_paging: AuditPaging::Ignore,
        ..SimArgs::default()
    })
    .await;
    audited_calls(&t, 3).await;
    let first = paths(&t.audit(&[("limit", "2".into())]).await, "result");
    for key in ["offset", "skip"] {
        let page = paths(
            &t.audit(&[("limit", "2".into()), (key, "2".into())]).await,
            "result",
        );
        assert_eq!(page, first, "{key}");
    }
}

#[tokio::test]
async fn audit_time_window_is_inclusive() {
    let t = Tenant::with_users(1).await;
    audited_calls(&t, 2).await;
    let body = t.audit(&[]).await;
    let ts = body["result"][0]["timestamp"].as_u64().expect("ts");
    let last = body["result"][1]["timestamp"].as_u64().expect("ts");
    let window = |start: u64, end: u64| {
        vec![
            ("starttime", start.to_string()),
            ("endtime", end.to_string()),
        ]
    };
    assert_eq!(paths(&t.audit(&window(ts, last)).await, "result").len(), 2);
    assert_eq!(
        paths(&t.audit(&window(last + 1, last + 100)).await, "result").len(),
        0
    );
    assert_eq!(
        paths(&t.audit(&window(ts - 100, ts - 1)).await, "result").len(),
        0
    );

    let response = t
        .audit_request(EVENTS)
        .query(&[("starttime", "yesterday")])
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

// ---- gateway behaviour --------------------------------------------------------------------

#[tokio::test]
async fn rate_limit_answers_429_without_retry_after() {
    let t = Tenant::start(SimArgs {
        users: 1,
        rate_limit_per_min: 5,
        ..SimArgs::default()
    })
    .await;
    for _ in 0..5 {
        let response = t.find_users(r#"userName eq "user1@example.com""#).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("ratelimit-remaining").is_none());
    }
    let response = t.find_users(r#"userName eq "user1@example.com""#).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().get("retry-after").is_none());
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], json!(429));
    // The events token has its own bucket.
    let response = t.audit_request(EVENTS).send().await.expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(t.sim.stats().count_status("GET /api/v2/scim/Users", 429), 1);
}

#[tokio::test]
async fn rate_limit_headers_when_enabled() {
    let t = Tenant::start(SimArgs {
        users: 1,
        rate_limit_per_min: 3,
        rate_limit_headers: true,
        ..SimArgs::default()
    })
    .await;
    let header = |r: &Response, name: &str| -> Option<u64> {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = t.find_users(r#"userName eq "user1@example.com""#).await;
        seen.push((
            r.status().as_u16(),
            header(&r, "ratelimit-remaining"),
            header(&r, "ratelimit-reset").is_some_and(|s| (1..=60).contains(&s)),
        ));
    }
    assert_eq!(
        seen,
        [
            (200, Some(2), true),
            (200, Some(1), true),
            (200, Some(0), true),
            (429, Some(0), true)
        ]
    );
}

#[tokio::test]
async fn faults_answer_5xx_before_touching_state() {
    let t = Tenant::start(SimArgs {
        users: 1,
        fault_rate: 1.0,
        seed: Some(1),
        ..SimArgs::default()
    })
    .await;
    let id = t.id("user1@example.com");
    for _ in 0..5 {
        let response = t
            .patch(
                &format!("/Users/{id}"),
                json!([{"op": "replace", "path": "active", "value": false}]),
            )
            .await;
        assert!(response.status().is_server_error(), "{}", response.status());
        scim_error(response).await;
    }
    assert_eq!(
        t.sim.user("user1@example.com").map(|u| u.active),
        Some(true)
    );
    assert_eq!(t.sim.audit_event_count(), 0);
    // Gateway checks still come first.
    let response = t.audit_request(SCIM).send().await.expect("send");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    t.sim.set_fault_rate(0.0);
    let response = t
        .patch(
            &format!("/Users/{id}"),
            json!([{"op": "replace", "path": "active", "value": false}]),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        t.sim.user("user1@example.com").map(|u| u.active),
        Some(false)
    );
}

#[tokio::test]
async fn latency_delays_answers() {
    let t = Tenant::start(SimArgs {
        latency_ms: 150,
        ..SimArgs::default()
    })
    .await;
    let started = Instant::now();
    let response = t.scim(Method::GET, "/Users").send().await.expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn timings_cover_the_latency_and_keep_the_query() {
    let t = Tenant::start(SimArgs {
        users: 1,
        latency_ms: 50,
        ..SimArgs::default()
    })
    .await;
    t.find_users("userName eq \"user1@example.com\"").await;
    assert!(t.sim.timings().is_empty(), "timings are off by default");
    t.sim.record_timings(1);
    let before = time::OffsetDateTime::now_utc();
    t.find_users("userName eq \"user1@example.com\"").await;
    t.scim(Method::GET, "/Users").send().await.expect("send");
    let timings = t.sim.timings();
    assert_eq!(timings.len(), 1, "the limit holds");
    let first = &timings[0];
    assert_eq!(first.method, "GET");
    assert!(first.target.starts_with("/api/v2/scim/Users?filter="));
    assert!(
        first.target.contains("user1%40example.com") || first.target.contains("user1@example.com")
    );
    assert_eq!(first.status, 200);
    assert!(first.arrived >= before);
    assert!(first.answered - first.arrived >= time::Duration::milliseconds(50));
}

#[tokio::test]
async fn set_user_active_changes_state_without_audit() {
    let t = Tenant::with_users(1).await;
    assert!(t.sim.set_user_active("USER1@example.com", false));
    assert!(!t.sim.set_user_active("nobody@example.com", false));
    assert_eq!(
        t.sim.user("user1@example.com").map(|u| u.active),
        Some(false)
    );
    assert_eq!(t.sim.audit_event_count(), 0);
}

#[tokio::test]
async fn sim_stats_count_by_route_template_and_status() {
    let t = Tenant::with_users(2).await;
    for i in 1..=2 {
        let id = t.id(&format!("user{i}@example.com"));
        t.patch(
            &format!("/Users/{id}"),
            json!([{"op": "replace", "path": "active", "value": false}]),
        )
        .await;
    }
    t.patch(
        "/Users/missing",
        json!([{"op": "replace", "path": "active", "value": false}]),
    )
    .await;
    t.audit_request(SCIM).send().await.expect("send");
    t.http
        .get(format!("{}/api/v2/nothing", t.sim.base_url()))
        .send()
        .await
        .expect("send");

    let response = t
        .http
        .get(format!("{}/_sim/stats", t.sim.base_url()))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let over_http: netskope_sim::SimStats = response.json().await.expect("stats json");
    let stats = t.sim.stats();
    assert_eq!(over_http, stats);

    let patch = "PATCH /api/v2/scim/Users/{id}";
    assert_eq!(stats.count(patch), 3);
    assert_eq!(stats.count_status(patch, 204), 2);
    assert_eq!(stats.count_status(patch, 404), 1);
    assert_eq!(stats.count_status("GET /api/v2/events/data/audit", 403), 1);
    assert_eq!(stats.count_status("GET (unmatched)", 404), 1);
    assert_eq!(stats.total(), 5);
    // `/_sim/stats` itself is never counted.
    t.http
        .get(format!("{}/_sim/stats", t.sim.base_url()))
        .send()
        .await
        .expect("send");
    assert_eq!(t.sim.stats().total(), 5);
}

#[tokio::test]
async fn invalid_settings_are_refused_and_shutdown_stops_the_server() {
    let err = start(SimArgs {
        fault_rate: 1.5,
        ..SimArgs::default()
    })
    .await
    .expect_err("fault rate > 1");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let err = start(SimArgs {
        patch_status: 202,
        ..SimArgs::default()
    })
    .await
    .expect_err("patch status");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);

    let t = Tenant::with_users(0).await;
    let url = format!("{}/_sim/stats", t.sim.base_url());
    assert!(t.http.get(&url).send().await.is_ok());
    t.sim.shutdown().await;
    assert!(Client::new().get(&url).send().await.is_err());
}

// ---- RFC 7644 features that generic SCIM tooling expects ----------------------------------

const SEARCH: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
const GROUP_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

async fn json_ok(response: Response) -> Value {
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(content_type, "application/scim+json");
    response.json().await.expect("json")
}

#[tokio::test]
async fn discovery_endpoints_describe_what_the_simulator_does() {
    let t = Tenant::with_users(0).await;
    let get = |path: &str| t.scim(Method::GET, path).send();

    let spc = json_ok(get("/ServiceProviderConfig").await.expect("send")).await;
    assert_eq!(spc["patch"]["supported"], json!(true));
    assert_eq!(
        spc["bulk"]["supported"],
        json!(false),
        "Netskope has no /Bulk"
    );
    assert_eq!(spc["sort"]["supported"], json!(false));

    let types = json_ok(get("/ResourceTypes").await.expect("send")).await;
    assert_eq!(types["totalResults"], json!(2));
    let user_type = json_ok(get("/ResourceTypes/User").await.expect("send")).await;
    assert_eq!(user_type["endpoint"], json!("/Users"));
    let (status, _) = scim_error(get("/ResourceTypes/Device").await.expect("send")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let schemas = json_ok(get("/Schemas").await.expect("send")).await;
    assert_eq!(schemas["totalResults"], json!(2));
    let group = json_ok(get(&format!("/Schemas/{GROUP_URN}")).await.expect("send")).await;
    let members = group["attributes"]
        .as_array()
        .and_then(|attrs| attrs.iter().find(|a| a["name"] == "members"))
        .cloned()
        .expect("members described");
    assert_eq!(
        members["returned"],
        json!("request"),
        "members only when asked, as Netskope does"
    );
    let (status, _) = scim_error(get("/Schemas/urn:nope").await.expect("send")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Read-only endpoints; and the same token rules as Users and Groups.
    for path in ["/ServiceProviderConfig", "/ResourceTypes", "/Schemas"] {
        let response = t.scim(Method::POST, path).send().await.expect("send");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
    }
    let response = t
        .http
        .get(format!("{}/Schemas", t.sim.scim_base_url()))
        .header("Netskope-Api-Token", EVENTS)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.bytes().await.expect("body").is_empty());
    assert_eq!(t.sim.audit_event_count(), 0);
}

#[tokio::test]
async fn attributes_and_excluded_attributes_project_resources() {
    let t = Tenant::with_users(1).await;
    let id = t.id("user1@example.com");
    let get = |query: &'static [(&'static str, &'static str)]| {
        t.scim(Method::GET, &format!("/Users/{id}"))
            .query(query)
            .send()
    };

    let only = json_ok(
        get(&[("attributes", "userName,name.givenName")])
            .await
            .expect("send"),
    )
    .await;
    let mut keys: Vec<&String> = only.as_object().expect("object").keys().collect();
    keys.sort();
    assert_eq!(keys, ["id", "name", "schemas", "userName"]);
    assert_eq!(only["name"], json!({"givenName": "User"}));

    let without = json_ok(
        get(&[("excludedAttributes", "emails,name.familyName,id")])
            .await
            .expect("send"),
    )
    .await;
    assert!(without.get("emails").is_none());
    assert_eq!(without["name"], json!({"givenName": "User"}));
    assert_eq!(without["id"], json!(id), "id is always returned");
    assert_eq!(without["active"], json!(true));

    let list = json_ok(
        t.scim(Method::GET, "/Users")
            .query(&[("attributes", "externalId")])
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(
        list["Resources"][0],
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": id, "externalId": "emp-1"})
    );

    let (status, body) = scim_error(
        get(&[("attributes", "emails[type eq \"work\"]")])
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(
        (status, body["scimType"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalidValue"))
    );
}

#[tokio::test]
async fn searches_filter_page_and_project_without_being_audited() {
    let t = Tenant::with_users(3).await;
    let u2 = t.id("user2@example.com");
    let gid = t.create_group("Quarantine_HighRisk", &[&u2]).await;
    let audited = t.sim.audit_event_count();
    let search = |path: &'static str, body: Value| t.scim(Method::POST, path).json(&body).send();

    let users = json_ok(
        search(
            "/Users/.search",
            json!({"schemas": [SEARCH], "filter": "userName eq \"USER2@example.com\"", "attributes": ["userName"]}),
        )
        .await
        .expect("send"),
    )
    .await;
    assert_eq!(users["totalResults"], json!(1));
    assert_eq!(
        users["Resources"][0],
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": u2, "userName": "user2@example.com"})
    );

    let groups = json_ok(
        search(
            "/Groups/.search",
            json!({"schemas": [SEARCH], "attributes": ["members"]}),
        )
        .await
        .expect("send"),
    )
    .await;
    assert_eq!(groups["Resources"][0]["members"][0]["value"], json!(u2));

    // The root search lists users, then groups, and pages over both.
    let all = json_ok(
        search(
            "/.search",
            json!({"schemas": [SEARCH], "startIndex": 3, "count": 2}),
        )
        .await
        .expect("send"),
    )
    .await;
    assert_eq!(all["totalResults"], json!(4));
    assert_eq!(all["itemsPerPage"], json!(2));
    assert_eq!(all["Resources"][0]["userName"], json!("user3@example.com"));
    assert_eq!(all["Resources"][1]["id"], json!(gid));
    assert!(all["Resources"][1].get("members").is_none());
    // A group-only filter attribute selects from the groups alone.
    let by_name = json_ok(
        search(
            "/.search",
            json!({"schemas": [SEARCH], "filter": "displayName eq \"quarantine_highrisk\""}),
        )
        .await
        .expect("send"),
    )
    .await;
    assert_eq!(by_name["totalResults"], json!(1));
    assert_eq!(by_name["Resources"][0]["id"], json!(gid));

    let (status, body) = scim_error(
        search("/Users/.search", json!({"filter": "userName eq \"x\""}))
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(
        (status, body["scimType"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalidSyntax"))
    );
    let (status, body) = scim_error(
        search(
            "/.search",
            json!({"schemas": [SEARCH], "filter": "nickName eq \"x\""}),
        )
        .await
        .expect("send"),
    )
    .await;
    assert_eq!(
        (status, body["scimType"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalidFilter"))
    );

    assert_eq!(
        t.sim.audit_event_count(),
        audited,
        "a search is a read, not an audited change"
    );
    assert_eq!(t.sim.stats().count("POST /api/v2/scim/.search"), 3);
}

#[tokio::test]
async fn patch_remove_active_leaves_it_unassigned_and_the_user_active() {
    let t = Tenant::with_users(1).await;
    let id = t.id("user1@example.com");
    let response = t
        .patch(
            &format!("/Users/{id}"),
            json!([{"op": "remove", "path": "active"}]),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let user = json_ok(
        t.scim(Method::GET, &format!("/Users/{id}"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert!(user.get("active").is_none());
    assert_eq!(
        t.sim.user("user1@example.com").map(|u| u.active),
        Some(true)
    );
    let active = json_ok(t.find_users("active eq true").await).await;
    assert_eq!(active["totalResults"], json!(1));
}
