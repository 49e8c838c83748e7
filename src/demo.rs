//! `offboarder demo`: the Netskope side of the worker, end to end, with nothing installed.
//!
//! It starts the tenant simulator in-process (ten seeded users, a one-second audit indexing
//! lag), drives the real client through the actions the worker takes (deactivate, delete,
//! quarantine, release, an unknown user, a redelivered termination), then verifies every
//! mutating call in the audit trail and reads the users back. Kafka is not involved yet: the
//! pipeline that feeds these actions from topics is built on top of this client.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use secrecy::SecretString;

use crate::clock::WallClock;
use crate::netskope::{AuditWindow, NetskopeClient, NetskopeConfig, NetskopeError, Tokens};
use crate::sim::{self, SimArgs};

const GROUP: &str = "Quarantine_HighRisk";
const AUDIT_LAG_SECS: u64 = 1;

/// What one demo step did, and which request should show up in the audit trail.
struct Row {
    event: &'static str,
    user: String,
    action: &'static str,
    result: String,
    /// `(METHOD, path)` of the mutating call, for audit matching. Rows served by one shared
    /// request (a quarantine PATCH for two users) carry the same pair and the same `batch`.
    expect: Option<(&'static str, String)>,
    batch: usize,
}

pub async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = SimArgs {
        users: 10,
        audit_lag_secs: AUDIT_LAG_SECS,
        ..SimArgs::default()
    };
    let (scim_token, events_token) = (args.scim_token.clone(), args.events_token.clone());
    let sim = sim::start(args).await?;
    let config = NetskopeConfig {
        tenant_url: Some(sim.base_url()),
        allow_insecure_http: true,
        ..NetskopeConfig::default()
    };
    let client = NetskopeClient::builder(&config)
        .tokens(Tokens {
            scim: SecretString::from(scim_token),
            events: Some(SecretString::from(events_token)),
        })
        .build()?;
    let scim_path = client.endpoints().scim_base.path().to_string();
    let clock = WallClock::new();
    let started = clock.now_secs();

    println!(
        "Netskope tenant simulator at {} with 10 users\n",
        sim.base_url()
    );
    let mut rows = Vec::new();

    for (event, user) in [
        ("termination", "user1@example.com"),
        ("termination", "USER2@Example.com"),
        ("termination", "nobody@example.com"),
        ("termination (redelivered)", "user1@example.com"),
    ] {
        let (result, expect) = match deactivate(&client, user).await {
            Ok(id) => (
                "applied".to_string(),
                Some(("PATCH", format!("{scim_path}/Users/{id}"))),
            ),
            Err(e) => (format!("failed: {}", e.kind()), None),
        };
        rows.push(Row {
            event,
            user: user.into(),
            action: "deactivate",
            result,
            expect,
            batch: rows.len(),
        });
    }

    let delete = async {
        let user = client.resolve_user("user5@example.com").await?;
        client.delete_user(&user.id).await?;
        Ok::<_, NetskopeError>(user.id)
    };
    rows.push(match delete.await {
        Ok(id) => Row {
            event: "termination (on_termination = delete)",
            user: "user5@example.com".into(),
            action: "delete",
            result: "applied".into(),
            expect: Some(("DELETE", format!("{scim_path}/Users/{id}"))),
            batch: rows.len(),
        },
        Err(e) => Row {
            event: "termination (on_termination = delete)",
            user: "user5@example.com".into(),
            action: "delete",
            result: format!("failed: {e}"),
            expect: None,
            batch: rows.len(),
        },
    });

    // Two high-risk signals: both users go into the quarantine group in one PATCH.
    let group_id = client.ensure_group(GROUP).await?;
    let u3 = client.resolve_user("user3@example.com").await?;
    let u4 = client.resolve_user("user4@example.com").await?;
    let result = match client
        .add_members(&group_id, &[u3.id.clone(), u4.id.clone()])
        .await
    {
        Ok(n) => format!("applied ({n} PATCH for 2 users)"),
        Err(e) => format!("failed: {e}"),
    };
    let batch = rows.len();
    for user in [&u3, &u4] {
        rows.push(Row {
            event: "risk signal, critical",
            user: user.user_name.clone(),
            action: "quarantine",
            result: result.clone(),
            expect: Some(("PATCH", format!("{scim_path}/Groups/{group_id}"))),
            batch,
        });
    }
    let result = match client
        .remove_members(&group_id, std::slice::from_ref(&u4.id))
        .await
    {
        Ok(_) => "applied".to_string(),
        Err(e) => format!("failed: {e}"),
    };
    rows.push(Row {
        event: "risk signal, cleared",
        user: u4.user_name.clone(),
        action: "release",
        result,
        expect: Some(("PATCH", format!("{scim_path}/Groups/{group_id}"))),
        batch: rows.len(),
    });

    let verified = verify(&client, &clock, started, &rows).await?;

    println!(
        "{:<40} {:<20} {:<11} {:<36} verification",
        "event", "user", "action", "result"
    );
    for row in &rows {
        let verification = match (&row.expect, verified.get(&row.batch)) {
            (None, _) => "-".to_string(),
            (Some(_), Some(id)) => format!("verified (audit _id {id})"),
            (Some(_), None) => "unverified".to_string(),
        };
        println!(
            "{:<40} {:<20} {:<11} {:<36} {}",
            row.event,
            row.user,
            row.action,
            short(&row.result, 36),
            verification
        );
    }

    println!("\nSimulator state after the run:");
    println!("{:<20} {:<8} groups", "user", "active");
    let members = sim.group_members(GROUP).unwrap_or_default();
    for n in 1..=6 {
        let name = format!("user{n}@example.com");
        match sim.user(&name) {
            Some(u) => println!(
                "{:<20} {:<8} {}",
                u.user_name,
                u.active,
                if members.contains(&u.id) { GROUP } else { "" }
            ),
            None => println!("{name:<20} (deleted)"),
        }
    }
    println!("\nRequests the simulator served:");
    for (endpoint, by_status) in sim.stats().requests {
        let statuses: Vec<String> = by_status.iter().map(|(s, n)| format!("{s}×{n}")).collect();
        println!("  {endpoint:<45} {}", statuses.join(" "));
    }
    sim.shutdown().await;
    Ok(())
}

async fn deactivate(client: &NetskopeClient, user: &str) -> Result<String, NetskopeError> {
    let found = client.resolve_user(user).await?;
    client.deactivate(&found.id).await?;
    Ok(found.id)
}

/// Polls the audit trail until every expected request shows up (or 15 s pass): one paged
/// query per poll for all requests, not one per request. Each audit event verifies one request
/// (a repeated request has its own event). Returns the audit `_id` per verified batch.
async fn verify(
    client: &NetskopeClient,
    clock: &WallClock,
    started: u64,
    rows: &[Row],
) -> Result<BTreeMap<usize, String>, NetskopeError> {
    let mut pending: BTreeMap<usize, (&str, &str)> = rows
        .iter()
        .filter_map(|r| r.expect.as_ref().map(|(m, p)| (r.batch, (*m, p.as_str()))))
        .collect();
    let mut verified = BTreeMap::new();
    let mut used = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    println!("Waiting for the audit trail (indexing lag {AUDIT_LAG_SECS} s)...\n");
    while !pending.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let window = AuditWindow {
            start: started.saturating_sub(5),
            end: clock.now_secs() + 1,
        };
        let mut offset = 0;
        for _page in 0..10 {
            let page = client.audit_page(window, 100, offset).await?;
            for event in &page {
                if used.contains(&event.id) {
                    continue;
                }
                let Some(data) = &event.supporting_data else {
                    continue;
                };
                let values = &data.data_values;
                let (Some(status), Some(method), Some(path)) = (
                    values.first().and_then(|v| v.as_u64()),
                    values.get(1).and_then(|v| v.as_str()),
                    values.get(2).and_then(|v| v.as_str()),
                ) else {
                    continue;
                };
                if !(200..300).contains(&status) {
                    continue;
                }
                let hit = pending
                    .iter()
                    .find(|(_, (m, p))| *m == method && *p == path)
                    .map(|(batch, _)| *batch);
                if let Some(batch) = hit {
                    pending.remove(&batch);
                    used.insert(event.id.clone());
                    verified.insert(batch, event.id.clone());
                }
            }
            if page.len() < 100 {
                break;
            }
            offset += page.len() as u64;
        }
    }
    Ok(verified)
}

fn short(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let cut: String = text.chars().take(width - 1).collect();
        format!("{cut}…")
    }
}
