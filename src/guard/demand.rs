//! Each worker's demand for the token's request budget, as the state topic carries it.
//!
//! Splitting the budget by partitions gives a worker its share of the partitions, which is its
//! share of the work only when every partition carries the same load. A worker holding two
//! termination partitions in a burst then works at a third of the budget while the others sit
//! idle on theirs. So every worker publishes how many of its events wait to act (every
//! [`DEMAND_INTERVAL`], under the key `demand/<worker>`), reads everyone's, and takes its share
//! of the total. All workers read the same entries, so the shares add up to the whole budget.
//! While no worker has anything waiting, or without a state topic, the partition split stands.
//!
//! Freshness is judged by when an entry was *read*, on the reader's own clock: wall clocks of
//! different hosts need not agree. A worker that stops publishing (it died) drops out of the
//! total after [`FRESH_FOR`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How often each worker publishes its demand.
pub const DEMAND_INTERVAL: Duration = Duration::from_millis(500);
/// How long an entry counts after it was read.
pub const FRESH_FOR: Duration = Duration::from_secs(2);

/// The last demand read for each worker.
#[derive(Default)]
pub struct Demands {
    seen: Mutex<HashMap<String, (u64, Instant)>>,
}

impl Demands {
    /// A worker's entry, read now.
    pub fn record(&self, worker: &str, demand: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        seen.retain(|_, (_, at)| now.duration_since(*at) < FRESH_FOR * 4);
        seen.insert(worker.to_string(), (demand, now));
    }

    /// `worker`'s share of the budget: `floor` for every worker that published lately, the
    /// rest split by their demand, so that the shares add up to exactly the whole. `None` when
    /// the fleet has no demand (or `worker` has published nothing yet), so that the caller
    /// keeps its partition share.
    pub fn share_of(&self, worker: &str, floor: f64) -> Option<f64> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let fresh = |at: &Instant| now.duration_since(*at) < FRESH_FOR;
        let own = seen.get(worker).filter(|(_, at)| fresh(at))?.0;
        let (workers, total) = seen
            .values()
            .filter(|(_, at)| fresh(at))
            .fold((0u32, 0u64), |(n, sum), (d, _)| (n + 1, sum + d));
        let rest = (1.0 - floor * f64::from(workers)).max(0.0);
        (total > 0).then(|| floor + rest * own as f64 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_worker_gets_its_floor_and_its_share_of_the_fresh_demand() {
        let d = Demands::default();
        let share = |w| d.share_of(w, 0.05);
        assert_eq!(share("a"), None, "nothing published");
        d.record("a", 0);
        d.record("b", 0);
        assert_eq!(share("a"), None, "no demand: the partition split stands");
        d.record("a", 300);
        d.record("b", 100);
        // 5 % each, and the other 90 % split 3 : 1.
        assert!((share("a").unwrap() - 0.725).abs() < 1e-9);
        assert!((share("b").unwrap() - 0.275).abs() < 1e-9);
        d.record("c", 0);
        let (a, b, c) = (
            share("a").unwrap(),
            share("b").unwrap(),
            share("c").unwrap(),
        );
        assert!(
            (a + b + c - 1.0).abs() < 1e-9,
            "exactly the whole: {a} {b} {c}"
        );
        assert!((c - 0.05).abs() < 1e-9, "an idle worker keeps its floor");
        // b and c die: their entries go stale and a takes the whole budget.
        tokio::time::advance(DEMAND_INTERVAL).await;
        d.record("a", 300);
        tokio::time::advance(FRESH_FOR - DEMAND_INTERVAL).await;
        assert_eq!(share("a"), Some(1.0));
        assert_eq!(share("b"), None, "b's own entry is stale too");
    }
}
