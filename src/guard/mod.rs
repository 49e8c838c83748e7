//! The blast-radius guard (invariant 9): at most `max_deactivations` destructive actions
//! (deactivations and deletes) in any sliding `window`.
//!
//! An HR export gone wrong looks exactly like a layoff: thousands of valid terminations at once.
//! Past the limit the guard *halts* destructive actions rather than failing them. Their events
//! wait with their offsets held, so nothing is lost and nothing is done, until an operator
//! either confirms (`offboarder guard release`, through the admin listener) or fixes the source
//! and restarts with a higher limit. Quarantines and releases are not destructive and go on.
//!
//! A release confirms the burst that is under way, not a new allowance of `max_deactivations`:
//! destructive actions flow without a limit until a whole `window` passes without one, and the
//! guard then counts afresh. A layoff of 10,000 needs one release, and a second bad export a
//! day later still halts.
//!
//! The count, the halt and the release live in a log ([`window`] decides from it). With a
//! state topic ([`ledger`]) that log is shared by every worker of the fleet and outlives each:
//! at most `max_deactivations` in a window across all replicas, a halt that survives a crash
//! or a rolling restart, and a release through any replica that lets all of them go on.
//! Without one the log is this process's memory.
//!
//! The state topic also carries each worker's demand for the request budget ([`demand`]) and
//! the fleet's quarantine memory ([`memory`]): the topic every worker already reads in one
//! order is the cheapest place to share them.
//!
//! Time is wall time that follows tokio's clock, so that tests can run a window in paused time.

pub mod demand;
pub mod ledger;
pub mod memory;
pub mod schedule;
pub mod window;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use netskope::cache::TtlCache;
use offboarder_base::clock::WallClock;
use offboarder_base::metric_names as names;

use window::Window;
pub use window::{Admission, Applied, Entry};

/// How long reading the state topic to its end may take (before a skip of a remembered
/// quarantine, before a decision on a user's termination).
const READ_TO_END_TIMEOUT: Duration = Duration::from_secs(5);

/// The `[guard]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Destructive actions (deactivations and deletes) allowed in any `window` before the guard
    /// halts them. At least 1.
    pub max_deactivations: usize,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            max_deactivations: 50,
            window: Duration::from_secs(600),
        }
    }
}

impl GuardConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_deactivations == 0 {
            return Err("guard.max_deactivations must be at least 1".into());
        }
        if self.window.is_zero() {
            return Err("guard.window must be longer than zero".into());
        }
        Ok(())
    }
}

/// What `GET /guard` shows and `offboarder guard release` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardStatus {
    pub halted: bool,
    /// Destructive actions counted in the current window.
    pub in_window: usize,
    pub max_deactivations: usize,
    pub window_secs: u64,
    /// An operator released a halt and the burst it confirmed is still flowing.
    pub released: bool,
    /// Events of this worker waiting for a release.
    pub waiting: usize,
    /// Halts in the guard's log: since the state topic was created, across the fleet.
    pub halts: u64,
    /// Where the count lives: `state topic <name>` (shared by every worker and kept across
    /// restarts) or `memory` (this process only).
    pub shared_through: String,
}

/// The guard could not decide: its state topic cannot be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("the guard's state topic {topic}: {reason}")]
    Ledger { topic: String, reason: String },
}

/// Events whose destructive action was admitted, remembered for this long and at most this
/// many: enough to recognise a redelivery after a crash or a rebalance.
const ADMITTED_EVENTS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const ADMITTED_EVENTS_MAX: usize = 100_000;

#[derive(Debug, Default)]
struct State {
    window: Window,
    waiting: usize,
    /// Entries this worker wrote to the state topic and has not read back yet, by sequence
    /// number: each waits for its verdict, which is decided in log order.
    pending: HashMap<u64, oneshot::Sender<Applied>>,
}

pub struct Guard {
    max: usize,
    window: Duration,
    clock: WallClock,
    state: Mutex<State>,
    /// Bumped by every halt and every release; waiters and the consumer loop wake on a change.
    changes: watch::Sender<u64>,
    /// How many admitted claims the log holds for each event (by `<topic>/<event_id>`).
    admitted_events: TtlCache<String, u32>,
    /// `None`: the log is this process's memory.
    ledger: Option<ledger::Writer>,
    /// Stops the state topic's reader when the guard goes.
    stop: CancellationToken,
    /// Every worker's demand for the request budget, as read from the state topic.
    demands: demand::Demands,
    /// The fleet's quarantine memory, as read from the state topic (and this worker's own
    /// marks at once).
    memory: memory::QuarantineMemory,
    /// The next offset of the state topic to read: how far this worker has read it.
    read_to: watch::Sender<i64>,
    /// The fleet's scheduled terminations, as read from the state topic.
    schedule: schedule::Schedule,
}

impl Default for Guard {
    fn default() -> Self {
        Self::in_memory(&GuardConfig::default())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Guard {
    /// A guard whose log is this process's memory: its count starts at zero with every start,
    /// and other workers do not see it. For tests, the demo and single-process tools.
    pub fn in_memory(config: &GuardConfig) -> Self {
        Self::with_ledger(config, None)
    }

    fn with_ledger(config: &GuardConfig, ledger: Option<ledger::Writer>) -> Self {
        metrics::gauge!(names::GUARD_HALTED).set(0.0);
        Self {
            max: config.max_deactivations.max(1),
            window: config.window,
            clock: WallClock::new(),
            state: Mutex::new(State::default()),
            changes: watch::Sender::new(0),
            admitted_events: TtlCache::new(ADMITTED_EVENTS_MAX, ADMITTED_EVENTS_TTL),
            ledger,
            stop: CancellationToken::new(),
            demands: demand::Demands::default(),
            memory: memory::QuarantineMemory::default(),
            read_to: watch::Sender::new(0),
            schedule: schedule::Schedule::default(),
        }
    }

    /// The fleet's scheduled terminations.
    pub fn schedule(&self) -> &schedule::Schedule {
        &self.schedule
    }

    /// Writes `entry` (a user's termination: to act on later, acted, cancelled, undone) for
    /// the fleet, acknowledged, and takes it at once. Without a state topic it lives in this
    /// process.
    pub async fn write_schedule(&self, entry: schedule::Termination) -> Result<(), GuardError> {
        let key = schedule::key(&entry.user_name);
        if let Some(writer) = &self.ledger {
            writer.write_json(&key, &entry).await?;
        }
        self.schedule.apply(&key, Some(entry));
        Ok(())
    }

    /// Deletes a finished entry of the schedule (a tombstone, so compaction drops it).
    pub async fn forget_schedule(&self, key: &str) -> Result<(), GuardError> {
        if let Some(writer) = &self.ledger {
            writer.delete(key).await?;
        }
        self.schedule.apply(key, None);
        Ok(())
    }

    /// Waits until this worker has read the state topic to where it ends now, so that every
    /// entry acknowledged before the call is seen (another worker's schedule entry, a release
    /// of a quarantine). At once without a state topic.
    pub async fn read_to_end(&self) -> Result<(), GuardError> {
        let Some(writer) = &self.ledger else {
            return Ok(());
        };
        let end = writer.end().await?;
        let mut read_to = self.read_to.subscribe();
        match tokio::time::timeout(READ_TO_END_TIMEOUT, read_to.wait_for(|next| *next >= end)).await
        {
            Ok(Ok(_)) => Ok(()),
            _ => Err(writer.error(&format!(
                "not read to its end (offset {end}) within {READ_TO_END_TIMEOUT:?}"
            ))),
        }
    }

    /// Publishes a due termination again to its input topic, marked with
    /// [`schedule::SCHEDULED_HEADER`], acknowledged.
    pub async fn fire(&self, entry: &schedule::Termination) -> Result<(), GuardError> {
        let value = serde_json::to_vec(&entry.event()).map_err(|e| GuardError::Ledger {
            topic: entry.topic.clone(),
            reason: e.to_string(),
        })?;
        let header = (schedule::SCHEDULED_HEADER, entry.event_id.as_str());
        self.publish_input(&entry.topic, &entry.user_name, &value, header)
            .await
    }

    /// Publishes an input event of offboarder's own to `topic` (see
    /// [`ledger::Writer::publish_input`]); it needs the state topic's producer.
    pub async fn publish_input(
        &self,
        topic: &str,
        user: &str,
        value: &[u8],
        header: (&str, &str),
    ) -> Result<(), GuardError> {
        match &self.ledger {
            Some(writer) => writer.publish_input(topic, user, value, header).await,
            None => Err(GuardError::Ledger {
                topic: topic.to_string(),
                reason: "publishing an input event needs the state topic".into(),
            }),
        }
    }

    /// How long a quarantine is remembered (`pipeline.quarantine_memory`).
    pub fn set_quarantine_memory(&self, ttl: Duration) {
        self.memory.set_ttl(ttl);
    }

    /// Whether a repeat quarantine of `key` ([`memory::QuarantineMemory::key`]), for the event
    /// read at `asking`, may be skipped: a worker of the fleet quarantined that user for an
    /// earlier event, and no release of them has been
    /// read since, after reading the state topic to its current end (so that every release
    /// finished before now is seen). Anything that stops that read answers `false`: the
    /// quarantine is sent again, which is idempotent.
    pub async fn remembers_quarantine(&self, key: &str, asking: &memory::Position) -> bool {
        if !self.memory.remembers(key, self.now_ms(), asking) {
            return false;
        }
        if let Err(e) = self.read_to_end().await {
            tracing::debug!(error = %e, "quarantine memory: the state topic not read to its end");
            return false;
        }
        self.memory.remembers(key, self.now_ms(), asking)
    }

    /// Remembers that this worker quarantined `key`, for the fleet. Best effort: a mark that
    /// is not written costs one repeat PATCH later, never a wrong skip.
    pub fn remember_quarantine(&self, key: &str, at: &memory::Position) {
        let mark = self.mark(true, at);
        self.memory.apply(key, mark.clone(), self.now_ms());
        if let Some(writer) = &self.ledger {
            writer.write_mark_in_background(key, &mark);
        }
    }

    /// Records that `key` is no longer quarantined (released, or read-back found the user
    /// outside the group), acknowledged by the state topic before it returns, so that no
    /// worker of the fleet skips the user's next quarantine once this event has finished.
    pub async fn forget_quarantine(
        &self,
        key: &str,
        at: &memory::Position,
    ) -> Result<(), GuardError> {
        let mark = self.mark(false, at);
        self.memory.apply(key, mark.clone(), self.now_ms());
        match &self.ledger {
            Some(writer) => writer.write_json(key, &mark).await,
            None => Ok(()),
        }
    }

    fn mark(&self, quarantined: bool, at: &memory::Position) -> memory::Mark {
        memory::Mark {
            quarantined,
            at_ms: self.now_ms(),
            position: at.clone(),
        }
    }

    /// Publishes this worker's demand for the request budget (its events waiting to act) to
    /// the state topic; `None` withdraws it as the worker stops. Nothing without a state
    /// topic. A failure is only logged: the budget split then falls back on partitions as the
    /// entry goes stale.
    pub async fn publish_demand(&self, waiting: Option<u64>) {
        if let Some(writer) = &self.ledger
            && let Err(e) = writer.write_demand(waiting).await
        {
            tracing::debug!(error = %e, "budget demand not published");
        }
    }

    /// This worker's share of the request budget by the fleet's demand, with `floor` kept for
    /// every worker; `None` without a state topic or while the fleet has nothing waiting.
    pub fn budget_share(&self, floor: f64) -> Option<f64> {
        let writer = self.ledger.as_ref()?;
        self.demands.share_of(writer.worker(), floor)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX)
    }

    fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }

    /// Applies one entry of the log, in log order. `event` names the event a claim is for;
    /// `mine` is the sequence number of an entry this worker wrote and waits for.
    fn apply(&self, entry: Entry, event: Option<&str>, mine: Option<u64>) -> Applied {
        let mut s = self.lock();
        let applied = s.window.apply(entry);
        if let (Applied::Claim(Admission::Admitted), Some(event)) = (applied, event) {
            let key = event.to_string();
            let seen = self.admitted_events.get(&key).unwrap_or(0);
            self.admitted_events.insert(key, seen.saturating_add(1));
        }
        let halted = s.window.halted();
        let waiter = mine.and_then(|seq| s.pending.remove(&seq));
        drop(s);
        if applied.changed() {
            metrics::gauge!(names::GUARD_HALTED).set(if halted { 1.0 } else { 0.0 });
            // Counted once, by the worker whose claim tripped the halt.
            let ours = mine.is_some() || self.ledger.is_none();
            if ours && applied == Applied::Claim(Admission::Halted { tripped: true }) {
                metrics::counter!(names::GUARD_HALTS).increment(1);
            }
            self.changes.send_modify(|n| *n += 1);
        }
        if let Some(waiter) = waiter {
            let _ = waiter.send(applied);
        }
        applied
    }

    /// Writes an entry to the log and waits for its verdict.
    async fn append(&self, entry: Entry, event: Option<&str>) -> Result<Applied, GuardError> {
        let Some(ledger) = &self.ledger else {
            return Ok(self.apply(entry, event, None));
        };
        let seq = ledger.next_seq();
        let (tx, rx) = oneshot::channel();
        self.lock().pending.insert(seq, tx);
        let answer = async {
            ledger.write(&entry, event, seq).await?;
            match tokio::time::timeout(ledger::READ_BACK_TIMEOUT, rx).await {
                Ok(Ok(applied)) => Ok(applied),
                Ok(Err(_)) => Err(ledger.error("its reader stopped")),
                Err(_) => Err(ledger.error(&format!(
                    "an entry written was not read back within {}",
                    humantime::format_duration(ledger::READ_BACK_TIMEOUT)
                ))),
            }
        };
        let result = answer.await;
        if result.is_err() {
            self.lock().pending.remove(&seq);
        }
        result
    }

    /// Counts one destructive action for `event` (`<topic>/<event_id>`), or says that they
    /// are halted.
    pub async fn try_admit(&self, event: &str) -> Result<Admission, GuardError> {
        let entry = Entry::Claim {
            at_ms: self.now_ms(),
            max: self.max,
            window_ms: self.window_ms(),
        };
        match self.append(entry, Some(event)).await? {
            Applied::Claim(admission) => Ok(admission),
            Applied::Release(_) => unreachable!("a claim is applied as a claim"),
        }
    }

    /// Waits until a destructive action is admitted (at once, unless halted). While the state
    /// topic cannot be written or read, the action waits too: the guard fails closed.
    pub async fn admitted(&self, event: &str) {
        let mut changes = self.changes.subscribe();
        let mut counted: Option<Waiter<'_>> = None;
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.try_admit(event).await {
                Ok(Admission::Admitted) => break,
                Ok(Admission::Halted { .. }) => {
                    counted.get_or_insert_with(|| Waiter::new(self));
                    // The sender lives as long as `self`; an error cannot happen while we
                    // borrow it.
                    if changes.changed().await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    counted.get_or_insert_with(|| Waiter::new(self));
                    tracing::warn!(error = %e, retry_in = ?backoff, "the blast-radius guard cannot decide; the destructive action waits");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Lifts a halt (see the module notes for what a release confirms), for every worker that
    /// shares the state topic. Returns the status before the release; releasing a guard that
    /// is not halted changes nothing.
    pub async fn release(&self) -> Result<GuardStatus, GuardError> {
        let before = self.status();
        if before.halted {
            self.append(
                Entry::Release {
                    at_ms: self.now_ms(),
                },
                None,
            )
            .await?;
        }
        Ok(before)
    }

    /// How many times a destructive action for `event` was admitted, by any worker, as far as
    /// the log remembers (a week, the last 100,000 events). More than one means an earlier
    /// delivery of the same event was let through: after a crash or a rebalance, its action
    /// may already be done.
    pub fn admissions_of(&self, event: &str) -> u32 {
        self.admitted_events.get(&event.to_string()).unwrap_or(0)
    }

    /// Wakes on every halt and release.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Events waiting for a release.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    pub fn is_halted(&self) -> bool {
        self.lock().window.halted()
    }

    pub fn status(&self) -> GuardStatus {
        let now = self.now_ms();
        let s = self.lock();
        GuardStatus {
            halted: s.window.halted(),
            in_window: s.window.in_window(now, self.window_ms()),
            max_deactivations: self.max,
            window_secs: self.window.as_secs(),
            released: s.window.released(),
            waiting: s.waiting,
            halts: s.window.halts(),
            shared_through: self.ledger.as_ref().map_or_else(
                || "memory".to_string(),
                |l| format!("state topic {}", l.topic()),
            ),
        }
    }

    /// Why destructive actions are halted, in the operator's words.
    pub fn halt_reason(&self) -> String {
        format!(
            "blast-radius guard: more than {} deactivations or deletes within {}; destructive \
             actions are halted and their events wait. If the burst is legitimate, run \
             `offboarder guard release --config FILE`; if not, stop the source, then restart",
            self.max,
            humantime::format_duration(self.window)
        )
    }
}

/// One event waiting in [`Guard::admitted`], counted in `waiting` for as long as it lives. The
/// count goes down on drop, so a waiter whose task is cancelled (a shutdown, a revoked
/// partition) stops counting too instead of holding the reading back for good.
struct Waiter<'a>(&'a Guard);

impl<'a> Waiter<'a> {
    fn new(guard: &'a Guard) -> Self {
        guard.lock().waiting += 1;
        Self(guard)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    async fn admit(g: &Guard) -> Admission {
        g.try_admit("hr.terminations/e")
            .await
            .expect("an in-memory guard always decides")
    }

    fn guard(max: usize, window_secs: u64) -> Guard {
        Guard::in_memory(&GuardConfig {
            max_deactivations: max,
            window: Duration::from_secs(window_secs),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn halts_past_the_limit_and_trips_once() {
        let g = guard(3, 600);
        for _ in 0..3 {
            assert_eq!(admit(&g).await, Admission::Admitted);
        }
        assert_eq!(admit(&g).await, Admission::Halted { tripped: true });
        assert_eq!(admit(&g).await, Admission::Halted { tripped: false });
        assert!(g.is_halted());
        // A halt does not lift with time: only an operator lifts it.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(admit(&g).await, Admission::Halted { tripped: false });
        assert_eq!(g.status().halts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let g = guard(2, 600);
        assert_eq!(admit(&g).await, Admission::Admitted);
        tokio::time::advance(Duration::from_secs(400)).await;
        assert_eq!(admit(&g).await, Admission::Admitted);
        tokio::time::advance(Duration::from_secs(200)).await;
        // The first action left the window; the second is still in it.
        assert_eq!(admit(&g).await, Admission::Admitted);
        assert_eq!(g.status().in_window, 2);
        assert_eq!(admit(&g).await, Admission::Halted { tripped: true });
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_go_on_after_a_release_and_the_guard_rearms_after_a_quiet_window() {
        let g = Arc::new(guard(1, 600));
        assert_eq!(admit(&g).await, Admission::Admitted);
        assert_eq!(admit(&g).await, Admission::Halted { tripped: true });
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let g = g.clone();
                tokio::spawn(async move { g.admitted("hr.terminations/e").await })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(g.status().waiting, 5);
        assert!(waiters.iter().all(|w| !w.is_finished()));
        let before = g.release().await.unwrap();
        assert!(before.halted);
        for w in waiters {
            w.await.expect("waiter");
        }
        let status = g.status();
        assert!(!status.halted && status.released && status.waiting == 0);
        // The confirmed burst goes on while actions keep coming...
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(300)).await;
            assert_eq!(admit(&g).await, Admission::Admitted);
        }
        // ...and after a quiet window the limit applies again.
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(admit(&g).await, Admission::Admitted);
        assert!(!g.status().released);
        assert_eq!(admit(&g).await, Admission::Halted { tripped: true });
        assert_eq!(g.status().halts, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_stops_counting() {
        let g = Arc::new(guard(1, 600));
        assert_eq!(admit(&g).await, Admission::Admitted);
        assert_eq!(admit(&g).await, Admission::Halted { tripped: true });
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.admitted("hr.terminations/e").await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(g.waiting(), 1);
        waiter.abort();
        assert!(waiter.await.expect_err("aborted").is_cancelled());
        assert_eq!(g.waiting(), 0, "an aborted waiter must not stay counted");
    }

    #[tokio::test]
    async fn admissions_are_counted_per_event() {
        let g = guard(3, 600);
        g.try_admit("t/a").await.unwrap();
        assert_eq!(g.admissions_of("t/a"), 1);
        g.try_admit("t/a").await.unwrap();
        g.try_admit("t/b").await.unwrap();
        assert_eq!((g.admissions_of("t/a"), g.admissions_of("t/b")), (2, 1));
        // A halted claim is no admission.
        assert_eq!(
            g.try_admit("t/c").await.unwrap(),
            Admission::Halted { tripped: true }
        );
        assert_eq!(g.admissions_of("t/c"), 0);
    }

    #[tokio::test]
    async fn releasing_a_running_guard_changes_nothing() {
        let g = guard(1, 600);
        let before = g.release().await.unwrap();
        assert!(!before.halted);
        assert!(!g.status().released);
    }

    #[test]
    fn config_refuses_a_zero_limit_or_window() {
        let mut c = GuardConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!((c.max_deactivations, c.window.as_secs()), (50, 600));
        c.max_deactivations = 0;
        assert!(c.validate().is_err());
        c = GuardConfig {
            window: Duration::ZERO,
            ..GuardConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
