//! The worker: Kafka events in, Netskope actions, outcomes out, at least once.
//!
//! This file wires the parts together: it builds the consumer, producer, executor and verifier,
//! runs the read loop and hands out the [`PipelineHandle`]. One event goes one way through the
//! files below: `consumer` receives it, `admission` registers and validates it and picks its
//! lane, `process` carries it to its final outcome; `drain` ends the run.
//!
//! | module | what it does |
//! |---|---|
//! | `consumer` | the consumer's context and rebalance callbacks, the join watchdog, the resume-gap check, fatal consumer errors, the start-up topic check |
//! | `admission` | each record read: registered, decoded, validated, handed to its user's lane or to the dead-letter path; pausing and resuming reading under load and for the guard |
//! | `process` | one valid event: policy, guard, executor, verification, outcome, offset finished |
//! | `reverted` | the drift watch's reports published as `reverted` outcomes; with `policy.reassert`, the undone change repeated once as an input event |
//! | `lifecycle` | a termination's place in the HR lifecycle before the guard (scheduled, due, rescinded) and its record after the action |
//! | `drain` | shutdown: stop reading, let in-flight events finish within the grace period, report what is left open |
//! | `shared` | what the parts share: the state read by the loop, the callbacks and the lanes; the handle; the run's error and summary |
//! | [`config`] | the `[kafka]` and `[pipeline]` tables, librdkafka configs with the worker's guarantees |
//! | [`broker_errors`] | the producer's context: librdkafka's last error, for a start-up failure that says why |
//! | [`offsets`] | which offset of each partition may be committed: never past an unfinished event |
//! | [`dead_letter_limit`] | a flood of invalid events stops reading instead of emptying the topic into dead letters |
//! | [`lanes`] | one event at a time per user, in arrival order; many users at once |
//! | [`executor`] | a decision carried out against Netskope, transient faults waited out |
//! | `budget` | this worker's share of each token's request budget: by partitions at a rebalance, by demand through the state topic in between |
//! | [`batcher`] | quarantine and release requests for one group gathered into one PATCH |
//! | [`publish`] | outcomes and dead letters, returned only once the broker acknowledged them |
//! | [`envelope`] | how outcomes and dead letters are framed: the native format or CloudEvents (binary or structured) |
//! | [`transactions`] | `exactly_once`: each final record and its offset committed in one Kafka transaction |
//!
//! One event's way through: the consumer receives it and registers its offset; it is decoded
//! and validated (invalid → dead letter); the policy decides; its user's lane runs the
//! executor; the outcome is published; once the broker acknowledges, the offset is finished and
//! the highest offset with nothing unfinished below it is stored for the background commit.

mod admission;
pub mod batcher;
pub mod broker_errors;
mod budget;
pub mod config;
mod consumer;
pub mod dead_letter_limit;
mod drain;
pub mod envelope;
pub mod executor;
pub mod lanes;
mod lifecycle;
pub mod offsets;
mod process;
pub mod publish;
mod reverted;
mod shared;
pub mod transactions;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::Consumer;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use netskope::NetskopeClient;
use offboarder_base::clock::WallClock;
use offboarder_base::metric_names as m_names;

use crate::config::Config;
use crate::event::Schemas;
use crate::guard;
use crate::policy::Policy;
use crate::verify::{self, Verifier};
use admission::Intake;
use consumer::{Context, KafkaConsumer, fatal_consumer_error, join_watchdog};
use dead_letter_limit::DeadLetterLimit;
use executor::Executor;
use lanes::Lanes;
use process::{Core, Job, until_killed};
use publish::Publisher;

pub use consumer::{check_topics, keeps_every_entry, state_topic_policy};
use shared::Shared;
pub use shared::{PipelineError, PipelineHandle, Summary};

/// A pipeline ready to run: clients built, brokers and topics checked.
pub struct Pipeline {
    intake: Intake,
}

impl Pipeline {
    /// Builds the consumer and producer and checks that the brokers answer and that every
    /// topic exists, so that a wrong setting stops the worker at start with a clear message.
    pub async fn new(config: &Config, client: Arc<NetskopeClient>) -> Result<Self, PipelineError> {
        let cfg = |e: String| PipelineError::Config(e);
        config.pipeline.validate().map_err(cfg)?;
        let policy = Policy::new(config.policy.clone()).map_err(cfg)?;
        let schemas = Schemas::load().map_err(cfg)?;
        // The transmitters' keys are read now: a SET forwarded onto the risk-signals topic is
        // verified like a pushed one. A wrong [ssf] table stops the worker; keys that cannot be
        // read now do not (terminations must not wait for a transmitter's JWKS): SETs are then
        // dead letters until a restart reads them.
        let sets = if config.ssf.enabled() {
            match crate::ssf::SetMapper::from_config(&config.ssf).await {
                Ok(mapper) => admission::Sets::Ready(Arc::new(mapper)),
                Err(e @ crate::ssf::SsfConfigError::Keys { .. }) => {
                    tracing::error!(error = %e, "Security Event Tokens on the risk-signals topic will be dead letters until a restart can read every transmitter's keys");
                    admission::Sets::Unreadable(e.to_string())
                }
                Err(e) => return Err(cfg(e.to_string())),
            }
        } else {
            admission::Sets::Off
        };
        let kafka = config.kafka.clone();
        let (producer, errors) = broker_errors::producer(
            &kafka
                .outcome_producer_config()
                .map_err(|e| cfg(e.to_string()))?,
        )
        .map_err(|e| cfg(format!("kafka: cannot create the producer: {e}")))?;
        let input_partitions = check_topics(&producer, &errors, &kafka).await?;
        let transactions = if kafka.exactly_once {
            let (producer, id, topic) = (
                producer.clone(),
                kafka.transactional_id(),
                kafka.topics.state.clone(),
            );
            let timeout = kafka.connect_timeout;
            let opened = tokio::task::spawn_blocking(move || {
                transactions::Transactions::open(producer, id, &topic, timeout)
            })
            .await
            .map_err(|e| {
                cfg(format!(
                    "kafka: opening the first transaction did not run: {e}"
                ))
            })??;
            tracing::info!(
                transactional_id = opened.id(),
                "exactly_once: outcomes and offsets are committed in transactions"
            );
            Some(Arc::new(opened))
        } else {
            None
        };
        config.guard.validate().map_err(cfg)?;
        for topic in [&kafka.topics.terminations, &kafka.topics.risk_signals] {
            // At 0 from the start, so that the first skip shows in increase().
            metrics::counter!(m_names::RESUME_SKIPPED, "topic" => topic.clone()).absolute(0);
        }
        let guard = guard::ledger::open(
            &config.guard,
            guard::ledger::Kafka {
                producer: kafka
                    .state_producer_config()
                    .map_err(|e| cfg(e.to_string()))?,
                reader: kafka
                    .state_reader_config()
                    .map_err(|e| cfg(e.to_string()))?,
                topic: kafka.topics.state.clone(),
                timeout: kafka.connect_timeout,
            },
        )
        .await
        .map_err(|e| cfg(e.to_string()))?;
        let shared = Arc::new(Shared {
            guard,
            terminations_topic: kafka.topics.terminations.clone(),
            transactions: transactions.clone(),
            ..Shared::default()
        });
        let executor = Executor::new(client.clone(), policy.dry_run(), &config.pipeline)
            .with_fleet(shared.guard.clone(), &config.pipeline);
        let budget = config.pipeline.split_budget.then(|| {
            Arc::new(budget::Budget::new(
                client.clone(),
                shared.guard.clone(),
                input_partitions,
            ))
        });
        let consumer: KafkaConsumer = kafka
            .consumer_config()
            .map_err(|e| cfg(e.to_string()))?
            .create_with_context(Context {
                shared: shared.clone(),
                budget: budget.clone(),
                revoke_grace: config.pipeline.revoke_grace,
            })
            .map_err(|e| cfg(format!("kafka: cannot create the consumer: {e}")))?;
        let handle = PipelineHandle {
            shared: shared.clone(),
            ..PipelineHandle::default()
        };
        config.verify.validate().map_err(cfg)?;
        config
            .verify
            .check_endpoints(client.endpoints())
            .map_err(cfg)?;
        let verifier = if config.verify.enabled() && !policy.dry_run() {
            let mode = verify::effective_mode(&client, &config.verify).await;
            Some(Verifier::spawn(client.clone(), config.verify.clone(), mode))
        } else {
            None
        };
        config.outcomes.validate().map_err(cfg)?;
        let publisher = Publisher::new(
            producer,
            envelope::Envelope::new(&config.outcomes, &kafka.group_id),
            kafka.topics.outcomes.clone(),
            kafka.topics.dead_letter.clone(),
            transactions,
        );
        let tasks = TaskTracker::new();
        let core = Arc::new(Core {
            consumer: Arc::new(consumer),
            shared,
            publisher,
            executor,
            verifier,
            tasks: tasks.clone(),
            clock: WallClock::new(),
            calendar: crate::guard::schedule::Calendar::default(),
            policy,
            concurrency: Semaphore::new(config.pipeline.max_concurrent_users.max(1)),
            handle,
            fatal: Mutex::new(None),
            failed: AtomicBool::new(false),
            dead_letters: AtomicU64::new(0),
            outcomes: Mutex::new(BTreeMap::new()),
            budget,
        });
        let lanes = {
            let (core, supervisor) = (core.clone(), core.clone());
            Lanes::new(
                tasks.clone(),
                move |job: Box<Job>| {
                    let kill = core.handle.kill.clone();
                    let span = job.span.clone();
                    let revoked = job.partition.cancel.clone();
                    let work = until_killed(
                        kill,
                        until_killed(revoked, core.clone().process(job).instrument(span)),
                    );
                    async move {
                        work.await;
                    }
                },
                move |panic| supervisor.fail(PipelineError::Internal(panic)),
            )
        };
        Ok(Self {
            intake: Intake {
                core,
                lanes,
                tasks,
                schemas,
                sets,
                kafka,
                settings: config.pipeline.clone(),
                max_pending: config.verify.max_pending,
                dead_letter_limit: Mutex::new(DeadLetterLimit::new(
                    config.pipeline.dead_letter_window,
                    config.pipeline.dead_letter_max_ratio,
                )),
            },
        })
    }

    pub fn handle(&self) -> PipelineHandle {
        self.intake.core.handle.clone()
    }

    /// The clock scheduled terminations run on. Wall time; a test may run it ahead
    /// ([`crate::guard::schedule::Calendar::set_ahead`]) to play weeks of a schedule in seconds.
    pub fn calendar(&self) -> crate::guard::schedule::Calendar {
        self.intake.core.calendar.clone()
    }

    /// Consumes until stopped (by the handle, a fatal error, or a signal the caller wires to
    /// the handle), then drains and commits.
    pub async fn run(self) -> Result<Summary, PipelineError> {
        let intake = self.intake;
        let topics = [
            intake.kafka.topics.terminations.as_str(),
            intake.kafka.topics.risk_signals.as_str(),
        ];
        intake.core.consumer.subscribe(&topics).map_err(|e| {
            PipelineError::Config(format!("kafka: cannot subscribe to {topics:?}: {e}"))
        })?;
        tracing::info!(?topics, group = intake.kafka.group_id, "consuming");
        let watchdog = tokio::spawn(join_watchdog(
            intake.core.shared.clone(),
            intake.kafka.clone(),
        ));
        let committer = tokio::spawn(commit_every(
            intake.core.clone(),
            intake.kafka.commit_interval,
        ));
        let scheduler = tokio::spawn(fire_due_terminations(intake.core.clone()));
        let drift_reports = intake
            .core
            .verifier
            .as_ref()
            .and_then(|v| v.take_drifts())
            .map(|drifts| tokio::spawn(reverted::publish_reverted(intake.core.clone(), drifts)));
        let demand = intake.core.budget.clone().map(|budget| {
            let core = intake.core.clone();
            tokio::spawn(budget.follow_demand(move || core.waiting_to_act()))
        });
        let handle = intake.core.handle.clone();
        let mut received = 0u64;
        let stall = intake.settings.pause_after;
        let mut guard_changes = intake.core.shared.guard.subscribe();
        loop {
            intake.follow_guard();
            let load = intake.load();
            let paused = intake.core.shared.paused.load(Ordering::SeqCst);
            let stopped = intake.core.shared.dead_letter_stop.load(Ordering::SeqCst);
            if paused && load.below_half() && !stopped {
                intake.set_paused(false, &load);
            }
            let paused = intake.core.shared.paused.load(Ordering::SeqCst);
            let full = load.full();
            tokio::select! {
                biased;
                _ = handle.stop.cancelled() => break,
                // A halt or a release: pause or resume the terminations topic.
                _ = guard_changes.changed() => {}
                // At the bound, reading stops; what librdkafka fetched waits in its own bounded
                // queue and is read the moment an event finishes, with no refetch.
                _ = intake.core.shared.progress.notified(), if full || paused => {}
                // No event finished for `pause_after` (Netskope is slow or down): pause the
                // partitions and go on polling, so that the consumer stays in its group.
                _ = tokio::time::sleep(stall), if full && !paused => intake.set_paused(true, &load),
                message = intake.core.consumer.recv(), if !full || paused => match message {
                    Ok(m) => {
                        received += 1;
                        intake.accept(&m).await;
                    }
                    Err(e) => {
                        if let Some(reason) = fatal_consumer_error(&e) {
                            intake.core.fail(PipelineError::Consumer(reason));
                        } else {
                            tracing::warn!(error = %e, "Kafka consumer error; continuing");
                        }
                    }
                },
            }
        }
        watchdog.abort();
        committer.abort();
        scheduler.abort();
        if let Some(task) = drift_reports {
            task.abort();
        }
        if let Some(demand) = demand {
            demand.abort();
            // The key goes with the worker: a compacted topic would keep one per start. Briefly:
            // with the brokers gone, stopping matters more.
            let withdraw = intake.core.shared.guard.publish_demand(None);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), withdraw).await;
        }
        intake.drain(received).await
    }
}

/// How often due scheduled terminations are looked for: each acts within about this long of
/// its `effective_at`.
const SCHEDULE_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// Finished termination records older than `policy.rescind_window` are looked for once in
/// this many ticks.
const EXPIRE_EVERY_TICKS: u64 = 60;

/// Publishes again, to their input topic, the scheduled terminations that came due on the
/// partitions this worker holds ([`crate::guard::schedule`]), until the run stops. A firing
/// that fails is tried again at the next tick. Now and then, deletes the finished records of
/// those partitions that are older than `policy.rescind_window`.
async fn fire_due_terminations(core: Arc<Core>) {
    let keep_ms =
        i64::try_from(core.policy.config().rescind_window.as_millis()).unwrap_or(i64::MAX);
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = core.handle.stop.cancelled() => return,
            _ = tokio::time::sleep(SCHEDULE_TICK) => {}
        }
        let owned: std::collections::HashSet<(String, i32)> = match core.consumer.assignment() {
            // Read into owned values at once: a list alive when the consumer drops hangs it.
            Ok(list) => list
                .elements()
                .iter()
                .map(|p| (p.topic().to_string(), p.partition()))
                .collect(),
            Err(_) => continue,
        };
        let now_ms = core.calendar.now_ms();
        let guard = &core.shared.guard;
        let due = guard
            .schedule()
            .take_due(now_ms, |t, p| owned.contains(&(t.to_string(), p)));
        for entry in due {
            match guard.fire(&entry).await {
                Ok(()) => tracing::info!(
                    source_event_id = entry.event_id,
                    user = entry.user_name,
                    effective_at = entry.effective_at,
                    "scheduled termination due: published again to act"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, source_event_id = entry.event_id, "a due termination could not be published; trying again");
                    guard.schedule().unfire(&entry.event_id);
                }
            }
        }
        ticks += 1;
        if ticks.is_multiple_of(EXPIRE_EVERY_TICKS) {
            let expired = guard
                .schedule()
                .expired(now_ms.saturating_sub(keep_ms), |t, p| {
                    owned.contains(&(t.to_string(), p))
                });
            for key in expired {
                if let Err(e) = guard.forget_schedule(&key).await {
                    tracing::debug!(error = %e, "an expired termination record not deleted; trying again later");
                }
            }
        }
    }
}

/// With `exactly_once`: commits the open transaction every `interval`, until the run stops
/// (the drain commits the last one) or a commit fails.
async fn commit_every(core: Arc<Core>, interval: std::time::Duration) {
    let Some(transactions) = core.shared.transactions.clone() else {
        return;
    };
    loop {
        tokio::select! {
            _ = core.handle.stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let failed_in_rebalance = core
            .shared
            .transaction_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(e) = failed_in_rebalance {
            return core.fail(e.into());
        }
        let (t, consumer) = (transactions.clone(), core.consumer.clone());
        match tokio::task::spawn_blocking(move || t.commit(consumer.group_metadata())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return core.fail(e.into()),
            Err(e) => {
                return core.fail(PipelineError::Internal(format!(
                    "the transaction commit did not run: {e}"
                )));
            }
        }
    }
}
