//! What the parts of the pipeline share: the state the consumer loop, the rebalance callbacks
//! and the lanes all read, the handle that stops a run from outside, and the run's error and
//! summary types. A leaf of the pipeline: it knows none of the parts that use it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use netskope::NetskopeError;

use super::offsets::OffsetTracker;
use super::publish::FatalProducerError;
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
        matches!(self, PipelineError::Config(_) | PipelineError::Netskope(_))
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
}

impl Shared {
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
