//! The token must never appear in a log line, an error message or a `Debug` dump, whatever
//! the server answers, including a server that echoes the token back in its error body.

mod support;

use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use netskope::{Inserted, NetskopeClient, NetskopeConfig, Tokens};
use support::CapturedLogs;

const SCIM_TOKEN: &str = "scim-SECRET-4b1d2c3e";
const EVENTS_TOKEN: &str = "events-SECRET-77aa88bb";

#[tokio::test(start_paused = true)]
async fn no_token_in_logs_errors_or_debug_output() {
    let logs = CapturedLogs::default();
    let human = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(human);

    let server = MockServer::start().await;
    // Every call must carry the right token, or this test would prove nothing.
    Mock::given(method("PATCH"))
        .and(path("/api/v2/scim/Users/u401"))
        .and(header("Netskope-Api-Token", SCIM_TOKEN))
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/api/v2/scim/Users/u503"))
        .and(header("Netskope-Api-Token", SCIM_TOKEN))
        .respond_with(
            ResponseTemplate::new(503).set_body_string(format!("upstream saw {SCIM_TOKEN}")),
        )
        .expect(3)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/api/v2/scim/Users/u400"))
        .and(header("Netskope-Api-Token", SCIM_TOKEN))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "status": "400",
            "detail": format!("bad header Netskope-Api-Token: {SCIM_TOKEN}"),
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/api/v2/scim/Users/u429"))
        .and(header("Netskope-Api-Token", SCIM_TOKEN))
        .respond_with(ResponseTemplate::new(429))
        .expect(3)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v2/events/data/audit"))
        .and(header("Netskope-Api-Token", EVENTS_TOKEN))
        .respond_with(ResponseTemplate::new(403))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v2/scim/Users"))
        .and(header("Netskope-Api-Token", SCIM_TOKEN))
        .respond_with(ResponseTemplate::new(302).insert_header(
            "Location",
            format!("https://elsewhere.example/?token={SCIM_TOKEN}").as_str(),
        ))
        .expect(1)
        .mount(&server)
        .await;

    let mut cfg = NetskopeConfig {
        tenant_url: Some(server.uri()),
        allow_insecure_http: true,
        ..Default::default()
    };
    cfg.retry.max_attempts = 3;
    cfg.retry.initial_delay = Duration::from_millis(100);
    let client = NetskopeClient::builder(&cfg)
        .tokens(Tokens {
            scim: SecretString::from(SCIM_TOKEN),
            events: Some(SecretString::from(EVENTS_TOKEN)),
        })
        .without_request_timeout()
        .build()
        .unwrap();

    let mut texts = vec![format!("{client:?}")];
    let errors = vec![
        client.deactivate("u401").await.unwrap_err(),
        client.deactivate("u503").await.unwrap_err(),
        client.deactivate("u400").await.unwrap_err(),
        client.deactivate("u429").await.unwrap_err(),
        client
            .audit_page(
                Inserted {
                    from: 0,
                    to: Some(1),
                },
                10,
                0,
            )
            .await
            .unwrap_err(),
        client.resolve_user("a@x.com").await.unwrap_err(),
    ];
    for e in &errors {
        tracing::error!(error = %e, debug = ?e, "reported");
        texts.push(e.to_string());
        texts.push(format!("{e:?}"));
    }
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.lines().count() > errors.len(),
        "the scenario produced logs to search"
    );
    texts.push(logged);
    for text in &texts {
        for token in [SCIM_TOKEN, EVENTS_TOKEN] {
            assert!(!text.contains(token), "token leaked into: {text}");
        }
    }
    // The scrubbed echo is still visible as such.
    assert!(
        errors[2].to_string().contains("[redacted]"),
        "{}",
        errors[2]
    );
}
