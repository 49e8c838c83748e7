//! The per-event core: what happens to one valid event after admission. The policy decides,
//! the executor acts, verification confirms, the outcome is published, and the offset is
//! finished once the broker acknowledged it. Invalid records take the dead-letter path here too.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use netskope::Demand;
use offboarder_base::clock::WallClock;
use offboarder_base::metric_names as m_names;

use super::consumer::KafkaConsumer;
use super::executor::Executor;
use super::lifecycle::Plan;
use super::offsets::Ticket;
use super::publish::{Delivery, NOTHING, OnSent, Publisher, header_text};
use super::shared::{PartitionWork, PipelineError, PipelineHandle, Shared};
use super::transactions::Entered;
use crate::event::{Event, RejectReason};
use crate::guard::Admission;
use crate::outcome::{self, Action, Outcome, SourceRef, Status, Timestamps, VerificationEvidence};
use crate::policy::{Decision, Policy};
use crate::telemetry::EventTrace;
use crate::verify::drift::Watched;
use crate::verify::{Pending, Verification, Verifier};

/// Runs an event's `work` until the kill switch trips (`None` then).
///
/// `work` is boxed first, and that is most of the worker's speed on a flood of events that
/// need no action. tokio-util's cancellation wrapper is three nested async functions, each
/// holding the future it wraps twice (as argument and as local), so an unboxed kilobyte-sized
/// event future came out at 7 to 11 KiB; tokio then copies a task's future on every move (into
/// its cell, and the whole stage again on completion). Boxed, each layer holds a pointer.
pub(super) fn until_killed<F: Future>(
    kill: CancellationToken,
    work: F,
) -> impl Future<Output = Option<F::Output>> {
    kill.run_until_cancelled_owned(Box::pin(work))
}

/// One valid event on its way through a lane.
pub(super) struct Job {
    pub(super) event: Event,
    pub(super) message: OwnedMessage,
    pub(super) ticket: Ticket,
    /// The work of the event's partition: a revoke stops it (see [`PartitionWork`]).
    pub(super) partition: Arc<PartitionWork>,
    pub(super) received: time::OffsetDateTime,
    pub(super) trace: EventTrace,
    /// The event's span: lane work, SCIM calls and the verification wait run inside it.
    pub(super) span: tracing::Span,
}

impl Job {
    /// The event as the guard's log names it: the same for every delivery of the record, and
    /// for a copy of it published again with the same `event_id`.
    pub(super) fn guard_key(&self) -> String {
        format!("{}/{}", self.message.topic(), self.event.event_id())
    }

    /// An outcome of this event with what every outcome of it carries (ids, source, user,
    /// action, group, received time, trace); the caller adds what its phase found.
    pub(super) fn outcome(&self, decision: &Decision, status: Status) -> Outcome {
        Outcome {
            outcome_id: outcome::new_outcome_id(),
            source_event_id: self.event.event_id().to_string(),
            source: SourceRef {
                topic: self.ticket.topic.clone(),
                partition: self.ticket.partition,
                offset: self.ticket.offset,
            },
            requested_by: self.event.origin().map(str::to_string),
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
                effective: None,
            },
            trace_id: self.trace.trace_id.clone(),
        }
    }
}

/// What the lanes and dead-letter tasks need, shared behind one `Arc`.
pub(super) struct Core {
    pub(super) consumer: Arc<KafkaConsumer>,
    pub(super) shared: Arc<Shared>,
    pub(super) publisher: Publisher,
    pub(super) executor: Executor,
    /// `None` when `verify.mode = "off"`: the action outcome is then the final one.
    pub(super) verifier: Option<Verifier>,
    /// Verification waits and dead-letter sends, waited for at shutdown.
    pub(super) tasks: TaskTracker,
    pub(super) clock: WallClock,
    /// The schedule's clock: wall time, unless a test runs it ahead.
    pub(super) calendar: crate::guard::schedule::Calendar,
    pub(super) policy: Policy,
    /// Bounds the events acting on Netskope at once (`max_concurrent_users`). Taken after the
    /// guard's admission, so that halted events hold no permit and quarantines go on.
    pub(super) concurrency: Semaphore,
    pub(super) handle: PipelineHandle,
    pub(super) fatal: Mutex<Option<PipelineError>>,
    pub(super) failed: AtomicBool,
    pub(super) dead_letters: AtomicU64,
    pub(super) outcomes: Mutex<BTreeMap<&'static str, u64>>,
    /// `pipeline.split_budget`: this worker's share of the request budget.
    pub(super) budget: Option<Arc<super::budget::Budget>>,
}

impl Core {
    /// For an event's final record: finishes the event as the record joins the open
    /// transaction (with `exactly_once`; without, it does nothing, see
    /// [`Self::finish_acknowledged`]).
    fn finish_in_transaction<'a>(
        &'a self,
        ticket: &'a Ticket,
    ) -> impl Fn(Option<&Entered<'_>>) + Sync + 'a {
        move |transaction| {
            if transaction.is_some() {
                self.finish(ticket, transaction);
            }
        }
    }

    /// For an event's final record, once the broker acknowledged it: finishes the event, unless
    /// it already finished in the record's transaction (`exactly_once`).
    fn finish_acknowledged(&self, ticket: &Ticket) {
        if self.shared.transactions.is_none() {
            self.finish(ticket, None);
        }
    }

    /// Marks an event finished and records the offset it unblocks: in `transaction`, the one
    /// that holds the event's final record, with `exactly_once`; in the consumer's offset store
    /// for the background commit otherwise. Under the tracker's lock, so that offsets only ever
    /// grow.
    pub(super) fn finish(&self, ticket: &Ticket, transaction: Option<&Entered<'_>>) {
        let mut tracker = self.shared.tracker();
        if let Some(offset) = tracker.finish(ticket) {
            match transaction {
                Some(t) => t.finished(&ticket.topic, ticket.partition, offset),
                None => {
                    if let Err(e) =
                        self.consumer
                            .store_offset(&ticket.topic, ticket.partition, offset)
                    {
                        // The partition was revoked meanwhile; its new owner re-delivers.
                        tracing::debug!(topic = ticket.topic, partition = ticket.partition, offset, error = %e, "offset not stored");
                    }
                }
            }
        }
        // Set under the tracker's lock: two events finishing on two threads would otherwise
        // race, and the older count could be written last and stick.
        metrics::gauge!(m_names::IN_FLIGHT).set(tracker.open() as f64);
        drop(tracker);
        self.shared.progress.notify_one();
    }

    /// Events received that have yet to act: not finished, not waiting for their
    /// verification, not held by the guard. The demand this worker publishes for the budget.
    pub(super) fn waiting_to_act(&self) -> u64 {
        let open = self.shared.tracker().open();
        let verifying = self.verifier.as_ref().map_or(0, Verifier::pending);
        let held = self.shared.guard.waiting();
        open.saturating_sub(verifying).saturating_sub(held) as u64
    }

    pub(super) fn gauge_in_flight(&self) {
        let tracker = self.shared.tracker();
        metrics::gauge!(m_names::IN_FLIGHT).set(tracker.open() as f64);
    }

    /// Records the first fatal error and stops the pipeline. Events not yet finished keep
    /// their offsets and are processed again after the operator fixes the cause.
    pub(super) fn fail(&self, error: PipelineError) {
        tracing::error!(error = %error, "stopping the worker");
        let mut fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if fatal.is_none() {
            *fatal = Some(error);
        }
        self.failed.store(true, Ordering::SeqCst);
        self.handle.stop();
    }

    pub(super) async fn process(self: Arc<Self>, job: Box<Job>) {
        if self.failed.load(Ordering::SeqCst) || job.partition.draining() {
            return;
        }
        let decision = self.policy.decide(&job.event);
        tracing::Span::current().record("action", decision.action().as_str());
        // Before the guard: a termination scheduled for later does not act now, and a rescind
        // acts only on what offboarder did.
        // Boxed: the lifecycle's state is large, and inline it would be part of every
        // event's future for the event's whole life (thousands wait for a permit).
        let Some((job, plan)) = Box::pin(self.plan_lifecycle(job, &decision)).await else {
            return;
        };
        // Counted from now, not when the user is resolved: a burst is known as it is read,
        // and that is what tells the client a directory listing would be cheaper.
        let mut demand = self.executor.expect_resolve(&decision);
        if matches!(decision, Decision::Deactivate | Decision::Delete) && !self.executor.dry_run() {
            let event = job.guard_key();
            // The guard's futures are boxed: inline, their state would be part of every
            // event's future for its whole life, and thousands of events wait in it at once
            // (10,000 in flight: about 2 KiB each).
            let wait = match Box::pin(self.shared.guard.try_admit(&event)).await {
                Ok(Admission::Admitted) => false,
                Ok(Admission::Halted { tripped }) => {
                    if tripped {
                        Box::pin(self.report_halt(&job, &decision)).await;
                    }
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the blast-radius guard cannot decide; the destructive action waits");
                    true
                }
            };
            if wait {
                // A halted event may wait for hours: it is no resolve about to happen.
                drop(demand.take());
                Box::pin(self.shared.guard.admitted(&event)).await;
                demand = self.executor.expect_resolve(&decision);
            }
        }
        // Taken after the guard, so that halted events hold no permit. The semaphore is never
        // closed, so acquiring only waits.
        let _permit = self.concurrency.acquire().await;
        // The partition may have been revoked while this event waited.
        if job.partition.draining() {
            return;
        }
        let _acting = job.partition.acting();
        // Boxed, and so allocated, only now: thousands of events waiting for a permit each
        // cost their job, not the kilobytes of state that acting on Netskope needs.
        Box::pin(self.clone().act(job, decision, plan, demand)).await;
    }

    /// Carries out an admitted event's decision and publishes its outcome.
    pub(super) async fn act(
        self: Arc<Self>,
        job: Box<Job>,
        decision: Decision,
        plan: Plan,
        demand: Option<Demand>,
    ) {
        let user_name = job.event.user_name().to_string();
        let at = job.ticket.position();
        let run = match &plan.reactivate {
            Some(user_id) => self.executor.reactivate(&user_name, user_id, &at).await,
            None => {
                self.executor
                    .execute_with_demand(&user_name, &decision, &at, demand)
                    .await
            }
        };
        let mut report = match run {
            Ok(report) => report,
            Err(e) => return self.fail(PipelineError::Netskope(e)),
        };
        // This delivery's admission is one; another means an earlier delivery was admitted.
        if decision == Decision::Delete && self.shared.guard.admissions_of(&job.guard_key()) > 1 {
            report = report.deleted_by_an_earlier_delivery();
        }
        if report.retries_exhausted {
            let detail = report.error.as_ref().map(|e| e.to_string());
            let detail = detail.unwrap_or_default();
            if !self
                .send_dead_letter(
                    &job.message,
                    super::publish::RETRIES_EXHAUSTED,
                    &detail,
                    &job.trace.traceparent,
                    NOTHING,
                )
                .await
            {
                return;
            }
        }
        if let Some(entry) = plan.entry {
            self.record_lifecycle(&job, &decision, *entry, &report)
                .await;
        }
        let mut outcome = job.outcome(&decision, report.status);
        outcome.scim_user_id = report.scim_user_id;
        outcome.reason = match (report.reason, plan.note) {
            (Some(r), Some(n)) => Some(format!("{n}; {r}")),
            (r, n) => r.or(n),
        };
        outcome.timestamps.effective = plan.effective;
        outcome.error = report.error.as_ref().map(super::executor::outcome_error);
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
        let verify = match (&self.verifier, report.expected) {
            (Some(verifier), Some(expected)) if outcome.status == Status::Applied => {
                let acted_at = report
                    .acted_at
                    .map_or(0, |t| t.unix_timestamp().max(0) as u64);
                // A deactivation or a quarantine is watched, once verified, for someone else
                // undoing it; a repeat made because one was undone is not repeated again.
                let watch = (verifier.watches()
                    && matches!(decision, Decision::Deactivate | Decision::Quarantine { .. }))
                .then(|| {
                    let may_reassert =
                        header_text(&job.message, super::reverted::REASSERT_HEADER).is_none();
                    // What a `reverted` outcome repeats of this one; not the request.
                    Box::new(Watched {
                        outcome: Outcome {
                            request: None,
                            reason: None,
                            ..outcome.clone()
                        },
                        may_reassert,
                    })
                });
                Some((
                    verifier.clone(),
                    Pending {
                        expected,
                        acted_at,
                        watch,
                    },
                ))
            }
            _ => None,
        };
        self.send_outcome(job, outcome, verify).await;
    }

    /// Publishes `outcome` of `job`, then finishes the event (after its verification, when
    /// there is one to wait for).
    pub(super) async fn send_outcome(
        self: &Arc<Self>,
        job: Box<Job>,
        outcome: Outcome,
        verify: Option<(Verifier, Pending)>,
    ) {
        // Handed to the producer here, in lane order; acknowledged in a task of its own, so the
        // lane moves on to the user's next event instead of waiting out linger.ms and a round
        // trip per event. Without a verification to wait for, this is the final outcome: with
        // `exactly_once` the event finishes in its transaction.
        let delivery = {
            let finish_in = self.finish_in_transaction(&job.ticket);
            let on_sent = if verify.is_none() {
                &finish_in
            } else {
                NOTHING
            };
            self.publisher
                .enqueue_outcome(&outcome, &job.trace.traceparent, on_sent)
                .await
        };
        let core = self.clone();
        let kill = self.handle.kill.clone();
        let revoked = job.partition.cancel.clone();
        let work = core
            .complete(outcome, delivery, verify, job.ticket, job.trace)
            .instrument(job.span);
        self.tasks
            .spawn(until_killed(kill, until_killed(revoked, work)));
    }

    /// The guard halted at this event: say so once, loudly, on the outcomes topic, in the log
    /// and on `/readyz`. The event keeps its offset and waits for a release.
    pub(super) async fn report_halt(&self, job: &Job, decision: &Decision) {
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
    pub(super) async fn complete(
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
            None => self.finish_acknowledged(&ticket),
        }
    }

    /// Publishes an outcome and waits for its acknowledgement; `false` when the producer
    /// failed for good.
    pub(super) async fn publish(&self, outcome: &Outcome, traceparent: &str) -> bool {
        let delivery = self
            .publisher
            .enqueue_outcome(outcome, traceparent, NOTHING)
            .await;
        self.acknowledged(outcome, delivery).await
    }

    /// Publishes an event's final outcome and finishes the event: in the outcome's transaction
    /// with `exactly_once`, once the broker acknowledged it otherwise.
    async fn publish_final(&self, outcome: &Outcome, traceparent: &str, ticket: &Ticket) {
        let delivery = self
            .publisher
            .enqueue_outcome(outcome, traceparent, &self.finish_in_transaction(ticket))
            .await;
        if self.acknowledged(outcome, delivery).await {
            self.finish_acknowledged(ticket);
        }
    }

    /// Waits for an outcome's acknowledgement and counts it; `false` when the producer failed
    /// for good.
    pub(super) async fn acknowledged(&self, outcome: &Outcome, delivery: Delivery) -> bool {
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
    /// outcome. If the verifier stops without answering, the worker stops and the event, still
    /// open, is delivered again after the restart.
    pub(super) async fn verified(
        self: Arc<Self>,
        applied: Outcome,
        answer: tokio::sync::oneshot::Receiver<Verification>,
        ticket: Ticket,
        trace: EventTrace,
    ) {
        let Ok(v) = answer.await else {
            // The poller holds the sender until it answers, and lives as long as the core this
            // task holds: a closed channel means it died (a panic). Stop, rather than leave this
            // event's offset frozen in silence.
            self.fail(PipelineError::Internal(
                "the verifier stopped without answering; events awaiting verification come \
                 again after a restart"
                    .into(),
            ));
            return;
        };
        let status = if v.verified {
            Status::Verified
        } else if v.superseded {
            Status::Superseded
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
        if status == Status::Unverified
            && outcome.action == Action::Quarantine
            && let (Some(group), Some(user_id)) = (&outcome.group, &outcome.scim_user_id)
        {
            // The user may not be in the group (read-back says so, or nothing confirmed it):
            // the next signal for them must act, not be skipped as a repeat.
            self.executor
                .forget_quarantine(group, user_id, &ticket.position())
                .await;
        }
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
        self.publish_final(&outcome, &trace.traceparent, &ticket)
            .await;
    }

    /// Publishes a dead letter; `false` when the producer failed for good and the worker is
    /// stopping. `on_sent` as for [`Publisher::enqueue_outcome`].
    pub(super) async fn send_dead_letter(
        &self,
        message: &OwnedMessage,
        reason: &str,
        detail: &str,
        traceparent: &str,
        on_sent: OnSent<'_>,
    ) -> bool {
        match self
            .publisher
            .dead_letter(message, reason, detail, traceparent, on_sent)
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
    pub(super) async fn reject(
        self: Arc<Self>,
        message: OwnedMessage,
        ticket: Ticket,
        reason: &'static str,
        detail: String,
        trace: EventTrace,
    ) {
        // A refused SET's detail quotes the SET (its issuer, its events): not above debug.
        // The dead letter's header keeps it.
        let quotes_a_set = reason == RejectReason::InvalidSet.as_str()
            || reason == RejectReason::IgnoredSet.as_str();
        if quotes_a_set {
            tracing::warn!(
                topic = ticket.topic,
                partition = ticket.partition,
                offset = ticket.offset,
                reason,
                "Security Event Token sent to the dead-letter topic (its detail in the offboarder-error header)"
            );
            tracing::debug!(reason, detail, "Security Event Token dead-lettered");
        } else {
            tracing::warn!(
                topic = ticket.topic,
                partition = ticket.partition,
                offset = ticket.offset,
                reason,
                detail,
                "invalid event sent to the dead-letter topic"
            );
        }
        let finish_in = self.finish_in_transaction(&ticket);
        if self
            .send_dead_letter(&message, reason, &detail, &trace.traceparent, &finish_in)
            .await
        {
            self.finish_acknowledged(&ticket);
        }
    }
}
