//! Admission and backpressure: each record read is registered, decoded and validated, and
//! handed to its user's lane or to the dead-letter path; reading pauses while the worker is full
//! (or the blast-radius guard halted, for the terminations topic) and resumes below half.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::BorrowedMessage;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use offboarder_base::metric_names as m_names;

use super::config::{KafkaConfig, PipelineConfig};
use super::consumer::{check_resume_gap, except_topic, only_topic};
use super::dead_letter_limit::DeadLetterLimit;
use super::lanes::Lanes;
use super::process::{Core, Job, until_killed};
use crate::event::{Event, EventKind, RejectReason, Rejection, Schemas};
use crate::ssf::{SetMapper, set};
use crate::telemetry;
use crate::verify::Verifier;

/// How full the worker is.
pub(super) struct Load {
    pub(super) acting: usize,
    pub(super) pending: usize,
    /// Destructive events waiting for the blast-radius guard's release. They hold their
    /// offsets but not the reading: risk signals keep flowing past them.
    pub(super) parked: usize,
    pub(super) max_acting: usize,
    pub(super) max_pending: usize,
}

impl Load {
    /// At `max_in_flight` events being acted on, or `verify.max_pending` actions awaiting
    /// verification: read no more.
    pub(super) fn full(&self) -> bool {
        self.acting >= self.max_acting
            || self.pending >= self.max_pending
            || self.parked >= self.max_acting
    }

    pub(super) fn below_half(&self) -> bool {
        self.acting < self.max_acting.div_ceil(2) && self.pending < self.max_pending.div_ceil(2)
    }
}

/// What verifies Security Event Tokens forwarded onto the risk-signals topic.
pub(super) enum Sets {
    /// No `[[ssf.transmitters]]`.
    Off,
    Ready(Arc<SetMapper>),
    /// The transmitters' keys could not be read at start: why.
    Unreadable(String),
}

/// The reading side of a pipeline: what turns each record read into a job on its user's lane
/// or a dead letter, and decides when reading pauses. It ends with [`Intake::drain`].
pub(super) struct Intake {
    pub(super) core: Arc<Core>,
    pub(super) lanes: Lanes<Box<Job>>,
    pub(super) tasks: TaskTracker,
    pub(super) schemas: Schemas,
    /// Verifies and maps Security Event Tokens forwarded onto the risk-signals topic.
    pub(super) sets: Sets,
    pub(super) kafka: KafkaConfig,
    pub(super) settings: PipelineConfig,
    pub(super) max_pending: usize,
    pub(super) dead_letter_limit: Mutex<DeadLetterLimit>,
}

impl Intake {
    /// Events being acted on and actions awaiting verification, against their bounds.
    pub(super) fn load(&self) -> Load {
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
    pub(super) fn set_paused(&self, pause: bool, load: &Load) {
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
    pub(super) fn follow_guard(&self) {
        let shared = &self.core.shared;
        let halted = shared.guard.is_halted();
        if halted == shared.guard_paused.load(Ordering::SeqCst) {
            return;
        }
        shared.guard_paused.store(halted, Ordering::SeqCst);
        // Every worker of the fleet shows the halt, not only the one whose event tripped it.
        let reason = halted.then(|| shared.guard.halt_reason());
        shared
            .readiness
            .set_fault(crate::admin::GUARD_FAULT, reason);
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

    /// Registers a received event and sends it on: to its user's lane, or to the dead-letter
    /// topic.
    pub(super) async fn accept(&self, m: &BorrowedMessage<'_>) {
        let first = self
            .core
            .shared
            .awaiting_first()
            .get_mut(m.topic())
            .is_some_and(|partitions| partitions.remove(&m.partition()));
        if first {
            check_resume_gap(
                self.core.consumer.clone(),
                (m.topic().to_string(), m.partition()),
                m.offset(),
            );
        }
        if self.core.shared.dead_letter_stop.load(Ordering::SeqCst) {
            // Read while the partitions were being paused. Never registered, so its offset is
            // never stored: it is read again after the restart.
            return;
        }
        let received = self.core.clock.now_datetime();
        let kind = if m.topic() == self.kafka.topics.terminations {
            EventKind::Termination
        } else {
            EventKind::RiskSignal
        };
        let decoded = match m.payload() {
            Some(bytes) if kind == EventKind::RiskSignal && set::looks_like_jws(bytes) => {
                self.decode_set(bytes).await
            }
            payload => self
                .schemas
                .decode(kind, payload, self.settings.max_event_bytes),
        };
        // A SET whose events are all ignored is no sign of a broken producer.
        let invalid = decoded
            .as_ref()
            .is_err_and(|r| r.reason != RejectReason::IgnoredSet);
        let admitted = self
            .dead_letter_limit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(invalid);
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
                let partition = self.core.shared.partition_work(m.topic(), m.partition());
                // Boxed: the lane's task and the event's future each hold a pointer, not the
                // job itself twice (at 10,000 in flight, about 9 MiB).
                self.lanes.submit(
                    key,
                    Box::new(Job {
                        event,
                        message,
                        ticket,
                        partition,
                        received,
                        trace,
                        span,
                    }),
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

    /// A Security Event Token forwarded as it is: verified and mapped as the push endpoint
    /// does, then checked against the risk-signal schema like any risk signal. One record is
    /// one event with one outcome, so the SET must map to exactly one risk signal. The replay
    /// check is the push endpoint's: here a redelivered record is the normal at-least-once
    /// case, and a risk signal is acted on idempotently.
    async fn decode_set(&self, bytes: &[u8]) -> Result<Event, Rejection> {
        let invalid = |detail: String| Rejection::new(RejectReason::InvalidSet, detail);
        let sets = match &self.sets {
            Sets::Ready(sets) => sets,
            Sets::Off => {
                return Err(invalid(
                    "a Security Event Token, and no [[ssf.transmitters]] are configured to verify it"
                        .into(),
                ));
            }
            Sets::Unreadable(why) => {
                return Err(invalid(format!(
                    "a Security Event Token, and the transmitters' keys could not be read at start ({why}); replay it after a restart that reads them"
                )));
            }
        };
        let limit = set::MAX_SET_BYTES.min(self.settings.max_event_bytes);
        if bytes.len() > limit {
            return Err(Rejection::new(
                RejectReason::Oversized,
                format!("a SET of {} bytes; the limit is {limit}", bytes.len()),
            ));
        }
        // looks_like_jws checked that every byte is ASCII.
        let token = String::from_utf8_lossy(bytes);
        let (verified, mut signals) = sets.map(&token).await.map_err(|e| invalid(e.to_string()))?;
        match signals.len() {
            0 => {
                let kinds: Vec<&str> = verified
                    .events
                    .keys()
                    .map(|k| k.rsplit('/').next().unwrap_or(k))
                    .collect();
                Err(Rejection::new(
                    RejectReason::IgnoredSet,
                    format!(
                        "the SET's events ({}) write no risk signal under the ssf.events rules",
                        kinds.join(", ")
                    ),
                ))
            }
            1 => {
                let signal = signals.pop().map(|s| s.record).unwrap_or_default();
                let record = serde_json::to_vec(&signal).unwrap_or_default();
                self.schemas
                    .decode(EventKind::RiskSignal, Some(&record), usize::MAX)
            }
            n => Err(invalid(format!(
                "the SET maps to {n} risk signals; a record carries one event (push such SETs to ssf-receiver)"
            ))),
        }
    }

    /// The dead-letter limit tripped at `m`: stop reading for good, hold `m`'s offset (it is
    /// never registered), and say why, once. Events already in flight finish normally.
    pub(super) fn stop_reading_on_dead_letter_flood(&self, m: &BorrowedMessage<'_>) {
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
}
