//! `reverted` outcomes: what the drift watch ([`crate::verify::drift`]) reports, published for
//! the SOC, and, with `policy.reassert`, acted on once more.
//!
//! A reverted change is an alarm about an event that already finished (its offset may be long
//! committed), so its outcome is published on its own, keyed by the user like every outcome. The
//! repeat is not sent from here: an input event of offboarder's own (header
//! [`REASSERT_HEADER`]) is published to the original topic, so that it goes through the policy,
//! the blast-radius guard (a mass re-enable by an IdP trips it like a mass termination would),
//! the user's order, verification and outcomes like any event. Its own change is watched again,
//! but not repeated again: one repeat per undone change, so that offboarder and an IdP cannot
//! toggle a user forever.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::mpsc;

use offboarder_base::clock::rfc3339;

use super::process::Core;
use crate::guard::memory::Position;
use crate::outcome::{self, Action, Outcome, Status, VerificationEvidence};
use crate::verify::drift::Drift;

/// The header of an input event that repeats an undone change; its value is the audit event
/// that showed the undoing.
pub const REASSERT_HEADER: &str = "offboarder-reasserted";

/// Publishes a `reverted` outcome for each report, until the run stops or the verifier goes.
pub(super) async fn publish_reverted(core: Arc<Core>, mut drifts: mpsc::Receiver<Drift>) {
    loop {
        let drift = tokio::select! {
            _ = core.handle.stop.cancelled() => return,
            drift = drifts.recv() => match drift {
                Some(drift) => drift,
                None => return,
            },
        };
        report(&core, drift).await;
    }
}

async fn report(core: &Arc<Core>, drift: Drift) {
    let original = &drift.watched.outcome;
    let at = time::OffsetDateTime::from_unix_timestamp(i64::try_from(drift.at).unwrap_or(0)).ok();
    let when = at.map(rfc3339).unwrap_or_else(|| drift.at.to_string());
    let undone = match original.action {
        Action::Quarantine => format!(
            "taken out of {} by {:?} at {when}",
            original.group.as_deref().unwrap_or("the quarantine group"),
            drift.actor
        ),
        _ => format!("re-enabled by {:?} at {when}", drift.actor),
    };
    if original.action == Action::Quarantine
        && let (Some(group), Some(user_id)) = (&original.group, &original.scim_user_id)
    {
        // The user is out of the group: the next signal for them must act, not be skipped.
        let at = Position {
            topic: original.source.topic.clone(),
            partition: original.source.partition,
            offset: original.source.offset,
        };
        core.executor.forget_quarantine(group, user_id, &at).await;
    }
    let reassert = core.policy.config().reassert && drift.watched.may_reassert;
    let mut reason = format!(
        "offboarder's verified {} of this user was undone: {undone} (audit event {})",
        original.action.as_str(),
        drift.audit_event_id
    );
    if reassert {
        reason.push_str("; policy.reassert: acting once more");
    } else if core.policy.config().reassert {
        reason.push_str("; already a repeat of an undone change: not repeated again");
    }
    let outcome = Outcome {
        outcome_id: outcome::new_outcome_id(),
        status: Status::Reverted,
        reason: Some(reason),
        error: None,
        verification: Some(VerificationEvidence {
            method: "audit",
            audit_event_id: Some(drift.audit_event_id.clone()),
            audit_timestamp: at,
            evidence: drift.evidence.clone(),
        }),
        ..original.clone()
    };
    let traceparent = format!(
        "00-{}-{:016x}-01",
        outcome.trace_id,
        rand::random::<u64>().max(1)
    );
    if !core.publish(&outcome, &traceparent).await {
        return;
    }
    if reassert {
        repeat(core, &outcome, &drift).await;
    }
}

/// Publishes the input event that repeats the undone change.
async fn repeat(core: &Core, reverted: &Outcome, drift: &Drift) {
    let event_id = format!("{}.reassert", reverted.source_event_id);
    let mut event = json!({
        "event_id": event_id,
        "occurred_at": rfc3339(core.clock.now_datetime()),
        "user": {"user_name": reverted.user_name},
        "source": "offboarder:reassert",
        "reason": format!(
            "{} undone by {:?} (audit event {}): repeated once (policy.reassert)",
            reverted.action.as_str(),
            drift.actor,
            drift.audit_event_id
        ),
    });
    if reverted.action == Action::Quarantine {
        event["risk_score"] = json!(100);
        event["severity"] = json!("critical");
    }
    let Ok(value) = serde_json::to_vec(&event) else {
        return;
    };
    let header = (REASSERT_HEADER, drift.audit_event_id.as_str());
    match core
        .shared
        .guard
        .publish_input(&reverted.source.topic, &reverted.user_name, &value, header)
        .await
    {
        Ok(()) => tracing::info!(
            user = reverted.user_name,
            action = reverted.action.as_str(),
            event_id,
            "undone change repeated: published as an input event"
        ),
        Err(e) => tracing::error!(
            error = %e,
            user = reverted.user_name,
            "an undone change could not be repeated; the reverted outcome stands, act by hand (offboarder act)"
        ),
    }
}
