//! The `offboarder` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use offboarder::config::Config;
use offboarder::netskope::{ErrorClass, NetskopeClient};
use offboarder::sim::SimArgs;
use offboarder::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "offboarder",
    version,
    about = "Cuts Netskope access on HR terminations and security risk signals"
)]
struct Cli {
    /// Log format: human on a terminal, JSON otherwise, unless chosen.
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        env = "OFFBOARDER_LOG_FORMAT",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive the Netskope client against an in-process tenant simulator and print the result.
    Demo,
    /// Run a Netskope tenant simulator (SCIM, audit events, token scopes, rate limits, faults).
    Simulate(SimArgs),
    /// Validate a config file, then check that Netskope answers with the tokens it names.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Demo => match offboarder::demo::run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo failed: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Simulate(args) => match offboarder::sim::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("simulator failed: {e}");
                ExitCode::FAILURE
            }
        },
        Command::CheckConfig { config } => check_config(&config).await,
    }
}

/// Exit code for configuration faults, distinct from runtime failures.
const EXIT_CONFIG: u8 = 2;

async fn check_config(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let client = match NetskopeClient::from_config(&config.netskope) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    println!("config {}: valid", path.display());
    println!("  SCIM base: {}", client.endpoints().scim_base);
    println!("  audit:     {}", client.endpoints().audit);
    println!(
        "  tokens:    {}",
        if client.has_separate_events_token() {
            "separate SCIM and events tokens"
        } else {
            "one token for SCIM and events"
        }
    );
    let mut worst = ExitCode::SUCCESS;
    for (name, result) in [
        ("SCIM (GET /Users)", client.probe_scim().await),
        ("audit (GET events/data/audit)", client.probe_audit().await),
    ] {
        match result {
            Ok(()) => println!("  {name}: reachable, token accepted"),
            Err(e) => {
                println!("  {name}: FAILED: {e}");
                worst = match e.class() {
                    ErrorClass::Config => ExitCode::from(EXIT_CONFIG),
                    _ => ExitCode::FAILURE,
                };
            }
        }
    }
    worst
}
