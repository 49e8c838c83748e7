//! The dead-letter limit (invariant 4): a flood of invalid events is a deployment fault, not
//! data.
//!
//! One bad event goes to the dead-letter topic and the worker moves on. When most recent events
//! are bad, though, a producer is probably sending a new schema or the wrong topic is wired in,
//! and dead-lettering on would empty the whole topic into the dead-letter topic. So the worker
//! counts invalid events among the last `window` received. The event that would take the count
//! over `max_ratio × window` is not dead-lettered: the worker stops reading there, holds that
//! event's offset, and reports the fault. A ratio of 1 turns the limit off.

use std::collections::VecDeque;

/// Invalid events among the last `window` events received.
#[derive(Debug)]
pub struct DeadLetterLimit {
    window: usize,
    /// Most invalid events the window may hold.
    max_invalid: usize,
    /// `true` for an invalid event, oldest first.
    recent: VecDeque<bool>,
    invalid: usize,
    tripped: bool,
}

impl DeadLetterLimit {
    pub fn new(window: usize, max_ratio: f64) -> Self {
        let window = window.max(1);
        // Whole events: a ratio of 0.5 over 100 events allows 50.
        let max_invalid = (max_ratio.clamp(0.0, 1.0) * window as f64).floor() as usize;
        Self {
            window,
            max_invalid,
            recent: VecDeque::with_capacity(window),
            invalid: 0,
            tripped: false,
        }
    }

    /// Counts a received event. Returns `false` for an invalid event that would take the
    /// window over the limit: that event is not counted, and the limit stays tripped.
    pub fn admit(&mut self, invalid: bool) -> bool {
        if self.tripped {
            return false;
        }
        if invalid && self.invalid + 1 > self.max_invalid && self.max_invalid < self.window {
            self.tripped = true;
            return false;
        }
        if self.recent.len() == self.window && self.recent.pop_front() == Some(true) {
            self.invalid -= 1;
        }
        self.recent.push_back(invalid);
        if invalid {
            self.invalid += 1;
        }
        true
    }

    pub fn tripped(&self) -> bool {
        self.tripped
    }

    /// What the operator reads, in `/readyz` and the log.
    pub fn describe(&self) -> String {
        format!(
            "dead-letter limit: {} of the last {} events were invalid and the next one would \
             pass the limit of {}; reading stopped at it, with its offset held. This looks like \
             a deployment fault (a producer's new format, a wrong topic). Check the dead-letter \
             topic's offboarder-reason headers, fix the source, then restart the worker (or \
             raise pipeline.dead_letter_max_ratio)",
            self.invalid,
            self.recent.len(),
            self.max_invalid
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn trips_at_the_first_invalid_event_over_the_limit() {
        let mut limit = DeadLetterLimit::new(10, 0.5);
        for _ in 0..5 {
            assert!(limit.admit(true));
        }
        assert!(limit.admit(false), "valid events always pass");
        assert!(!limit.admit(true), "the sixth invalid event of ten is over");
        assert!(limit.tripped());
        assert!(
            !limit.admit(false),
            "once tripped, nothing more is admitted"
        );
        assert!(limit.describe().contains("5 of the last 6"));
    }

    #[test]
    fn old_invalid_events_leave_the_window() {
        let mut limit = DeadLetterLimit::new(10, 0.5);
        for _ in 0..5 {
            assert!(limit.admit(true));
        }
        for _ in 0..10 {
            assert!(limit.admit(false));
        }
        for _ in 0..5 {
            assert!(limit.admit(true), "the window holds valid events only");
        }
        assert!(!limit.tripped());
    }

    #[test]
    fn a_ratio_of_one_never_trips() {
        let mut limit = DeadLetterLimit::new(3, 1.0);
        for _ in 0..100 {
            assert!(limit.admit(true));
        }
    }

    proptest! {
        /// However events arrive, the window never holds more invalid events than the limit,
        /// and the limit trips only when an invalid event would pass it.
        #[test]
        fn the_window_never_exceeds_its_limit(
            events in proptest::collection::vec(any::<bool>(), 0..400),
            window in 1usize..50,
            ratio in 0.0f64..1.0,
        ) {
            let mut limit = DeadLetterLimit::new(window, ratio);
            let max = (ratio * window as f64).floor() as usize;
            for invalid in events {
                let before = limit.tripped();
                let admitted = limit.admit(invalid);
                prop_assert!(limit.invalid <= max);
                prop_assert_eq!(limit.invalid, limit.recent.iter().filter(|b| **b).count());
                if !admitted && !before {
                    prop_assert!(invalid && limit.invalid == max);
                }
            }
        }
    }
}
