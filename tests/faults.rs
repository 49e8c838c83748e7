//! Faults the worker must survive, on the real binary or the real pipeline, over librdkafka's
//! mock cluster and the tenant simulator. Each test prints its figures.

mod support;
use support::{DONE_EARLIER, is_final, last_status, tally, until_final};

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use netskope_sim::SimArgs;
use offboarder::sandbox::Sandbox;

const BIN: &str = env!("CARGO_BIN_EXE_offboarder");

fn user(n: usize) -> String {
    format!("user{n}@example.com")
}

fn event(id: String, n: usize, source: &str, extra: Value) -> Vec<u8> {
    let mut e = json!({"event_id": id, "occurred_at": "2026-11-25T09:00:00Z",
                       "user": {"user_name": user(n)}, "source": source});
    if let (Some(e), Some(x)) = (e.as_object_mut(), extra.as_object()) {
        e.extend(x.clone());
    }
    e.to_string().into_bytes()
}

fn start_worker(sandbox: &Sandbox, config: &PathBuf) -> Child {
    Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .envs(sandbox.token_env())
        .env("OFFBOARDER_LOG_FORMAT", "json")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the worker starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_nothing_and_repeats_only_idempotent_requests() {
    const TERMINATIONS: usize = 2000;
    const QUARANTINES: usize = 2000;
    const RELEASES: usize = 500;
    const BELOW: usize = 500;
    let total = TERMINATIONS + QUARANTINES + RELEASES + BELOW;
    let sandbox = Sandbox::start(
        SimArgs {
            users: TERMINATIONS + QUARANTINES + BELOW,
            rate_limit_per_min: 0,
            latency_ms: 1,
            ..SimArgs::default()
        },
        3,
    )
    .await
    .expect("sandbox");
    let hr = &sandbox.topics.terminations;
    let xdr = &sandbox.topics.risk_signals;
    let mut records = Vec::with_capacity(total);
    for n in 1..=TERMINATIONS {
        records.push((
            hr.clone(),
            user(n),
            event(format!("hr-{n}"), n, "workday", json!({})),
        ));
    }
    for n in TERMINATIONS + 1..=TERMINATIONS + QUARANTINES {
        let e = event(
            format!("q-{n}"),
            n,
            "crowdstrike",
            json!({"risk_score": 95}),
        );
        records.push((xdr.clone(), user(n), e));
    }
    // Released after their quarantine: the same user, so the same partition, in order.
    for n in TERMINATIONS + 1..=TERMINATIONS + RELEASES {
        let e = event(
            format!("r-{n}"),
            n,
            "crowdstrike",
            json!({"severity": "high", "state": "cleared"}),
        );
        records.push((xdr.clone(), user(n), e));
    }
    for n in TERMINATIONS + QUARANTINES + 1..=TERMINATIONS + QUARANTINES + BELOW {
        let e = event(
            format!("low-{n}"),
            n,
            "crowdstrike",
            json!({"risk_score": 5}),
        );
        records.push((xdr.clone(), user(n), e));
    }
    assert_eq!(records.len(), total);
    sandbox.publish(&records).await.expect("publish");

    let dir = std::env::temp_dir().join(format!("offboarder-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("crash.toml");
    let config = format!(
        "{}\n[guard]\nmax_deactivations = 100000\n",
        sandbox.config_toml("faults-crash")
    );
    // Its [netskope] table is the first: raise the request budget there.
    let config = config.replacen(
        "[netskope]\n",
        "[netskope]\nrequests_per_minute = 6000000\n",
        1,
    );
    std::fs::write(&path, config).expect("config file");

    let started = Instant::now();
    let mut first = start_worker(&sandbox, &path);
    // Killed once a third as many outcome records as events are out.
    sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(120), |r| {
            r.len() >= total / 3
        })
        .await
        .expect("outcomes before the kill");
    first.start_kill().expect("SIGKILL");
    let _ = first.wait().await;
    let at_kill = sandbox.sim.stats();
    let killed_after = started.elapsed();
    // Everything the first worker published before it died (it is dead: the topic no longer
    // grows), to show that the kill came before the end.
    let published_at_kill = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(3), |_| false)
        .await
        .expect("outcomes at the kill");
    let final_at_kill = last_status(&published_at_kill)
        .values()
        .filter(|s| is_final(s))
        .count();
    assert!(
        final_at_kill < total,
        "killed partway: {final_at_kill} of {total} events already had their final outcome"
    );

    let mut second = start_worker(&sandbox, &path);
    let (outcomes, last) = until_final(&sandbox, total, Duration::from_secs(300)).await;
    let pid = second.id().expect("running").to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status().await;
    let _ = tokio::time::timeout(Duration::from_secs(30), second.wait()).await;

    let by_status = tally(&last);
    let stats = sandbox.sim.stats();
    let user_patches = stats.count("PATCH /api/v2/scim/Users/{id}");
    let group_patches = stats.count("PATCH /api/v2/scim/Groups/{id}");
    println!(
        "{total} events; SIGKILL after {killed_after:.1?} with {} outcome records out ({final_at_kill} \
         events final) and {} user PATCHes sent; after the restart {} outcome records, final statuses {by_status:?}; user \
         PATCHes {user_patches} for {TERMINATIONS} terminations ({} repeated), group PATCHes \
         {group_patches}; {:.1?} in all",
        published_at_kill.len(),
        at_kill.count("PATCH /api/v2/scim/Users/{id}"),
        outcomes.len(),
        user_patches.saturating_sub(TERMINATIONS as u64),
        started.elapsed(),
    );

    assert_eq!(last.len(), total, "every input event has outcomes");
    assert!(
        last.values().all(|s| is_final(s)),
        "every input event has a final outcome: {by_status:?}"
    );
    assert_eq!(by_status.get("failed"), None, "nothing failed");
    assert_eq!(by_status.get("unverified"), None, "nothing unverified");
    assert_eq!(by_status.get("skipped"), Some(&BELOW));
    assert_eq!(by_status.get("verified"), Some(&(total - BELOW)));
    assert!(
        outcomes.len() > published_at_kill.len(),
        "the restarted worker finished what the first left"
    );
    // Only idempotent requests can repeat: PATCH active=false and membership changes. No
    // create, replace or delete of a user was ever sent, and the group was created once.
    let methods: HashSet<&str> = stats
        .requests
        .keys()
        .filter_map(|k| k.split_whitespace().next())
        .collect();
    assert!(
        methods
            .iter()
            .all(|m| matches!(*m, "GET" | "PATCH" | "POST")),
        "{methods:?}"
    );
    assert_eq!(stats.count("POST /api/v2/scim/Users"), 0);
    assert!(stats.count_status("POST /api/v2/scim/Groups", 201) <= 1);
    assert!(user_patches >= TERMINATIONS as u64);
    // The tenant ends where the events say it should.
    for n in [1, TERMINATIONS / 2, TERMINATIONS] {
        assert_eq!(sandbox.sim.user(&user(n)).map(|u| u.active), Some(false));
    }
    let members: HashSet<String> = sandbox
        .sim
        .group_members("Quarantine_HighRisk")
        .unwrap_or_default()
        .into_iter()
        .collect();
    assert_eq!(
        members.len(),
        QUARANTINES - RELEASES,
        "quarantined minus released"
    );
    for n in [TERMINATIONS + 1, TERMINATIONS + RELEASES] {
        let id = sandbox.sim.user(&user(n)).expect("user").id;
        assert!(!members.contains(&id), "{} was released", user(n));
    }
    for n in [TERMINATIONS + RELEASES + 1, TERMINATIONS + QUARANTINES] {
        let id = sandbox.sim.user(&user(n)).expect("user").id;
        assert!(members.contains(&id), "{} stays quarantined", user(n));
    }
}

/// Deletes, killed mid-burst: a delete whose DELETE went out before the kill, but whose final
/// outcome did not, is delivered again after the restart and finds no user. The guard's log
/// shows that an earlier delivery was admitted, so it ends `applied` (the user is gone, as the
/// event asked), never `failed/not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delete_burst_ends_every_delete_done_none_failed() {
    const DELETES: usize = 600;
    let sandbox = Sandbox::start(
        SimArgs {
            users: DELETES,
            rate_limit_per_min: 0,
            latency_ms: 2,
            ..SimArgs::default()
        },
        3,
    )
    .await
    .expect("sandbox");
    let records: Vec<(String, String, Vec<u8>)> = (1..=DELETES)
        .map(|n| {
            (
                sandbox.topics.terminations.clone(),
                user(n),
                event(format!("hr-{n}"), n, "workday", json!({})),
            )
        })
        .collect();
    sandbox.publish(&records).await.expect("publish");
    let dir = std::env::temp_dir().join(format!("offboarder-faults-del-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("deletes.toml");
    let config = format!(
        "{}\n[guard]\nmax_deactivations = 100000\n\n[policy]\non_termination = \"delete\"\n",
        sandbox.config_toml("faults-deletes")
    )
    .replacen(
        "[netskope]\n",
        "[netskope]\nrequests_per_minute = 6000000\n",
        1,
    );
    std::fs::write(&path, config).expect("config file");

    let mut first = start_worker(&sandbox, &path);
    sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(120), |r| {
            r.len() >= DELETES / 2
        })
        .await
        .expect("outcomes before the kill");
    first.start_kill().expect("SIGKILL");
    let _ = first.wait().await;
    let deleted_at_kill = sandbox.sim.stats().count("DELETE /api/v2/scim/Users/{id}");

    let mut second = start_worker(&sandbox, &path);
    let (_, last) = until_final(&sandbox, DELETES, Duration::from_secs(300)).await;
    let pid = second.id().expect("running").to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status().await;
    let _ = tokio::time::timeout(Duration::from_secs(30), second.wait()).await;

    let by_status = tally(&last);
    let stats = sandbox.sim.stats();
    let deletes_sent = stats.count("DELETE /api/v2/scim/Users/{id}");
    let deleted = stats.count_status("DELETE /api/v2/scim/Users/{id}", 204);
    println!(
        "{DELETES} deletes; SIGKILL with {deleted_at_kill} DELETEs sent; final statuses \
         {by_status:?}; {deletes_sent} DELETEs in all, {deleted} of them answered 204 \
         (by status: {:?})",
        stats.requests.get("DELETE /api/v2/scim/Users/{id}")
    );
    assert_eq!(last.len(), DELETES);
    assert_eq!(
        by_status.get("failed"),
        None,
        "no delete failed: {by_status:?}"
    );
    assert!(
        by_status.get(DONE_EARLIER).copied().unwrap_or(0) > 0,
        "the kill left deletes done but unfinished, which the restart recognised: {by_status:?}"
    );
    assert_eq!(
        by_status.get("verified").copied().unwrap_or(0)
            + by_status.get(DONE_EARLIER).copied().unwrap_or(0),
        DELETES
    );
    // A DELETE sent again is harmless (the user is gone: 404); what matters is that each user
    // was deleted exactly once.
    assert_eq!(deleted, DELETES as u64, "each user deleted once");
    for n in [1, DELETES / 2, DELETES] {
        assert!(sandbox.sim.user(&user(n)).is_none(), "{} is gone", user(n));
    }
}

/// A SCIM storm on paused time: for 60 simulated seconds half of all requests answer 500, 502,
/// 503 or 429. Every action ends `applied`; none runs out of retries (which would make it
/// `failed` and a dead letter).
#[tokio::test(start_paused = true)]
async fn a_scim_storm_is_waited_out_without_failing_or_dead_lettering_anything() {
    use netskope::{NetskopeClient, NetskopeConfig, Tokens};
    use offboarder::outcome::Status;
    use offboarder::pipeline::config::PipelineConfig;
    use offboarder::pipeline::executor::Executor;
    use offboarder::policy::Decision;
    use secrecy::SecretString;
    use std::sync::Arc;

    const USERS: usize = 200;
    const STORM: Duration = Duration::from_secs(60);
    let sim = netskope_sim::start(SimArgs {
        users: USERS,
        rate_limit_per_min: 0,
        fault_rate: 0.5,
        fault_throttle: true,
        seed: Some(2026),
        ..SimArgs::default()
    })
    .await
    .expect("simulator");
    let config = NetskopeConfig {
        tenant_url: Some(sim.base_url()),
        allow_insecure_http: true,
        requests_per_minute: 600_000,
        ..NetskopeConfig::default()
    };
    let client = NetskopeClient::builder(&config)
        .tokens(Tokens {
            scim: SecretString::from("sim-scim-token"),
            events: None,
        })
        // Paused time fires armed timers whenever the runtime idles on a socket.
        .without_request_timeout()
        .build()
        .expect("client");
    let executor = Arc::new(Executor::new(
        Arc::new(client),
        false,
        &PipelineConfig::default(),
    ));
    let started = tokio::time::Instant::now();
    let wall = Instant::now();
    let storm = {
        let sim_faults = Arc::new(sim);
        let handle = sim_faults.clone();
        tokio::spawn(async move {
            tokio::time::sleep(STORM).await;
            handle.set_fault_rate(0.0);
        });
        sim_faults
    };
    let group = "Quarantine_HighRisk".to_string();
    let work = (1..=USERS).map(|n| {
        let executor = executor.clone();
        let decision = if n % 2 == 0 {
            Decision::Deactivate
        } else {
            Decision::Quarantine {
                group: group.clone(),
            }
        };
        async move {
            (
                n,
                executor
                    .execute(&user(n), &decision, &Default::default())
                    .await,
            )
        }
    });
    let reports = futures::future::join_all(work).await;
    let took = started.elapsed();
    let stats = storm.stats();
    let faults: u64 = [500u16, 502, 503, 429]
        .iter()
        .map(|s| {
            stats
                .requests
                .values()
                .filter_map(|by| by.get(s))
                .sum::<u64>()
        })
        .sum();
    let max_attempts = reports
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().map(|r| r.attempts))
        .max()
        .unwrap_or(0);
    println!(
        "{USERS} actions through a {STORM:?} storm: {} requests, {faults} answered 5xx or 429; \
         all done after {took:.1?} of simulated time ({:.1?} of real time); at most \
         {max_attempts} tries of one event",
        stats.total(),
        wall.elapsed()
    );
    assert!(faults > 100, "the storm happened");
    for (n, report) in &reports {
        let report = report.as_ref().expect("no configuration fault");
        assert_eq!(report.status, Status::Applied, "{}: {report:?}", user(*n));
        assert!(!report.retries_exhausted, "{}", user(*n));
    }
    assert!(
        took >= STORM / 2,
        "events were still retrying during the storm"
    );
    for n in [2, USERS] {
        assert_eq!(storm.user(&user(n)).map(|u| u.active), Some(false));
    }
    assert_eq!(
        storm.group_members(&group).map_or(0, |m| m.len()),
        USERS / 2
    );
}

/// The only broker goes down mid-run for a few seconds and comes back. The worker reconnects
/// and goes on; every event gets its outcome, once the outcomes can be acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_run_loses_nothing() {
    use offboarder::pipeline::Pipeline;
    use offboarder::verify::VerifyMode;

    const USERS: usize = 600;
    const DOWN: Duration = Duration::from_secs(3);
    let sandbox = Sandbox::start(
        SimArgs {
            users: USERS,
            rate_limit_per_min: 0,
            latency_ms: 5,
            ..SimArgs::default()
        },
        3,
    )
    .await
    .expect("sandbox");
    let records: Vec<(String, String, Vec<u8>)> = (1..=USERS)
        .map(|n| {
            if n % 2 == 0 {
                let e = event(format!("hr-{n}"), n, "workday", json!({}));
                (sandbox.topics.terminations.clone(), user(n), e)
            } else {
                let e = event(
                    format!("q-{n}"),
                    n,
                    "crowdstrike",
                    json!({"risk_score": 95}),
                );
                (sandbox.topics.risk_signals.clone(), user(n), e)
            }
        })
        .collect();
    sandbox.publish(&records).await.expect("publish");
    let mut config = sandbox.config("faults-broker");
    config.netskope.requests_per_minute = 6_000_000;
    config.verify.mode = VerifyMode::Off;
    config.guard.max_deactivations = 100_000;
    config.pipeline.max_concurrent_users = 8;
    let pipeline = Pipeline::new(&config, sandbox.client(&config).expect("client"))
        .await
        .expect("pipeline");
    let handle = pipeline.handle();
    let worker = tokio::spawn(pipeline.run());

    let before = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(60), |r| {
            r.len() >= USERS / 5
        })
        .await
        .expect("outcomes before the outage");
    let requests_before = sandbox.sim.stats().total();
    sandbox
        .kafka()
        .expect("mock cluster")
        .broker_down(1)
        .expect("broker down");
    let down_at = Instant::now();
    tokio::time::sleep(DOWN).await;
    let requests_during = sandbox.sim.stats().total() - requests_before;
    sandbox
        .kafka()
        .expect("mock cluster")
        .broker_up(1)
        .expect("broker up");
    let outcomes = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(120), |r| {
            r.len() >= USERS
        })
        .await
        .expect("outcomes after the outage");
    let recovered = down_at.elapsed();
    assert!(!worker.is_finished(), "the worker stayed up");
    handle.stop();
    let summary = worker.await.expect("joined").expect("clean stop");
    let last = last_status(&outcomes);
    println!(
        "{USERS} events; broker down for {DOWN:?} after {} outcomes; {requests_during} Netskope \
         requests while it was down; all {} outcomes out {recovered:.1?} after it went down; \
         {} outcome records in all; summary {summary:?}",
        before.len(),
        last.len(),
        outcomes.len()
    );
    assert_eq!(last.len(), USERS, "every event has an outcome");
    assert!(last.values().all(|s| s == "applied"), "{last:?}");
    assert_eq!(summary.left_open, 0);
    for n in [2, USERS] {
        assert_eq!(sandbox.sim.user(&user(n)).map(|u| u.active), Some(false));
    }
    assert_eq!(
        sandbox
            .sim
            .group_members("Quarantine_HighRisk")
            .map_or(0, |m| m.len()),
        USERS / 2
    );
}

/// Netskope answers slower than the client's request timeout for a while. Requests time out
/// and are retried, the request budget and the in-flight bound hold, and every event finishes
/// once Netskope is quick again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_netskope_is_retried_within_the_budget_and_the_in_flight_bound() {
    use offboarder::pipeline::Pipeline;
    use offboarder::verify::VerifyMode;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const USERS: usize = 60;
    const SLOW: Duration = Duration::from_secs(3);
    const PER_MINUTE: u32 = 1200;
    const MAX_IN_FLIGHT: usize = 20;
    let sandbox = Sandbox::start(
        SimArgs {
            users: USERS,
            rate_limit_per_min: 0,
            latency_ms: 500,
            ..SimArgs::default()
        },
        3,
    )
    .await
    .expect("sandbox");
    sandbox.sim.record_timings(100_000);
    let records: Vec<(String, String, Vec<u8>)> = (1..=USERS)
        .map(|n| {
            let e = event(format!("hr-{n}"), n, "workday", json!({}));
            (sandbox.topics.terminations.clone(), user(n), e)
        })
        .collect();
    sandbox.publish(&records).await.expect("publish");
    let mut config = sandbox.config("faults-slow");
    config.netskope.request_timeout = Duration::from_millis(200);
    config.netskope.requests_per_minute = PER_MINUTE;
    config.verify.mode = VerifyMode::Off;
    config.guard.max_deactivations = 100_000;
    config.pipeline.max_in_flight = MAX_IN_FLIGHT;
    let pipeline = Pipeline::new(&config, sandbox.client(&config).expect("client"))
        .await
        .expect("pipeline");
    let handle = pipeline.handle();
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (handle, peak) = (handle.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(handle.in_flight(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let started = Instant::now();
    let worker = tokio::spawn(pipeline.run());
    tokio::time::sleep(SLOW).await;
    let stats_while_slow = sandbox.sim.stats();
    let abandoned_while_slow: u64 = stats_while_slow
        .requests
        .values()
        .filter_map(|by| by.get(&netskope_sim::CLIENT_CLOSED))
        .sum();
    sandbox.sim.set_latency(Duration::ZERO);
    let outcomes = sandbox
        .read(&sandbox.topics.outcomes, Duration::from_secs(120), |r| {
            r.len() >= USERS
        })
        .await
        .expect("outcomes");
    let took = started.elapsed();
    handle.stop();
    let summary = worker.await.expect("joined").expect("clean stop");
    sampler.abort();
    let timings = sandbox.sim.timings();
    let mut lookups: BTreeMap<String, usize> = BTreeMap::new();
    for t in timings.iter().filter(|t| t.method == "GET") {
        *lookups.entry(t.target.clone()).or_default() += 1;
    }
    let repeated = lookups.values().filter(|n| **n > 1).count();
    let arrived = timings.len();
    // The worker's limiter: a sixth of the minute's budget at once, then the rate.
    let budget = f64::from(PER_MINUTE) / 6.0 + f64::from(PER_MINUTE) / 60.0 * took.as_secs_f64();
    let last = last_status(&outcomes);
    println!(
        "{USERS} terminations; Netskope took 500 ms against a 200 ms timeout for {SLOW:?}: \
         {arrived} requests arrived in {took:.1?} (budget {budget:.0}), {abandoned_while_slow} \
         abandoned by the client while slow, {repeated} lookups repeated after a timeout; peak in flight {} \
         (bound {MAX_IN_FLIGHT}); summary {summary:?}",
        peak.load(Ordering::SeqCst)
    );
    assert_eq!(last.len(), USERS);
    assert!(last.values().all(|s| s == "applied"), "{last:?}");
    assert!(abandoned_while_slow > 0, "requests timed out");
    assert!(repeated > 0, "timed-out requests were retried");
    assert!(
        (arrived as f64) <= budget + 1.0,
        "{arrived} requests exceed the budget of {budget:.0}"
    );
    assert!(peak.load(Ordering::SeqCst) <= MAX_IN_FLIGHT);
    assert_eq!(summary.left_open, 0);
}
