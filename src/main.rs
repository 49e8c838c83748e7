//! The `offboarder` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use netskope::{ErrorClass, NetskopeClient};
#[cfg(feature = "demo")]
use netskope_sim::SimArgs;
use offboarder::config::Config;
use offboarder::pipeline::{self, Pipeline, PipelineHandle};
use offboarder::telemetry::{self, LogFormat};
use offboarder::tools::{self, ToolError, act::OperatorAction, dead_letters};

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
    /// Run the worker: consume the input topics, act in Netskope, publish outcomes.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    #[cfg(feature = "demo")]
    /// Run the whole worker against an in-process Kafka cluster and tenant simulator, with
    /// sample events, and print what happened. Needs nothing installed. The simulator's tokens
    /// come from OFFBOARDER_SIM_SCIM_TOKEN / OFFBOARDER_SIM_EVENTS_TOKEN when set.
    Demo {
        /// Also print every outcome and dead-letter record as it is on its topic.
        #[arg(long)]
        records: bool,
    },
    /// Run a Netskope tenant simulator (SCIM, audit events, token scopes, rate limits, faults).
    #[cfg(feature = "demo")]
    Simulate(SimArgs),
    /// Receive Security Event Tokens pushed by Shared Signals transmitters (RFC 8935) and write
    /// the risk signals they stand for to the risk-signals topic ([ssf] in the config).
    SsfReceiver {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config file, then check, without acting, that the brokers and Netskope answer
    /// with the credentials it names.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// The blast-radius guard of a running worker, through its admin listener.
    Guard {
        #[command(subcommand)]
        command: GuardCommand,
    },
    /// Publish an operator's action as an input event: the worker handles it like any other
    /// (policy, guard, verification, one final outcome), with source = "operator:<name>".
    Act {
        #[arg(value_enum)]
        action: OperatorAction,
        /// The user's SCIM userName, spelled as your HR feed keys it.
        #[arg(long)]
        user: String,
        /// Why, for the audit trail: kept in the event.
        #[arg(long)]
        reason: String,
        /// Who acts (default: $USER).
        #[arg(long)]
        operator: Option<String>,
        #[arg(long)]
        config: PathBuf,
    },
    /// Print one user's outcomes, oldest first, for an auditor.
    History {
        #[arg(long)]
        user: String,
        /// Print each outcome record as it is on the topic (JSON lines).
        #[arg(long)]
        json: bool,
        #[arg(long)]
        config: PathBuf,
    },
    /// List dead letters with their reasons, or send chosen ones back to their input topic.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
}

/// Which dead letters (every criterion given must match).
#[derive(clap::Args)]
struct DeadLetterSelection {
    /// The reason, e.g. schema_violation, invalid_json, retries_exhausted.
    #[arg(long)]
    reason: Option<String>,
    /// A partition of the dead-letter topic.
    #[arg(long)]
    partition: Option<i32>,
    /// The first offset (of the dead-letter topic) to take.
    #[arg(long)]
    from: Option<i64>,
    /// The last offset to take.
    #[arg(long)]
    to: Option<i64>,
}

impl DeadLetterSelection {
    fn is_empty(&self) -> bool {
        self.reason.is_none()
            && self.partition.is_none()
            && self.from.is_none()
            && self.to.is_none()
    }

    fn selection(&self) -> dead_letters::Selection {
        dead_letters::Selection {
            reason: self.reason.clone(),
            partition: self.partition,
            from: self.from,
            to: self.to,
        }
    }
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// List dead letters: where each came from, why, and its size.
    List {
        #[command(flatten)]
        select: DeadLetterSelection,
        #[arg(long)]
        config: PathBuf,
    },
    /// Publish the selected dead letters to their input topic again, with the replay recorded
    /// in the header offboarder-replayed-from. Each gets its own outcome.
    Replay {
        #[command(flatten)]
        select: DeadLetterSelection,
        /// Replay every dead letter (a selection is required otherwise).
        #[arg(long)]
        all: bool,
        /// A fix for each replayed event: POINTER=JSON, e.g. /user/user_name="bob@example.com".
        /// May be given several times.
        #[arg(long = "set", value_name = "POINTER=JSON")]
        fixes: Vec<dead_letters::Fix>,
        /// Show what would be replayed, and publish nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum GuardCommand {
    /// Show whether destructive actions are halted, and how many the window holds.
    Status {
        #[arg(long)]
        config: PathBuf,
    },
    /// Confirm the burst under way: halted deactivations and deletes resume. Needs the admin
    /// token (admin.token, or OFFBOARDER_ADMIN_TOKEN).
    Release {
        #[arg(long)]
        config: PathBuf,
    },
}

/// Exit code for configuration faults, distinct from runtime failures.
const EXIT_CONFIG: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        #[cfg(feature = "demo")]
        Command::Demo { .. } => "warn",
        _ => "info",
    };
    let _telemetry = telemetry::init(cli.log_format, default_level);
    match cli.command {
        Command::Run { config } => run(&config).await,
        #[cfg(feature = "demo")]
        Command::Demo { records } => match offboarder::demo::run(records).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo failed: {e}");
                ExitCode::FAILURE
            }
        },
        #[cfg(feature = "demo")]
        Command::Simulate(args) => match netskope_sim::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("simulator failed: {e}");
                ExitCode::FAILURE
            }
        },
        Command::CheckConfig { config } => check_config(&config).await,
        Command::SsfReceiver { config } => ssf_receiver(&config).await,
        Command::Guard { command } => guard(command).await,
        Command::Act {
            action,
            user,
            reason,
            operator,
            config,
        } => act(&config, action, &user, &reason, operator).await,
        Command::History { user, json, config } => history(&config, &user, json).await,
        Command::DeadLetters { command } => dead_letter_command(command).await,
    }
}

/// The config of an operator tool: the file only (tools need no Netskope token).
fn load_for_tool(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn tool_failed(e: &ToolError) -> ExitCode {
    eprintln!("{e}");
    match e {
        ToolError::Config(_) => ExitCode::from(EXIT_CONFIG),
        ToolError::Kafka(_) => ExitCode::FAILURE,
    }
}

async fn act(
    path: &Path,
    action: OperatorAction,
    user: &str,
    reason: &str,
    operator: Option<String>,
) -> ExitCode {
    let config = match load_for_tool(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let operator = operator
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    match tools::act::act(
        &config.kafka,
        action,
        user,
        reason,
        &operator,
        config.pipeline.max_event_bytes,
    )
    .await
    {
        Ok(p) => {
            println!(
                "published {} to {}/{}/{} (source operator:{operator}); follow it with: offboarder history --user {user} --config {}",
                p.event_id,
                p.topic,
                p.partition,
                p.offset,
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => tool_failed(&e),
    }
}

async fn history(path: &Path, user: &str, json: bool) -> ExitCode {
    let config = match load_for_tool(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match tools::history::history(&config.kafka, user).await {
        Ok((outcomes, truncated)) => {
            for o in &outcomes {
                if json {
                    println!("{o}");
                } else {
                    println!("{}", tools::history::line(o));
                }
            }
            if truncated {
                eprintln!(
                    "more than {} outcomes: the oldest are shown",
                    tools::history::MAX_OUTCOMES
                );
            }
            if outcomes.is_empty() {
                eprintln!("no outcomes for {user} in {}", config.kafka.topics.outcomes);
            }
            ExitCode::SUCCESS
        }
        Err(e) => tool_failed(&e),
    }
}

async fn dead_letter_command(command: DeadLetterCommand) -> ExitCode {
    let (path, select) = match &command {
        DeadLetterCommand::List { config, select }
        | DeadLetterCommand::Replay { config, select, .. } => (config, select),
    };
    let config = match load_for_tool(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let DeadLetterCommand::Replay { all: false, .. } = &command
        && select.is_empty()
    {
        eprintln!(
            "dead-letters replay: select what to replay (--reason, --partition, --from, --to), or pass --all"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let topic = config.kafka.topics.dead_letter.clone();
    let (dead, truncated) = match dead_letters::list(&config.kafka, &select.selection()).await {
        Ok(found) => found,
        Err(e) => return tool_failed(&e),
    };
    if truncated {
        eprintln!(
            "more than {} dead letters match: the first are taken; narrow the selection",
            dead_letters::MAX_RECORDS
        );
    }
    let DeadLetterCommand::Replay { fixes, dry_run, .. } = command else {
        for d in &dead {
            println!("{}", d.line(&topic));
        }
        eprintln!("{} dead letter(s)", dead.len());
        return ExitCode::SUCCESS;
    };
    let done = match dead_letters::replay(&config.kafka, &dead, &fixes, dry_run).await {
        Ok(done) => done,
        Err(e) => return tool_failed(&e),
    };
    let mut refused = 0;
    for (d, r) in &done {
        match r {
            dead_letters::Replayed::Sent { topic: to, .. } if dry_run => {
                println!("would replay {topic}/{}/{} to {to}", d.partition, d.offset);
            }
            dead_letters::Replayed::Sent {
                topic: to,
                partition,
                offset,
            } => {
                println!(
                    "replayed {topic}/{}/{} to {to}/{partition}/{offset}",
                    d.partition, d.offset
                );
            }
            dead_letters::Replayed::Refused(why) => {
                refused += 1;
                println!("not replayed {topic}/{}/{}: {why}", d.partition, d.offset);
            }
        }
    }
    eprintln!("{} replayed, {refused} refused", done.len() - refused);
    if refused > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn load(path: &Path) -> Result<(Config, Arc<NetskopeClient>), String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let client = NetskopeClient::from_config(&config.netskope)
        .map_err(|e| format!("invalid configuration: {e}"))?;
    Ok((config, Arc::new(client)))
}

async fn run(path: &Path) -> ExitCode {
    let (config, client) = match load(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if config.policy.dry_run {
        tracing::warn!("policy.dry_run is on: no change will be made in Netskope");
    }
    // The recorder first: building the pipeline sets series to 0, and a series set before the
    // recorder exists is lost until its first increment.
    let metrics = match offboarder::metrics::install() {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "metrics are off: the recorder could not be installed");
            None
        }
    };
    let pipeline = match Pipeline::new(&config, client.clone()).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(if e.is_config() { EXIT_CONFIG } else { 1 });
        }
    };
    let readiness = pipeline.handle().readiness();
    let admin_token = match config.admin.read_token() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if admin_token.is_none() {
        tracing::info!(
            "no admin token (admin.token or OFFBOARDER_ADMIN_TOKEN): a halt of the blast-radius \
             guard can only be lifted by raising guard.max_deactivations and restarting"
        );
    }
    let guard = pipeline.handle().guard();
    if let Err(e) = offboarder::admin::serve(
        &config.admin,
        readiness,
        client,
        metrics,
        guard,
        admin_token,
    )
    .await
    {
        tracing::error!(listen = %config.admin.listen, error = %e, "cannot open the admin listener (admin.listen)");
        return ExitCode::from(EXIT_CONFIG);
    }
    tokio::spawn(stop_on_signal(pipeline.handle()));
    match pipeline.run().await {
        Ok(summary) => {
            tracing::info!(
                received = summary.received,
                dead_letters = summary.dead_letters,
                left_open = summary.left_open,
                outcomes = ?summary.outcomes,
                "stopped"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(if e.is_config() { EXIT_CONFIG } else { 1 })
        }
    }
}

/// SIGINT or SIGTERM: stop fetching, finish what is in flight, commit, exit 0. A second signal
/// stops at once; anything unfinished is delivered again on the next start.
async fn stop_on_signal(handle: PipelineHandle) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    for n in 0..2 {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        if n == 0 {
            tracing::info!("signal received: finishing in-flight events (again to stop at once)");
            handle.stop();
        } else {
            tracing::warn!("second signal: stopping at once");
            handle.kill();
        }
    }
}

/// `offboarder ssf-receiver`: the push endpoint until SIGTERM or Ctrl-C.
async fn ssf_receiver(path: &Path) -> ExitCode {
    let config = match load_for_tool(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = config.kafka.validate() {
        tracing::error!("{e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("signal received: answering the requests under way, then stopping");
    };
    match offboarder::ssf::receiver::run(&config, None, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `offboarder guard status|release`: one request to the worker's admin listener.
async fn guard(command: GuardCommand) -> ExitCode {
    let (path, release) = match &command {
        GuardCommand::Status { config } => (config, false),
        GuardCommand::Release { config } => (config, true),
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if config.admin.listen.port() == 0 {
        eprintln!(
            "admin.listen has port 0: the worker picked a free port at start; set a fixed port \
             (or OFFBOARDER_ADMIN__LISTEN) to reach it"
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let base = config.admin.local_url();
    offboarder_base::tls::install();
    let http = reqwest::Client::new();
    let request = if release {
        let token = match config.admin.read_token() {
            Ok(Some(t)) => t,
            Ok(None) => {
                eprintln!(
                    "no admin token: set admin.token in the config ({{ env = \"VAR\" }} or \
                     {{ file = \"PATH\" }}) or OFFBOARDER_ADMIN_TOKEN, as for the worker"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        use secrecy::ExposeSecret;
        http.post(format!("{base}/guard/release"))
            .bearer_auth(token.expose_secret())
    } else {
        http.get(format!("{base}/guard"))
    };
    let response = match request.timeout(Duration::from_secs(10)).send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot reach the worker's admin listener at {base}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        let error = body["error"].as_str().unwrap_or("no detail");
        eprintln!("the worker refused ({status}): {error}");
        return ExitCode::FAILURE;
    }
    let halted = body["halted"].as_bool().unwrap_or(false);
    let waiting = body["waiting"].as_u64().unwrap_or(0);
    let in_window = body["in_window"].as_u64().unwrap_or(0);
    let max = body["max_deactivations"].as_u64().unwrap_or(0);
    let window = body["window_secs"].as_u64().unwrap_or(0);
    match (release, halted) {
        (true, true) => println!(
            "released: {waiting} halted deactivations/deletes resume; the guard counts again \
             after {window} s without one"
        ),
        (true, false) => println!("the guard was not halted; nothing changed"),
        (false, true) => {
            println!("HALTED: {waiting} deactivations/deletes wait for `offboarder guard release`")
        }
        (false, false) => println!(
            "running: {in_window} of {max} deactivations/deletes used in the last {window} s{}",
            if body["released"].as_bool().unwrap_or(false) {
                " (a released burst is still flowing)"
            } else {
                ""
            }
        ),
    }
    ExitCode::SUCCESS
}

async fn check_config(path: &Path) -> ExitCode {
    let (config, client) = match load(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut worst = ExitCode::SUCCESS;
    let mut config_fault = |message: String| {
        eprintln!("{message}");
        worst = ExitCode::from(EXIT_CONFIG);
    };
    if let Err(e) = config.pipeline.validate() {
        config_fault(e);
    }
    if let Err(e) = offboarder::policy::Policy::new(config.policy.clone()) {
        config_fault(e);
    }
    if let Err(e) = config.kafka.validate() {
        config_fault(e.to_string());
    }
    if let Err(e) = config.guard.validate() {
        config_fault(e);
    }
    if let Err(e) = config
        .verify
        .validate()
        .and_then(|()| config.verify.check_endpoints(client.endpoints()))
    {
        config_fault(e);
    }
    if let Err(e) = config.admin.read_token() {
        config_fault(e.to_string());
    }
    if let Err(e) = config.ssf.validate() {
        config_fault(e.to_string());
    }
    if let Err(e) = config.outcomes.validate() {
        config_fault(e);
    }
    if worst != ExitCode::SUCCESS {
        return worst;
    }
    println!("config {}: valid", path.display());
    println!("  SCIM base: {}", client.endpoints().scim_base);
    match &client.endpoints().audit {
        Some(audit) => println!("  audit:     {audit}"),
        None => println!("  audit:     none (verification by read-back only)"),
    }
    println!(
        "  tokens:    {}",
        if client.has_separate_events_token() {
            "separate SCIM and events tokens"
        } else {
            "one token for SCIM and events"
        }
    );
    println!("  brokers:   {}", config.kafka.brokers);
    if config.policy.dry_run {
        println!("  policy:    dry_run is on: no change will be made in Netskope");
    }
    let kafka = match config.kafka.producer_config() {
        Ok(c) => match pipeline::broker_errors::producer(&c) {
            Ok((producer, errors)) => pipeline::check_topics(&producer, &errors, &config.kafka)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("cannot create a Kafka client: {e}")),
        },
        Err(e) => Err(e.to_string()),
    };
    let kafka_ok = kafka.is_ok();
    match kafka {
        Ok(_) => println!(
            "  Kafka: brokers reachable, all five topics exist, the state topic has one partition"
        ),
        Err(e) => {
            println!("  Kafka: FAILED: {e}");
            worst = ExitCode::from(EXIT_CONFIG);
        }
    }
    if kafka_ok {
        let topic = &config.kafka.topics.state;
        match pipeline::state_topic_policy(&config.kafka).await {
            Ok(policy) if pipeline::keeps_every_entry(&policy) => {
                println!("  state topic {topic}: cleanup.policy=compact")
            }
            Ok(policy) => {
                println!(
                    "  state topic {topic}: FAILED: cleanup.policy={policy}; it must be \
                     compact alone, or the brokers will drop the guard's entries (a halt among \
                     them) after the retention time"
                );
                worst = ExitCode::from(EXIT_CONFIG);
            }
            // Not every broker answers DescribeConfigs; the operator checks by hand then.
            Err(e) => println!(
                "  state topic {topic}: cannot read its cleanup.policy ({e}); make sure it is \
                 compact"
            ),
        }
    }
    if kafka_ok && config.kafka.exactly_once {
        // An id of its own: the worker's would fence a running worker's producer.
        let id = format!("{}.check-config", config.kafka.transactional_id());
        let opened = match config.kafka.producer_config() {
            Ok(mut c) => {
                c.set("transactional.id", &id);
                let (topic, timeout) = (
                    config.kafka.topics.state.clone(),
                    config.kafka.connect_timeout,
                );
                tokio::task::spawn_blocking(move || {
                    let (producer, _) = pipeline::broker_errors::producer(&c)
                        .map_err(|e| format!("cannot create a Kafka client: {e}"))?;
                    pipeline::transactions::Transactions::open(producer, id, &topic, timeout)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
            }
            Err(e) => Err(e.to_string()),
        };
        match opened {
            Ok(()) => println!(
                "  exactly_once: the brokers ended a test transaction; transactional.id {:?}",
                config.kafka.transactional_id()
            ),
            Err(e) => {
                println!("  exactly_once: FAILED: {e}");
                worst = ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let mut probes = vec![("SCIM (GET /Users)", client.probe_scim().await)];
    if config.verify.mode.uses_audit() {
        probes.push(("audit (GET events/data/audit)", client.probe_audit().await));
    } else {
        println!(
            "  audit: not probed (verify.mode = \"{}\" does not read it)",
            config.verify.mode.as_str()
        );
    }
    for (name, result) in probes {
        match result {
            Ok(()) => println!("  {name}: reachable, token accepted"),
            Err(e) => {
                println!("  {name}: FAILED: {e}");
                if worst == ExitCode::SUCCESS || e.class() == ErrorClass::Config {
                    worst = match e.class() {
                        ErrorClass::Config => ExitCode::from(EXIT_CONFIG),
                        _ => ExitCode::FAILURE,
                    };
                }
            }
        }
    }
    if config.ssf.enabled() {
        // Fetches every JWKS URL and reads every key file, as the receiver does at start.
        match offboarder::ssf::SetMapper::from_config(&config.ssf).await {
            Ok(mapper) => {
                for (name, issuer, keys) in mapper.transmitters().await {
                    println!("  SSF transmitter {name} ({issuer}): {keys} usable keys");
                }
            }
            Err(e) => {
                println!("  SSF: FAILED: {e}");
                worst = ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    worst
}
