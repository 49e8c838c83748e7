//! Drift watch: a verified change that someone else undoes.
//!
//! The most common complaint about offboarding is a leaver who stays active: an IdP that still
//! provisions the user (Entra ID, Okta) sets `active=true` again on its next cycle, or an
//! administrator takes a quarantined user out of the group. Such a change is audited like ours,
//! under the other client's name. So after a deactivation or a quarantine is verified, the
//! poller keeps watching its path for `verify.drift_watch` in the audit events it reads anyway
//! (no request of its own): a 2xx change of that user or group by an actor that is not this
//! token makes the watch *suspect*, and one read-back decides. If the user reads `active=true`
//! again, or is no longer in the group, the change was undone: a [`Drift`] goes to the pipeline,
//! which publishes a `reverted` outcome naming the actor and time (and, with `policy.reassert`,
//! acts once more). A change that undid nothing (an edit of another attribute) ends the
//! suspicion and the watch goes on.
//!
//! Only once this token's own audit name is known (`verify.audit_user`, or learned from the
//! first audit match) can another actor be told from ours; until then nothing is suspected. A
//! later action of ours on the same user or group (a release, a reactivation) ends the watch.
//! Watches live in the worker's memory: a restart ends them.

use netskope::AuditEvent;

use super::{Check, Poller};
use crate::outcome::Outcome;

/// At most this many changes are watched at once; past it the oldest watch ends first.
pub const MAX_WATCHES: usize = 100_000;

/// What a watch reports with: the applied outcome of the watched change.
#[derive(Debug, Clone)]
pub struct Watched {
    pub outcome: Outcome,
    /// Whether the pipeline may act once more when the change is undone (`policy.reassert`);
    /// not for a change that was itself such a repeat.
    pub may_reassert: bool,
}

/// A watched change that another actor undid.
#[derive(Debug, Clone)]
pub struct Drift {
    pub watched: Watched,
    /// The other actor, as the audit trail names it.
    pub actor: String,
    /// When, by the audit event's timestamp (epoch seconds).
    pub at: u64,
    pub audit_event_id: String,
    /// What read-back saw, in words.
    pub evidence: String,
}

/// One change being watched.
pub(super) struct Watch {
    /// The full request path of the user or group, as the audit trail shows it.
    path: String,
    check: Check,
    /// Audit events timestamped before this (server time) are older than our change.
    after: u64,
    /// When the watch ends, epoch seconds of this host.
    until: u64,
    /// Another actor's change seen and not yet read back: its audit id, actor and time.
    suspect: Option<(String, String, u64)>,
    watched: Watched,
}

impl Poller {
    /// Starts watching a verified change of `path` whose state `check` describes, changed by
    /// us at `after` (server time).
    pub(super) fn watch(&mut self, path: &str, check: &Check, after: u64, watched: Watched) {
        if self.config.drift_watch.is_zero() || !self.mode.uses_audit() {
            return;
        }
        if !matches!(check, Check::UserInactive { .. } | Check::InGroup { .. }) {
            return;
        }
        if self.watches.len() >= MAX_WATCHES {
            self.watches.remove(0);
        }
        self.watches.push(Watch {
            path: path.to_string(),
            check: check.clone(),
            after,
            until: self.clock.now_secs() + self.config.drift_watch.as_secs(),
            suspect: None,
            watched,
        });
    }

    /// A later action of ours described by `check` ends the watches it changes.
    pub(super) fn unwatch_superseded(&mut self, check: &Check) {
        self.watches.retain(|w| !check.supersedes(&w.check));
    }

    /// Whether any change is being watched (the audit trail must then be read every poll).
    pub(super) fn watching(&self) -> bool {
        !self.watches.is_empty()
    }

    /// The earliest audit timestamp a watch still cares about.
    pub(super) fn watched_since(&self) -> Option<u64> {
        self.watches.iter().map(|w| w.after).min()
    }

    /// An audit event read: another actor's 2xx change of a watched path makes that watch
    /// suspect.
    pub(super) fn notice(&mut self, e: &AuditEvent) {
        let Some(ours) = self.actor.as_deref() else {
            return;
        };
        let Some(actor) = e.user.as_deref().filter(|a| *a != ours) else {
            return;
        };
        let Some((method, path)) = self.rest_call(e) else {
            return;
        };
        if !matches!(method, "PATCH" | "PUT" | "DELETE") {
            return;
        }
        for w in &mut self.watches {
            if w.suspect.is_none() && w.path == path && e.timestamp >= w.after {
                w.suspect = Some((e.id.clone(), actor.to_string(), e.timestamp));
            }
        }
    }

    /// Ends the watches whose time is up, and reads back the suspect ones: an undone change is
    /// reported and no longer watched; a change that undid nothing clears the suspicion.
    pub(super) async fn check_watches(&mut self, now: u64) {
        self.watches.retain(|w| w.until > now);
        let mut reverted = Vec::new();
        for (index, w) in self.watches.iter_mut().enumerate() {
            let Some((id, actor, at)) = w.suspect.clone() else {
                continue;
            };
            let seen = match &w.check {
                Check::UserInactive { user_id } => {
                    self.client.get_user(user_id).await.map(|user| {
                        let active = user.and_then(|u| u.active);
                        (active == Some(true)).then(|| format!("user {user_id} reads active=true"))
                    })
                }
                Check::InGroup { group_id, user_id } => {
                    self.client.group_members(group_id).await.map(|members| {
                        (!members.contains(user_id)).then(|| {
                            format!("user {user_id} is no longer a member of group {group_id}")
                        })
                    })
                }
                _ => Ok(None),
            };
            match seen {
                Ok(Some(evidence)) => reverted.push((index, id, actor, at, evidence)),
                Ok(None) => w.suspect = None,
                Err(e) if e.is_transient() => {
                    tracing::debug!(error = %e, "drift watch: read-back failed; trying again at the next poll");
                }
                Err(e) => {
                    tracing::warn!(error = %e, path = w.path, "drift watch: read-back refused; the watch goes on");
                    w.suspect = None;
                }
            }
        }
        for (index, audit_event_id, actor, at, evidence) in reverted.into_iter().rev() {
            let w = self.watches.swap_remove(index);
            let drift = Drift {
                watched: w.watched,
                actor,
                at,
                audit_event_id,
                evidence,
            };
            tracing::warn!(
                user = drift.watched.outcome.user_name,
                action = drift.watched.outcome.action.as_str(),
                actor = drift.actor,
                audit_event_id = drift.audit_event_id,
                "drift: another actor undid a verified change"
            );
            if self.drifts.try_send(drift).is_err() {
                tracing::warn!("drift watch: the pipeline is not taking reports; one was dropped");
            }
        }
    }
}
