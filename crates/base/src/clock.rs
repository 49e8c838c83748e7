//! Time sources that follow tokio's clock.
//!
//! Everything in offboarder that waits (rate limiters, retries, audit polling, the simulator's
//! indexing lag) reads time through tokio, so that tests can run with `tokio::time::pause` and
//! move minutes of simulated time in milliseconds. The standard library's `SystemTime` and
//! governor's default `quanta` clock do not pause, so they are wrapped here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, Reference};
use governor::nanos::Nanos;
use tokio::time::Instant;

/// Wall-clock (Unix epoch) time that advances with tokio's clock.
///
/// It captures the system time once, at construction, and from then on adds tokio's elapsed time.
/// Under paused time the epoch therefore advances exactly as far as the test advanced tokio.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    anchor_instant: Instant,
    anchor_epoch: Duration,
}

impl WallClock {
    pub fn new() -> Self {
        let anchor_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self {
            anchor_instant: Instant::now(),
            anchor_epoch,
        }
    }

    /// A clock whose epoch starts at `epoch` now; tests use it to get stable timestamps.
    pub fn starting_at(epoch: Duration) -> Self {
        Self {
            anchor_instant: Instant::now(),
            anchor_epoch: epoch,
        }
    }

    /// Time since the Unix epoch.
    pub fn now(&self) -> Duration {
        self.anchor_epoch + self.anchor_instant.elapsed()
    }

    /// The current time as a date, for outcome timestamps.
    pub fn now_datetime(&self) -> time::OffsetDateTime {
        let now = self.now();
        time::OffsetDateTime::UNIX_EPOCH + now
    }

    /// Whole seconds since the Unix epoch, the unit of Netskope's audit timestamps.
    pub fn now_secs(&self) -> u64 {
        self.now().as_secs()
    }
}

/// `t` as RFC 3339 text, the form of every date offboarder writes (events, outcomes, state).
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

/// A governor clock that reads tokio's monotonic clock.
///
/// governor's own clocks ignore `tokio::time::pause`; with this one a paused test sees the
/// limiter refill exactly as simulated time passes.
#[derive(Clone, Debug)]
pub struct TokioClock {
    start: Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.start.elapsed())
    }
}

/// How long to wait, from now, until a governor instant.
pub fn wait_until(clock: &TokioClock, earliest: Nanos) -> Duration {
    Duration::from(earliest.duration_since(clock.now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wall_clock_follows_paused_time() {
        let clock = WallClock::starting_at(Duration::from_secs(1_700_000_000));
        assert_eq!(clock.now_secs(), 1_700_000_000);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now_secs(), 1_700_000_090);
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = TokioClock::new();
        let t0 = clock.now();
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(
            Duration::from(clock.now().duration_since(t0)),
            Duration::from_millis(250)
        );
    }
}
