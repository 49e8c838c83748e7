//! Carries out a [`Decision`] against Netskope and reports what happened.
//!
//! Errors are sorted by their class. A transient fault (429, 5xx, timeout) is waited out with
//! jittered exponential backoff for up to `transient_retry_for`, while other users' lanes keep
//! moving. A permanent one (unknown user, rejected request) ends the event as `failed`. A
//! configuration fault (401, 403) is returned as an error: no event can succeed, so the worker
//! stops instead of failing every event.
//!
//! Every request sent is safe to repeat (invariant 2), which is what makes redelivery after a
//! crash harmless: PATCH active=false, a membership add or remove, a DELETE whose 404 is success.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::json;
use time::OffsetDateTime;
use tokio::time::Instant;

use netskope::scim::{GROUP_SCHEMA, active_patch, add_members_patch};
use netskope::{AuditWindow, Demand, ErrorClass, NetskopeClient, NetskopeError, Op, Sent, UserRef};
use offboarder_base::clock::WallClock;

use super::batcher::{Batchers, Change, GroupBatcher};
use super::config::PipelineConfig;
use crate::guard::Guard;
use crate::guard::memory::{Position, QuarantineMemory};
use crate::outcome::{OutcomeError, RequestDescription, Status};
use crate::policy::Decision;
use crate::verify::{Check, Expected, RequestKey, next_request_seq};

/// Backoff between tries of one event; each try already includes the client's own retries.
const RETRY_MIN_DELAY: Duration = Duration::from_secs(2);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(120);

/// The outcome's `error` for a client error: the edge where the client's error type meets the
/// outcome record, so that neither depends on the other.
pub fn outcome_error(e: &NetskopeError) -> OutcomeError {
    OutcomeError {
        kind: e.kind().to_string(),
        http_status: e.http_status(),
        message: e.to_string(),
    }
}

/// What the executor did for one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub status: Status,
    pub scim_user_id: Option<String>,
    /// Whether the user was active before this action, when the lookup that found them said
    /// so (a fresh one, not the cache).
    pub user_was_active: Option<bool>,
    pub reason: Option<String>,
    pub error: Option<NetskopeError>,
    pub request: Option<RequestDescription>,
    pub attempts: u32,
    pub acted_at: Option<OffsetDateTime>,
    /// For an applied action: what would show it took effect.
    pub expected: Option<Expected>,
    /// Transient faults outlasted `transient_retry_for`: the event is `failed`, and its bytes
    /// go to the dead-letter topic so that an operator can replay it.
    pub retries_exhausted: bool,
}

impl Report {
    /// A delete that found no user, for an event whose delete was admitted before (an earlier
    /// delivery, cut short by a crash or a rebalance after it acted): the user is gone, which
    /// is what the event asked for, so it is `applied`, not `failed`. A delete of a user that
    /// never existed has no earlier admission and stays `failed`.
    pub fn deleted_by_an_earlier_delivery(self) -> Self {
        let not_found = matches!(self.error, Some(NetskopeError::NotFound { .. }));
        if self.status != Status::Failed || !not_found {
            return self;
        }
        Self {
            status: Status::Applied,
            reason: Some(
                "the user no longer exists: an earlier delivery of this event was admitted to \
                 delete it (the guard's log holds that admission)"
                    .into(),
            ),
            error: None,
            ..self
        }
    }

    fn skipped(reason: String) -> Self {
        Self {
            status: Status::Skipped,
            scim_user_id: None,
            user_was_active: None,
            reason: Some(reason),
            error: None,
            request: None,
            attempts: 0,
            acted_at: None,
            expected: None,
            retries_exhausted: false,
        }
    }
}

/// The result of one try.
struct Done {
    status: Status,
    user: Option<UserRef>,
    reason: Option<String>,
    request: Option<RequestDescription>,
    expected: Option<Expected>,
}

pub struct Executor {
    client: Arc<NetskopeClient>,
    dry_run: bool,
    retry_for: Duration,
    batch_window: Duration,
    batch_max_members: usize,
    batchers: Batchers,
    /// The fleet's shared state: its quarantine memory (a repeat signal for a user the fleet
    /// quarantined within `pipeline.quarantine_memory` sends no second PATCH).
    fleet: Arc<Guard>,
    clock: WallClock,
}

impl Executor {
    pub fn new(client: Arc<NetskopeClient>, dry_run: bool, config: &PipelineConfig) -> Self {
        Self {
            client,
            dry_run,
            retry_for: config.transient_retry_for,
            batch_window: config.batch_window,
            batch_max_members: config.batch_max_members,
            batchers: Batchers::default(),
            fleet: {
                let guard = Guard::default();
                guard.set_quarantine_memory(config.quarantine_memory);
                Arc::new(guard)
            },
            clock: WallClock::new(),
        }
    }

    /// Shares the quarantine memory with the fleet through `guard`'s state topic, instead of
    /// keeping it in this process.
    pub fn with_fleet(mut self, guard: Arc<Guard>, config: &PipelineConfig) -> Self {
        guard.set_quarantine_memory(config.quarantine_memory);
        self.fleet = guard;
        self
    }

    /// Whether actions are only described (`policy.dry_run`), never sent.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Carries out `decision` for `user_name`, for the event read at `at`. `Err` only for a
    /// configuration fault.
    pub async fn execute(
        &self,
        user_name: &str,
        decision: &Decision,
        at: &Position,
    ) -> Result<Report, NetskopeError> {
        self.run(user_name, None, decision, at, None).await
    }

    /// [`Executor::execute`] for an event whose resolve was announced early with `demand`
    /// (see [`Executor::expect_resolve`]); the count drops once the user is resolved.
    pub async fn execute_with_demand(
        &self,
        user_name: &str,
        decision: &Decision,
        at: &Position,
        demand: Option<Demand>,
    ) -> Result<Report, NetskopeError> {
        self.run(user_name, None, decision, at, demand).await
    }

    /// Counts, while the returned value lives, one user resolve that `decision` will need:
    /// the client lists the directory instead of resolving names one by one when enough of
    /// them wait. `None` for a decision that names no user to resolve.
    pub fn expect_resolve(&self, decision: &Decision) -> Option<Demand> {
        match decision {
            Decision::Skip { .. } | Decision::Reactivate => None,
            Decision::Deactivate
            | Decision::Delete
            | Decision::Quarantine { .. }
            | Decision::Release { .. } => Some(self.client.expect_resolve()),
        }
    }

    /// Reactivates the user with SCIM id `user_id` (named `user_name`): the id offboarder
    /// deactivated, not whatever the name resolves to now, so that a new account that took
    /// the name is never touched. `Err` only for a configuration fault.
    pub async fn reactivate(
        &self,
        user_name: &str,
        user_id: &str,
        at: &Position,
    ) -> Result<Report, NetskopeError> {
        self.run(user_name, Some(user_id), &Decision::Reactivate, at, None)
            .await
    }

    async fn run(
        &self,
        user_name: &str,
        known_id: Option<&str>,
        decision: &Decision,
        at: &Position,
        mut demand: Option<Demand>,
    ) -> Result<Report, NetskopeError> {
        if let Decision::Skip { reason, .. } = decision {
            return Ok(Report::skipped(reason.clone()));
        }
        let deadline = Instant::now() + self.retry_for;
        let mut delays = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(RETRY_MIN_DELAY)
            .with_max_delay(RETRY_MAX_DELAY)
            .without_max_times()
            .build();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match self
                .try_once(user_name, known_id, decision, at, &mut demand)
                .await
            {
                Ok(done) => {
                    let (scim_user_id, user_was_active) =
                        done.user.map_or((None, None), |u| (Some(u.id), u.active));
                    return Ok(Report {
                        status: done.status,
                        scim_user_id,
                        user_was_active,
                        reason: done.reason,
                        error: None,
                        request: done.request,
                        attempts,
                        acted_at: Some(self.clock.now_datetime()),
                        expected: done.expected,
                        retries_exhausted: false,
                    });
                }
                Err(e) => e,
            };
            match error.class() {
                ErrorClass::Config => return Err(error),
                ErrorClass::Transient => {
                    let delay = delays.next().unwrap_or(RETRY_MAX_DELAY);
                    if Instant::now() + delay < deadline {
                        tracing::warn!(
                            user = user_name,
                            attempts,
                            retry_in = ?delay,
                            error = %error,
                            "transient fault; the event keeps its offset and will be retried"
                        );
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                }
                ErrorClass::Permanent => {}
            }
            let exhausted = error.is_transient();
            return Ok(Report {
                status: Status::Failed,
                scim_user_id: None,
                user_was_active: None,
                reason: exhausted.then(|| {
                    format!(
                        "transient faults lasted longer than pipeline.transient_retry_for ({}); the event went to the dead-letter topic for replay",
                        humantime::format_duration(self.retry_for)
                    )
                }),
                error: Some(error),
                request: None,
                attempts,
                acted_at: None,
                expected: None,
                retries_exhausted: exhausted,
            });
        }
    }

    async fn try_once(
        &self,
        user_name: &str,
        known_id: Option<&str>,
        decision: &Decision,
        at: &Position,
        demand: &mut Option<Demand>,
    ) -> Result<Done, NetskopeError> {
        let user = match known_id {
            Some(id) => UserRef {
                id: id.to_string(),
                user_name: user_name.to_string(),
                active: None,
            },
            None => {
                let resolved = self.client.resolve_user(user_name).await;
                // Resolved (or failed): no longer a resolve that a listing would save.
                drop(demand.take());
                resolved?
            }
        };
        let result = self.act(&user, decision, at).await;
        // An id that vanished may be stale (a user deleted and re-created since the cache or
        // the directory mirror learned it): resolve afresh, with a filter, once before calling
        // the user unknown. Not a known id: that user is the one meant, and a new account of
        // the same name is someone else.
        match result {
            Err(NetskopeError::NotFound { .. })
                if !matches!(decision, Decision::Delete) && known_id.is_none() =>
            {
                let fresh = self.client.resolve_user_afresh(user_name).await?;
                if fresh.id == user.id {
                    return result;
                }
                self.act(&fresh, decision, at).await
            }
            other => other,
        }
    }

    async fn act(
        &self,
        user: &UserRef,
        decision: &Decision,
        at: &Position,
    ) -> Result<Done, NetskopeError> {
        let user_path = format!("/Users/{}", user.id);
        let done = |status, request: RequestDescription, check, sent: Option<Sent>| Done {
            status,
            user: Some(user.clone()),
            reason: None,
            expected: (status == Status::Applied)
                .then(|| self.expected(&request, 0, check, sent.and_then(|s| s.server_window))),
            request: Some(request),
        };
        let user_id = user.id.clone();
        match decision {
            Decision::Deactivate => {
                let request = RequestDescription {
                    method: "PATCH",
                    path: user_path,
                    body: Some(active_patch(false)),
                };
                let check = Check::UserInactive { user_id };
                if self.dry_run {
                    return Ok(done(Status::DryRun, request, check, None));
                }
                let sent = self.client.deactivate(&user.id).await?;
                Ok(done(Status::Applied, request, check, Some(sent)))
            }
            Decision::Reactivate => {
                let request = RequestDescription {
                    method: "PATCH",
                    path: user_path,
                    body: Some(active_patch(true)),
                };
                let check = Check::UserActive { user_id };
                if self.dry_run {
                    return Ok(done(Status::DryRun, request, check, None));
                }
                let sent = self.client.reactivate(&user.id).await?;
                Ok(done(Status::Applied, request, check, Some(sent)))
            }
            Decision::Delete => {
                let request = RequestDescription {
                    method: "DELETE",
                    path: user_path,
                    body: None,
                };
                let check = Check::UserGone { user_id };
                if self.dry_run {
                    return Ok(done(Status::DryRun, request, check, None));
                }
                let sent = self.client.delete_user(&user.id).await?;
                self.client.forget_user(&user.user_name);
                Ok(done(Status::Applied, request, check, Some(sent)))
            }
            Decision::Quarantine { group } => self.membership(user, group, Change::Add, at).await,
            Decision::Release { group } => self.membership(user, group, Change::Remove, at).await,
            Decision::Skip { reason, .. } => Ok(Done {
                status: Status::Skipped,
                user: None,
                reason: Some(reason.clone()),
                request: None,
                expected: None,
            }),
        }
    }

    /// What verifies `request` (a path below the SCIM base): its audit event shows the full
    /// path, within `server_window` when the answer said when. `seq` 0 asks for a fresh
    /// request number.
    fn expected(
        &self,
        request: &RequestDescription,
        seq: u64,
        check: Check,
        server_window: Option<AuditWindow>,
    ) -> Expected {
        let base = self
            .client
            .endpoints()
            .scim_base
            .path()
            .trim_end_matches('/');
        Expected {
            request: RequestKey {
                method: request.method,
                path: format!("{base}{}", request.path),
                seq: if seq == 0 { next_request_seq() } else { seq },
            },
            check,
            server_window,
        }
    }

    /// Forgets, for the fleet, that `user_id` was quarantined in `group` by the event read at
    /// `at`: read-back found the user outside the group, so the next signal must act instead
    /// of being skipped as a repeat.
    pub async fn forget_quarantine(&self, group: &str, user_id: &str, at: &Position) {
        let key = QuarantineMemory::key(group, user_id);
        if let Err(e) = self.fleet.forget_quarantine(&key, at).await {
            tracing::warn!(
                error = %e,
                "quarantine memory: could not record for the fleet that a quarantine did not hold; a repeat signal for this user may be skipped until pipeline.quarantine_memory passes"
            );
        }
    }

    async fn membership(
        &self,
        user: &UserRef,
        group: &str,
        change: Change,
        at: &Position,
    ) -> Result<Done, NetskopeError> {
        let memory_key = QuarantineMemory::key(group, &user.id);
        if change == Change::Add && self.fleet.remembers_quarantine(&memory_key, at).await {
            return Ok(Done {
                status: Status::Skipped,
                user: Some(user.clone()),
                reason: Some(format!(
                    "already quarantined in {group} by this fleet; no second PATCH"
                )),
                request: None,
                expected: None,
            });
        }
        let ids = std::slice::from_ref(&user.id);
        let body = |group_id: &str| RequestDescription {
            method: "PATCH",
            path: format!("/Groups/{group_id}"),
            body: Some(match change {
                Change::Add => add_members_patch(ids),
                Change::Remove => self.client.remove_members_patch(ids),
            }),
        };
        if self.dry_run {
            let (request, reason) = match self.client.find_group(group).await? {
                Some(group_id) => (body(&group_id), None),
                None if change == Change::Add => (
                    RequestDescription {
                        method: "POST",
                        path: "/Groups".into(),
                        body: Some(json!({"schemas": [GROUP_SCHEMA], "displayName": group})),
                    },
                    Some(format!(
                        "group {group} does not exist: it would be created, then the user added"
                    )),
                ),
                None => return Ok(nothing_to_release(user, group)),
            };
            return Ok(Done {
                status: Status::DryRun,
                user: Some(user.clone()),
                reason,
                request: Some(request),
                expected: None,
            });
        }
        if change == Change::Remove {
            // Before the PATCH, and acknowledged: once this release has finished, no worker of
            // the fleet can skip the user's next quarantine as a repeat.
            self.fleet
                .forget_quarantine(&memory_key, at)
                .await
                .map_err(|e| NetskopeError::Transient {
                    op: Op::PatchMembers,
                    status: None,
                    reason: format!(
                        "the release cannot be recorded in the fleet's quarantine memory: {e}"
                    ),
                    attempts: 1,
                })?;
        }
        let applied = self.batcher(group).submit(change, user.id.clone()).await?;
        let Some(group_id) = applied.group_id else {
            return Ok(nothing_to_release(user, group));
        };
        if change == Change::Add {
            self.fleet.remember_quarantine(&memory_key, at);
        }
        let reason = (applied.batch_size > 1)
            .then(|| format!("sent in one PATCH with {} members", applied.batch_size));
        let request = body(&group_id);
        let user_id = user.id.clone();
        let check = match change {
            Change::Add => Check::InGroup { group_id, user_id },
            Change::Remove => Check::NotInGroup { group_id, user_id },
        };
        Ok(Done {
            status: Status::Applied,
            user: Some(user.clone()),
            reason,
            expected: Some(self.expected(
                &request,
                applied.request_seq,
                check,
                applied.server_window,
            )),
            request: Some(request),
        })
    }

    fn batcher(&self, group: &str) -> GroupBatcher {
        self.batchers.get(group, || {
            GroupBatcher::spawn(
                self.client.clone(),
                group.to_string(),
                self.batch_window,
                self.batch_max_members,
            )
        })
    }
}

/// A release from a group that does not exist: the user is in no such group, so nothing is
/// sent, and no group is created just to remove someone from it.
fn nothing_to_release(user: &UserRef, group: &str) -> Done {
    Done {
        status: Status::Skipped,
        user: Some(user.clone()),
        reason: Some(format!("group {group} does not exist: nothing to release")),
        request: None,
        expected: None,
    }
}
