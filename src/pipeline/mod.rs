//! The worker: Kafka events in, Netskope actions, outcomes out, at least once.
//!
//! | module | what it does |
//! |---|---|
//! | [`config`] | the `[kafka]` and `[pipeline]` tables, librdkafka configs with the worker's guarantees |
//! | [`broker_errors`] | the producer's context: librdkafka's last error, for a start-up failure that says why |
//! | [`offsets`] | which offset of each partition may be committed: never past an unfinished event |
//! | [`dead_letter_limit`] | a flood of invalid events stops reading instead of emptying the topic into dead letters |
//! | [`lanes`] | one event at a time per user, in arrival order; many users at once |
//! | [`executor`] | a decision carried out against Netskope, transient faults waited out |
//! | [`batcher`] | quarantine and release requests for one group gathered into one PATCH |
//! | [`publish`] | outcomes and dead letters, returned only once the broker acknowledged them |
//!
//! One event's way through: the consumer receives it and registers its offset; it is decoded
//! and validated (invalid → dead letter); the policy decides; its user's lane runs the
//! executor; the outcome is published; once the broker acknowledges, the offset is finished and
//! the highest offset with nothing unfinished below it is stored for the background commit.

mod admission;
pub mod batcher;
pub mod broker_errors;
pub mod config;
mod consumer;
pub mod dead_letter_limit;
mod drain;
pub mod executor;
pub mod lanes;
pub mod offsets;
mod process;
pub mod publish;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::Consumer;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Readiness;
use crate::config::Config;
use crate::event::Schemas;
use crate::guard::Guard;
use crate::policy::Policy;
use crate::verify::{self, Verifier};
use config::{KafkaConfig, PipelineConfig};
use dead_letter_limit::DeadLetterLimit;
use executor::Executor;
use lanes::Lanes;
use netskope::{NetskopeClient, NetskopeError};
use offboarder_base::clock::WallClock;
use offboarder_base::metric_names as m_names;
use offsets::OffsetTracker;
use publish::{FatalProducerError, Publisher};
use tracing::Instrument;

pub use consumer::check_topics;
use consumer::{Context, KafkaConsumer, fatal_consumer_error, join_watchdog};
use process::{Core, Job, until_killed};

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
    stop: CancellationToken,
    kill: CancellationToken,
    shared: Arc<Shared>,
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
struct Shared {
    readiness: Arc<Readiness>,
    tracker: Mutex<OffsetTracker>,
    /// The partitions are paused: the worker stalled at its in-flight bound.
    paused: AtomicBool,
    /// Signalled whenever an event finishes, to wake a paused consumer loop.
    progress: Notify,
    guard: Arc<Guard>,
    /// The dead-letter limit tripped: reading has stopped for good (until a restart).
    dead_letter_stop: AtomicBool,
    /// The terminations topic's partitions are paused because the guard halted: no more
    /// destructive events are read until a release.
    guard_paused: AtomicBool,
    terminations_topic: String,
    /// The group coordinator has given this consumer an assignment (empty or not) at least
    /// once: the consumer is in its group.
    joined: AtomicBool,
    /// Assigned partitions whose first record has not been read yet: that record is checked
    /// against the committed offset (see [`resume_gap`]).
    /// By topic, so that the check on every record borrows the topic name, never allocates.
    awaiting_first: Mutex<BTreeMap<String, std::collections::BTreeSet<i32>>>,
}

impl Shared {
    fn tracker(&self) -> std::sync::MutexGuard<'_, OffsetTracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn awaiting_first(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, std::collections::BTreeSet<i32>>> {
        self.awaiting_first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// A pipeline ready to run: clients built, brokers and topics checked.
pub struct Pipeline {
    core: Arc<Core>,
    lanes: Lanes<Job>,
    tasks: TaskTracker,
    schemas: Schemas,
    kafka: KafkaConfig,
    settings: PipelineConfig,
    max_pending: usize,
    clock: WallClock,
    dead_letter_limit: Mutex<DeadLetterLimit>,
}

impl Pipeline {
    /// Builds the consumer and producer and checks that the brokers answer and that every
    /// topic exists, so that a wrong setting stops the worker at start with a clear message.
    pub async fn new(config: &Config, client: Arc<NetskopeClient>) -> Result<Self, PipelineError> {
        let cfg = |e: String| PipelineError::Config(e);
        config.pipeline.validate().map_err(cfg)?;
        let policy = Policy::new(config.policy.clone()).map_err(cfg)?;
        let schemas = Schemas::load().map_err(cfg)?;
        let kafka = config.kafka.clone();
        let (producer, errors) =
            broker_errors::producer(&kafka.producer_config().map_err(|e| cfg(e.to_string()))?)
                .map_err(|e| cfg(format!("kafka: cannot create the producer: {e}")))?;
        check_topics(&producer, &errors, &kafka).await?;
        config.guard.validate().map_err(cfg)?;
        for topic in [&kafka.topics.terminations, &kafka.topics.risk_signals] {
            // At 0 from the start, so that the first skip shows in increase().
            metrics::counter!(m_names::RESUME_SKIPPED, "topic" => topic.clone()).absolute(0);
        }
        let shared = Arc::new(Shared {
            guard: Arc::new(Guard::new(&config.guard)),
            terminations_topic: kafka.topics.terminations.clone(),
            ..Shared::default()
        });
        let consumer: KafkaConsumer = kafka
            .consumer_config()
            .map_err(|e| cfg(e.to_string()))?
            .create_with_context(Context {
                shared: shared.clone(),
            })
            .map_err(|e| cfg(format!("kafka: cannot create the consumer: {e}")))?;
        let handle = PipelineHandle {
            shared: shared.clone(),
            ..PipelineHandle::default()
        };
        config.verify.validate().map_err(cfg)?;
        let verifier = if config.verify.enabled() && !policy.dry_run() {
            let mode = verify::effective_mode(&client, &config.verify).await;
            Some(Verifier::spawn(client.clone(), config.verify.clone(), mode))
        } else {
            None
        };
        let executor = Executor::new(client, policy.dry_run(), &config.pipeline);
        let publisher = Publisher::new(
            producer,
            kafka.topics.outcomes.clone(),
            kafka.topics.dead_letter.clone(),
        );
        let tasks = TaskTracker::new();
        let core = Arc::new(Core {
            consumer,
            shared,
            publisher,
            executor,
            verifier,
            tasks: tasks.clone(),
            clock: WallClock::new(),
            policy,
            concurrency: Semaphore::new(config.pipeline.max_concurrent_users.max(1)),
            handle,
            fatal: Mutex::new(None),
            failed: AtomicBool::new(false),
            dead_letters: AtomicU64::new(0),
            outcomes: Mutex::new(BTreeMap::new()),
        });
        let lanes = {
            let core = core.clone();
            Lanes::new(tasks.clone(), move |job: Job| {
                let kill = core.handle.kill.clone();
                let span = job.span.clone();
                let work = until_killed(kill, core.clone().process(job).instrument(span));
                async move {
                    work.await;
                }
            })
        };
        Ok(Self {
            core,
            lanes,
            tasks,
            schemas,
            kafka,
            settings: config.pipeline.clone(),
            max_pending: config.verify.max_pending,
            clock: WallClock::new(),
            dead_letter_limit: Mutex::new(DeadLetterLimit::new(
                config.pipeline.dead_letter_window,
                config.pipeline.dead_letter_max_ratio,
            )),
        })
    }

    pub fn handle(&self) -> PipelineHandle {
        self.core.handle.clone()
    }

    /// Consumes until stopped (by the handle, a fatal error, or a signal the caller wires to
    /// the handle), then drains and commits.
    pub async fn run(self) -> Result<Summary, PipelineError> {
        let topics = [
            self.kafka.topics.terminations.as_str(),
            self.kafka.topics.risk_signals.as_str(),
        ];
        self.core.consumer.subscribe(&topics).map_err(|e| {
            PipelineError::Config(format!("kafka: cannot subscribe to {topics:?}: {e}"))
        })?;
        tracing::info!(?topics, group = self.kafka.group_id, "consuming");
        let watchdog = tokio::spawn(join_watchdog(self.core.shared.clone(), self.kafka.clone()));
        let handle = self.core.handle.clone();
        let mut received = 0u64;
        let stall = self.settings.pause_after;
        let mut guard_changes = self.core.shared.guard.subscribe();
        loop {
            self.follow_guard();
            let load = self.load();
            let paused = self.core.shared.paused.load(Ordering::SeqCst);
            let stopped = self.core.shared.dead_letter_stop.load(Ordering::SeqCst);
            if paused && load.below_half() && !stopped {
                self.set_paused(false, &load);
            }
            let paused = self.core.shared.paused.load(Ordering::SeqCst);
            let full = load.full();
            tokio::select! {
                biased;
                _ = handle.stop.cancelled() => break,
                // A halt or a release: pause or resume the terminations topic.
                _ = guard_changes.changed() => {}
                // At the bound, reading stops; what librdkafka fetched waits in its own bounded
                // queue and is read the moment an event finishes, with no refetch.
                _ = self.core.shared.progress.notified(), if full || paused => {}
                // No event finished for `pause_after` (Netskope is slow or down): pause the
                // partitions and go on polling, so that the consumer stays in its group.
                _ = tokio::time::sleep(stall), if full && !paused => self.set_paused(true, &load),
                message = self.core.consumer.recv(), if !full || paused => match message {
                    Ok(m) => {
                        received += 1;
                        self.accept(&m);
                    }
                    Err(e) => {
                        if let Some(reason) = fatal_consumer_error(&e) {
                            self.core.fail(PipelineError::Consumer(reason));
                        } else {
                            tracing::warn!(error = %e, "Kafka consumer error; continuing");
                        }
                    }
                },
            }
        }
        watchdog.abort();
        self.drain(received).await
    }
}
