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

pub mod batcher;
pub mod broker_errors;
pub mod config;
pub mod dead_letter_limit;
pub mod executor;
pub mod lanes;
pub mod offsets;
pub mod publish;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, OwnedMessage};
use rdkafka::producer::Producer as _;
use rdkafka::{ClientContext, Message, TopicPartitionList};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Readiness;
use crate::clock::WallClock;
use crate::config::Config;
use crate::event::{Event, EventKind, Schemas};
use crate::guard::{Admission, Guard};
use crate::metrics as m_names;
use crate::netskope::{NetskopeClient, NetskopeError};
use crate::outcome::{
    self, Outcome, OutcomeError, SourceRef, Status, Timestamps, VerificationEvidence,
};
use crate::policy::{Decision, Policy};
use crate::telemetry::{self, EventTrace};
use crate::verify::{self, Pending, Verification, Verifier};
use config::{KafkaConfig, PipelineConfig};
use dead_letter_limit::DeadLetterLimit;
use executor::Executor;
use lanes::Lanes;
use offsets::{OffsetTracker, Ticket};
use publish::{Delivery, FatalProducerError, Publisher};
use tracing::Instrument;

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

/// How full the worker is.
struct Load {
    acting: usize,
    pending: usize,
    /// Destructive events waiting for the blast-radius guard's release. They hold their
    /// offsets but not the reading: risk signals keep flowing past them.
    parked: usize,
    max_acting: usize,
    max_pending: usize,
}

impl Load {
    /// At `max_in_flight` events being acted on, or `verify.max_pending` actions awaiting
    /// verification: read no more.
    fn full(&self) -> bool {
        self.acting >= self.max_acting
            || self.pending >= self.max_pending
            || self.parked >= self.max_acting
    }

    fn below_half(&self) -> bool {
        self.acting < self.max_acting.div_ceil(2) && self.pending < self.max_pending.div_ceil(2)
    }
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

/// How many offsets lie between a partition's committed offset and the first record read
/// after its assignment, when that is more than one. A Kafka broker resumes exactly at the
/// committed offset, so a larger gap means records this worker never saw: deleted by retention
/// while the worker was down or behind (the consumer then starts over at the earliest record
/// left), compacted away, aborted transactions, or a broker that cannot resume inside a record
/// batch (tansu 0.6.0). A gap of one is the marker that follows every committed transaction.
fn resume_gap(committed: rdkafka::Offset, first: i64) -> Option<i64> {
    match committed {
        rdkafka::Offset::Offset(c) if first - c > 1 => Some(first - c),
        _ => None,
    }
}

/// Rebalance hooks: forget revoked partitions (their events will be delivered to the new
/// owner), and keep newly assigned partitions paused while the worker is full.
struct Context {
    shared: Arc<Shared>,
}

impl ClientContext for Context {
    /// librdkafka's statistics (every `statistics.interval.ms`): the lag of each assigned
    /// partition.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(
                        m_names::CONSUMER_LAG,
                        "topic" => topic.clone(),
                        "partition" => partition.to_string()
                    )
                    .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut tracker = self.shared.tracker();
            let mut awaiting = self.shared.awaiting_first();
            for p in list.elements() {
                tracing::info!(
                    topic = p.topic(),
                    partition = p.partition(),
                    "partition revoked"
                );
                tracker.revoke(p.topic(), p.partition());
                if let Some(partitions) = awaiting.get_mut(p.topic()) {
                    partitions.remove(&p.partition());
                }
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let assigned = consumer.assignment().map_or(0, |a| a.count());
        self.shared.readiness.set_assigned(assigned);
        if matches!(rebalance, Rebalance::Assign(_))
            && !self.shared.joined.swap(true, Ordering::SeqCst)
        {
            self.shared
                .readiness
                .set_fault(crate::admin::CONSUMER_GROUP_FAULT, None);
        }
        if let Rebalance::Assign(list) = rebalance {
            let mut awaiting = self.shared.awaiting_first();
            for p in list.elements() {
                tracing::info!(
                    topic = p.topic(),
                    partition = p.partition(),
                    "partition assigned"
                );
                awaiting
                    .entry(p.topic().to_string())
                    .or_default()
                    .insert(p.partition());
            }
            drop(awaiting);
            if self.shared.paused.load(Ordering::SeqCst)
                && let Err(e) = consumer.pause(list)
            {
                tracing::warn!(error = %e, "cannot pause newly assigned partitions");
            }
            if self.shared.guard_paused.load(Ordering::SeqCst) {
                let held = only_topic(list, &self.shared.terminations_topic);
                if held.count() > 0
                    && let Err(e) = consumer.pause(&held)
                {
                    tracing::warn!(error = %e, "cannot pause newly assigned termination partitions");
                }
            }
        }
    }
}

type KafkaConsumer = StreamConsumer<Context>;

/// Says loudly when the consumer has not joined its group twice `connect_timeout` after
/// subscribing. librdkafka keeps trying in silence in that case (its reason is only in its debug
/// log), and a worker that reads nothing while it looks alive is how terminations get missed.
/// The fault shows in `/readyz` until the first assignment arrives.
async fn join_watchdog(shared: Arc<Shared>, kafka: KafkaConfig) {
    let after = kafka.connect_timeout.saturating_mul(2);
    tokio::time::sleep(after).await;
    if shared.joined.load(Ordering::SeqCst) {
        return;
    }
    let kip848 = kafka
        .consumer_properties
        .iter()
        .chain(&kafka.properties)
        .any(|(k, v)| k == "group.protocol" && v.eq_ignore_ascii_case("consumer"));
    let hint = if kip848 {
        "group.protocol is \"consumer\" (KIP-848): the brokers must support it (Apache Kafka \
         4.0 or later; tansu 0.6.0 does not). Remove the property to use the classic protocol"
    } else {
        "check that the group coordinator is reachable and that the credentials may join the \
         group (ACL: READ on the group)"
    };
    let reason = format!(
        "the consumer has not joined group {:?} after {}: no events are read. {hint}",
        kafka.group_id,
        humantime::format_duration(after)
    );
    tracing::error!(group = kafka.group_id, "{reason}");
    if !shared.joined.load(Ordering::SeqCst) {
        shared
            .readiness
            .set_fault(crate::admin::CONSUMER_GROUP_FAULT, Some(reason));
    }
}

/// The partitions of `list` that belong to `topic`.
fn only_topic(list: &TopicPartitionList, topic: &str) -> TopicPartitionList {
    let mut out = TopicPartitionList::new();
    for p in list.elements().iter().filter(|p| p.topic() == topic) {
        out.add_partition(topic, p.partition());
    }
    out
}

/// The partitions of `list` that do not belong to `topic`.
fn except_topic(list: &TopicPartitionList, topic: &str) -> TopicPartitionList {
    let mut out = TopicPartitionList::new();
    for p in list.elements().iter().filter(|p| p.topic() != topic) {
        out.add_partition(p.topic(), p.partition());
    }
    out
}

/// Runs an event's `work` until the kill switch trips (`None` then).
///
/// `work` is boxed first, and that is most of the worker's speed on a flood of events that
/// need no action. tokio-util's cancellation wrapper is three nested async functions, each
/// holding the future it wraps twice (as argument and as local), so an unboxed kilobyte-sized
/// event future came out at 7 to 11 KiB; tokio then copies a task's future on every move (into
/// its cell, and the whole stage again on completion). Boxed, each layer holds a pointer.
fn until_killed<F: Future>(
    kill: CancellationToken,
    work: F,
) -> impl Future<Output = Option<F::Output>> {
    kill.run_until_cancelled_owned(Box::pin(work))
}

/// One valid event on its way through a lane.
struct Job {
    event: Event,
    message: OwnedMessage,
    ticket: Ticket,
    received: time::OffsetDateTime,
    trace: EventTrace,
    /// The event's span: lane work, SCIM calls and the verification wait run inside it.
    span: tracing::Span,
}

impl Job {
    /// An outcome of this event with what every outcome of it carries (ids, source, user,
    /// action, group, received time, trace); the caller adds what its phase found.
    fn outcome(&self, decision: &Decision, status: Status) -> Outcome {
        Outcome {
            outcome_id: outcome::new_outcome_id(),
            source_event_id: self.event.event_id().to_string(),
            source: SourceRef {
                topic: self.ticket.topic.clone(),
                partition: self.ticket.partition,
                offset: self.ticket.offset,
            },
            user_name: self.event.user_name().to_string(),
            scim_user_id: None,
            action: decision.action(),
            status,
            group: match decision {
                Decision::Quarantine { group } | Decision::Release { group } => Some(group.clone()),
                _ => None,
            },
            reason: None,
            error: None,
            request: None,
            verification: None,
            attempts: 0,
            timestamps: Timestamps {
                received: self.received,
                acted: None,
                verified: None,
            },
            trace_id: self.trace.trace_id.clone(),
        }
    }
}

/// What the lanes and dead-letter tasks need, shared behind one `Arc`.
struct Core {
    consumer: KafkaConsumer,
    shared: Arc<Shared>,
    publisher: Publisher,
    executor: Executor,
    /// `None` when `verify.mode = "off"`: the action outcome is then the final one.
    verifier: Option<Verifier>,
    /// Verification waits and dead-letter sends, waited for at shutdown.
    tasks: TaskTracker,
    clock: WallClock,
    policy: Policy,
    /// Bounds the events acting on Netskope at once (`max_concurrent_users`). Taken after the
    /// guard's admission, so that halted events hold no permit and quarantines go on.
    concurrency: Semaphore,
    handle: PipelineHandle,
    fatal: Mutex<Option<PipelineError>>,
    failed: AtomicBool,
    dead_letters: AtomicU64,
    outcomes: Mutex<BTreeMap<&'static str, u64>>,
}

impl Core {
    /// Marks an event finished and stores the offset it unblocks. Under the tracker's lock, so
    /// that stored offsets only ever grow.
    fn finish(&self, ticket: &Ticket) {
        let mut tracker = self.shared.tracker();
        if let Some(offset) = tracker.finish(ticket)
            && let Err(e) = self
                .consumer
                .store_offset(&ticket.topic, ticket.partition, offset)
        {
            // The partition was revoked meanwhile; its new owner re-delivers.
            tracing::debug!(topic = ticket.topic, partition = ticket.partition, offset, error = %e, "offset not stored");
        }
        // Set under the tracker's lock: two events finishing on two threads would otherwise
        // race, and the older count could be written last and stick.
        metrics::gauge!(m_names::IN_FLIGHT).set(tracker.open() as f64);
        drop(tracker);
        self.shared.progress.notify_one();
    }

    fn gauge_in_flight(&self) {
        let tracker = self.shared.tracker();
        metrics::gauge!(m_names::IN_FLIGHT).set(tracker.open() as f64);
    }

    /// Records the first fatal error and stops the pipeline. Events not yet finished keep
    /// their offsets and are processed again after the operator fixes the cause.
    fn fail(&self, error: PipelineError) {
        tracing::error!(error = %error, "stopping the worker");
        let mut fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if fatal.is_none() {
            *fatal = Some(error);
        }
        self.failed.store(true, Ordering::SeqCst);
        self.handle.stop();
    }

    async fn process(self: Arc<Self>, job: Job) {
        if self.failed.load(Ordering::SeqCst) {
            return;
        }
        let decision = self.policy.decide(&job.event);
        tracing::Span::current().record("action", decision.action().as_str());
        if matches!(decision, Decision::Deactivate | Decision::Delete)
            && !self.executor.dry_run()
            && let Admission::Halted { tripped } = self.shared.guard.try_admit()
        {
            if tripped {
                Box::pin(self.report_halt(&job, &decision)).await;
            }
            self.shared.guard.admitted().await;
        }
        // Taken after the guard, so that halted events hold no permit. The semaphore is never
        // closed, so acquiring only waits.
        let _permit = self.concurrency.acquire().await;
        // Boxed, and so allocated, only now: thousands of events waiting for a permit each
        // cost their job, not the kilobytes of state that acting on Netskope needs.
        Box::pin(self.clone().act(job, decision)).await;
    }

    /// Carries out an admitted event's decision and publishes its outcome.
    async fn act(self: Arc<Self>, job: Job, decision: Decision) {
        let user_name = job.event.user_name().to_string();
        let report = match self.executor.execute(&user_name, &decision).await {
            Ok(report) => report,
            Err(e) => return self.fail(PipelineError::Netskope(e)),
        };
        if report.retries_exhausted {
            let detail = report.error.as_ref().map(|e| e.to_string());
            let detail = detail.unwrap_or_default();
            if !self
                .send_dead_letter(
                    &job.message,
                    publish::RETRIES_EXHAUSTED,
                    &detail,
                    &job.trace.traceparent,
                )
                .await
            {
                return;
            }
        }
        let mut outcome = job.outcome(&decision, report.status);
        outcome.scim_user_id = report.scim_user_id;
        outcome.reason = report.reason;
        outcome.error = report.error.as_ref().map(OutcomeError::from);
        outcome.request = report.request;
        outcome.attempts = report.attempts;
        outcome.timestamps.acted = report.acted_at;
        if outcome.status == Status::Failed {
            tracing::warn!(
                source_event_id = outcome.source_event_id,
                user = outcome.user_name,
                action = outcome.action.as_str(),
                status = outcome.status.as_str(),
                error = outcome.error.as_ref().map(|e| e.message.as_str()),
                "event failed"
            );
        } else {
            tracing::info!(
                source_event_id = outcome.source_event_id,
                user = outcome.user_name,
                action = outcome.action.as_str(),
                status = outcome.status.as_str(),
                reason = outcome.reason.as_deref(),
                "event done"
            );
        }
        // Handed to the producer here, in lane order; acknowledged in a task of its own, so the
        // lane moves on to the user's next event instead of waiting out linger.ms and a round
        // trip per event.
        let delivery = self
            .publisher
            .enqueue_outcome(&outcome, &job.trace.traceparent)
            .await;
        let verify = match (&self.verifier, report.expected) {
            (Some(verifier), Some(expected)) if outcome.status == Status::Applied => {
                let acted_at = report
                    .acted_at
                    .map_or(0, |t| t.unix_timestamp().max(0) as u64);
                Some((verifier.clone(), Pending { expected, acted_at }))
            }
            _ => None,
        };
        let core = self.clone();
        let kill = self.handle.kill.clone();
        let work = core
            .complete(outcome, delivery, verify, job.ticket, job.trace)
            .instrument(job.span);
        self.tasks.spawn(until_killed(kill, work));
    }

    /// The guard halted at this event: say so once, loudly, on the outcomes topic, in the log
    /// and on `/readyz`. The event keeps its offset and waits for a release.
    async fn report_halt(&self, job: &Job, decision: &Decision) {
        let reason = self.shared.guard.halt_reason();
        tracing::error!(
            source_event_id = job.event.event_id(),
            user = job.event.user_name(),
            "{reason}"
        );
        self.shared
            .readiness
            .set_fault(crate::admin::GUARD_FAULT, Some(reason.clone()));
        let mut outcome = job.outcome(decision, Status::Halted);
        outcome.reason = Some(reason);
        // Not final: the offset is not stored, whatever the acknowledgement.
        self.publish(&outcome, &job.trace.traceparent).await;
    }

    /// After the lane: waits for the outcome's acknowledgement, then either finishes the event
    /// or, for an applied action, waits for its verification and publishes that as the final
    /// outcome. If the verifier stops first (shutdown), the event stays open and is delivered
    /// again.
    async fn complete(
        self: Arc<Self>,
        outcome: Outcome,
        delivery: Delivery,
        verify: Option<(Verifier, Pending)>,
        ticket: Ticket,
        trace: EventTrace,
    ) {
        if !self.acknowledged(&outcome, delivery).await {
            return;
        }
        match verify {
            // Boxed: waiting for the verifier and publishing a second outcome make a future
            // several times the size of the rest, and every event's `complete` task would carry
            // (and copy, at spawn and at each stage change) that space whether it verifies or
            // not. Events that skip verification are the most numerous.
            Some((verifier, pending)) => {
                Box::pin(async move {
                    let answer = verifier.submit(pending).await;
                    self.verified(outcome, answer, ticket, trace).await;
                })
                .await;
            }
            None => self.finish(&ticket),
        }
    }

    /// Publishes an outcome and waits for its acknowledgement; `false` when the producer
    /// failed for good.
    async fn publish(&self, outcome: &Outcome, traceparent: &str) -> bool {
        let delivery = self.publisher.enqueue_outcome(outcome, traceparent).await;
        self.acknowledged(outcome, delivery).await
    }

    /// Waits for an outcome's acknowledgement and counts it; `false` when the producer failed
    /// for good.
    async fn acknowledged(&self, outcome: &Outcome, delivery: Delivery) -> bool {
        if let Err(e) = delivery.acknowledged().await {
            self.fail(e.into());
            return false;
        }
        tracing::Span::current().record("outcome", outcome.status.as_str());
        metrics::counter!(
            m_names::OUTCOMES,
            "action" => outcome.action.as_str(),
            "status" => outcome.status.as_str()
        )
        .increment(1);
        *self
            .outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(outcome.status.as_str())
            .or_default() += 1;
        true
    }

    /// Waits for an applied action's verification and publishes it as the event's final
    /// outcome. If the verifier stops first (shutdown), the event stays open and is delivered
    /// again.
    async fn verified(
        self: Arc<Self>,
        applied: Outcome,
        answer: tokio::sync::oneshot::Receiver<Verification>,
        ticket: Ticket,
        trace: EventTrace,
    ) {
        let Ok(v) = answer.await else { return };
        let status = if v.verified {
            Status::Verified
        } else {
            Status::Unverified
        };
        let audit_timestamp = v
            .audit_timestamp
            .and_then(|ts| time::OffsetDateTime::from_unix_timestamp(i64::try_from(ts).ok()?).ok());
        let outcome = Outcome {
            outcome_id: outcome::new_outcome_id(),
            status,
            reason: None,
            verification: Some(VerificationEvidence {
                method: v.method,
                audit_event_id: v.audit_event_id,
                audit_timestamp,
                evidence: v.evidence,
            }),
            timestamps: Timestamps {
                verified: Some(self.clock.now_datetime()),
                ..applied.timestamps
            },
            ..applied
        };
        let evidence = outcome.verification.as_ref().map(|v| v.evidence.as_str());
        if status == Status::Unverified {
            tracing::warn!(
                source_event_id = outcome.source_event_id,
                user = outcome.user_name,
                action = outcome.action.as_str(),
                evidence,
                "action unverified"
            );
        } else {
            tracing::info!(
                source_event_id = outcome.source_event_id,
                user = outcome.user_name,
                action = outcome.action.as_str(),
                evidence,
                "action verified"
            );
        }
        if self.publish(&outcome, &trace.traceparent).await {
            self.finish(&ticket);
        }
    }

    /// Publishes a dead letter; `false` when the producer failed for good and the worker is
    /// stopping.
    async fn send_dead_letter(
        &self,
        message: &OwnedMessage,
        reason: &str,
        detail: &str,
        traceparent: &str,
    ) -> bool {
        match self
            .publisher
            .dead_letter(message, reason, detail, traceparent)
            .await
        {
            Ok(()) => {
                self.dead_letters.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m_names::DEAD_LETTERS, "reason" => reason.to_string())
                    .increment(1);
                true
            }
            Err(e) => {
                self.fail(e.into());
                false
            }
        }
    }

    /// Sends an event that failed decoding or validation to the dead-letter topic.
    async fn reject(
        self: Arc<Self>,
        message: OwnedMessage,
        ticket: Ticket,
        reason: &'static str,
        detail: String,
        trace: EventTrace,
    ) {
        tracing::warn!(
            topic = ticket.topic,
            partition = ticket.partition,
            offset = ticket.offset,
            reason,
            detail,
            "invalid event sent to the dead-letter topic"
        );
        if self
            .send_dead_letter(&message, reason, &detail, &trace.traceparent)
            .await
        {
            self.finish(&ticket);
        }
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

    /// Events being acted on and actions awaiting verification, against their bounds.
    fn load(&self) -> Load {
        let open = self.core.shared.tracker().open();
        let pending = self.core.verifier.as_ref().map_or(0, Verifier::pending);
        let parked = self.core.shared.guard.waiting();
        Load {
            acting: open.saturating_sub(pending).saturating_sub(parked),
            pending,
            parked,
            max_acting: self.settings.max_in_flight,
            max_pending: self.max_pending,
        }
    }

    /// Pauses or resumes every assigned partition. A resumed partition's first fetch can take
    /// up to a second in librdkafka, so this is the slow path, for stalls only.
    fn set_paused(&self, pause: bool, load: &Load) {
        self.core.shared.paused.store(pause, Ordering::SeqCst);
        let consumer = &self.core.consumer;
        let result = consumer.assignment().and_then(|assignment| {
            if pause {
                consumer.pause(&assignment)
            } else if self.core.shared.guard_paused.load(Ordering::SeqCst) {
                // The guard's hold on the terminations topic outlasts this stall.
                consumer.resume(&except_topic(&assignment, &self.kafka.topics.terminations))
            } else {
                consumer.resume(&assignment)
            }
        });
        let (acting, pending) = (load.acting, load.pending);
        match result {
            Ok(()) if pause => tracing::warn!(
                acting,
                pending_verification = pending,
                stalled_for = %humantime::format_duration(self.settings.pause_after),
                "no event finished while at the in-flight limit; partitions paused"
            ),
            Ok(()) => tracing::info!(acting, pending_verification = pending, "partitions resumed"),
            Err(e) => tracing::warn!(error = %e, pause, "cannot pause or resume partitions"),
        }
    }

    /// Pauses the terminations topic while the guard halts destructive actions, and resumes
    /// it after a release (unless the worker is paused at its in-flight bound anyway).
    fn follow_guard(&self) {
        let shared = &self.core.shared;
        let halted = shared.guard.is_halted();
        if halted == shared.guard_paused.load(Ordering::SeqCst) {
            return;
        }
        shared.guard_paused.store(halted, Ordering::SeqCst);
        let topic = &self.kafka.topics.terminations;
        let consumer = &self.core.consumer;
        let result = consumer.assignment().and_then(|assignment| {
            let held = only_topic(&assignment, topic);
            if held.count() == 0 {
                Ok(())
            } else if halted {
                consumer.pause(&held)
            } else if shared.paused.load(Ordering::SeqCst) {
                Ok(())
            } else {
                consumer.resume(&held)
            }
        });
        match result {
            Ok(()) if halted => tracing::warn!(
                topic,
                "blast-radius guard: the terminations topic is paused until a release"
            ),
            Ok(()) => tracing::info!(topic, "blast-radius guard released: terminations resume"),
            Err(e) => {
                tracing::warn!(error = %e, topic, "cannot pause or resume the terminations topic")
            }
        }
    }

    /// Compares the first record read from a newly assigned partition with the group's
    /// committed offset, off the consumer loop (it is a request to the group coordinator), and
    /// says loudly when records were skipped: each may be a termination never acted on.
    fn check_resume_gap(&self, (topic, partition): (String, i32), first: i64) {
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || {
            let committed = {
                let mut list = TopicPartitionList::new();
                list.add_partition(&topic, partition);
                core.consumer
                    .committed_offsets(list, Duration::from_secs(10))
                    .ok()
                    .and_then(|l| l.find_partition(&topic, partition).map(|p| p.offset()))
            };
            let Some(committed) = committed else {
                tracing::debug!(
                    topic,
                    partition,
                    "committed offset unknown; no resume check"
                );
                return;
            };
            if let Some(gap) = resume_gap(committed, first) {
                tracing::error!(
                    topic,
                    partition,
                    committed = ?committed,
                    first_read = first,
                    skipped = gap,
                    "records skipped on resume: the first record read after the assignment is not \
                     the committed offset. Those records were never seen by this worker: check the \
                     topic's retention (the worker may have been down longer), compaction and \
                     transactions, or the broker, then replay the range if it held events"
                );
                metrics::counter!(m_names::RESUME_SKIPPED, "topic" => topic)
                    .increment(gap.unsigned_abs());
            }
        });
    }

    /// Registers a received event and sends it on: to its user's lane, or to the dead-letter
    /// topic.
    fn accept(&self, m: &BorrowedMessage<'_>) {
        let first = self
            .core
            .shared
            .awaiting_first()
            .get_mut(m.topic())
            .is_some_and(|partitions| partitions.remove(&m.partition()));
        if first {
            self.check_resume_gap((m.topic().to_string(), m.partition()), m.offset());
        }
        if self.core.shared.dead_letter_stop.load(Ordering::SeqCst) {
            // Read while the partitions were being paused. Never registered, so its offset is
            // never stored: it is read again after the restart.
            return;
        }
        let received = self.clock.now_datetime();
        let kind = if m.topic() == self.kafka.topics.terminations {
            EventKind::Termination
        } else {
            EventKind::RiskSignal
        };
        let decoded = self
            .schemas
            .decode(kind, m.payload(), self.settings.max_event_bytes);
        let admitted = self
            .dead_letter_limit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(decoded.is_err());
        if !admitted {
            self.stop_reading_on_dead_letter_flood(m);
            return;
        }
        let ticket = self
            .core
            .shared
            .tracker()
            .begin(m.topic(), m.partition(), m.offset());
        let (span, trace) =
            telemetry::event_span(m.headers(), m.topic(), m.partition(), m.offset());
        let message = m.detach();
        let kill = self.core.handle.kill.clone();
        let result = if decoded.is_ok() {
            "accepted"
        } else {
            "dead_letter"
        };
        metrics::counter!(m_names::EVENTS_CONSUMED, "topic" => m.topic().to_string(), "result" => result)
            .increment(1);
        self.core.gauge_in_flight();
        match decoded {
            Ok(event) => {
                span.record("source_event_id", event.event_id());
                span.record("user", event.user_name());
                let key = event.user_name().to_lowercase();
                self.lanes.submit(
                    key,
                    Job {
                        event,
                        message,
                        ticket,
                        received,
                        trace,
                        span,
                    },
                );
            }
            Err(rejection) => {
                let core = self.core.clone();
                let work = core
                    .reject(
                        message,
                        ticket,
                        rejection.reason.as_str(),
                        rejection.detail,
                        trace,
                    )
                    .instrument(span);
                self.tasks.spawn(until_killed(kill, work));
            }
        }
    }

    /// The dead-letter limit tripped at `m`: stop reading for good, hold `m`'s offset (it is
    /// never registered), and say why, once. Events already in flight finish normally.
    fn stop_reading_on_dead_letter_flood(&self, m: &BorrowedMessage<'_>) {
        let shared = &self.core.shared;
        if shared.dead_letter_stop.swap(true, Ordering::SeqCst) {
            return;
        }
        let reason = self
            .dead_letter_limit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .describe();
        tracing::error!(
            topic = m.topic(),
            partition = m.partition(),
            offset = m.offset(),
            "{reason}"
        );
        metrics::gauge!(m_names::DEAD_LETTER_LIMIT).set(1.0);
        shared
            .readiness
            .set_fault(crate::admin::DEAD_LETTER_FAULT, Some(reason));
        // Paused like a stall, so that newly assigned partitions are paused too, but never
        // resumed: the loop goes on polling only to stay in the group.
        shared.paused.store(true, Ordering::SeqCst);
        let consumer = &self.core.consumer;
        if let Err(e) = consumer.assignment().and_then(|a| consumer.pause(&a)) {
            tracing::warn!(error = %e, "cannot pause the partitions; events read meanwhile are dropped unregistered");
        }
    }

    async fn drain(self, received: u64) -> Result<Summary, PipelineError> {
        let handle = self.core.handle.clone();
        let open = self.core.shared.tracker().open();
        if !handle.kill.is_cancelled() {
            tracing::info!(
                open,
                grace = %humantime::format_duration(self.settings.shutdown_grace),
                "stopping: no new events are read; waiting for in-flight events"
            );
        }
        self.tasks.close();
        let finished = tokio::select! {
            _ = self.tasks.wait() => true,
            _ = handle.kill.cancelled() => false,
            _ = tokio::time::sleep(self.settings.shutdown_grace) => false,
        };
        if !finished {
            handle.kill.cancel();
            self.tasks.wait().await;
        }
        let left_open = self.core.shared.tracker().open();
        if left_open > 0 {
            tracing::warn!(
                left_open,
                "events left unfinished; their offsets were not stored and they will be delivered again"
            );
        }
        let core = self.core.clone();
        if !handle.kill.is_cancelled() {
            // Commit what is stored now rather than at the next auto-commit tick.
            let committed = tokio::task::spawn_blocking(move || {
                let result = core.consumer.commit_consumer_state(CommitMode::Sync);
                core.publisher.flush(Duration::from_secs(10));
                result
            })
            .await;
            match committed {
                Ok(Ok(())) | Ok(Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "final commit failed; the last events may be delivered again")
                }
                Err(e) => tracing::warn!(error = %e, "final commit did not run"),
            }
        }
        let summary = Summary {
            received,
            dead_letters: self.core.dead_letters.load(Ordering::Relaxed),
            outcomes: self
                .core
                .outcomes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            left_open,
        };
        let fatal = self
            .core
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match fatal {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }
}

/// Consumer errors no retry can fix: the worker stops with the reason instead of logging the
/// same error forever.
fn fatal_consumer_error(e: &KafkaError) -> Option<String> {
    use RDKafkaErrorCode as C;
    let code = e.rdkafka_error_code()?;
    let fatal = matches!(
        code,
        C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::Fatal
            | C::InvalidGroupId
    );
    fatal.then(|| format!("{e}: check the brokers' ACLs and the credentials in [kafka]"))
}

/// Checks, before consuming, that the brokers answer and that all four topics exist. Topics are
/// never auto-created: a typo in a topic name must not start a worker that reads nothing.
pub async fn check_topics(
    producer: &broker_errors::Producer,
    errors: &broker_errors::BrokerErrors,
    kafka: &KafkaConfig,
) -> Result<(), PipelineError> {
    let producer = producer.clone();
    let timeout = kafka.connect_timeout;
    let brokers = kafka.brokers.clone();
    let metadata =
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout))
            .await
            .map_err(|e| {
                PipelineError::Config(format!("kafka: metadata request did not run: {e}"))
            })?
            .map_err(|e| {
                let why = errors.last().map_or_else(String::new, |reason| {
                    format!(
                        ". librdkafka's last error: {}",
                        broker_errors::explain(&reason)
                    )
                });
                PipelineError::Config(format!(
                    "kafka: cannot reach the brokers at {brokers} within {}: {e}{why}",
                    humantime::format_duration(timeout)
                ))
            })?;
    let t = &kafka.topics;
    let problems: Vec<String> = [
        ("terminations", &t.terminations),
        ("risk_signals", &t.risk_signals),
        ("outcomes", &t.outcomes),
        ("dead_letter", &t.dead_letter),
    ]
    .into_iter()
    .filter_map(|(key, name)| {
        let problem = match metadata.topics().iter().find(|m| m.name() == name.as_str()) {
            None => "does not exist".to_string(),
            Some(m) => match m.error() {
                None => return None,
                Some(e) => match RDKafkaErrorCode::from(e) {
                    RDKafkaErrorCode::UnknownTopicOrPartition => "does not exist".to_string(),
                    code => format!("{code}"),
                },
            },
        };
        Some(format!("{name} (kafka.topics.{key}): {problem}"))
    })
    .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PipelineError::Config(format!(
            "kafka: topics unusable on {}: {}. Create them, grant access, or fix the names in [kafka.topics]",
            kafka.brokers,
            problems.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(protocol: Option<&str>) -> KafkaConfig {
        let mut kafka = KafkaConfig {
            group_id: "g".into(),
            connect_timeout: Duration::from_secs(15),
            ..KafkaConfig::default()
        };
        if let Some(p) = protocol {
            kafka
                .consumer_properties
                .insert("group.protocol".into(), p.into());
        }
        kafka
    }

    fn not_ready(shared: &Shared) -> Vec<String> {
        shared.readiness.check().err().unwrap_or_default()
    }

    #[test]
    fn only_a_gap_of_more_than_one_offset_is_a_skip() {
        use rdkafka::Offset;
        assert_eq!(resume_gap(Offset::Offset(4), 4), None, "resumed exactly");
        assert_eq!(
            resume_gap(Offset::Offset(4), 5),
            None,
            "a transaction marker"
        );
        assert_eq!(resume_gap(Offset::Offset(4), 10), Some(6));
        assert_eq!(
            resume_gap(Offset::Offset(4), 2),
            None,
            "behind: a redelivery"
        );
        assert_eq!(
            resume_gap(Offset::Invalid, 10),
            None,
            "nothing committed yet"
        );
        assert_eq!(resume_gap(Offset::Beginning, 10), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_that_never_joins_is_reported_after_twice_the_connect_timeout() {
        let shared = Arc::new(Shared::default());
        let watchdog = tokio::spawn(join_watchdog(shared.clone(), kafka(Some("consumer"))));
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(!not_ready(&shared).iter().any(|r| r.contains("joined")));
        watchdog.await.unwrap();
        let reasons = not_ready(&shared);
        let fault = reasons
            .iter()
            .find(|r| r.contains("has not joined group \"g\" after 30s"))
            .unwrap_or_else(|| panic!("{reasons:?}"));
        assert!(fault.contains("KIP-848"), "{fault}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_classic_protocol_gets_the_coordinator_hint() {
        let shared = Arc::new(Shared::default());
        join_watchdog(shared.clone(), kafka(None)).await;
        let reasons = not_ready(&shared);
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("has not joined") && r.contains("ACL")),
            "{reasons:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_that_joined_in_time_raises_nothing() {
        let shared = Arc::new(Shared::default());
        shared.joined.store(true, Ordering::SeqCst);
        join_watchdog(shared.clone(), kafka(Some("consumer"))).await;
        assert!(!not_ready(&shared).iter().any(|r| r.contains("joined")));
    }
}
