//! What the parts of the pipeline share: the state the consumer loop, the rebalance callbacks
//! and the lanes all read, the handle that stops a run from outside, and the run's error and
//! summary types. A leaf of the pipeline: it knows none of the parts that use it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use netskope::NetskopeError;

use super::offsets::OffsetTracker;
use super::publish::FatalProducerError;
use super::transactions::{TransactionError, Transactions};
use crate::admin::Readiness;
use crate::guard::Guard;

/// Why the worker stopped, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The configuration cannot work (a missing topic, an unreachable broker, bad settings).
    #[error("{0}")]
    Config(String),
    /// Netskope refused the worker's credentials (401, 403): no event can succeed.
    #[error("stopping: {0}")]
    Netskope(NetskopeError),
    #[error("stopping: {0}")]
    Producer(#[from] FatalProducerError),
    /// `exactly_once`: the brokers lack transactions, or a transaction failed.
    #[error("stopping: {0}")]
    Transaction(#[from] TransactionError),
    /// The consumer hit an error it cannot recover from (e.g. not authorized for the group).
    #[error("stopping: Kafka consumer: {0}")]
    Consumer(String),
    /// A part of the worker failed in a way no retry can fix (a panic): the events in flight
    /// keep their offsets and come again after the restart.
    #[error("stopping: internal error: {0}")]
    Internal(String),
}

impl PipelineError {
    /// Whether an operator has to fix the configuration (exit code 2) rather than the
    /// environment.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            PipelineError::Config(_)
                | PipelineError::Netskope(_)
                | PipelineError::Transaction(TransactionError::Unavailable { .. })
        )
    }
}

/// What a run did, for the demo, tests and the final log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub received: u64,
    pub dead_letters: u64,
    /// Outcomes published, by status.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Events still unfinished when the run ended; they will be delivered again.
    pub left_open: usize,
}

/// Stops a running pipeline from outside, gracefully or (tests) abruptly, and reads its state.
#[derive(Clone, Default)]
pub struct PipelineHandle {
    pub(super) stop: CancellationToken,
    pub(super) kill: CancellationToken,
    pub(super) shared: Arc<Shared>,
}

impl PipelineHandle {
    /// Events received and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.shared.tracker().open()
    }

    /// Whether the partitions are paused because the worker stalled at its in-flight bound.
    pub fn paused(&self) -> bool {
        self.shared.paused.load(Ordering::SeqCst)
    }

    /// Stop fetching, let in-flight events finish up to `shutdown_grace`, commit, return.
    pub fn stop(&self) {
        self.shared.readiness.set_stopping();
        self.stop.cancel();
    }

    /// What `/readyz` reports.
    pub fn readiness(&self) -> Arc<Readiness> {
        self.shared.readiness.clone()
    }

    /// The blast-radius guard, for the admin listener's release.
    pub fn guard(&self) -> Arc<Guard> {
        self.shared.guard.clone()
    }

    /// Stop at once, as a crash would: nothing more is published or stored. Offsets stored
    /// before (for finished events only) may still be committed as the consumer closes.
    pub fn kill(&self) {
        self.kill.cancel();
        self.stop.cancel();
    }
}

/// State shared by the consumer loop, the rebalance callbacks and the lanes.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) readiness: Arc<Readiness>,
    pub(super) tracker: Mutex<OffsetTracker>,
    /// The partitions are paused: the worker stalled at its in-flight bound.
    pub(super) paused: AtomicBool,
    /// Signalled whenever an event finishes, to wake a paused consumer loop.
    pub(super) progress: Notify,
    pub(super) guard: Arc<Guard>,
    /// The dead-letter limit tripped: reading has stopped for good (until a restart).
    pub(super) dead_letter_stop: AtomicBool,
    /// The terminations topic's partitions are paused because the guard halted: no more
    /// destructive events are read until a release.
    pub(super) guard_paused: AtomicBool,
    pub(super) terminations_topic: String,
    /// The group coordinator has given this consumer an assignment (empty or not) at least
    /// once: the consumer is in its group.
    pub(super) joined: AtomicBool,
    /// Assigned partitions whose first record has not been read yet: that record is checked
    /// against the committed offset (see `consumer::resume_gap`).
    /// By topic, so that the check on every record borrows the topic name, never allocates.
    pub(super) awaiting_first: Mutex<BTreeMap<String, std::collections::BTreeSet<i32>>>,
    /// The work of each assigned partition, for a revoke to finish or stop (see
    /// [`PartitionWork`]).
    pub(super) partitions: Mutex<HashMap<(String, i32), Arc<PartitionWork>>>,
    /// With `exactly_once`: the open transaction of outcomes and offsets. A revoke commits it
    /// before the partitions go.
    pub(super) transactions: Option<Arc<Transactions>>,
    /// A commit that failed where the pipeline cannot be stopped directly (a rebalance
    /// callback); the committer stops the worker with it.
    pub(super) transaction_failure: Mutex<Option<TransactionError>>,
}

/// The events of one assigned partition, as a revoke sees them.
///
/// A rebalance that moves a partition hands its events to a new owner, which gets them again
/// from the committed offset. If this worker went on acting on them, a late quarantine here
/// could land after the new owner's release of the same user. So on revoke the partition
/// drains: events that have not started acting do not start; those acting get
/// `pipeline.revoke_grace` to finish and publish; then the rest are cancelled where they are,
/// publishing nothing more. The partition moves only after that.
#[derive(Default)]
pub(super) struct PartitionWork {
    /// Cancelled once the grace is over: every task of the partition's events stops.
    pub(super) cancel: CancellationToken,
    draining: AtomicBool,
    acting: AtomicUsize,
}

impl PartitionWork {
    /// The partition is being revoked: an event must not start acting.
    pub(super) fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Counts an event as acting while the returned value lives.
    pub(super) fn acting(self: &Arc<Self>) -> Acting {
        self.acting.fetch_add(1, Ordering::SeqCst);
        Acting(self.clone())
    }

    /// Drains the partitions `works`: stops new work at once, waits up to `grace` for the
    /// events acting to finish, then cancels what is left. Blocks the calling thread (the
    /// consumer's rebalance callback, which must not return before the work has stopped).
    /// Returns how many events were still acting when the grace ran out.
    pub(super) fn drain_blocking(
        works: &[Arc<PartitionWork>],
        grace: std::time::Duration,
    ) -> usize {
        for w in works {
            w.draining.store(true, Ordering::SeqCst);
        }
        let acting = || {
            works
                .iter()
                .map(|w| w.acting.load(Ordering::SeqCst))
                .sum::<usize>()
        };
        let deadline = std::time::Instant::now() + grace;
        let wait = || {
            while acting() > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        // On a worker thread of tokio's multi-threaded runtime, hand its other tasks (the
        // events being waited for among them) to the other workers first.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(wait);
        } else {
            wait();
        }
        let left = acting();
        for w in works {
            w.cancel.cancel();
        }
        left
    }
}

/// An event acting on a partition's behalf; see [`PartitionWork::acting`].
pub(super) struct Acting(Arc<PartitionWork>);

impl Drop for Acting {
    fn drop(&mut self) {
        self.0.acting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    /// The work of an assigned partition (created at its first event).
    pub(super) fn partition_work(&self, topic: &str, partition: i32) -> Arc<PartitionWork> {
        self.partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((topic.to_string(), partition))
            .or_default()
            .clone()
    }

    /// Removes and returns the work of partitions being revoked.
    pub(super) fn take_partition_work(&self, revoked: &[(String, i32)]) -> Vec<Arc<PartitionWork>> {
        let mut partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        revoked
            .iter()
            .filter_map(|k| partitions.remove(k))
            .collect()
    }

    pub(super) fn tracker(&self) -> std::sync::MutexGuard<'_, OffsetTracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn awaiting_first(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, std::collections::BTreeSet<i32>>> {
        self.awaiting_first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}
