//! A termination's place in the HR lifecycle, decided before the guard, and recorded after
//! the action: scheduled for later, due now, acting at once, or rescinded.
//!
//! The fleet keeps each user's latest termination in the state topic
//! ([`crate::guard::schedule`]). A decision that rests on what is *not* in this worker's view
//! reads that topic to its end first: an entry written a moment ago by the worker that held the
//! partition before (a schedule, a cancellation) must be seen, or a rescind could miss the
//! termination it withdraws and let it fire. The hot path does not: an immediate or a
//! scheduled termination writes the user's entry whatever was there. While the state topic
//! cannot be read or written, the event waits with its offset held, as a destructive action
//! waits while the guard cannot decide.
//!
//! A rescind withdraws the user's termination: what is scheduled is cancelled (nothing sent),
//! and what offboarder did is undone, but only a deactivation offboarder itself sent (the
//! entry's [`Deed`]), of a user who was not already inactive before it, and only with
//! `policy.allow_reactivation`. Everything else is said in the outcome's `reason`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use offboarder_base::clock::rfc3339;

use super::executor::Report;
use super::process::{Core, Job};
use super::publish::header_text;
use crate::event::Event;
use crate::guard::schedule::{self, Deed, State, epoch_ms};
use crate::guard::{Guard, GuardError};
use crate::outcome::{Action, Status};
use crate::policy::{Decision, TerminationAction};

/// A termination in the future by less than this acts at once.
const SCHEDULE_SLACK: time::Duration = time::Duration::seconds(1);
/// A termination due longer ago than this says so in its outcome ("effective_at was in the
/// past"), so that a backdated date is visible, not silently taken as now.
const BACKDATED: time::Duration = time::Duration::minutes(1);
/// Between tries to read or write the state topic while it cannot be.
const STATE_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// What the lifecycle settled for an event that goes on to act.
#[derive(Default)]
pub(super) struct Plan {
    /// Said in the outcome: scheduled and now due, backdated, rescinded.
    pub(super) note: Option<String>,
    /// The `effective_at` of a scheduled termination that came due.
    pub(super) effective: Option<time::OffsetDateTime>,
    /// The user's entry, written once the action was sent: acted (with its deed) for a
    /// termination, reactivated for a rescind. Boxed: a plan lives in every waiting
    /// event's future, and most have no entry.
    pub(super) entry: Option<Box<schedule::Termination>>,
    /// A rescind that undoes offboarder's deactivation: the SCIM id it deactivated.
    pub(super) reactivate: Option<String>,
}

/// How a rescind ends without acting.
struct Ended {
    status: Status,
    action: Action,
    reason: String,
    effective: Option<time::OffsetDateTime>,
}

impl Core {
    /// Settles a termination's place in the lifecycle. `None`: the event finished here
    /// (scheduled, cancelled, skipped) or the worker is stopping.
    pub(super) async fn plan_lifecycle(
        self: &Arc<Self>,
        job: Box<Job>,
        decision: &Decision,
    ) -> Option<(Box<Job>, Plan)> {
        let Event::Termination(t) = &job.event else {
            return Some((job, Plan::default()));
        };
        if !matches!(
            decision,
            Decision::Deactivate | Decision::Delete | Decision::Reactivate
        ) {
            return Some((job, Plan::default()));
        }
        let guard = self.shared.guard.clone();
        let key = schedule::key(&t.user.user_name);
        let mut current = guard.schedule().get(&key);
        let now = self.calendar.now();
        if *decision == Decision::Reactivate {
            // What to cancel or undo may have been written a moment ago by the worker that
            // held this partition before: it must be seen.
            if !self.read_state_to_end(&job).await {
                return None;
            }
            let current = guard.schedule().get(&key);
            return self.plan_rescind(job, current, &guard).await;
        }
        let effective = t.effective_at;
        // The event id of a termination published again because it came due.
        if let Some(fired) = header_text(&job.message, schedule::SCHEDULED_HEADER) {
            let position = job.ticket.position();
            let acts = |e: &schedule::Termination| {
                e.event_id == fired
                    && (e.state == State::Pending
                        || (e.state == State::Acted
                            && e.acted_by.as_ref().is_none_or(|p| *p == position)))
            };
            // A skip must not come from a view that lags the state topic (a missed
            // termination); acting needs no such read.
            if !current.as_ref().is_some_and(acts) {
                if !self.read_state_to_end(&job).await {
                    return None;
                }
                current = guard.schedule().get(&key);
            }
            return match current {
                Some(entry) if acts(&entry) => {
                    let note = format!(
                        "scheduled for {}; acted when it came due",
                        entry.effective_at
                    );
                    Some((
                        job,
                        Plan {
                            note: Some(note),
                            effective,
                            entry: Some(Box::new(entry)),
                            reactivate: None,
                        },
                    ))
                }
                other => {
                    let reason = match other {
                        Some(e) if e.event_id == fired && e.state == State::Cancelled => {
                            "rescinded before it came due: nothing was sent".to_string()
                        }
                        Some(e) if e.event_id == fired && e.state == State::Acted => {
                            "already acted when it came due: published twice (two owners of \
                             its partition around a rebalance), it acts once"
                                .to_string()
                        }
                        _ => "no longer scheduled: a later HR event for this user replaced it"
                            .to_string(),
                    };
                    let mut outcome = job.outcome(decision, Status::Skipped);
                    outcome.reason = Some(reason);
                    outcome.timestamps.effective = effective;
                    self.send_outcome(job, outcome, None).await;
                    None
                }
            };
        }
        let (topic, partition) = (job.ticket.topic.clone(), job.ticket.partition);
        let carried = current.and_then(|e| e.deed);
        match effective {
            Some(at) if at > now + SCHEDULE_SLACK => {
                let mut entry =
                    schedule::Termination::new(t, at, (&topic, partition), State::Pending, now);
                // What offboarder did before stays known: a rescind may still undo it.
                entry.deed = carried;
                let write = || guard.write_schedule(entry.clone());
                if !self.with_state_topic(&job, write, "write").await {
                    return None;
                }
                let mut outcome = job.outcome(decision, Status::Scheduled);
                outcome.reason = Some(format!(
                    "effective_at is in the future: {} at {}",
                    decision.action().as_str(),
                    entry.effective_at
                ));
                outcome.timestamps.effective = Some(at);
                tracing::info!(
                    source_event_id = outcome.source_event_id,
                    user = outcome.user_name,
                    effective_at = entry.effective_at,
                    "termination scheduled"
                );
                self.send_outcome(job, outcome, None).await;
                None
            }
            _ => {
                let note = effective.filter(|at| *at + BACKDATED < now).map(|at| {
                    format!(
                        "effective_at was in the past ({}): acted at once",
                        rfc3339(at)
                    )
                });
                let mut entry = schedule::Termination::new(
                    t,
                    effective.unwrap_or(now),
                    (&topic, partition),
                    State::Acted,
                    now,
                );
                entry.deed = carried;
                Some((
                    job,
                    Plan {
                        note,
                        effective: None,
                        entry: Some(Box::new(entry)),
                        reactivate: None,
                    },
                ))
            }
        }
    }

    /// A rescind: cancels what is scheduled, and undoes offboarder's own deactivation when
    /// the policy allows it (a [`Plan`] to reactivate); otherwise the event ends here.
    async fn plan_rescind(
        self: &Arc<Self>,
        job: Box<Job>,
        current: Option<schedule::Termination>,
        guard: &Arc<Guard>,
    ) -> Option<(Box<Job>, Plan)> {
        let now = self.calendar.now();
        let termination_action = match self.policy.config().on_termination {
            TerminationAction::Deactivate => Action::Deactivate,
            TerminationAction::Delete => Action::Delete,
        };
        let mut cancelled = None;
        if let Some(entry) = current.as_ref().filter(|e| e.state == State::Pending) {
            let write =
                || guard.write_schedule(entry.clone().with_state(State::Cancelled, epoch_ms(now)));
            if !self.with_state_topic(&job, write, "write").await {
                return None;
            }
            tracing::info!(
                source_event_id = job.event.event_id(),
                user = job.event.user_name(),
                cancelled_event_id = entry.event_id,
                effective_at = entry.effective_at,
                "scheduled termination cancelled by a rescind"
            );
            cancelled = Some(format!(
                "rescinded before its effective_at ({}): the termination of event {} is cancelled and nothing was sent",
                entry.effective_at, entry.event_id
            ));
        }
        let effective = current.as_ref().and_then(|e| {
            time::OffsetDateTime::parse(
                &e.effective_at,
                &time::format_description::well_known::Rfc3339,
            )
            .ok()
        });
        let deed = current.as_ref().and_then(|e| e.deed.clone());
        let refusal = match (&current, &deed) {
            (Some(entry), Some(d)) => self.refuses_reactivation(entry, d),
            (None, _) => Some(
                "offboarder has no termination of this user on record (within \
                 policy.rescind_window): nothing to cancel or undo, and a user deactivated by \
                 someone else is never reactivated"
                    .to_string(),
            ),
            (Some(entry), None) => match (entry.state, &cancelled) {
                (_, Some(_)) => None,
                (State::Cancelled, None) => Some(format!(
                    "the termination of event {} was already cancelled: nothing to undo",
                    entry.event_id
                )),
                (State::Reactivated, None) => Some(format!(
                    "the user was already reactivated after the termination of event {} was rescinded",
                    entry.event_id
                )),
                _ => Some(format!(
                    "the termination of event {} acted without a record of what was sent (dry run): nothing to undo",
                    entry.event_id
                )),
            },
        };
        if let (None, Some(deed), Some(entry)) = (&refusal, deed, current) {
            let mut note = format!(
                "rescinded after offboarder deactivated the user at {} (event {}): reactivated",
                deed.at, entry.event_id
            );
            if let Some(c) = cancelled {
                note = format!("{c}; {note}");
            }
            return Some((
                job,
                Plan {
                    note: Some(note),
                    effective: None,
                    entry: Some(Box::new(entry)),
                    reactivate: Some(deed.user_id),
                },
            ));
        }
        let ended = match cancelled {
            Some(cancelled) => Ended {
                status: Status::Cancelled,
                action: termination_action,
                reason: match refusal {
                    Some(r) => format!("{cancelled}; an earlier deactivation stays: {r}"),
                    None => cancelled,
                },
                effective,
            },
            None => Ended {
                status: Status::Skipped,
                action: Action::Reactivate,
                reason: refusal.unwrap_or_else(|| "nothing to cancel or undo".into()),
                effective: None,
            },
        };
        let decision = Decision::Skip {
            action: ended.action,
            reason: String::new(),
        };
        let mut outcome = job.outcome(&decision, ended.status);
        tracing::info!(
            source_event_id = outcome.source_event_id,
            user = outcome.user_name,
            status = ended.status.as_str(),
            reason = ended.reason,
            "rescind"
        );
        outcome.reason = Some(ended.reason);
        outcome.timestamps.effective = ended.effective;
        self.send_outcome(job, outcome, None).await;
        None
    }

    /// Why offboarder's recorded `deed` on the user of `entry` may not be undone; `None` when
    /// it may.
    fn refuses_reactivation(&self, entry: &schedule::Termination, deed: &Deed) -> Option<String> {
        let by = format!("at {} (event {})", deed.at, entry.event_id);
        if deed.deleted {
            Some(format!(
                "offboarder deleted this user {by}: a delete cannot be undone"
            ))
        } else if deed.was_active == Some(false) {
            Some(format!(
                "the user was already inactive when offboarder deactivated them {by}: someone \
                 else disabled them, and offboarder does not enable them"
            ))
        } else if !self.policy.config().allow_reactivation {
            Some(format!(
                "offboarder deactivated this user {by}, and policy.allow_reactivation is off: \
                 they stay deactivated"
            ))
        } else {
            None
        }
    }

    /// Records what an action did in the user's entry: a termination that was sent becomes
    /// [`State::Acted`] with its [`Deed`] (or without one, in a dry run), a reactivation
    /// [`State::Reactivated`]. A failed action changes nothing. A failed write is only
    /// logged: the event's outcome stands, and the entry says less than it could (a rescind
    /// then reactivates nothing, the safe side).
    pub(super) async fn record_lifecycle(
        &self,
        job: &Job,
        decision: &Decision,
        entry: schedule::Termination,
        report: &Report,
    ) {
        let now = self.calendar.now();
        let at = report.acted_at.unwrap_or(now);
        let entry = match (decision, report.status) {
            (Decision::Reactivate, Status::Applied) => {
                let mut entry = entry.with_state(State::Reactivated, epoch_ms(now));
                entry.deed = None;
                entry
            }
            (Decision::Deactivate | Decision::Delete, Status::Applied) => {
                let Some(user_id) = report.scim_user_id.clone() else {
                    return;
                };
                // The same user deactivated before by offboarder: what they were before that
                // first deactivation is what counts, not the inactive state it left.
                let earlier = entry
                    .deed
                    .as_ref()
                    .filter(|d| d.user_id == user_id && !d.deleted)
                    .map(|d| d.was_active);
                let mut was_active = earlier.unwrap_or(report.user_was_active);
                // An earlier delivery of this event was admitted and may have deactivated the
                // user before a crash: inactive now says nothing about before.
                if was_active == Some(false)
                    && earlier.is_none()
                    && self.shared.guard.admissions_of(&job.guard_key()) > 1
                {
                    was_active = None;
                }
                let mut entry = entry.with_state(State::Acted, epoch_ms(now));
                entry.acted_by = Some(job.ticket.position());
                entry.deed = Some(Deed {
                    user_id,
                    deleted: *decision == Decision::Delete,
                    was_active,
                    at: rfc3339(at),
                });
                entry
            }
            (Decision::Deactivate | Decision::Delete, Status::DryRun) => {
                let mut entry = entry.with_state(State::Acted, epoch_ms(now));
                entry.acted_by = Some(job.ticket.position());
                entry
            }
            _ => return,
        };
        if let Err(e) = self.shared.guard.write_schedule(entry).await {
            tracing::warn!(error = %e, user = job.event.user_name(), "the user's termination record was not updated; a rescind of it may not find what offboarder did");
        }
    }

    /// Reads the state topic to its current end, retrying while it cannot; `false` when the
    /// worker stops or the event's partition is revoked first. Only where a decision rests on
    /// what is *not* in this worker's view (a rescind, a fired termination whose entry does not
    /// match): immediate and scheduled terminations write the user's entry whatever was there,
    /// and the state topic's order makes the latest write win.
    async fn read_state_to_end(&self, job: &Job) -> bool {
        let guard = self.shared.guard.clone();
        self.with_state_topic(job, || guard.read_to_end(), "read")
            .await
    }

    /// Runs `op` on the state topic until it succeeds; `false` when the worker stops or the
    /// event's partition is revoked first (the event is then delivered again).
    async fn with_state_topic<F, Fut>(&self, job: &Job, op: F, what: &str) -> bool
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), GuardError>>,
    {
        loop {
            match op().await {
                Ok(()) => return true,
                Err(e) => {
                    if self.failed.load(Ordering::SeqCst) || job.partition.draining() {
                        return false;
                    }
                    tracing::warn!(error = %e, "cannot {what} the user's termination record; the event waits and retries");
                    tokio::time::sleep(STATE_RETRY).await;
                }
            }
        }
    }
}
