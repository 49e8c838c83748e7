//! The adaptive directory mirror against the tenant simulator, on paused time: a trickle of
//! resolves never lists the directory, a burst lists it once, and the mirror answers exactly
//! what the filtered resolve would (a new user, a deleted one, a wrong-case name).

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;

use netskope::{NetskopeClient, NetskopeConfig, NetskopeError, Tokens};
use netskope_sim::{SimArgs, SimHandle};

const TOKEN: &str = "sim-scim-token";

async fn sim(users: usize) -> SimHandle {
    let sim = netskope_sim::start(SimArgs {
        users,
        rate_limit_per_min: 0,
        ..Default::default()
    })
    .await
    .expect("simulator starts");
    sim.record_timings(100_000);
    sim
}

fn client(sim: &SimHandle, tweak: impl FnOnce(&mut NetskopeConfig)) -> Arc<NetskopeClient> {
    let mut config = NetskopeConfig {
        tenant_url: Some(sim.base_url()),
        allow_insecure_http: true,
        requests_per_minute: 3_000,
        ..Default::default()
    };
    tweak(&mut config);
    Arc::new(
        NetskopeClient::builder(&config)
            .tokens(Tokens {
                scim: SecretString::from(TOKEN),
                events: None,
            })
            .without_request_timeout()
            .build()
            .expect("client"),
    )
}

/// `(filtered resolves, listing pages)` the simulator answered so far.
fn user_gets(sim: &SimHandle) -> (usize, usize) {
    let gets: Vec<_> = sim
        .timings()
        .into_iter()
        .filter(|t| t.method == "GET" && t.target.starts_with("/api/v2/scim/Users?"))
        .collect();
    let filtered = gets.iter().filter(|t| t.target.contains("filter=")).count();
    (filtered, gets.len() - filtered)
}

/// Resolves `names` at once, each announced first as the pipeline announces an event's.
async fn burst(client: &Arc<NetskopeClient>, names: Vec<String>) -> Vec<(String, String)> {
    let demands: Vec<_> = names.iter().map(|_| client.expect_resolve()).collect();
    let tasks: Vec<_> = names
        .into_iter()
        .zip(demands)
        .map(|(name, demand)| {
            let client = client.clone();
            tokio::spawn(async move {
                let user = client.resolve_user(&name).await;
                drop(demand);
                (name, user.expect("resolved").id)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_trickle_never_lists() {
    let sim = sim(1_000).await;
    let client = client(&sim, |_| {});
    for i in 1..=30 {
        let demand = client.expect_resolve();
        let name = format!("user{i}@example.com");
        let user = client.resolve_user(&name).await.expect("resolved");
        drop(demand);
        assert_eq!(Some(user.id), sim.user(&name).map(|u| u.id));
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    assert_eq!(
        user_gets(&sim),
        (30, 0),
        "one filtered GET each, no listing"
    );
    assert_eq!(client.directory_listings(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_burst_lists_once_and_the_mirror_answers_the_next_one_for_free() {
    let sim = sim(1_000).await;
    let client = client(&sim, |_| {});
    let names: Vec<String> = (1..=300).map(|i| format!("USER{i}@example.com")).collect();
    for (name, id) in burst(&client, names).await {
        let expected = sim.user(&name.to_lowercase()).map(|u| u.id);
        assert_eq!(Some(id), expected, "{name}");
    }
    assert_eq!(client.directory_listings(), 1);
    assert_eq!(client.mirrored_users(), Some(1_000));
    assert_eq!(
        user_gets(&sim),
        (0, 10),
        "ten pages of 100, no filtered resolve"
    );

    // Within user_cache_ttl (5 min) the mirror answers; a name it lacks goes to the filter.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let created = create_user(&sim, "newcomer@example.com").await;
    let mut names: Vec<String> = (301..=400)
        .map(|i| format!("user{i}@example.com"))
        .collect();
    names.push("newcomer@example.com".into());
    let resolved = burst(&client, names).await;
    assert!(resolved.contains(&("newcomer@example.com".into(), created)));
    assert_eq!(client.directory_listings(), 1, "no second listing");
    assert_eq!(user_gets(&sim), (1, 10), "only the new user cost a request");

    // After the TTL the mirror answers nothing; a trickle resolves by filter again.
    tokio::time::sleep(Duration::from_secs(300)).await;
    let demand = client.expect_resolve();
    client
        .resolve_user("user999@example.com")
        .await
        .expect("resolved");
    drop(demand);
    assert_eq!(user_gets(&sim), (2, 10));
    assert_eq!(client.directory_listings(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_burst_smaller_than_the_listing_resolves_by_filter() {
    let sim = sim(1_000).await;
    let client = client(&sim, |_| {});
    // The readiness probe learns the tenant's size: 1,000 users, ten pages.
    client.probe_scim().await.expect("probe");
    let names: Vec<String> = (1..=10).map(|i| format!("user{i}@example.com")).collect();
    burst(&client, names).await;
    assert_eq!(
        user_gets(&sim),
        (10, 1),
        "ten filtered GETs (and the probe's page)"
    );
    assert_eq!(client.directory_listings(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_size_costs_one_page_to_learn_then_filters_when_listing_does_not_pay() {
    let sim = sim(1_000).await;
    let client = client(&sim, |_| {});
    let names: Vec<String> = (1..=5).map(|i| format!("user{i}@example.com")).collect();
    burst(&client, names).await;
    assert_eq!(
        user_gets(&sim),
        (5, 1),
        "the first page said 1,000 users: not worth it"
    );
    assert_eq!(client.directory_listings(), 0);
}

#[tokio::test(start_paused = true)]
async fn switched_off_or_over_the_cap_never_lists() {
    let sim = sim(1_000).await;
    for (what, off) in [
        (
            "directory_mirror = false",
            client(&sim, |c| c.directory_mirror = false),
        ),
        (
            "directory_max_users = 500",
            client(&sim, |c| c.directory_max_users = 500),
        ),
    ] {
        off.probe_scim().await.expect("probe");
        let names: Vec<String> = (1..=200).map(|i| format!("user{i}@example.com")).collect();
        burst(&off, names).await;
        assert_eq!(off.directory_listings(), 0, "{what}");
    }
    assert_eq!(user_gets(&sim), (400, 2));
}

#[tokio::test(start_paused = true)]
async fn the_mirror_is_as_strict_as_the_filter_about_unknown_names() {
    let sim = sim(200).await;
    let client = client(&sim, |_| {});
    let mut names: Vec<String> = (1..=100).map(|i| format!("user{i}@example.com")).collect();
    names.push("ghost@example.com".into());
    let demands: Vec<_> = names.iter().map(|_| client.expect_resolve()).collect();
    let results = futures::future::join_all(names.iter().map(|n| client.resolve_user(n))).await;
    drop(demands);
    assert_eq!(client.directory_listings(), 1);
    let ghost = results.last().expect("ghost's result");
    assert!(
        matches!(ghost, Err(NetskopeError::NotFound { .. })),
        "a name missing from the mirror is looked up with a filter, and not found: {ghost:?}"
    );
    assert_eq!(user_gets(&sim), (1, 2));
}

async fn create_user(sim: &SimHandle, name: &str) -> String {
    let reply = reqwest::Client::new()
        .post(format!("{}/Users", sim.scim_base_url()))
        .bearer_auth(TOKEN)
        .json(&json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": name,
            "active": true,
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(reply.status(), 201);
    let body: serde_json::Value = reply.json().await.expect("json");
    body["id"].as_str().expect("id").to_string()
}
