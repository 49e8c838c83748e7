//! Secrets stay secret end to end: `offboarder demo` runs with known token values, logging
//! everything at debug level and exporting its spans to a stand-in OTLP collector, and prints
//! every outcome and dead-letter record. None of that output may hold either token.

mod support;

use std::process::Stdio;

use tokio::process::Command;

const SCIM_TOKEN: &str = "scim-KNOWN-5f0e1d2c3b4a";
const EVENTS_TOKEN: &str = "events-KNOWN-a1b2c3d4e5f6";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_in_any_log_line_outcome_dead_letter_or_span() {
    let (endpoint, spans) = support::fake_collector().await;
    let output = Command::new(env!("CARGO_BIN_EXE_offboarder"))
        .args(["demo", "--records"])
        .env("OFFBOARDER_SIM_SCIM_TOKEN", SCIM_TOKEN)
        .env("OFFBOARDER_SIM_EVENTS_TOKEN", EVENTS_TOKEN)
        .env("OFFBOARDER_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // The run did what makes a leak possible: authenticated calls, outcomes, dead letters.
    assert!(
        stdout.contains(
            "Simulator tokens from OFFBOARDER_SIM_SCIM_TOKEN and OFFBOARDER_SIM_EVENTS_TOKEN"
        ),
        "the demo used the known tokens: {stdout}"
    );
    assert!(stdout.contains("Outcome records"), "{stdout}");
    assert!(stdout.contains("\"status\":\"verified\""), "{stdout}");
    assert!(stdout.contains("offboarder-reason"), "{stdout}");
    assert!(stderr.lines().count() > 20, "debug logging was on");
    let spans = spans.lock().expect("spans").concat();
    assert!(!spans.is_empty(), "spans were exported");
    println!(
        "searched {} lines of stdout, {} log lines and {} bytes of exported spans",
        stdout.lines().count(),
        stderr.lines().count(),
        spans.len()
    );
    for token in [SCIM_TOKEN, EVENTS_TOKEN] {
        assert!(!stdout.contains(token), "{token} in stdout");
        assert!(!stderr.contains(token), "{token} in the log");
        assert!(
            !spans.windows(token.len()).any(|w| w == token.as_bytes()),
            "{token} in an exported span"
        );
    }
}
