//! `offboarder demo`: the whole worker, end to end, with nothing installed.
//!
//! It starts librdkafka's in-process mock Kafka cluster and the Netskope tenant simulator (ten
//! seeded users), publishes a set of sample events (terminations, one dated a few seconds ahead,
//! one scheduled and then rescinded, risk signals above and below the threshold, a repeat, a
//! cleared signal, a protected user, invalid events), pushes one Security Event Token (a RISC
//! credential-compromise, signed with a key made for the run) to the SSF receiver, runs the real
//! pipeline until every event has its final outcome (applied actions: verified against the
//! simulator's audit trail, which indexes with a one-second lag) or dead letter, and prints
//! what happened.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use netskope_sim::SimArgs;
use offboarder_base::clock::rfc3339;

use crate::pipeline::Pipeline;
use crate::sandbox::{self, Sandbox};

const GROUP: &str = "Quarantine_HighRisk";

/// The outcomes of one input event: its action phase and, for applied actions, its
/// verification.
#[derive(Default)]
struct Row {
    action: Option<Value>,
    verification: Option<Value>,
}

/// One sample event.
struct Sample {
    /// On the terminations topic (else the risk-signals topic).
    hr: bool,
    user: &'static str,
    payload: Vec<u8>,
    /// Whether it passes validation (else it ends in the dead-letter topic).
    valid: bool,
    /// Scheduled to act during the demo: it comes again when due, with outcomes of its own.
    fires: bool,
}

/// The scheduled termination acts this long after the demo publishes it.
const SCHEDULED_IN: time::Duration = time::Duration::seconds(4);

fn samples() -> Vec<Sample> {
    let now = "2026-11-25T09:00:00Z";
    let term = |id: &str, user: &str| {
        json!({"event_id": id, "occurred_at": now, "user": {"user_name": user},
               "source": "workday", "reason": "termination"})
    };
    let started = time::OffsetDateTime::now_utc();
    let dated = |id: &str, user: &str, at: time::OffsetDateTime| {
        let mut e = term(id, user);
        e["effective_at"] = rfc3339(at).into();
        e
    };
    let mut rescind = term("hr-1007", "user8@example.com");
    rescind["rescinded"] = true.into();
    rescind["reason"] = "termination entered in error".into();
    let risk = |id: &str, user: &str, extra: Value| {
        let mut e = json!({"event_id": id, "occurred_at": now, "user": {"user_name": user},
                           "source": "crowdstrike"});
        if let (Some(e), Some(extra)) = (e.as_object_mut(), extra.as_object()) {
            e.extend(extra.clone());
        }
        e
    };
    let bytes = |v: Value| v.to_string().into_bytes();
    let valid = |(hr, user, payload)| Sample {
        hr,
        user,
        payload,
        valid: true,
        fires: false,
    };
    let mut samples: Vec<Sample> = [
        (
            true,
            "user1@example.com",
            bytes(term("hr-1001", "user1@example.com")),
        ),
        (
            true,
            "USER2@Example.com",
            bytes(term("hr-1002", "USER2@Example.com")),
        ),
        (
            true,
            "nobody@example.com",
            bytes(term("hr-1003", "nobody@example.com")),
        ),
        (
            true,
            "user1@example.com",
            bytes(term("hr-1001", "user1@example.com")),
        ),
        (
            true,
            "breakglass@example.com",
            bytes(term("hr-1004", "breakglass@example.com")),
        ),
        (
            true,
            "user8@example.com",
            bytes(dated(
                "hr-1006",
                "user8@example.com",
                started + time::Duration::days(14),
            )),
        ),
        (true, "user8@example.com", bytes(rescind)),
        (
            false,
            "user3@example.com",
            bytes(risk(
                "xdr-2001",
                "user3@example.com",
                json!({"severity": "critical"}),
            )),
        ),
        (
            false,
            "user4@example.com",
            bytes(risk(
                "xdr-2002",
                "user4@example.com",
                json!({"risk_score": 91}),
            )),
        ),
        (
            false,
            "user5@example.com",
            bytes(risk(
                "xdr-2003",
                "user5@example.com",
                json!({"risk_score": 30, "severity": "low"}),
            )),
        ),
        (
            false,
            "user3@example.com",
            bytes(risk(
                "xdr-2004",
                "user3@example.com",
                json!({"severity": "critical"}),
            )),
        ),
        (
            false,
            "user4@example.com",
            bytes(risk(
                "xdr-2005",
                "user4@example.com",
                json!({"risk_score": 91, "state": "cleared"}),
            )),
        ),
    ]
    .into_iter()
    .map(valid)
    .collect();
    samples.push(Sample {
        fires: true,
        ..valid((
            true,
            "user7@example.com",
            bytes(dated(
                "hr-1005",
                "user7@example.com",
                started + SCHEDULED_IN,
            )),
        ))
    });
    samples.push(Sample {
        hr: true,
        user: "garbage",
        payload: b"this is not JSON".to_vec(),
        valid: false,
        fires: false,
    });
    samples.push(Sample {
        hr: false,
        user: "user6@example.com",
        // Neither a risk score nor a severity: a schema violation.
        payload: bytes(risk("xdr-2006", "user6@example.com", json!({}))),
        valid: false,
        fires: false,
    });
    samples
}

/// Runs the demo; `records` also prints every outcome and dead-letter record as published.
pub async fn run(print_records: bool) -> Result<(), Box<dyn std::error::Error>> {
    let mut sim_args = SimArgs {
        users: 10,
        audit_lag_secs: 1,
        ..SimArgs::default()
    };
    // As `offboarder simulate` reads them, so that a known token can be traced through a run.
    let mut from_env = Vec::new();
    for (var, token) in [
        ("OFFBOARDER_SIM_SCIM_TOKEN", &mut sim_args.scim_token),
        ("OFFBOARDER_SIM_EVENTS_TOKEN", &mut sim_args.events_token),
    ] {
        if let Ok(value) = std::env::var(var)
            && !value.trim().is_empty()
        {
            *token = value.trim().to_string();
            from_env.push(var);
        }
    }
    let sandbox = Sandbox::start(sim_args, 3).await?;
    let mut config = sandbox.config("offboarder-demo");
    config.policy.protected_users = vec!["breakglass@example.com".into()];
    let client = sandbox.client(&config)?;
    println!(
        "In-process Kafka (librdkafka mock cluster) at {}; Netskope tenant simulator at {} with 10 users\n",
        sandbox.bootstrap_servers(),
        sandbox.sim.base_url()
    );
    if !from_env.is_empty() {
        println!("Simulator tokens from {}\n", from_env.join(" and "));
    }

    let samples = samples();
    let records: Vec<(String, String, Vec<u8>)> = samples
        .iter()
        .map(|s| {
            let topic = if s.hr {
                &sandbox.topics.terminations
            } else {
                &sandbox.topics.risk_signals
            };
            (topic.clone(), s.user.to_lowercase(), s.payload.clone())
        })
        .collect();
    sandbox.publish(&records).await?;
    let invalid = samples.iter().filter(|s| !s.valid).count();
    let valid = samples.len() - invalid;
    // A scheduled termination that comes due adds a record with outcomes of its own.
    let finals_expected = valid + samples.iter().filter(|s| s.fires).count();
    println!(
        "Published {} events ({valid} valid, {invalid} invalid) to {} and {}\n",
        samples.len(),
        sandbox.topics.terminations,
        sandbox.topics.risk_signals
    );

    // One SET through the Shared Signals receiver: it lands on the risk-signals topic too.
    let transmitter = DemoTransmitter::new()?;
    let jwks_path =
        std::env::temp_dir().join(format!("offboarder-demo-jwks-{}.json", std::process::id()));
    std::fs::write(&jwks_path, transmitter.jwks())?;
    config.ssf = demo_ssf(&jwks_path);
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let (stop_receiver, stopped) = tokio::sync::oneshot::channel::<()>();
    let receiver_config = config.clone();
    let receiver = tokio::spawn(async move {
        let stop = async {
            let _ = stopped.await;
        };
        crate::ssf::receiver::run(&receiver_config, Some(bound_tx), stop).await
    });
    let push_url = format!("http://{}{}", bound_rx.await?, config.ssf.path);
    let set_user = "user9@example.com";
    let status = reqwest::Client::new()
        .post(&push_url)
        .header("content-type", "application/secevent+jwt")
        .body(transmitter.credential_compromise(set_user)?)
        .send()
        .await?
        .status();
    println!(
        "Pushed one Security Event Token (RISC credential-compromise for {set_user}, signed ES256) to the SSF receiver at {push_url}: {status}\n"
    );
    let finals_expected = finals_expected + usize::from(status.as_u16() == 202);

    let pipeline = Pipeline::new(&config, client).await?;
    // Both have read the key now.
    let _ = std::fs::remove_file(&jwks_path);
    let handle = pipeline.handle();
    let worker = tokio::spawn(pipeline.run());

    // Applied actions get a second outcome once verified; every other outcome is final.
    let is_final =
        |m: &rdkafka::message::OwnedMessage| !sandbox::text(m).contains(r#""status":"applied""#);
    let outcomes = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |read| {
            read.iter().filter(|m| is_final(m)).count() >= finals_expected
        })
        .await?;
    let dead = sandbox
        .read(
            &sandbox.topics.dead_letter,
            Duration::from_secs(10),
            |read| read.len() >= invalid,
        )
        .await?;
    handle.stop();
    let summary = worker.await??;
    let _ = stop_receiver.send(());
    receiver.await??;

    println!(
        "{:<10} {:<24} {:<11} {:<10} {:<60} verification",
        "event", "user", "action", "result", "detail"
    );
    // One row per input event, in sample order (event id, then position), with its action
    // outcome and its verification outcome side by side.
    let mut rows: BTreeMap<(String, i32, i64), Row> = BTreeMap::new();
    for m in &outcomes {
        let o: Value = serde_json::from_str(&sandbox::text(m))?;
        let key = (
            o["source_event_id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            o["source"]["partition"].as_i64().unwrap_or_default() as i32,
            o["source"]["offset"].as_i64().unwrap_or_default(),
        );
        let row = rows.entry(key).or_default();
        if o.get("verification").is_some() {
            row.verification = Some(o);
        } else {
            row.action = Some(o);
        }
    }
    for row in rows.values() {
        let Some(o) = &row.action else { continue };
        let detail = o["error"]["message"]
            .as_str()
            .or(o["reason"].as_str())
            .map(str::to_string)
            .or_else(|| {
                o["request"]["method"]
                    .as_str()
                    .map(|m| format!("{m} {}", o["request"]["path"].as_str().unwrap_or("")))
            })
            .unwrap_or_default();
        let verification = row.verification.as_ref().map_or("-".to_string(), |v| {
            format!(
                "{} by {}",
                v["status"].as_str().unwrap_or(""),
                v["verification"]["method"].as_str().unwrap_or("")
            )
        });
        println!(
            "{:<10} {:<24} {:<11} {:<10} {:<60} {}",
            o["source_event_id"].as_str().unwrap_or(""),
            o["user_name"].as_str().unwrap_or(""),
            o["action"].as_str().unwrap_or(""),
            o["status"].as_str().unwrap_or(""),
            short(&detail, 60),
            verification
        );
    }
    println!("\nDead letters:");
    for m in &dead {
        println!(
            "  {}[{}]@{}: {} ({})",
            sandbox::header(m, "offboarder-source-topic").unwrap_or_default(),
            sandbox::header(m, "offboarder-source-partition").unwrap_or_default(),
            sandbox::header(m, "offboarder-source-offset").unwrap_or_default(),
            sandbox::header(m, "offboarder-reason").unwrap_or_default(),
            short(
                &sandbox::header(m, "offboarder-error").unwrap_or_default(),
                80
            ),
        );
    }

    if print_records {
        println!("\nOutcome records, as on {}:", sandbox.topics.outcomes);
        for m in &outcomes {
            println!("{}", sandbox::text(m));
        }
        println!(
            "\nDead-letter records, as on {}:",
            sandbox.topics.dead_letter
        );
        for m in &dead {
            let headers: serde_json::Map<String, Value> = [
                "offboarder-reason",
                "offboarder-error",
                "offboarder-source-topic",
                "offboarder-source-partition",
                "offboarder-source-offset",
                "traceparent",
            ]
            .into_iter()
            .filter_map(|h| Some((h.to_string(), Value::from(sandbox::header(m, h)?))))
            .collect();
            println!(
                "{}",
                serde_json::json!({"headers": headers, "value": sandbox::text(m)})
            );
        }
    }

    println!("\nSimulator state after the run:");
    println!("{:<20} {:<8} groups", "user", "active");
    let members = sandbox.sim.group_members(GROUP).unwrap_or_default();
    for n in 1..=9 {
        let name = format!("user{n}@example.com");
        if let Some(u) = sandbox.sim.user(&name) {
            println!(
                "{:<20} {:<8} {}",
                u.user_name,
                u.active,
                if members.contains(&u.id) { GROUP } else { "" }
            );
        }
    }
    println!("\nRequests the simulator served:");
    for (endpoint, by_status) in sandbox.sim.stats().requests {
        let statuses: Vec<String> = by_status.iter().map(|(s, n)| format!("{s}×{n}")).collect();
        println!("  {endpoint:<45} {}", statuses.join(" "));
    }
    let outcome_counts: Vec<String> = summary
        .outcomes
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    println!(
        "\nWorker: {} events received, outcomes: {}; {} dead letters; {} left open",
        summary.received,
        outcome_counts.join(", "),
        summary.dead_letters,
        summary.left_open
    );
    let finals = outcomes.iter().filter(|m| is_final(m)).count();
    if finals < finals_expected || dead.len() < invalid {
        return Err(format!(
            "expected {finals_expected} final outcomes and {invalid} dead letters, got {finals} and {}",
            dead.len()
        )
        .into());
    }
    Ok(())
}

/// The demo's Shared Signals transmitter: an ES256 key made for the run, published as a JWKS.
struct DemoTransmitter {
    key: jsonwebtoken::EncodingKey,
    public: Vec<u8>,
}

const DEMO_ISSUER: &str = "https://idp.demo.example/";
const DEMO_AUDIENCE: &str = "urn:offboarder:demo";

impl DemoTransmitter {
    fn new() -> Result<Self, Box<dyn std::error::Error>> {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "cannot make a signing key")?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| "cannot read the signing key")?;
        Ok(Self {
            key: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
            public: pair.public_key().as_ref().to_vec(),
        })
    }

    /// The public key as a JWKS: `public` is 0x04, then x and y (32 bytes each).
    fn jwks(&self) -> String {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let (x, y) = self.public[1..].split_at(32);
        json!({"keys": [{"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y),
                          "kid": "demo-1", "use": "sig", "alg": "ES256"}]})
        .to_string()
    }

    fn credential_compromise(&self, user: &str) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.typ = Some("secevent+jwt".into());
        header.kid = Some("demo-1".into());
        let claims = json!({
            "iss": DEMO_ISSUER,
            "aud": DEMO_AUDIENCE,
            "iat": time::OffsetDateTime::now_utc().unix_timestamp(),
            "jti": "set-3001",
            "sub_id": {"format": "email", "email": user},
            "events": {
                "https://schemas.openid.net/secevent/risc/event-type/credential-compromise": {
                    "credential_type": "password"
                }
            }
        });
        jsonwebtoken::encode(&header, &claims, &self.key)
    }
}

fn demo_ssf(jwks: &std::path::Path) -> crate::ssf::SsfConfig {
    crate::ssf::SsfConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        audience: vec![DEMO_AUDIENCE.into()],
        transmitters: vec![crate::ssf::config::TransmitterConfig {
            name: "demo-idp".into(),
            issuer: DEMO_ISSUER.into(),
            jwks_url: None,
            jwks_file: Some(jwks.to_path_buf()),
            algorithms: Some(vec!["ES256".into()]),
            subjects: Default::default(),
        }],
        ..Default::default()
    }
}

fn short(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let cut: String = text.chars().take(width - 1).collect();
        format!("{cut}…")
    }
}
