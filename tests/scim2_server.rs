//! offboarder against scim2-server, an in-memory RFC 7644 server from PyPI that no one here
//! wrote, and that is stricter than Netskope in places. The worker runs whole (librdkafka's
//! mock cluster for Kafka), with `auth_header = "bearer"`, `scim_base_url` pointing at the
//! server, and verification by read-back, since a plain SCIM server has no audit trail. Each
//! test works in a tenant of its own on the shared server.
//!
//! `scripts/test` starts the server and sets `SCIM2_SERVER_URL` and `SCIM2_SERVER_TOKEN`.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::OwnedMessage;
use secrecy::SecretString;
use serde_json::{Value, json};

use netskope::config::{AuthHeader, RemoveStyle};
use netskope::{NetskopeClient, Tokens};
use netskope_sim::SimArgs;
use offboarder::config::Config;
use offboarder::pipeline::Pipeline;
use offboarder::sandbox::{self, Sandbox};
use offboarder::verify::VerifyMode;

const QUARANTINE: &str = "Quarantine_HighRisk";
const WAIT: Duration = Duration::from_secs(60);

/// One tenant of the shared scim2-server, and a plain HTTP client to seed and inspect it
/// without going through offboarder's client.
struct Tenant {
    /// `http://host:port/<tenant>/v2`
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Tenant {
    /// A fresh tenant, or `None` when the peer tests are skipped.
    fn new() -> Option<Self> {
        let url = support::peer("SCIM2_SERVER_URL")?;
        let token = support::peer("SCIM2_SERVER_TOKEN")?;
        let name = format!("t{:016x}", rand::random::<u64>());
        offboarder_base::tls::install();
        Some(Self {
            base: format!("{}/{name}/v2", url.trim_end_matches('/')),
            token,
            http: reqwest::Client::new(),
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let reply = request
            .bearer_auth(&self.token)
            .header("content-type", "application/scim+json")
            .send()
            .await
            .expect("scim2-server answers");
        let status = reply.status().as_u16();
        let body = reply.bytes().await.expect("body");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// Creates an active user and returns its id.
    async fn create_user(&self, user_name: &str) -> String {
        let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                          "userName": user_name, "active": true});
        let (status, user) = self
            .send(self.http.post(format!("{}/Users", self.base)).json(&body))
            .await;
        assert_eq!(status, 201, "creating {user_name}: {user}");
        user["id"].as_str().expect("id").to_string()
    }

    async fn user(&self, id: &str) -> Value {
        let (status, user) = self
            .send(self.http.get(format!("{}/Users/{id}", self.base)))
            .await;
        assert_eq!(status, 200, "reading user {id}: {user}");
        user
    }

    /// The member ids of the group named `name`, or `None` when no such group exists.
    async fn members_of(&self, name: &str) -> Option<BTreeSet<String>> {
        let filter = format!("displayName eq \"{name}\"");
        let (status, list) = self
            .send(
                self.http
                    .get(format!("{}/Groups", self.base))
                    .query(&[("filter", filter.as_str())]),
            )
            .await;
        assert_eq!(status, 200, "listing groups: {list}");
        let group = list["Resources"].as_array()?.first()?.clone();
        Some(
            group["members"]
                .as_array()
                .map(|members| {
                    members
                        .iter()
                        .filter_map(|m| m["value"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    /// A worker config for this tenant: the sandbox's Kafka, this server for SCIM, read-back,
    /// and no Netskope URL at all (no tenant, no audit trail), as a user of a plain SCIM
    /// server would write it.
    fn config(&self, sandbox: &Sandbox, group: &str) -> Config {
        let mut c = sandbox.config(group);
        c.netskope.tenant_url = None;
        c.netskope.audit_url = None;
        c.netskope.scim_base_url = Some(self.base.clone());
        c.netskope.auth_header = AuthHeader::Bearer;
        c.netskope.requests_per_minute = 600_000;
        c.verify.mode = VerifyMode::Readback;
        c.verify.timeout = Duration::from_secs(1);
        c.pipeline.shutdown_grace = Duration::from_secs(10);
        c
    }

    fn client(&self, config: &Config) -> Arc<NetskopeClient> {
        let client = NetskopeClient::builder(&config.netskope)
            .tokens(Tokens {
                scim: SecretString::from(self.token.clone()),
                events: None,
            })
            .build()
            .expect("client");
        Arc::new(client)
    }
}

async fn sandbox() -> Sandbox {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    // The simulator inside the sandbox goes unused: SCIM goes to scim2-server.
    Sandbox::start(
        SimArgs {
            users: 0,
            ..SimArgs::default()
        },
        2,
    )
    .await
    .expect("sandbox")
}

fn outcome(m: &OwnedMessage) -> Value {
    serde_json::from_str(&sandbox::text(m)).expect("outcome is JSON")
}

/// Final outcomes by event id: verified, unverified, failed or skipped.
fn finals(read: &[OwnedMessage]) -> Vec<Value> {
    read.iter()
        .map(outcome)
        .filter(|o| {
            matches!(
                o["status"].as_str(),
                Some("verified" | "unverified" | "superseded" | "failed" | "skipped")
            )
        })
        .collect()
}

/// Publishes `records` (topic, user, payload), runs the worker until `expected` final outcomes
/// are out, stops it, and returns those outcomes.
async fn run(
    sandbox: &Sandbox,
    config: &Config,
    client: Arc<NetskopeClient>,
    records: &[(String, String, Vec<u8>)],
    expected: usize,
) -> Vec<Value> {
    sandbox.publish(records).await.expect("publish");
    let pipeline = Pipeline::new(config, client).await.expect("pipeline");
    let handle = pipeline.handle();
    let worker = tokio::spawn(pipeline.run());
    let read = sandbox
        .read(&sandbox.topics.outcomes, WAIT, |r| {
            finals(r).len() >= expected
        })
        .await
        .expect("read outcomes");
    handle.stop();
    worker.await.expect("joined").expect("clean stop");
    let finals = finals(&read);
    assert_eq!(finals.len(), expected, "final outcomes: {finals:#?}");
    finals
}

fn by_event(finals: &[Value], event_id: &str) -> Value {
    finals
        .iter()
        .find(|o| o["source_event_id"] == event_id)
        .unwrap_or_else(|| panic!("no final outcome for {event_id}: {finals:#?}"))
        .clone()
}

fn assert_read_back(o: &Value) {
    assert_eq!(o["status"], "verified", "{o:#}");
    assert_eq!(o["verification"]["method"], "readback", "{o:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivation_is_applied_and_read_back() {
    let Some(tenant) = Tenant::new() else { return };
    let sandbox = sandbox().await;
    let ann = tenant.create_user("ann@example.com").await;
    let bob = tenant.create_user("bob@example.com").await;
    let stays = tenant.create_user("carol@example.com").await;
    let hr = &sandbox.topics.terminations;
    let records = vec![
        (
            hr.clone(),
            "ann@example.com".into(),
            support::event("t-ann", "ann@example.com", json!({})),
        ),
        // userName matching is case-insensitive on both Netskope and RFC 7643 servers.
        (
            hr.clone(),
            "bob@example.com".into(),
            support::event("t-bob", "Bob@Example.com", json!({})),
        ),
    ];
    let config = tenant.config(&sandbox, "scim2-deactivate");
    let finals = run(&sandbox, &config, tenant.client(&config), &records, 2).await;

    for id in ["t-ann", "t-bob"] {
        let o = by_event(&finals, id);
        assert_read_back(&o);
        assert_eq!(o["action"], "deactivate");
    }
    for id in [&ann, &bob] {
        assert_eq!(tenant.user(id).await["active"], false, "user {id}");
    }
    assert_eq!(tenant.user(&stays).await["active"], true, "untouched user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_then_release_round_trips() {
    let Some(tenant) = Tenant::new() else { return };
    let sandbox = sandbox().await;
    let dan = tenant.create_user("dan@example.com").await;
    let eve = tenant.create_user("eve@example.com").await;
    let xdr = &sandbox.topics.risk_signals;
    let config = tenant.config(&sandbox, "scim2-quarantine");

    // The group does not exist yet: the worker creates it, then adds both users in one PATCH.
    let quarantine = vec![
        (
            xdr.clone(),
            "dan@example.com".into(),
            support::event("q-dan", "dan@example.com", json!({"risk_score": 95})),
        ),
        (
            xdr.clone(),
            "eve@example.com".into(),
            support::event("q-eve", "eve@example.com", json!({"severity": "critical"})),
        ),
    ];
    let finals = run(&sandbox, &config, tenant.client(&config), &quarantine, 2).await;
    for id in ["q-dan", "q-eve"] {
        let o = by_event(&finals, id);
        assert_read_back(&o);
        assert_eq!(o["action"], "quarantine");
    }
    assert_eq!(
        tenant.members_of(QUARANTINE).await,
        Some(BTreeSet::from([dan.clone(), eve.clone()]))
    );

    // A cleared signal releases one of them; the other stays quarantined.
    let release = vec![(
        xdr.clone(),
        "dan@example.com".into(),
        support::event(
            "r-dan",
            "dan@example.com",
            json!({"severity": "high", "state": "cleared"}),
        ),
    )];
    let finals = run(&sandbox, &config, tenant.client(&config), &release, 3).await;
    let o = by_event(&finals, "r-dan");
    assert_read_back(&o);
    assert_eq!(o["action"], "release");
    assert_eq!(
        tenant.members_of(QUARANTINE).await,
        Some(BTreeSet::from([eve]))
    );
}

/// Read-back shows the state now: a quarantine released before it was read back would read as
/// "not a member" and end `unverified`, a false alarm (five of five users, before). It ends
/// `superseded` instead (or `verified`, when a poll read it back before the release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantine_released_before_its_read_back_is_superseded_not_unverified() {
    let Some(tenant) = Tenant::new() else { return };
    let sandbox = sandbox().await;
    let xdr = &sandbox.topics.risk_signals;
    let names: Vec<String> = (1..=5).map(|n| format!("flip{n}@example.com")).collect();
    let mut records = Vec::new();
    for name in &names {
        tenant.create_user(name).await;
        records.push((
            xdr.clone(),
            name.clone(),
            support::event(&format!("q-{name}"), name, json!({"risk_score": 95})),
        ));
        records.push((
            xdr.clone(),
            name.clone(),
            support::event(
                &format!("r-{name}"),
                name,
                json!({"severity": "high", "state": "cleared"}),
            ),
        ));
    }
    let config = tenant.config(&sandbox, "scim2-superseded");
    let finals = run(&sandbox, &config, tenant.client(&config), &records, 10).await;
    let status = |id: String| by_event(&finals, &id)["status"].clone();
    let quarantines: Vec<Value> = names.iter().map(|n| status(format!("q-{n}"))).collect();
    println!("quarantines released before read-back: {quarantines:?}");
    for name in &names {
        assert_read_back(&by_event(&finals, &format!("r-{name}")));
    }
    assert!(
        quarantines
            .iter()
            .all(|s| s == "superseded" || s == "verified"),
        "no false alarm: {quarantines:?}"
    );
    assert_eq!(
        tenant
            .members_of(QUARANTINE)
            .await
            .unwrap_or_default()
            .len(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_fails_without_touching_anyone() {
    let Some(tenant) = Tenant::new() else { return };
    let sandbox = sandbox().await;
    let fay = tenant.create_user("fay@example.com").await;
    let records = vec![
        (
            sandbox.topics.terminations.clone(),
            "ghost@example.com".into(),
            support::event("t-ghost", "ghost@example.com", json!({})),
        ),
        (
            sandbox.topics.risk_signals.clone(),
            "nobody@example.com".into(),
            support::event("q-nobody", "nobody@example.com", json!({"risk_score": 99})),
        ),
    ];
    let config = tenant.config(&sandbox, "scim2-unknown");
    let finals = run(&sandbox, &config, tenant.client(&config), &records, 2).await;
    for id in ["t-ghost", "q-nobody"] {
        let o = by_event(&finals, id);
        assert_eq!(o["status"], "failed", "{o:#}");
        assert_eq!(o["error"]["kind"], "not_found", "{o:#}");
    }
    assert_eq!(tenant.user(&fay).await["active"], true);
    // Nothing was quarantined, so the group was never needed.
    assert_eq!(
        tenant.members_of(QUARANTINE).await.unwrap_or_default(),
        BTreeSet::new()
    );
}

/// Netskope accepts a removal written either way; RFC 7644 reads `remove` on `members` without
/// a filter as "remove every member", and scim2-server refuses it with a value (400). The
/// default form, one filter path per member, is the one both accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_removal_by_filter_path_is_accepted() {
    let Some(tenant) = Tenant::new() else { return };
    let ids = [
        tenant.create_user("gus@example.com").await,
        tenant.create_user("hal@example.com").await,
        tenant.create_user("ivy@example.com").await,
    ];
    let config = tenant.config(&sandbox().await, "unused");
    assert_eq!(config.netskope.member_remove_style, RemoveStyle::PathFilter);
    let client = tenant.client(&config);
    let group = client.ensure_group(QUARANTINE).await.expect("group");
    client.add_members(&group, &ids).await.expect("add");
    let sent = client
        .remove_members(&group, &ids[..2])
        .await
        .expect("remove");
    assert_eq!(sent.requests, 1, "two removals travel in one PATCH");
    assert_eq!(
        tenant.members_of(QUARANTINE).await,
        Some(BTreeSet::from([ids[2].clone()]))
    );
}

/// Configured for the value-list form, the client meets scim2-server's refusal once, sends the
/// same removal with filter paths, and keeps to those from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_value_list_removal_falls_back_to_filter_paths_for_good() {
    let Some(tenant) = Tenant::new() else { return };
    let ids = [
        tenant.create_user("jon@example.com").await,
        tenant.create_user("kim@example.com").await,
        tenant.create_user("lee@example.com").await,
    ];
    let mut config = tenant.config(&sandbox().await, "unused");
    config.netskope.member_remove_style = RemoveStyle::ValueList;
    let client = tenant.client(&config);
    assert_eq!(
        client.remove_members_patch(&ids[..1])["Operations"][0]["path"],
        "members",
        "starts with the value-list form"
    );
    let group = client.ensure_group(QUARANTINE).await.expect("group");
    client.add_members(&group, &ids).await.expect("add");

    let sent = client
        .remove_members(&group, &ids[..1])
        .await
        .expect("remove");
    assert_eq!(
        sent.requests, 2,
        "refused once, then sent with filter paths"
    );
    assert_eq!(
        tenant.members_of(QUARANTINE).await,
        Some(BTreeSet::from([ids[1].clone(), ids[2].clone()])),
        "only the one user left the group"
    );

    let sent = client
        .remove_members(&group, &ids[1..2])
        .await
        .expect("remove");
    assert_eq!(sent.requests, 1, "the filter-path form from the start");
    assert_eq!(
        client.remove_members_patch(&ids[..1])["Operations"][0]["path"],
        format!("members[value eq \"{}\"]", ids[0])
    );
    assert_eq!(
        tenant.members_of(QUARANTINE).await,
        Some(BTreeSet::from([ids[2].clone()]))
    );
}
