//! One request budget per Netskope token.
//!
//! Netskope limits each token to about 300 requests per minute, and a 429 usually comes without
//! `Retry-After`. Sending into a 429 wastes budget and delays everyone, so every request of a
//! token first takes a cell from that token's GCRA limiter (`governor`). Three signals tune it:
//!
//! * `ratelimit-remaining: 0` with `ratelimit-reset: N`: the server told us the window is spent,
//!   so the whole token pauses for N seconds *before* a 429 happens;
//! * a 429: the token's rate is halved and the whole token pauses (for `Retry-After` when given,
//!   else for the retry's backoff), so concurrent requests stop hammering too, not only the one
//!   that was refused;
//! * successes: after a quarter-minute's worth of them, the rate climbs back by a tenth of the
//!   configured budget (additive increase, multiplicative decrease).
//!
//! All waits go through tokio's clock, so paused-time tests can check them.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::{
    Quota, RateLimiter, middleware::NoOpMiddleware, state::InMemoryState, state::NotKeyed,
};
use tokio::time::Instant;

use offboarder_base::clock::{TokioClock, wait_until};

type Gcra =
    RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<governor::nanos::Nanos>>;

/// The lowest rate a run of 429s can push a token to, as a fraction of this worker's ceiling.
const MIN_RATE_DIVISOR: u32 = 16;

/// The smallest share of a token's budget a worker keeps (see [`TokenLimiter::set_share`]):
/// a worker with no partitions still probes Netskope for `/readyz` and polls the audit trail.
pub const MIN_SHARE: f64 = 0.05;

pub struct TokenLimiter {
    clock: TokioClock,
    configured_per_min: u32,
    state: Mutex<State>,
}

struct State {
    gcra: Arc<Gcra>,
    per_min: u32,
    /// This worker's share of the token's budget: the most `per_min` climbs back to.
    ceiling: u32,
    /// No request of this token leaves before this instant.
    paused_until: Option<Instant>,
    /// Successes since the rate last changed; drives the slow climb back.
    successes: u32,
    /// 429s seen since the token was created; exposed for tests and metrics.
    throttled_total: u64,
}

impl TokenLimiter {
    pub fn new(per_min: u32) -> Self {
        let per_min = per_min.max(1);
        let clock = TokioClock::new();
        Self {
            state: Mutex::new(State {
                gcra: Arc::new(build(per_min, &clock)),
                per_min,
                ceiling: per_min,
                paused_until: None,
                successes: 0,
                throttled_total: 0,
            }),
            clock,
            configured_per_min: per_min,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain numbers behind; they are still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until this token may send one request. Returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        loop {
            let (paused_until, gcra) = {
                let s = self.lock();
                (s.paused_until, s.gcra.clone())
            };
            if let Some(until) = paused_until
                && until > Instant::now()
            {
                tokio::time::sleep_until(until).await;
                continue;
            }
            match gcra.check() {
                Ok(()) => return started.elapsed(),
                Err(not_until) => {
                    tokio::time::sleep(wait_until(&self.clock, not_until.earliest_possible()))
                        .await;
                }
            }
        }
    }

    /// The server answered 429: halve the rate and, when the server said how long, pause the
    /// whole token that long.
    pub fn on_throttled(&self, retry_after: Option<Duration>) {
        let mut s = self.lock();
        s.throttled_total += 1;
        let floor = (s.ceiling / MIN_RATE_DIVISOR).max(1);
        let slower = (s.per_min / 2).max(floor);
        if slower != s.per_min {
            s.gcra = Arc::new(rebuild(&s.gcra, s.per_min, slower, &self.clock));
            s.per_min = slower;
        }
        s.successes = 0;
        if let Some(wait) = retry_after {
            pause(&mut s, wait);
        }
    }

    /// Pauses every request of this token for `wait` (keeps a longer pause already set).
    pub fn pause_for(&self, wait: Duration) {
        pause(&mut self.lock(), wait);
    }

    /// Applies `ratelimit-remaining` / `ratelimit-reset` from a response.
    pub fn on_rate_headers(&self, remaining: Option<u64>, reset: Option<Duration>) {
        if let (Some(0), Some(reset)) = (remaining, reset) {
            self.pause_for(reset);
        }
    }

    /// A request of this token succeeded: after a quarter-minute's worth of successes at the
    /// current rate, raise it by a tenth of the configured budget.
    pub fn on_success(&self) {
        let mut s = self.lock();
        if s.per_min >= s.ceiling {
            return;
        }
        s.successes += 1;
        if s.successes >= (s.per_min / 4).max(1) {
            let faster = (s.per_min + (s.ceiling / 10).max(1)).min(s.ceiling);
            s.gcra = Arc::new(rebuild(&s.gcra, s.per_min, faster, &self.clock));
            s.per_min = faster;
            s.successes = 0;
        }
    }

    /// Gives this worker `share` of the token's budget (clamped to [`MIN_SHARE`]..=1), for a
    /// fleet of workers that split one token. A rate at the old ceiling moves to the new one at
    /// once; a rate slowed by 429s stays slowed (and climbs back to the new ceiling). The
    /// bucket keeps its level, as with every rate change.
    pub fn set_share(&self, share: f64) {
        let share = if share.is_finite() {
            share.clamp(MIN_SHARE, 1.0)
        } else {
            1.0
        };
        let ceiling = (f64::from(self.configured_per_min) * share)
            .round()
            .max(1.0) as u32;
        let mut s = self.lock();
        if ceiling == s.ceiling {
            return;
        }
        let per_min = if s.per_min >= s.ceiling {
            ceiling
        } else {
            s.per_min.min(ceiling)
        };
        s.ceiling = ceiling;
        if per_min != s.per_min {
            s.gcra = Arc::new(rebuild(&s.gcra, s.per_min, per_min, &self.clock));
            s.per_min = per_min;
            s.successes = 0;
        }
    }

    /// This worker's share of the budget, requests per minute.
    pub fn ceiling_per_min(&self) -> u32 {
        self.lock().ceiling
    }

    /// The rate in force now, requests per minute.
    pub fn current_per_min(&self) -> u32 {
        self.lock().per_min
    }

    pub fn configured_per_min(&self) -> u32 {
        self.configured_per_min
    }

    /// How many 429s this token has received.
    pub fn throttled_total(&self) -> u64 {
        self.lock().throttled_total
    }

    /// The instant until which the token is paused, if it is.
    pub fn paused_until(&self) -> Option<Instant> {
        self.lock().paused_until.filter(|u| *u > Instant::now())
    }
}

fn pause(s: &mut State, wait: Duration) {
    let until = Instant::now() + wait;
    if s.paused_until.is_none_or(|p| p < until) {
        s.paused_until = Some(until);
    }
}

/// A GCRA limiter of `per_min` requests a minute that allows a burst of ten seconds' worth:
/// enough to start quickly, small enough not to empty a server-side window in one go.
fn build(per_min: u32, clock: &TokioClock) -> Gcra {
    let rate = NonZeroU32::new(per_min).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst_of(per_min)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct_with_clock(Quota::per_minute(rate).allow_burst(burst), clock.clone())
}

fn burst_of(per_min: u32) -> u32 {
    (per_min / 6).max(1)
}

/// A limiter at the new rate that holds as many cells as `old` (at `old_per_min`) has left, at
/// most its own burst. A fresh limiter starts full, so rebuilding one on a 429 would hand out
/// a free burst right after the server said to slow down. A rate change moves the pace; it
/// never refills the bucket. `old` is being replaced, so counting its cells by taking them
/// costs nothing.
///
/// The next cell of `old` may be partly earned, and the new limiter can only start a whole
/// interval from now. Dropping that part on every change cost a worker whose share follows
/// the fleet's demand (a change every half second) 10 to 20 % of its budget, so it is rounded
/// instead: half earned or more counts as a cell. On average a change then neither loses nor
/// gains time, and no change gains more than half an interval.
fn rebuild(old: &Gcra, old_per_min: u32, per_min: u32, clock: &TokioClock) -> Gcra {
    let new = build(per_min, clock);
    let burst = burst_of(per_min);
    let mut left = 0;
    while left < burst {
        match old.check() {
            Ok(()) => left += 1,
            Err(not_until) => {
                let wait = wait_until(clock, not_until.earliest_possible());
                let interval = Duration::from_secs(60) / old_per_min.max(1);
                if wait * 2 <= interval {
                    left += 1;
                }
                break;
            }
        }
    }
    for _ in left..burst {
        // Cannot fail: a fresh limiter holds `burst` cells.
        let _ = new.check();
    }
    new
}

impl std::fmt::Debug for TokenLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("TokenLimiter")
            .field("configured_per_min", &self.configured_per_min)
            .field("per_min", &s.per_min)
            .field("paused_until", &s.paused_until)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test(start_paused = true)]
    async fn a_share_sets_the_ceiling_and_a_slowed_rate_stays_slowed() {
        let l = TokenLimiter::new(300);
        l.set_share(1.0 / 3.0);
        assert_eq!((l.ceiling_per_min(), l.current_per_min()), (100, 100));
        // Successes climb no higher than the share.
        for _ in 0..1000 {
            l.on_success();
        }
        assert_eq!(l.current_per_min(), 100);
        l.on_throttled(None);
        assert_eq!(l.current_per_min(), 50);
        // A larger share after a rebalance: the slowed rate is not jumped up...
        l.set_share(0.5);
        assert_eq!((l.ceiling_per_min(), l.current_per_min()), (150, 50));
        // ...and no share goes below the floor, so an idle worker can still probe.
        l.set_share(0.0);
        assert_eq!(l.ceiling_per_min(), 15);
        assert_eq!(l.current_per_min(), 15);
        l.set_share(f64::NAN);
        assert_eq!(l.ceiling_per_min(), 300);
    }

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_to_the_budget_after_the_burst() {
        let l = TokenLimiter::new(60); // one a second, burst of 10
        let t0 = Instant::now();
        for _ in 0..10 {
            l.acquire().await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..5 {
            l.acquire().await;
        }
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_halves_the_rate_and_retry_after_pauses_the_token() {
        let l = TokenLimiter::new(300);
        l.on_throttled(Some(Duration::from_secs(7)));
        assert_eq!(l.current_per_min(), 150);
        let t0 = Instant::now();
        l.acquire().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(7));
        l.on_throttled(None);
        l.on_throttled(None);
        l.on_throttled(None);
        l.on_throttled(None);
        l.on_throttled(None);
        assert_eq!(l.current_per_min(), 300 / MIN_RATE_DIVISOR, "floored");
        assert_eq!(l.throttled_total(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_change_keeps_the_bucket_level() {
        let l = TokenLimiter::new(60); // one a second, burst of 10
        for _ in 0..10 {
            l.acquire().await;
        }
        // The bucket is empty when the 429 halves the rate: the next request waits one
        // interval of the new rate (2 s), not a fresh burst.
        l.on_throttled(None);
        let t0 = Instant::now();
        l.acquire().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(2));

        // A bucket with cells left keeps them (up to the new burst) across a change.
        let l = TokenLimiter::new(60);
        for _ in 0..7 {
            l.acquire().await;
        }
        l.on_throttled(None); // 30 a minute, burst of 5; 3 cells were left
        let t0 = Instant::now();
        for _ in 0..3 {
            l.acquire().await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO);
        l.acquire().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
    }

    /// A share that moves a little every half second, as it does when it follows the fleet's
    /// demand, must not cost throughput: each change used to drop the part of the next cell
    /// already earned (half an interval on average), 10 % of the budget here.
    #[tokio::test(start_paused = true)]
    async fn frequent_small_rate_changes_keep_the_pace() {
        let l = Arc::new(TokenLimiter::new(600)); // ten a second, burst of 100
        for _ in 0..100 {
            l.acquire().await;
        }
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sender = {
            let (l, sent) = (l.clone(), sent.clone());
            tokio::spawn(async move {
                loop {
                    l.acquire().await;
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        };
        for tick in 0..120 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            l.set_share(if tick % 2 == 0 { 0.99 } else { 1.0 });
        }
        sender.abort();
        // 60 s at 594 to 600 a minute.
        let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        assert!((585..=605).contains(&sent), "{sent} sent in 60 s");
    }

    #[tokio::test(start_paused = true)]
    async fn successes_climb_back_to_the_budget() {
        let l = TokenLimiter::new(100);
        l.on_throttled(None);
        assert_eq!(l.current_per_min(), 50);
        for _ in 0..12 {
            l.on_success();
        }
        assert_eq!(l.current_per_min(), 60);
        for _ in 0..200 {
            l.on_success();
        }
        assert_eq!(
            l.current_per_min(),
            100,
            "never above the configured budget"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_headers_pause_before_a_429() {
        let l = TokenLimiter::new(300);
        l.on_rate_headers(Some(3), Some(Duration::from_secs(20)));
        assert!(l.paused_until().is_none(), "budget left: no pause");
        l.on_rate_headers(Some(0), Some(Duration::from_secs(20)));
        let t0 = Instant::now();
        l.acquire().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_pause_does_not_cut_a_longer_one() {
        let l = TokenLimiter::new(300);
        l.pause_for(Duration::from_secs(30));
        l.pause_for(Duration::from_secs(5));
        let t0 = Instant::now();
        l.acquire().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
    }
}
