//! Shared Signals end to end. Security Event Tokens are made and signed by PyJWT (an
//! implementation independent of the receiver's, in the peers' virtualenv: `PEERS_PYTHON`, set
//! by `scripts/test`), from the examples of the RISC and CAEP specifications with this test's
//! issuer, audience, times and users. They are pushed over HTTP to `ssf-receiver`, and the
//! risk signals it writes and the worker's outcomes are checked. A corpus of bad SETs must each
//! get its RFC 8935 error and write nothing.

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::Message;
use serde_json::{Value, json};

use netskope_sim::SimArgs;
use offboarder::config::Config;
use offboarder::pipeline::Pipeline;
use offboarder::sandbox::{self, Sandbox};
use offboarder::ssf::SsfConfig;
use offboarder::ssf::config::TransmitterConfig;
use offboarder::ssf::subject::SubjectRules;
use offboarder::verify::VerifyMode;
use offboarder_base::secret::SecretSource;

const ISS: &str = "https://idp.example.com/";
const AUD: &str = "https://offboarder.example.com/ssf";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";
const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const WAIT: Duration = Duration::from_secs(60);

fn user(n: usize) -> String {
    format!("user{n}@example.com")
}

fn now() -> u64 {
    offboarder_base::clock::WallClock::new().now_secs()
}

/// A directory of its own for this test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("offboarder-ssf-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// This test's directory, where its JWKS goes, and its bearer-token file (`push-secret`).
fn files(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = scratch(name);
    let (jwks, bearer) = (dir.join("jwks.json"), dir.join("bearer"));
    std::fs::write(&bearer, "push-secret\n").expect("bearer file");
    (dir, jwks, bearer)
}

/// Signs `specs` (see tests/ssf/sign_sets.py) and writes the JWKS to `jwks`.
fn sign(python: &str, jwks: &Path, specs: Vec<Value>) -> Vec<String> {
    sign_with(python, jwks, "", specs)
}

/// [`sign`] with fresh keys whose kids end in `kid_suffix`.
fn sign_with(python: &str, jwks: &Path, kid_suffix: &str, specs: Vec<Value>) -> Vec<String> {
    let request = json!({"jwks_out": jwks, "kid_suffix": kid_suffix, "sets": specs});
    let out =
        support::run_python_script(python, "ssf/sign_sets.py", request.to_string().as_bytes());
    serde_json::from_slice(&out).expect("a list of tokens")
}

/// A SET's claims from this test's issuer to this receiver, issued now.
fn claims(jti: &str, events: Value) -> Value {
    json!({"iss": ISS, "aud": AUD, "iat": now(), "jti": jti, "events": events})
}

/// A RISC account-purged SET's claims for user `n`, named by email.
fn purged(jti: &str, n: usize) -> Value {
    with(
        claims(jti, json!({format!("{RISC}account-purged"): {}})),
        "sub_id",
        json!({"format": "email", "email": user(n)}),
    )
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn spec(key: &str, claims: Value) -> Value {
    json!({"key": key, "claims": claims})
}

/// Everything this test binary logs at info level and above, to check that no SET content is
/// logged there.
fn logs() -> &'static support::CapturedLogs {
    static LOGS: std::sync::OnceLock<support::CapturedLogs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = support::CapturedLogs::default();
        let _ = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_max_level(tracing::Level::INFO)
            .try_init();
        logs
    })
}

fn logged() -> String {
    String::from_utf8_lossy(&logs().0.lock().expect("logs")).into_owned()
}

async fn sandbox() -> Sandbox {
    logs();
    let args = SimArgs {
        users: 20,
        rate_limit_per_min: 0,
        ..SimArgs::default()
    };
    Sandbox::start(args, 3).await.expect("sandbox")
}

/// The worker's config with this test's transmitter: keys from `jwks`, a bearer token from
/// `bearer`, `iss_sub` subjects taken as user names (as the RISC example's subject is).
fn config(sandbox: &Sandbox, jwks: &Path, bearer: &Path) -> Config {
    let mut c = sandbox.config("ssf");
    c.pipeline.shutdown_grace = Duration::from_secs(10);
    c.netskope.requests_per_minute = 600_000;
    c.verify.mode = VerifyMode::Off;
    c.ssf = SsfConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        audience: vec![AUD.into()],
        bearer_token: SecretSource {
            env: None,
            file: Some(bearer.to_path_buf()),
        },
        max_body_bytes: 8 * 1024,
        transmitters: vec![TransmitterConfig {
            name: "idp".into(),
            issuer: ISS.into(),
            jwks_url: None,
            jwks_file: Some(jwks.to_path_buf()),
            algorithms: None,
            subjects: SubjectRules {
                iss_sub_is_user_name: true,
                opaque_is_user_name: false,
            },
        }],
        ..SsfConfig::default()
    };
    c
}

/// Starts the receiver; returns its push URL and what stops it.
async fn receiver(config: &Config) -> (String, tokio::sync::oneshot::Sender<()>) {
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = config.clone();
    tokio::spawn(async move {
        let stop = async {
            let _ = stop_rx.await;
        };
        if let Err(e) = offboarder::ssf::receiver::run(&config, Some(bound_tx), stop).await {
            panic!("the receiver failed: {e}");
        }
    });
    let addr = bound_rx.await.expect("the receiver listens");
    (format!("http://{addr}/ssf/events"), stop_tx)
}

/// Pushes one SET; returns the status and the RFC 8935 error code, if any.
async fn push(url: &str, bearer: Option<&str>, body: &str) -> (u16, Option<String>) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/secevent+jwt")
        .header("accept", "application/json")
        .body(body.to_string());
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    let response = request.send().await.expect("the receiver answers");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["err"].as_str().map(str::to_string))
}

/// The records of the risk-signals topic, read for `wait`.
async fn risk_signals(sandbox: &Sandbox, at_least: usize, wait: Duration) -> Vec<Value> {
    sandbox
        .read(&sandbox.topics.risk_signals, wait, |r| r.len() >= at_least)
        .await
        .expect("the risk-signals topic can be read")
        .iter()
        .map(|m| {
            let record: Value = serde_json::from_str(&sandbox::text(m)).expect("JSON");
            assert_eq!(
                m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                record["user"]["user_name"].as_str().map(str::to_lowercase),
                "keyed by user"
            );
            record
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_from_the_specifications_become_risk_signals_and_quarantines() {
    let Some(python) = support::peer("PEERS_PYTHON") else {
        return;
    };
    let sandbox = sandbox().await;
    let (dir, jwks, bearer) = files("spec");
    // The examples of RISC 1.0 (account-disabled, credential-compromise) and CAEP 1.0
    // (session-revoked, device-compliance-change, risk-level-change), with our users.
    let tokens = sign(
        &python,
        &jwks,
        vec![
            spec(
                "rsa",
                claims(
                    "756E69717565206964656E746966696572",
                    json!({format!("{RISC}account-disabled"): {
                        "subject": {"format": "iss_sub", "iss": ISS, "sub": user(1)},
                        "reason": "hijacking"
                    }}),
                ),
            ),
            spec(
                "ec",
                with(
                    claims(
                        "24c63fb56e5a2d77a6b512616ca9fa24",
                        json!({format!("{CAEP}session-revoked"): {"event_timestamp": 1_615_304_991}}),
                    ),
                    "sub_id",
                    json!({"format": "email", "email": user(2)}),
                ),
            ),
            spec(
                "rsa",
                with(
                    claims(
                        "b3a0e1d6c87f4e47a9f6b1e4c2d8a1f0",
                        json!({format!("{CAEP}device-compliance-change"): {
                            "previous_status": "compliant",
                            "current_status": "not-compliant",
                            "initiating_entity": "policy",
                            "reason_admin": {"en": "Location Policy Violation: C076E8A3"},
                            "event_timestamp": 1_615_304_991
                        }}),
                    ),
                    "sub_id",
                    json!({"format": "complex",
                           "device": {"format": "iss_sub", "iss": "https://idp.example.com/123456789/", "sub": "e9297990-14d2-42ec-a4a9-4036db86509a"},
                           "user": {"format": "email", "email": user(3)}}),
                ),
            ),
            spec(
                "ec",
                with(
                    claims(
                        "e4b2c5a1-credential-compromise",
                        json!({format!("{RISC}credential-compromise"): {"credential_type": "password"}}),
                    ),
                    "sub_id",
                    json!({"format": "email", "email": user(4)}),
                ),
            ),
            spec(
                "rsa",
                with(
                    claims(
                        "5b8f3c2e-risk-level-change",
                        json!({format!("{CAEP}risk-level-change"): {
                            "current_level": "HIGH",
                            "previous_level": "LOW",
                            "risk_reason": "PASSWORD_FOUND_IN_DATA_BREACH",
                            "principal": "USER",
                            "event_timestamp": 1_615_304_991
                        }}),
                    ),
                    "sub_id",
                    json!({"format": "account", "uri": format!("acct:{}", user(5))}),
                ),
            ),
        ],
    );
    let config = config(&sandbox, &jwks, &bearer);
    let (url, stop) = receiver(&config).await;
    for token in &tokens {
        assert_eq!(push(&url, Some("push-secret"), token).await, (202, None));
    }

    let signals = risk_signals(&sandbox, 5, WAIT).await;
    assert_eq!(signals.len(), 5, "{signals:?}");
    let by_user = |n: usize| {
        signals
            .iter()
            .find(|s| s["user"]["user_name"] == user(n).as_str())
            .unwrap_or_else(|| panic!("a signal for {}", user(n)))
    };
    assert_eq!(by_user(1)["severity"], "high");
    assert_eq!(by_user(1)["event_id"], "756E69717565206964656E746966696572");
    assert!(
        by_user(1)["reason"]
            .as_str()
            .is_some_and(|r| r.contains("hijacking"))
    );
    assert_eq!(by_user(2)["severity"], "medium");
    assert_eq!(by_user(3)["severity"], "high");
    assert_eq!(by_user(4)["severity"], "critical");
    assert_eq!(by_user(5)["severity"], "high");
    assert!(
        signals
            .iter()
            .all(|s| s["source"] == "idp" && s["state"] == "open")
    );

    // The worker takes them like any risk signal.
    let client = sandbox.client(&config).expect("client");
    let pipeline = Pipeline::new(&config, client).await.expect("pipeline");
    let handle = pipeline.handle();
    let worker = tokio::spawn(pipeline.run());
    // Verification is off: each event has one outcome.
    let outcomes = sandbox
        .read(&sandbox.topics.outcomes, WAIT, |r| r.len() >= 5)
        .await
        .expect("the outcomes topic can be read");
    handle.stop();
    let _ = worker.await;
    let _ = stop.send(());
    let mut seen: Vec<(String, String, String)> = outcomes
        .iter()
        .map(|m| {
            let o: Value = serde_json::from_str(&sandbox::text(m)).expect("JSON");
            let s = |k: &str| o[k].as_str().unwrap_or_default().to_string();
            (s("user_name"), s("action"), s("status"))
        })
        .collect();
    seen.sort();
    let want: Vec<(String, String, String)> = [
        (1, "quarantine", "applied"),
        (2, "none", "skipped"),
        (3, "quarantine", "applied"),
        (4, "quarantine", "applied"),
        (5, "quarantine", "applied"),
    ]
    .into_iter()
    .map(|(n, a, s)| (user(n), a.to_string(), s.to_string()))
    .collect();
    assert_eq!(seen, want);
    let quarantined = sandbox
        .sim
        .group_members("Quarantine_HighRisk")
        .expect("the quarantine group exists");
    let ids = |n: usize| sandbox.sim.user(&user(n)).map(|u| u.id).expect("user");
    let mut want: Vec<String> = [1, 3, 4, 5].into_iter().map(ids).collect();
    want.sort();
    assert_eq!(
        quarantined, want,
        "every SET at or above high quarantined, the medium one not"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sets_get_their_rfc_8935_errors_and_write_nothing() {
    let Some(python) = support::peer("PEERS_PYTHON") else {
        return;
    };
    let sandbox = sandbox().await;
    let (dir, jwks, bearer) = files("bad");
    let email = json!({"format": "email", "email": user(1)});
    let good = |jti: &str| purged(jti, 1);
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "wrong signature",
            spec("rogue", good("bad-1")),
            400,
            "invalid_key",
        ),
        ("alg none", spec("none", good("bad-2")), 400, "invalid_key"),
        (
            "unknown kid",
            json!({"key": "rsa", "kid": "retired-2019", "claims": good("bad-3")}),
            400,
            "invalid_key",
        ),
        (
            "wrong aud",
            spec(
                "rsa",
                with(
                    good("bad-4"),
                    "aud",
                    json!("https://someone-else.example.com"),
                ),
            ),
            400,
            "invalid_audience",
        ),
        (
            "unknown issuer",
            spec(
                "rsa",
                with(
                    good("bad-5"),
                    "iss",
                    json!("https://unknown-idp.example.com/"),
                ),
            ),
            400,
            "invalid_issuer",
        ),
        (
            "issued too long ago",
            spec(
                "rsa",
                with(good("bad-6"), "iat", json!(now() - 3 * 24 * 3600)),
            ),
            400,
            "invalid_request",
        ),
        (
            "expired",
            spec("rsa", with(good("bad-7"), "exp", json!(now() - 3600))),
            400,
            "invalid_request",
        ),
        (
            "unknown event type",
            spec(
                "ec",
                with(
                    claims(
                        "bad-8",
                        json!({"https://example.com/event-type/mystery": {}}),
                    ),
                    "sub_id",
                    email.clone(),
                ),
            ),
            400,
            "invalid_request",
        ),
        (
            "unknown subject format",
            spec(
                "ec",
                with(
                    good("bad-9"),
                    "sub_id",
                    json!({"format": "phone_number", "phone_number": "+12065550100"}),
                ),
            ),
            400,
            "invalid_request",
        ),
        (
            "an ID token, not a SET",
            json!({"key": "rsa", "header": {"typ": "JWT"}, "claims": good("bad-10")}),
            400,
            "invalid_request",
        ),
        (
            "oversized",
            spec(
                "rsa",
                with(good("bad-11"), "padding", json!("x".repeat(10_000))),
            ),
            400,
            "invalid_request",
        ),
    ];
    let mut specs: Vec<Value> = cases.iter().map(|(_, s, _, _)| s.clone()).collect();
    // The last two: one good SET, pushed twice (the second is a replay).
    specs.push(spec("rsa", good("once")));
    let tokens = sign(&python, &jwks, specs);
    let config = config(&sandbox, &jwks, &bearer);
    let (url, stop) = receiver(&config).await;

    for ((what, _, status, err), token) in cases.iter().zip(&tokens) {
        assert_eq!(
            push(&url, Some("push-secret"), token).await,
            (*status, Some(err.to_string())),
            "{what}"
        );
    }
    let good_token = tokens.last().expect("the good one");
    assert_eq!(
        push(&url, None, good_token).await,
        (401, Some("authentication_failed".into())),
        "no bearer token"
    );
    assert_eq!(
        push(&url, Some("guess"), good_token).await,
        (401, Some("authentication_failed".into())),
        "a wrong bearer token"
    );
    assert_eq!(
        push(&url, Some("push-secret"), "not a token").await,
        (400, Some("invalid_request".into()))
    );
    assert_eq!(
        push(&url, Some("push-secret"), good_token).await,
        (202, None)
    );
    assert_eq!(
        push(&url, Some("push-secret"), good_token).await,
        (400, Some("invalid_request".into())),
        "a replayed jti"
    );

    // Only the one good SET reached the topic.
    let signals = risk_signals(&sandbox, 2, Duration::from_secs(3)).await;
    let _ = stop.send(());
    assert_eq!(signals.len(), 1, "{signals:?}");
    assert_eq!(signals[0]["event_id"], "once");
    // Refusals are logged by their code; what the SETs held is not, above debug level.
    let text = logged();
    assert!(text.contains("SET refused"), "the capture works");
    for content in [
        "unknown-idp.example.com",
        "+12065550100",
        "mystery",
        "someone-else",
        "retired-2019",
    ] {
        assert!(!text.contains(content), "{content:?} was logged");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_forwarded_onto_the_risk_signals_topic_are_verified_and_mapped_the_same_way() {
    let Some(python) = support::peer("PEERS_PYTHON") else {
        return;
    };
    let sandbox = sandbox().await;
    let (dir, jwks, bearer) = files("kafka");
    let email = |n: usize| json!({"format": "email", "email": user(n)});
    let tokens = sign(
        &python,
        &jwks,
        vec![
            spec("rsa", purged("forwarded-1", 6)),
            spec("rogue", purged("forwarded-2", 7)),
            spec(
                "ec",
                with(
                    claims(
                        "forwarded-3",
                        json!({format!("{RISC}identifier-changed"): {"new-value": "h@example.com"}}),
                    ),
                    "sub_id",
                    email(8),
                ),
            ),
        ],
    );
    let topic = sandbox.topics.risk_signals.clone();
    let records: Vec<(String, String, Vec<u8>)> = [6, 7, 8]
        .into_iter()
        .zip(&tokens)
        .map(|(n, t)| (topic.clone(), user(n), t.clone().into_bytes()))
        .collect();
    sandbox.publish(&records).await.expect("published");
    let config = config(&sandbox, &jwks, &bearer);
    let client = sandbox.client(&config).expect("client");
    let pipeline = Pipeline::new(&config, client).await.expect("pipeline");
    let handle = pipeline.handle();
    let worker = tokio::spawn(pipeline.run());
    let outcomes = sandbox
        .read(&sandbox.topics.outcomes, WAIT, |r| !r.is_empty())
        .await
        .expect("outcomes");
    let dead = sandbox
        .read(&sandbox.topics.dead_letter, WAIT, |r| r.len() >= 2)
        .await
        .expect("dead letters");
    handle.stop();
    let _ = worker.await;

    assert_eq!(outcomes.len(), 1);
    let o: Value = serde_json::from_str(&sandbox::text(&outcomes[0])).expect("JSON");
    assert_eq!(
        (
            o["source_event_id"].as_str(),
            o["action"].as_str(),
            o["status"].as_str()
        ),
        (Some("forwarded-1"), Some("quarantine"), Some("applied")),
        "{o}"
    );
    let reason_of = |n: usize| {
        let d = dead
            .iter()
            .find(|m| m.key() == Some(user(n).as_bytes()))
            .unwrap_or_else(|| panic!("a dead letter for {}", user(n)));
        assert_eq!(
            d.payload(),
            Some(tokens[n - 6].as_bytes()),
            "the SET as it came"
        );
        (
            sandbox::header(d, "offboarder-reason").unwrap_or_default(),
            sandbox::header(d, "offboarder-error").unwrap_or_default(),
        )
    };
    let (reason, error) = reason_of(7);
    assert_eq!(reason, "invalid_set");
    assert!(error.starts_with("invalid_key"), "{error}");
    let (reason, error) = reason_of(8);
    assert_eq!(reason, "ignored_set");
    assert!(error.contains("identifier-changed"), "{error}");
    let text = logged();
    assert!(
        text.contains("Security Event Token sent to the dead-letter topic"),
        "the capture works"
    );
    assert!(
        !text.contains("identifier-changed"),
        "the dead letter's detail is not logged above debug"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_fetched_from_the_jwks_url_and_a_retired_one_refused() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let Some(python) = support::peer("PEERS_PYTHON") else {
        return;
    };
    let sandbox = sandbox().await;
    let dir = scratch("rotation");
    let (jwks_a, jwks_b, bearer) = (dir.join("a.json"), dir.join("b.json"), dir.join("bearer"));
    std::fs::write(&bearer, "push-secret").expect("bearer file");
    let purged = |jti: &str, n: usize| spec("rsa", purged(jti, n));
    let old = sign_with(
        &python,
        &jwks_a,
        "-2025",
        vec![purged("rot-1", 1), purged("rot-3", 3)],
    );
    let new = sign_with(&python, &jwks_b, "-2026", vec![purged("rot-2", 2)]);
    let server = MockServer::start().await;
    let serve = |file: &Path| {
        Mock::given(method("GET")).and(path("/jwks")).respond_with(
            ResponseTemplate::new(200).set_body_bytes(std::fs::read(file).expect("jwks")),
        )
    };
    serve(&jwks_a).mount(&server).await;
    let mut config = config(&sandbox, &jwks_a, &bearer);
    config.ssf.jwks_min_refetch = Duration::from_secs(1);
    config.ssf.transmitters[0].jwks_file = None;
    config.ssf.transmitters[0].jwks_url = Some(format!("{}/jwks", server.uri()));
    let (url, stop) = receiver(&config).await;
    assert_eq!(push(&url, Some("push-secret"), &old[0]).await, (202, None));

    // The transmitter rotates: its JWKS now holds only the new key.
    server.reset().await;
    serve(&jwks_b).mount(&server).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        push(&url, Some("push-secret"), &new[0]).await,
        (202, None),
        "the unknown kid made the receiver fetch the JWKS again"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        push(&url, Some("push-secret"), &old[1]).await,
        (400, Some("invalid_key".into())),
        "the retired key is gone from the fetched set"
    );
    let fetches = server.received_requests().await.map_or(0, |r| r.len());
    assert_eq!(
        fetches, 2,
        "one fetch for the new kid, one for the retired kid (after the reset)"
    );
    let _ = stop.send(());
    let signals = risk_signals(&sandbox, 3, Duration::from_secs(3)).await;
    let ids: HashSet<&str> = signals
        .iter()
        .filter_map(|s| s["event_id"].as_str())
        .collect();
    assert_eq!(ids, HashSet::from(["rot-1", "rot-2"]));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transmitter_whose_keys_cannot_be_read_does_not_stop_the_worker() {
    let Some(python) = support::peer("PEERS_PYTHON") else {
        return;
    };
    let sandbox = sandbox().await;
    let (dir, jwks, bearer) = files("unreadable");
    let token = sign(&python, &jwks, vec![spec("rsa", purged("unreadable-1", 9))]);
    let mut config = config(&sandbox, &jwks, &bearer);
    // Nothing listens there: the JWKS cannot be fetched.
    config.ssf.transmitters[0].jwks_file = None;
    config.ssf.transmitters[0].jwks_url = Some("http://127.0.0.1:9/jwks".into());
    sandbox
        .publish(&[
            (
                sandbox.topics.risk_signals.clone(),
                user(9),
                token[0].clone().into_bytes(),
            ),
            (
                sandbox.topics.terminations.clone(),
                user(10),
                support::event("hr-10", &user(10), json!({})),
            ),
        ])
        .await
        .expect("published");
    let client = sandbox.client(&config).expect("client");
    let pipeline = Pipeline::new(&config, client)
        .await
        .expect("the worker starts without the transmitter's keys");
    let handle = pipeline.handle();
    let worker = tokio::spawn(pipeline.run());
    let outcomes = sandbox
        .read(&sandbox.topics.outcomes, WAIT, |r| !r.is_empty())
        .await
        .expect("outcomes");
    let dead = sandbox
        .read(&sandbox.topics.dead_letter, WAIT, |r| !r.is_empty())
        .await
        .expect("dead letters");
    handle.stop();
    let _ = worker.await;
    let o: Value = serde_json::from_str(&sandbox::text(&outcomes[0])).expect("JSON");
    assert_eq!(
        (o["user_name"].as_str(), o["status"].as_str()),
        (Some(user(10).as_str()), Some("applied")),
        "terminations go on"
    );
    assert_eq!(
        sandbox::header(&dead[0], "offboarder-reason").as_deref(),
        Some("invalid_set")
    );
    assert!(
        sandbox::header(&dead[0], "offboarder-error")
            .is_some_and(|e| e.contains("could not be read at start")),
        "{:?}",
        sandbox::header(&dead[0], "offboarder-error")
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_signed_with_another_transmitters_key_is_refused() {
    let Some(python) = support::peer("PEERS_PYTHON") else {
        return;
    };
    let sandbox = sandbox().await;
    let dir = scratch("cross");
    let (jwks_a, jwks_b, bearer) = (dir.join("a.json"), dir.join("b.json"), dir.join("bearer"));
    std::fs::write(&bearer, "push-secret").expect("bearer file");
    const OTHER: &str = "https://other-idp.example.com/";
    let purged = |iss: &str, jti: &str| {
        let mut c = purged(jti, 1);
        c["iss"] = iss.into();
        spec("rsa", c)
    };
    let ours = sign_with(&python, &jwks_a, "-a", vec![purged(ISS, "cross-1")]);
    // The other transmitter's key signs a SET that claims to come from ours.
    let theirs = sign_with(
        &python,
        &jwks_b,
        "-b",
        vec![purged(ISS, "cross-2"), purged(OTHER, "cross-3")],
    );
    let mut config = config(&sandbox, &jwks_a, &bearer);
    let mut other = config.ssf.transmitters[0].clone();
    other.name = "other".into();
    other.issuer = OTHER.into();
    other.jwks_file = Some(jwks_b.clone());
    config.ssf.transmitters.push(other);
    let (url, stop) = receiver(&config).await;
    assert_eq!(push(&url, Some("push-secret"), &ours[0]).await, (202, None));
    assert_eq!(
        push(&url, Some("push-secret"), &theirs[0]).await,
        (400, Some("invalid_key".into())),
        "only the keys of the transmitter its iss names may verify a SET"
    );
    assert_eq!(
        push(&url, Some("push-secret"), &theirs[1]).await,
        (202, None),
        "the same key verifies that transmitter's own SETs"
    );
    let _ = stop.send(());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_does_not_start_without_its_topic() {
    let sandbox = sandbox().await;
    let (dir, jwks, bearer) = files("no-topic");
    // One usable key is enough: the receiver checks its keys before the brokers.
    let n = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xC5u8; 256])
    };
    let set = json!({"keys": [{"kty": "RSA", "n": n, "e": "AQAB", "kid": "k1"}]});
    std::fs::write(&jwks, set.to_string()).expect("jwks");
    let mut config = config(&sandbox, &jwks, &bearer);
    config.kafka.topics.risk_signals = "xdr.risk-signalz".into();
    let err = offboarder::ssf::receiver::run(&config, None, std::future::ready(()))
        .await
        .expect_err("a missing topic stops the receiver at start");
    assert!(
        err.contains("xdr.risk-signalz (kafka.topics.risk_signals): does not exist"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
