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
//! Time is `tokio::time::Instant`, so that tests can run a window in paused time.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use offboarder_base::metric_names as names;

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

/// What [`Guard::try_admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; the action is counted.
    Admitted,
    /// Destructive actions are halted. `tripped` is true for exactly one caller per halt: the
    /// one whose action went over the limit, which reports the halt.
    Halted { tripped: bool },
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
    /// Events waiting for a release.
    pub waiting: usize,
    /// Halts since the worker started.
    pub halts: u64,
}

#[derive(Debug)]
struct State {
    /// When each destructive action of the current window was admitted, oldest first (at most
    /// `max` entries).
    admitted: VecDeque<Instant>,
    halted: bool,
    /// Set by a release: the time of the last action admitted since, to tell when the burst
    /// is over.
    released: Option<Instant>,
    waiting: usize,
    halts: u64,
}

pub struct Guard {
    max: usize,
    window: Duration,
    state: Mutex<State>,
    /// Bumped by every halt and every release; waiters and the consumer loop wake on a change.
    changes: watch::Sender<u64>,
}

impl Default for Guard {
    fn default() -> Self {
        Self::new(&GuardConfig::default())
    }
}

impl Guard {
    pub fn new(config: &GuardConfig) -> Self {
        metrics::gauge!(names::GUARD_HALTED).set(0.0);
        Self {
            max: config.max_deactivations.max(1),
            window: config.window,
            state: Mutex::new(State {
                admitted: VecDeque::new(),
                halted: false,
                released: None,
                waiting: 0,
                halts: 0,
            }),
            changes: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one destructive action, or says that they are halted.
    pub fn try_admit(&self) -> Admission {
        let now = Instant::now();
        let mut s = self.lock();
        if s.halted {
            return Admission::Halted { tripped: false };
        }
        if let Some(last) = s.released {
            if now.duration_since(last) < self.window {
                s.released = Some(now);
                return Admission::Admitted;
            }
            // A whole window without a destructive action: the confirmed burst is over.
            s.released = None;
            s.admitted.clear();
        }
        while s
            .admitted
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            s.admitted.pop_front();
        }
        if s.admitted.len() < self.max {
            s.admitted.push_back(now);
            return Admission::Admitted;
        }
        s.halted = true;
        s.halts += 1;
        metrics::gauge!(names::GUARD_HALTED).set(1.0);
        metrics::counter!(names::GUARD_HALTS).increment(1);
        drop(s);
        self.changes.send_modify(|n| *n += 1);
        Admission::Halted { tripped: true }
    }

    /// Waits until a destructive action is admitted (at once, unless halted).
    pub async fn admitted(&self) {
        let mut changes = self.changes.subscribe();
        let mut counted: Option<Waiter<'_>> = None;
        loop {
            if self.try_admit() == Admission::Admitted {
                break;
            }
            if counted.is_none() {
                counted = Some(Waiter::new(self));
            }
            // The sender lives as long as `self`; an error cannot happen while we borrow it.
            if changes.changed().await.is_err() {
                break;
            }
        }
    }

    /// Lifts a halt (see the module notes for what a release confirms). Returns the status
    /// before the release; releasing a guard that is not halted changes nothing.
    pub fn release(&self) -> GuardStatus {
        let before = self.status();
        if before.halted {
            let mut s = self.lock();
            s.halted = false;
            s.released = Some(Instant::now());
            s.admitted.clear();
            drop(s);
            metrics::gauge!(names::GUARD_HALTED).set(0.0);
            self.changes.send_modify(|n| *n += 1);
        }
        before
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
        self.lock().halted
    }

    pub fn status(&self) -> GuardStatus {
        let now = Instant::now();
        let s = self.lock();
        GuardStatus {
            halted: s.halted,
            in_window: s
                .admitted
                .iter()
                .filter(|t| now.duration_since(**t) < self.window)
                .count(),
            max_deactivations: self.max,
            window_secs: self.window.as_secs(),
            released: s.released.is_some(),
            waiting: s.waiting,
            halts: s.halts,
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

    fn guard(max: usize, window_secs: u64) -> Guard {
        Guard::new(&GuardConfig {
            max_deactivations: max,
            window: Duration::from_secs(window_secs),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn halts_past_the_limit_and_trips_once() {
        let g = guard(3, 600);
        for _ in 0..3 {
            assert_eq!(g.try_admit(), Admission::Admitted);
        }
        assert_eq!(g.try_admit(), Admission::Halted { tripped: true });
        assert_eq!(g.try_admit(), Admission::Halted { tripped: false });
        assert!(g.is_halted());
        // A halt does not lift with time: only an operator lifts it.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(g.try_admit(), Admission::Halted { tripped: false });
        assert_eq!(g.status().halts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let g = guard(2, 600);
        assert_eq!(g.try_admit(), Admission::Admitted);
        tokio::time::advance(Duration::from_secs(400)).await;
        assert_eq!(g.try_admit(), Admission::Admitted);
        tokio::time::advance(Duration::from_secs(200)).await;
        // The first action left the window; the second is still in it.
        assert_eq!(g.try_admit(), Admission::Admitted);
        assert_eq!(g.status().in_window, 2);
        assert_eq!(g.try_admit(), Admission::Halted { tripped: true });
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_go_on_after_a_release_and_the_guard_rearms_after_a_quiet_window() {
        let g = Arc::new(guard(1, 600));
        assert_eq!(g.try_admit(), Admission::Admitted);
        assert_eq!(g.try_admit(), Admission::Halted { tripped: true });
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let g = g.clone();
                tokio::spawn(async move { g.admitted().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(g.status().waiting, 5);
        assert!(waiters.iter().all(|w| !w.is_finished()));
        let before = g.release();
        assert!(before.halted);
        for w in waiters {
            w.await.expect("waiter");
        }
        let status = g.status();
        assert!(!status.halted && status.released && status.waiting == 0);
        // The confirmed burst goes on while actions keep coming...
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(300)).await;
            assert_eq!(g.try_admit(), Admission::Admitted);
        }
        // ...and after a quiet window the limit applies again.
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(g.try_admit(), Admission::Admitted);
        assert!(!g.status().released);
        assert_eq!(g.try_admit(), Admission::Halted { tripped: true });
        assert_eq!(g.status().halts, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_stops_counting() {
        let g = Arc::new(guard(1, 600));
        assert_eq!(g.try_admit(), Admission::Admitted);
        assert_eq!(g.try_admit(), Admission::Halted { tripped: true });
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.admitted().await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(g.waiting(), 1);
        waiter.abort();
        assert!(waiter.await.expect_err("aborted").is_cancelled());
        assert_eq!(g.waiting(), 0, "an aborted waiter must not stay counted");
    }

    #[test]
    fn releasing_a_running_guard_changes_nothing() {
        let g = guard(1, 600);
        let before = g.release();
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
