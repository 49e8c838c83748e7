//! Verification in a busy tenant: 300 unrelated audit events a second, already flowing through
//! the audit lag when the first worker starts; 100 terminations, half of them acted on by a
//! restarted worker. The audit cursor should
//! read each audit event once: its pages are compared with the number of events it had to
//! read (from its first action's window to what its last poll could see), divided by
//! `verify.page_limit`. The simulator dates its answers (`Date`), as Netskope does, so a
//! window starts at its request; `verify.clock_skew` widens it only for a server without
//! `Date`.

use std::sync::Mutex;
use std::time::Duration;

use time::OffsetDateTime;

use super::budget::{AUDIT_LAG_SECS, Log, default_verify, tenant};
use super::{Row, Worker, count_status, json_of, termination_records, timestamp};

/// Unrelated audit events a second, as the tenant the issue measured had.
const NOISE_PER_SEC: usize = 300;
/// The worker's defaults.
const POLL_SECS: u64 = 15;
const PAGE_LIMIT: f64 = 1000.0;

/// The simulator's count of audit events, sampled as the noise is made.
#[derive(Default)]
struct Samples(Mutex<Vec<(OffsetDateTime, usize)>>);

impl Samples {
    fn push(&self, at: OffsetDateTime, count: usize) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((at, count));
    }

    /// Audit events recorded up to `at`.
    fn at(&self, at: OffsetDateTime) -> usize {
        let samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
        samples
            .iter()
            .take_while(|(t, _)| *t <= at)
            .last()
            .map_or(0, |(_, n)| *n)
    }
}

pub(super) async fn noisy_audit(rows: &mut Vec<Row>) {
    let half = 50;
    let sandbox = tenant().await;
    let samples = Samples::default();
    let started = OffsetDateTime::now_utc();
    let noise = async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            sandbox
                .sim
                .record_unrelated_audit("another-integration", NOISE_PER_SEC / 10);
            samples.push(OffsetDateTime::now_utc(), sandbox.sim.audit_event_count());
        }
    };
    let run = async {
        // A busy tenant is busy before the worker comes: the noise is through the lag first.
        tokio::time::sleep(Duration::from_secs(AUDIT_LAG_SECS + 5)).await;
        let first = Worker::start(&sandbox, "bench-audit", &default_verify()).await;
        sandbox
            .publish(&termination_records(&sandbox, 1..=half))
            .await
            .expect("publish");
        sandbox
            .read(&sandbox.topics.outcomes, Duration::from_secs(600), |r| {
                count_status(r, "verified") >= half
            })
            .await
            .expect("outcomes");
        first.stop().await;
        let restarted_at = OffsetDateTime::now_utc();
        sandbox
            .publish(&termination_records(&sandbox, half + 1..=2 * half))
            .await
            .expect("publish");
        let second = Worker::start(&sandbox, "bench-audit", &default_verify()).await;
        let outcomes = sandbox
            .read(&sandbox.topics.outcomes, Duration::from_secs(600), |r| {
                count_status(r, "verified") >= 2 * half
            })
            .await
            .expect("outcomes");
        second.stop().await;
        (outcomes, restarted_at)
    };
    let (outcomes, restarted_at) = tokio::select! {
        done = run => done,
        () = noise => unreachable!("the noise never ends"),
    };
    let verified: Vec<_> = outcomes
        .iter()
        .map(json_of)
        .filter(|o| o["status"] == "verified")
        .collect();
    let by_audit = verified
        .iter()
        .filter(|o| o["verification"]["method"] == "audit")
        .count();
    let deadline = (AUDIT_LAG_SECS + 2 * POLL_SECS) as f64;
    let waits: Vec<f64> = verified
        .iter()
        .filter_map(|o| Some((timestamp(o, "verified")? - timestamp(o, "acted")?).as_seconds_f64()))
        .collect();
    let in_time = waits.iter().filter(|w| **w <= deadline).count();
    let slowest = waits.iter().copied().fold(0.0f64, f64::max);
    // What each worker had to read. Its cursor goes by insertion time, and an event is
    // inserted `lag` after it happens: from what was inserted as its first action went out to
    // what its last poll could see.
    let log = Log::of(&sandbox);
    let audit: Vec<OffsetDateTime> = log
        .timings
        .iter()
        .filter(|t| t.target.starts_with("/api/v2/events/data/audit"))
        .map(|t| t.arrived)
        .collect();
    let first_acted = |after: OffsetDateTime| {
        verified
            .iter()
            .filter_map(|o| timestamp(o, "acted"))
            .filter(|t| *t > after)
            .min()
    };
    let lag = time::Duration::seconds(AUDIT_LAG_SECS as i64);
    let mut pages = 0usize;
    let mut events = 0usize;
    for (from, to) in [
        (started, restarted_at),
        (restarted_at, OffsetDateTime::now_utc()),
    ] {
        let polls: Vec<_> = audit.iter().filter(|t| **t > from && **t <= to).collect();
        let (Some(acted), Some(last)) = (first_acted(from), polls.last()) else {
            continue;
        };
        pages += polls.len();
        events += samples
            .at(**last - lag)
            .saturating_sub(samples.at(acted - lag));
    }
    // A poll is a run of pages less than a second apart; each ends on a partial page.
    let polls = 1 + audit
        .windows(2)
        .filter(|w| (w[1] - w[0]).as_seconds_f64() > 1.0)
        .count();
    let ideal = events as f64 / PAGE_LIMIT;
    let ratio = pages as f64 / ideal.max(1.0);
    rows.push(Row {
        scenario: "100 terminations, 300 unrelated audit events/s, half after a restart, default configuration",
        figure: "verified by audit within lag + 2 polls; audit pages ÷ (audit events to read / page_limit)",
        value: format!("{by_audit} % by audit, {in_time} % in time; {ratio:.2}"),
        target: "100 %; ≤ 1.2",
        met: Some(by_audit == 2 * half && in_time == 2 * half && ratio <= 1.2),
        note: format!(
            "{} verified; slowest {slowest:.0} s after its PATCH (limit {deadline:.0} s: a {AUDIT_LAG_SECS} s audit lag, polls every {POLL_SECS} s); {pages} audit pages in {polls} polls for {events} audit events in the two workers' windows (inserted from each one's first action to its last poll)",
            verified.len()
        ),
    });
}
