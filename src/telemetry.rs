//! Log setup: human-readable on a terminal, JSON lines otherwise (for log shippers), or as
//! chosen with `--log-format` / `OFFBOARDER_LOG_FORMAT`. The level comes from `RUST_LOG`, else
//! the command's default (`info` for the worker, `warn` for the demo, whose output is a table).
//!
//! No token is ever a field of a span or event: the client keeps tokens inside and marks the
//! header value sensitive, and errors are built without them.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    Human,
    Json,
}

/// Installs the global subscriber. Logs go to stderr so that stdout stays for results.
pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !terminal,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
