//! `netskope-sim`: the tenant simulator on its own, for users' own tests. The same server as
//! `offboarder simulate`, without the worker.

use std::process::ExitCode;

use clap::Parser;

use netskope_sim::SimArgs;

/// A Netskope tenant simulator: SCIM 2.0 users and groups, audit events, token scopes, rate
/// limits and faults, on a local port.
#[derive(Parser)]
#[command(name = "netskope-sim", version)]
struct Cli {
    #[command(flatten)]
    sim: SimArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    match netskope_sim::run(Cli::parse().sim).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netskope-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
