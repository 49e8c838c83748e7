//! `offboarder act`: an operator's action, published as an ordinary input event.
//!
//! An operator who must cut someone off by hand could use the Netskope console, but that
//! change would bypass the guard, leave no outcome and no verification, and be invisible to
//! the SOC dashboards that read the outcomes topic. So the action is written as the event an
//! HR system or an XDR would have sent, with `source = "operator:<name>"` and the operator's
//! reason, and the worker handles it like any other: policy (protected users stay protected),
//! the blast-radius guard, the user's lane order, verification, one final outcome.
//!
//! The record is keyed by the user name as given: a user's events keep their order only when
//! every producer spells the key alike (see the topics in the operating guide).

use rdkafka::message::OwnedHeaders;
use serde_json::{Value, json};

use super::{ToolError, publish};
use crate::event::{EventKind, Schemas};
use crate::pipeline::config::KafkaConfig;

/// What the operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OperatorAction {
    /// Deactivate the user (a termination, effective now).
    Deactivate,
    /// Put the user in the quarantine group (a critical risk signal).
    Quarantine,
    /// Take the user out of the quarantine group (a cleared risk signal).
    Release,
    /// Withdraw the user's termination (a rescind): cancel it if it has not acted yet, and
    /// reactivate the user if offboarder deactivated them and `policy.allow_reactivation` is on.
    Reactivate,
}

/// The event published: its id, topic, partition and offset.
#[derive(Debug)]
pub struct Published {
    pub event_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The input event for `action`, as an HR system or an XDR would send it.
pub fn event(
    action: OperatorAction,
    user: &str,
    reason: &str,
    operator: &str,
    now: time::OffsetDateTime,
) -> (EventKind, Value) {
    let event_id = format!("operator-{}", uuid::Uuid::new_v4());
    let occurred_at = offboarder_base::clock::rfc3339(now);
    let mut e = json!({
        "event_id": event_id,
        "occurred_at": occurred_at,
        "user": {"user_name": user},
        "source": format!("operator:{operator}"),
        "reason": reason,
    });
    let kind = match action {
        OperatorAction::Deactivate => EventKind::Termination,
        OperatorAction::Quarantine => {
            e["risk_score"] = json!(100);
            e["severity"] = json!("critical");
            EventKind::RiskSignal
        }
        OperatorAction::Release => {
            e["severity"] = json!("critical");
            e["state"] = json!("cleared");
            EventKind::RiskSignal
        }
        OperatorAction::Reactivate => {
            e["rescinded"] = json!(true);
            EventKind::Termination
        }
    };
    (kind, e)
}

/// Checks the event against the input schema (a refused one would only become a dead letter)
/// and publishes it to its input topic.
pub async fn act(
    kafka: &KafkaConfig,
    action: OperatorAction,
    user: &str,
    reason: &str,
    operator: &str,
    max_event_bytes: usize,
) -> Result<Published, ToolError> {
    if reason.trim().is_empty() {
        return Err(ToolError::Config(
            "--reason: say why; it is kept in the event and its outcomes for the audit trail"
                .into(),
        ));
    }
    let (kind, event) = event(
        action,
        user,
        reason,
        operator,
        time::OffsetDateTime::now_utc(),
    );
    let bytes = serde_json::to_vec(&event).map_err(|e| ToolError::Config(e.to_string()))?;
    let schemas = Schemas::load().map_err(ToolError::Config)?;
    schemas
        .decode(kind, Some(&bytes), max_event_bytes)
        .map_err(|r| {
            ToolError::Config(format!(
                "the event would be refused ({}): {}",
                r.reason.as_str(),
                r.detail
            ))
        })?;
    let topic = match kind {
        EventKind::Termination => kafka.topics.terminations.clone(),
        EventKind::RiskSignal => kafka.topics.risk_signals.clone(),
    };
    let (partition, offset) = publish(
        &super::producer(kafka)?,
        &topic,
        Some(user.as_bytes()),
        &bytes,
        OwnedHeaders::new(),
    )
    .await?;
    Ok(Published {
        event_id: event["event_id"].as_str().unwrap_or_default().to_string(),
        topic,
        partition,
        offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each action is a valid input event whose decision is the action asked for.
    #[test]
    fn each_action_is_a_valid_event_that_decides_as_asked() {
        let schemas = Schemas::load().expect("schemas");
        let policy =
            crate::policy::Policy::new(crate::policy::PolicyConfig::default()).expect("policy");
        let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        for (action, expected) in [
            (OperatorAction::Deactivate, "deactivate"),
            (OperatorAction::Quarantine, "quarantine"),
            (OperatorAction::Release, "release"),
            (OperatorAction::Reactivate, "reactivate"),
        ] {
            let (kind, e) = event(action, "ann@example.com", "ticket 42", "jo", now);
            assert_eq!(e["source"], "operator:jo");
            assert_eq!(e["reason"], "ticket 42");
            let bytes = serde_json::to_vec(&e).unwrap();
            let decoded = schemas
                .decode(kind, Some(&bytes), 64 * 1024)
                .unwrap_or_else(|r| panic!("{action:?}: {r}"));
            assert_eq!(policy.decide(&decoded).action().as_str(), expected);
        }
    }
}
