//! The guard's decisions as a fold over its log of claims and releases.
//!
//! Every replica of a fleet reads the same log in the same order, and each decision depends only
//! on the log (time included: an entry carries the time it was written), so every replica
//! reaches the same verdict for every claim and the same halt. A replica started later, or
//! restarted after a crash, replays the log and arrives where the others are. Nothing here
//! reads a clock.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// One entry of the guard's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A destructive action asks to go ahead. It carries the limit of the replica that wrote
    /// it, so that the verdict does not depend on the config of the replica that reads it.
    Claim {
        at_ms: u64,
        max: usize,
        window_ms: u64,
    },
    /// An operator confirmed the burst under way.
    Release { at_ms: u64 },
}

/// What a claim became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; the action is counted.
    Admitted,
    /// Destructive actions are halted. `tripped` is true for exactly one claim per halt: the
    /// one that went over the limit, whose writer reports the halt.
    Halted { tripped: bool },
}

/// What applying an entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Claim(Admission),
    /// True if the release lifted a halt; releasing a running guard changes nothing.
    Release(bool),
}

impl Applied {
    /// A halt began or ended: waiters and the consumer loop must look again.
    pub fn changed(self) -> bool {
        matches!(
            self,
            Applied::Claim(Admission::Halted { tripped: true }) | Applied::Release(true)
        )
    }
}

#[derive(Debug, Default)]
pub struct Window {
    /// When each destructive action of the current window was admitted, oldest first (at most
    /// `max` entries).
    admitted: VecDeque<u64>,
    halted: bool,
    /// Set by a release: the time of the last action admitted since, to tell when the burst
    /// is over.
    released_last: Option<u64>,
    halts: u64,
    /// The latest time seen. Entries from replicas whose clocks disagree may arrive out of
    /// time order; time never goes back here, so the window only slides forward.
    now_ms: u64,
}

impl Window {
    pub fn apply(&mut self, entry: Entry) -> Applied {
        match entry {
            Entry::Claim {
                at_ms,
                max,
                window_ms,
            } => Applied::Claim(self.claim(at_ms, max.max(1), window_ms)),
            Entry::Release { at_ms } => Applied::Release(self.release(at_ms)),
        }
    }

    fn tick(&mut self, at_ms: u64) -> u64 {
        self.now_ms = self.now_ms.max(at_ms);
        self.now_ms
    }

    fn claim(&mut self, at_ms: u64, max: usize, window_ms: u64) -> Admission {
        let now = self.tick(at_ms);
        if self.halted {
            return Admission::Halted { tripped: false };
        }
        if let Some(last) = self.released_last {
            if now - last < window_ms {
                self.released_last = Some(now);
                return Admission::Admitted;
            }
            // A whole window without a destructive action: the confirmed burst is over.
            self.released_last = None;
            self.admitted.clear();
        }
        while self.admitted.front().is_some_and(|t| now - *t >= window_ms) {
            self.admitted.pop_front();
        }
        if self.admitted.len() < max {
            self.admitted.push_back(now);
            return Admission::Admitted;
        }
        self.halted = true;
        self.halts += 1;
        Admission::Halted { tripped: true }
    }

    fn release(&mut self, at_ms: u64) -> bool {
        let now = self.tick(at_ms);
        if !self.halted {
            return false;
        }
        self.halted = false;
        self.released_last = Some(now);
        self.admitted.clear();
        true
    }

    pub fn halted(&self) -> bool {
        self.halted
    }

    pub fn released(&self) -> bool {
        self.released_last.is_some()
    }

    /// Halts in the whole log: across restarts, and across the fleet when the log is shared.
    pub fn halts(&self) -> u64 {
        self.halts
    }

    /// Actions admitted within `window_ms` before `now_ms` (or the latest entry's time, if that
    /// is later).
    pub fn in_window(&self, now_ms: u64, window_ms: u64) -> usize {
        let now = now_ms.max(self.now_ms);
        self.admitted
            .iter()
            .filter(|t| now - **t < window_ms)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn claim(at_ms: u64) -> Entry {
        Entry::Claim {
            at_ms,
            max: 2,
            window_ms: 10 * MIN,
        }
    }

    #[test]
    fn the_same_log_gives_the_same_verdicts() {
        let log = [
            claim(0),
            claim(MIN),
            claim(2 * MIN),
            claim(3 * MIN),
            Entry::Release { at_ms: 4 * MIN },
            claim(5 * MIN),
        ];
        let run = || {
            let mut w = Window::default();
            log.iter().map(|e| w.apply(*e)).collect::<Vec<_>>()
        };
        let verdicts = run();
        assert_eq!(
            verdicts,
            [
                Applied::Claim(Admission::Admitted),
                Applied::Claim(Admission::Admitted),
                Applied::Claim(Admission::Halted { tripped: true }),
                Applied::Claim(Admission::Halted { tripped: false }),
                Applied::Release(true),
                Applied::Claim(Admission::Admitted),
            ]
        );
        assert_eq!(verdicts, run());
    }

    #[test]
    fn time_from_a_clock_behind_does_not_move_the_window_back() {
        let mut w = Window::default();
        assert_eq!(
            w.apply(claim(20 * MIN)),
            Applied::Claim(Admission::Admitted)
        );
        // A replica whose clock is 15 minutes behind: counted at the latest time seen.
        assert_eq!(w.apply(claim(5 * MIN)), Applied::Claim(Admission::Admitted));
        assert_eq!(w.in_window(0, 10 * MIN), 2);
        assert_eq!(
            w.apply(claim(6 * MIN)),
            Applied::Claim(Admission::Halted { tripped: true })
        );
    }

    #[test]
    fn entries_survive_a_round_trip_through_json() {
        for e in [claim(7), Entry::Release { at_ms: 9 }] {
            let text = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<Entry>(&text).unwrap(), e);
        }
    }
}
