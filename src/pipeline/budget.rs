//! This worker's share of each token's request budget (`pipeline.split_budget`).
//!
//! Netskope limits the token, not the process: three workers that each took the whole
//! `requests_per_minute` would send three times it and meet 429s. Two signals set the share:
//! - at every rebalance, the worker's share of the input partitions, which needs nothing but
//!   the assignment the group already made and takes effect before the first event (while
//!   a share by demand is in force, it stands until its next update instead);
//! - every [`DEMAND_INTERVAL`], the worker's share of the fleet's events waiting to act, read
//!   from the state topic ([`crate::guard::demand`]), so that a worker whose partitions carry
//!   the burst gets the budget that idle workers do not use. While nothing waits anywhere, the
//!   partition share stands.
//!
//! Either way every worker keeps at least `MIN_SHARE` (5 %) of the budget, so that a worker
//! given work between two updates is never stuck at zero. By demand, those floors come out of
//! the whole and the rest is split by demand, so the shares add up to exactly the budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use netskope::NetskopeClient;
use netskope::limiter::MIN_SHARE;

use crate::guard::Guard;
use crate::guard::demand::DEMAND_INTERVAL;

pub(super) struct Budget {
    client: Arc<NetskopeClient>,
    /// The state topic's view of the fleet's demand.
    guard: Arc<Guard>,
    /// Partitions of both input topics together.
    input_partitions: usize,
    /// The share of the partitions held, as `f64` bits.
    partition_share: AtomicU64,
}

impl Budget {
    pub(super) fn new(
        client: Arc<NetskopeClient>,
        guard: Arc<Guard>,
        input_partitions: usize,
    ) -> Self {
        Self {
            client,
            guard,
            input_partitions,
            partition_share: AtomicU64::new(1.0f64.to_bits()),
        }
    }

    /// After a rebalance: the share of the `assigned` partitions, while the fleet publishes no
    /// demand. A share by demand stands until its next update: rebalances that move nothing
    /// (some brokers start one every few seconds under load) must not knock it back to the
    /// partition share each time.
    pub(super) fn follow_assignment(&self, assigned: usize) {
        let share = assigned as f64 / self.input_partitions.max(1) as f64;
        self.partition_share
            .store(share.to_bits(), Ordering::Relaxed);
        if self.guard.budget_share(MIN_SHARE).is_some() {
            return;
        }
        self.client.set_budget_share(share);
        tracing::info!(
            assigned,
            of = self.input_partitions,
            requests_per_minute = self.client.scim_limiter().ceiling_per_min(),
            "request budget: this worker's share of the token's, by partitions"
        );
    }

    fn partition_share(&self) -> f64 {
        f64::from_bits(self.partition_share.load(Ordering::Relaxed))
    }

    /// Publishes this worker's demand (`waiting()`: its events waiting to act) every
    /// [`DEMAND_INTERVAL`] and takes its share of the fleet's, until the task is dropped.
    pub(super) async fn follow_demand(self: Arc<Self>, waiting: impl Fn() -> u64) {
        let guard = self.guard.clone();
        let mut last = None;
        loop {
            tokio::time::sleep(DEMAND_INTERVAL).await;
            guard.publish_demand(Some(waiting())).await;
            let share = guard
                .budget_share(MIN_SHARE)
                .unwrap_or_else(|| self.partition_share());
            self.client.set_budget_share(share);
            let ceiling = self.client.scim_limiter().ceiling_per_min();
            if last != Some(ceiling) {
                tracing::debug!(
                    requests_per_minute = ceiling,
                    share,
                    "request budget: this worker's share of the token's, by demand"
                );
                last = Some(ceiling);
            }
        }
    }
}
