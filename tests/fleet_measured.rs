//! Several worker processes in one consumer group on a real broker (tansu, started by
//! `scripts/test`), against a tenant simulator that enforces a per-token request budget on the
//! server side, as Netskope does. Each test prints its figures.
//!
//! The budget is scaled up from Netskope's 300 a minute to 1,200, and the runs down from 1,000
//! terminations and 500 signals to 500 and 250 (the throughput runs: about a minute each, with
//! the ten-second bursts a sixth of it) and 200 and 100 (the kill run), instead of the four
//! and a half minutes that 1,500 events cost at 300: the claims are ratios (429s per request
//! served, the fleet's throughput against one worker's) and counts, which do not depend on the
//! scale. The budget still binds: one worker alone, unlimited, sends about 2,600 requests a
//! minute here.
//!
//! Records are published one per producer batch: tansu 0.6.0 serves nothing of a batch that a
//! consumer resumes inside (see the README's notes on tansu), and whenever a partition moves
//! (a kill, or the second step of a cooperative rebalance that lands after the publish) its
//! new owner resumes at the committed offset, often inside a batch. One record per batch keeps
//! that broker defect out of the worker's figures. Every run publishes the same way, so the
//! pace of publishing weighs alike on the runs compared.
//!
//! Consumers leave a killed worker's partitions alone until its session times out; the
//! workers here use `session.timeout.ms` = 6 s (the brokers' usual minimum) rather than
//! librdkafka's 45 s, so that a kill costs seconds, not most of a minute.
//!
//! The scenarios run one after another in one test, so that no two fleets share the machine's
//! cores while they are timed.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use netskope_sim::SimArgs;
use offboarder::sandbox::Sandbox;
use support::{tally, until_final};

const BIN: &str = env!("CARGO_BIN_EXE_offboarder");
/// The token's budget, enforced by the simulator and configured in the workers alike.
const BUDGET: u32 = 1_200;
const ADMIN_TOKEN: &str = "fleet-admin-token-51d0";
const PATCH_USER: &str = "PATCH /api/v2/scim/Users/{id}";

fn user(n: usize) -> String {
    format!("user{n}@example.com")
}

async fn sandbox(bootstrap: &str, users: usize) -> Sandbox {
    Sandbox::start_on_broker(
        bootstrap,
        SimArgs {
            users,
            rate_limit_per_min: BUDGET,
            // Ten seconds' worth at once, as the worker's own limiter allows: a fleet that
            // each took the whole budget would overrun it within seconds.
            rate_limit_burst: BUDGET / 6,
            ..SimArgs::default()
        },
        3,
    )
    .await
    .expect("sandbox on the broker")
}

/// The worker's config file: the sandbox's, with the budget and the guard's limit.
fn config_file(sandbox: &Sandbox, name: &str, max_deactivations: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("offboarder-fleet-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("offboarder.toml");
    let text = format!(
        "{}\n[kafka.consumer_properties]\n\"fetch.wait.max.ms\" = \"20\"\n\"session.timeout.ms\" = \"6000\"\n\n[guard]\nmax_deactivations = {max_deactivations}\n",
        sandbox.config_toml(&format!("fleet-{name}"))
    )
    .replacen(
        "[netskope]\n",
        &format!("[netskope]\nrequests_per_minute = {BUDGET}\n"),
        1,
    );
    std::fs::write(&path, text).expect("config file");
    path
}

struct Worker {
    child: Child,
    admin: String,
}

fn start_worker(sandbox: &Sandbox, config: &Path) -> Worker {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let admin = format!("127.0.0.1:{port}");
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .envs(sandbox.token_env())
        .env("OFFBOARDER_ADMIN__LISTEN", &admin)
        .env("OFFBOARDER_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("OFFBOARDER_LOG_FORMAT", "json")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the worker starts");
    Worker { child, admin }
}

impl Worker {
    async fn get(&self, path: &str) -> Option<reqwest::Response> {
        offboarder_base::tls::install();
        reqwest::get(format!("http://{}{path}", self.admin))
            .await
            .ok()
    }

    /// `/readyz` answers 200: the worker holds partitions and Netskope answers.
    async fn ready(&self) -> bool {
        self.get("/readyz")
            .await
            .is_some_and(|r| r.status().is_success())
    }

    async fn guard(&self) -> Value {
        self.get("/guard")
            .await
            .expect("admin listener")
            .json()
            .await
            .expect("guard status")
    }

    async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

/// Waits until every worker answers ready (each holds partitions), for at most a minute.
async fn all_ready(workers: &[Worker]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut ready = 0;
        for w in workers {
            ready += usize::from(w.ready().await);
        }
        if ready == workers.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ready} of {} ready",
            workers.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn termination(sandbox: &Sandbox, n: usize, key: &str) -> (String, String, Vec<u8>) {
    let e = json!({"event_id": format!("hr-{n}"), "occurred_at": "2026-11-25T09:00:00Z",
                   "user": {"user_name": user(n)}, "source": "workday"});
    (
        sandbox.topics.terminations.clone(),
        key.to_string(),
        e.to_string().into_bytes(),
    )
}

fn risk_signal(sandbox: &Sandbox, n: usize) -> (String, String, Vec<u8>) {
    let e = json!({"event_id": format!("xdr-{n}"), "occurred_at": "2026-11-25T09:00:00Z",
                   "user": {"user_name": user(n)}, "source": "crowdstrike", "risk_score": 95});
    (
        sandbox.topics.risk_signals.clone(),
        user(n),
        e.to_string().into_bytes(),
    )
}

/// 429s and requests the simulator served, over every route.
fn throttled_and_served(sandbox: &Sandbox) -> (u64, u64) {
    let stats = sandbox.sim.stats();
    let mut throttled = 0;
    let mut served = 0;
    for by_status in stats.requests.values() {
        for (status, n) in by_status {
            served += n;
            if *status == 429 {
                throttled += n;
            }
        }
    }
    (throttled, served)
}

/// One run: `workers` processes, `terminations` and half as many risk signals published once
/// they all hold partitions, optionally one worker killed a third of the way. Returns the
/// events per second from the publish to the last final outcome.
async fn run(bootstrap: &str, workers: usize, kill_one: bool, terminations: usize) -> f64 {
    let total = terminations + terminations / 2;
    let sandbox = sandbox(bootstrap, total).await;
    let name = format!("{workers}w{}", if kill_one { "-kill" } else { "" });
    let config = config_file(&sandbox, &name, 100_000);
    let mut fleet: Vec<Worker> = (0..workers)
        .map(|_| start_worker(&sandbox, &config))
        .collect();
    all_ready(&fleet).await;
    let mut records: Vec<_> = (1..=terminations)
        .map(|n| termination(&sandbox, n, &user(n)))
        .collect();
    records.extend((terminations + 1..=total).map(|n| risk_signal(&sandbox, n)));
    let started = Instant::now();
    sandbox.publish_one_by_one(&records).await.expect("publish");
    let mut killed_at = None;
    if kill_one {
        sandbox
            .read(&sandbox.topics.outcomes, Duration::from_secs(120), |r| {
                r.len() >= total / 3
            })
            .await
            .expect("outcomes before the kill");
        fleet.pop().expect("a worker").kill().await;
        killed_at = Some(started.elapsed());
    }
    let (_, statuses) = until_final(&sandbox, total, Duration::from_secs(300)).await;
    let elapsed = started.elapsed();
    for w in fleet {
        w.stop().await;
    }
    let (throttled, served) = throttled_and_served(&sandbox);
    // Each worker polls the audit trail for its own actions: what that costs the token.
    let stats = sandbox.sim.stats();
    let audit = stats.count(&format!("GET {}", netskope_sim::AUDIT_PATH));
    let by_route: std::collections::BTreeMap<&String, u64> = stats
        .requests
        .iter()
        .map(|(route, by_status)| (route, by_status.values().sum()))
        .collect();
    let by_status = tally(&statuses);
    let rate = total as f64 / elapsed.as_secs_f64();
    println!(
        "{workers} worker(s){}: {total} events final in {elapsed:.1?} ({rate:.0}/s), statuses \
         {by_status:?}; the simulator served {served} requests, {throttled} of them 429 ({:.2} \
         %); audit polls {audit} ({:.1} % of the requests); by route {by_route:?}",
        killed_at.map_or(String::new(), |t| format!(", one SIGKILLed at {t:.1?}")),
        100.0 * throttled as f64 / served.max(1) as f64,
        100.0 * audit as f64 / served.max(1) as f64
    );
    assert_eq!(statuses.len(), total, "every event has outcomes");
    assert_eq!(
        by_status.get("verified"),
        Some(&total),
        "every event verified: {by_status:?}"
    );
    assert!(
        throttled as f64 <= 0.01 * served as f64,
        "429s are at most 1 % of the requests served: {throttled} of {served}"
    );
    rate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_three_on_a_real_broker() {
    let Some(bootstrap) = support::peer("KAFKA_BOOTSTRAP") else {
        return;
    };
    three_workers_share_one_budget_and_survive_losing_one(&bootstrap).await;
    the_guard_holds_the_fleet_at_its_limit_across_kills(&bootstrap).await;
}

/// Three workers share one token's budget: together they stay within it (429s at most 1 % of
/// the requests served), and the fleet's throughput against one worker's with the whole
/// budget is printed. Then a run where one of three is killed mid-run: its partitions move and
/// every event still ends verified.
async fn three_workers_share_one_budget_and_survive_losing_one(bootstrap: &str) {
    let bootstrap = bootstrap.to_string();
    // Long enough that the limiters' ten-second bursts weigh little against the paced part.
    let one = run(&bootstrap, 1, false, 500).await;
    let three = run(&bootstrap, 3, false, 500).await;
    // A figure, not an assertion: speed is measured, never asserted with a timer. The
    // issue's target is 0.9; the README says where the split by partitions falls short.
    println!(
        "fleet throughput / one worker's: {:.2} ({three:.0}/s vs {one:.0}/s; target 0.9)",
        three / one
    );
    run(&bootstrap, 3, true, 200).await;
}

/// The guard at 50 with three workers: the fleet halts after 50 deactivations, whether the
/// burst is spread over the partitions or lands on one. Every worker is then killed and
/// restarted: still halted, the count where it was. A release through one worker lets all go.
async fn the_guard_holds_the_fleet_at_its_limit_across_kills(bootstrap: &str) {
    const LIMIT: usize = 50;
    const BURST: usize = 200;
    for spread in [true, false] {
        let sandbox = sandbox(bootstrap, BURST).await;
        let name = if spread { "guard-spread" } else { "guard-one" };
        let config = config_file(&sandbox, name, LIMIT);
        let fleet: Vec<Worker> = (0..3).map(|_| start_worker(&sandbox, &config)).collect();
        all_ready(&fleet).await;
        // Keyed by user, the burst spreads over the partitions; under one key it lands on one.
        let records: Vec<_> = (1..=BURST)
            .map(|n| {
                let key = if spread { user(n) } else { "one-key".into() };
                termination(&sandbox, n, &key)
            })
            .collect();
        sandbox.publish_one_by_one(&records).await.expect("publish");
        sandbox
            .read(&sandbox.topics.outcomes, Duration::from_secs(60), |r| {
                r.iter()
                    .any(|m| offboarder::sandbox::text(m).contains("\"halted\""))
            })
            .await
            .expect("a halt");
        // The admitted deactivations still wait for the worker's share of the budget (a third
        // of 1,200 a minute, two requests each): let them land, then give any the halt let
        // slip time to show.
        let deadline = Instant::now() + Duration::from_secs(60);
        while sandbox.sim.stats().count(PATCH_USER) < LIMIT as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let deactivated = sandbox.sim.stats().count(PATCH_USER);
        let status = fleet[0].guard().await;
        println!(
            "guard at {LIMIT}, 3 workers, burst of {BURST} {}: {deactivated} deactivated before \
             the fleet halted; guard status {status}",
            if spread {
                "spread over the partitions"
            } else {
                "on one partition"
            }
        );
        assert_eq!(
            deactivated, LIMIT as u64,
            "the fleet's limit, not one per worker"
        );
        for w in &fleet {
            assert_eq!(w.guard().await["halted"], true, "every worker is halted");
        }
        if !spread {
            for w in fleet {
                w.stop().await;
            }
            continue;
        }

        for w in fleet {
            w.kill().await;
        }
        let fleet: Vec<Worker> = (0..3).map(|_| start_worker(&sandbox, &config)).collect();
        // Not ready while halted (/readyz reports the guard), so wait on /guard instead.
        let deadline = Instant::now() + Duration::from_secs(60);
        for w in &fleet {
            while w.get("/guard").await.is_none() {
                assert!(Instant::now() < deadline, "admin listener");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after_restart = sandbox.sim.stats().count(PATCH_USER);
        let status = fleet[1].guard().await;
        println!(
            "after SIGKILL of all three and a restart: {after_restart} deactivated; guard \
             status {status}"
        );
        assert_eq!(
            after_restart, LIMIT as u64,
            "nothing more after the restart"
        );
        assert_eq!(status["halted"], true);
        assert_eq!(status["in_window"], LIMIT);

        offboarder_base::tls::install();
        let released = reqwest::Client::new()
            .post(format!("http://{}/guard/release", fleet[2].admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("release");
        assert_eq!(released.status(), 200);
        let (_, statuses) = until_final(&sandbox, BURST, Duration::from_secs(180)).await;
        let deactivated = sandbox.sim.stats().count(PATCH_USER);
        let verified = statuses.values().filter(|s| *s == "verified").count();
        println!(
            "released through one worker: {verified} of {BURST} events verified, \
             {deactivated} PATCHes of users"
        );
        assert_eq!(verified, BURST, "every event goes on after the release");
        for n in [1, BURST / 2, BURST] {
            assert_eq!(sandbox.sim.user(&user(n)).map(|u| u.active), Some(false));
        }
        for w in fleet {
            w.stop().await;
        }
    }
}
