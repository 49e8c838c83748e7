//! The outcome event: what happened to one input event, published to the outcomes topic for SOC
//! dashboards and audits. `schemas/outcome.v1.json` describes it; a test checks every kind of
//! outcome against that file so the two cannot drift apart.
//!
//! An outcome never carries a token: its errors are mapped from the client's errors, whose
//! messages are built without one, by the pipeline that meets both (`pipeline::executor`). The
//! record itself knows nothing of the client.

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

/// What the worker did, or would have done, for the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Deactivate,
    Delete,
    Quarantine,
    Release,
    /// `PATCH /Users/{id}` with `active=true`: a rescinded termination undone.
    Reactivate,
    /// The event called for nothing (a risk signal below the thresholds).
    None,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deactivate => "deactivate",
            Action::Delete => "delete",
            Action::Quarantine => "quarantine",
            Action::Release => "release",
            Action::Reactivate => "reactivate",
            Action::None => "none",
        }
    }
}

/// The phase and result of an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Netskope accepted the request.
    Applied,
    /// The action cannot succeed for this event (unknown user, rejected request, retries ran
    /// out); `error` says why.
    Failed,
    /// Nothing was sent on purpose (a protected user, a signal below threshold, a user already
    /// quarantined); `reason` says why.
    Skipped,
    /// `dry_run` is on: `request` shows what would have been sent.
    DryRun,
    /// The verification phase: Netskope's audit trail, or a read-back, shows the change.
    Verified,
    /// The verification phase: no witness showed the change; `verification` says what was seen.
    Unverified,
    /// The verification phase: a later action of this worker on the same user changed what
    /// read-back would show before this one was verified (a release after a quarantine), so it
    /// was not read back; `verification.evidence` names the later action. Not an alarm.
    Superseded,
    /// Not final: the blast-radius guard halted destructive actions at this event (once per
    /// halt). The event waits for an operator's release, then gets its own outcomes.
    Halted,
    /// A termination whose `effective_at` is in the future: kept in the fleet's schedule, it
    /// acts then (`timestamps.effective`), with outcomes of its own. Final for this record.
    Scheduled,
    /// A scheduled termination withdrawn (rescinded) before it acted: nothing was sent.
    Cancelled,
    /// Another actor undid a verified change of offboarder's within `verify.drift_watch` (an
    /// IdP re-enabling a deactivated user, an administrator taking a user out of quarantine);
    /// `verification` names the actor, the time and the audit event. An alarm: the user has
    /// access again. Comes after the event's final outcome.
    Reverted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Applied => "applied",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
            Status::DryRun => "dry_run",
            Status::Verified => "verified",
            Status::Unverified => "unverified",
            Status::Superseded => "superseded",
            Status::Halted => "halted",
            Status::Scheduled => "scheduled",
            Status::Cancelled => "cancelled",
            Status::Reverted => "reverted",
        }
    }
}

/// Where the input event was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Why an action failed, in a form dashboards can group by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutcomeError {
    /// A stable name: `not_found`, `ambiguous`, `rejected`, `transient`, ...
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    pub message: String,
}

/// The SCIM request that was sent (or, in dry-run, would have been).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestDescription {
    pub method: &'static str,
    /// The path below the SCIM base, e.g. `/Users/<id>`.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// The evidence of the verification phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerificationEvidence {
    /// `audit` (Netskope's audit trail) or `readback` (the resource read back).
    pub method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_event_id: Option<String>,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub audit_timestamp: Option<OffsetDateTime>,
    /// What was seen, in words.
    pub evidence: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timestamps {
    #[serde(with = "time::serde::rfc3339")]
    pub received: OffsetDateTime,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub acted: Option<OffsetDateTime>,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub verified: Option<OffsetDateTime>,
    /// A termination's `effective_at` when it was scheduled: on its `scheduled` outcome, and
    /// on the outcomes of the action when it came due.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub effective: Option<OffsetDateTime>,
}

/// One outcome record. Keyed by the lower-cased user name on the topic, so that all outcomes of
/// one user stay in order in one partition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub outcome_id: String,
    pub source_event_id: String,
    pub source: SourceRef,
    /// Who asked: the input event's `source` (`operator:<name>` for `offboarder act`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    pub user_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scim_user_id: Option<String>,
    pub action: Action,
    pub status: Status,
    /// The quarantine group, for quarantine and release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<OutcomeError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestDescription>,
    /// Present on `verified` and `unverified` outcomes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationEvidence>,
    /// How many times the worker tried the action; each try may include several HTTP
    /// attempts by the client's own retries.
    pub attempts: u32,
    pub timestamps: Timestamps,
    pub trace_id: String,
}

impl Outcome {
    /// The record's key on the outcomes topic.
    pub fn key(&self) -> String {
        self.user_name.to_lowercase()
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing this struct cannot fail: every field is a string, number or plain enum.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A fresh random id (UUID v4) for an outcome.
pub fn new_outcome_id() -> String {
    // A version-4 UUID from the thread-local generator: `Uuid::new_v4` asks the kernel for
    // every id (a `getrandom` system call per outcome).
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_ids_are_distinct_version_4_uuids() {
        let a = uuid::Uuid::parse_str(&new_outcome_id()).expect("a uuid");
        let b = uuid::Uuid::parse_str(&new_outcome_id()).expect("a uuid");
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.get_version(), Some(uuid::Version::Random));
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        }
    }

    fn validator() -> jsonschema::Validator {
        let schema: Value =
            serde_json::from_str(include_str!("../schemas/outcome.v1.json")).expect("schema");
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("valid schema")
    }

    fn base(status: Status, action: Action) -> Outcome {
        Outcome {
            outcome_id: new_outcome_id(),
            source_event_id: "hr-1".into(),
            source: SourceRef {
                topic: "hr.terminations".into(),
                partition: 0,
                offset: 42,
            },
            requested_by: Some("workday".into()),
            user_name: "Alice@Example.com".into(),
            scim_user_id: None,
            action,
            status,
            group: None,
            reason: None,
            error: None,
            request: None,
            verification: None,
            attempts: 1,
            timestamps: Timestamps {
                received: OffsetDateTime::UNIX_EPOCH,
                acted: None,
                verified: None,
                effective: None,
            },
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        }
    }

    #[test]
    fn every_kind_of_outcome_fits_the_schema() {
        let v = validator();
        let mut applied = base(Status::Applied, Action::Deactivate);
        applied.scim_user_id = Some("2819c223-7f76-453a-919d-413861904646".into());
        applied.timestamps.acted = Some(OffsetDateTime::UNIX_EPOCH);
        applied.request = Some(RequestDescription {
            method: "PATCH",
            path: "/Users/2819c223".into(),
            body: Some(serde_json::json!({"Operations": []})),
        });
        let mut failed = base(Status::Failed, Action::Quarantine);
        failed.group = Some("Quarantine_HighRisk".into());
        failed.error = Some(OutcomeError {
            kind: "not_found".into(),
            http_status: None,
            message: "GET /Users (resolve_user): user \"alice\" not found".into(),
        });
        let mut skipped = base(Status::Skipped, Action::None);
        skipped.reason = Some("risk score 30 is below 80".into());
        let dry = base(Status::DryRun, Action::Delete);
        let mut verified = base(Status::Verified, Action::Deactivate);
        verified.timestamps.verified = Some(OffsetDateTime::UNIX_EPOCH);
        verified.verification = Some(VerificationEvidence {
            method: "audit",
            audit_event_id: Some("6b0711f90000000000000001".into()),
            audit_timestamp: Some(OffsetDateTime::UNIX_EPOCH),
            evidence: "audit event 6b07: PATCH /api/v2/scim/Users/u1 answered 2xx".into(),
        });
        let mut unverified = base(Status::Unverified, Action::Quarantine);
        unverified.verification = Some(VerificationEvidence {
            method: "readback",
            audit_event_id: None,
            audit_timestamp: None,
            evidence: "user u1 is not a member of group g1".into(),
        });
        let mut scheduled = base(Status::Scheduled, Action::Deactivate);
        scheduled.timestamps.effective = Some(OffsetDateTime::UNIX_EPOCH);
        let mut cancelled = base(Status::Cancelled, Action::Deactivate);
        cancelled.reason = Some("rescinded before its effective_at".into());
        let mut reactivated = base(Status::Applied, Action::Reactivate);
        reactivated.request = Some(RequestDescription {
            method: "PATCH",
            path: "/Users/2819c223".into(),
            body: Some(
                serde_json::json!({"Operations": [{"op": "replace", "path": "active", "value": true}]}),
            ),
        });
        let mut superseded = base(Status::Superseded, Action::Quarantine);
        superseded.verification = Some(VerificationEvidence {
            method: "none",
            audit_event_id: None,
            audit_timestamp: None,
            evidence: "not read back: a later release followed".into(),
        });
        let mut reverted = base(Status::Reverted, Action::Deactivate);
        reverted.reason = Some("re-enabled by \"okta-provisioning\"".into());
        reverted.verification = Some(VerificationEvidence {
            method: "audit",
            audit_event_id: Some("6b0711f90000000000000002".into()),
            audit_timestamp: Some(OffsetDateTime::UNIX_EPOCH),
            evidence: "user u1 reads active=true".into(),
        });
        for o in [
            applied,
            failed,
            skipped,
            dry,
            verified,
            unverified,
            scheduled,
            cancelled,
            reactivated,
            superseded,
            reverted,
        ] {
            let json: Value = serde_json::from_slice(&o.to_json()).expect("json");
            let errors: Vec<String> = v.iter_errors(&json).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{json}: {errors:?}");
        }
    }

    #[test]
    fn the_schema_rejects_an_unknown_status() {
        let mut json: Value =
            serde_json::from_slice(&base(Status::Applied, Action::Release).to_json()).unwrap();
        json["status"] = "done".into();
        assert!(!validator().is_valid(&json));
    }

    #[test]
    fn key_is_the_lower_cased_user_name() {
        assert_eq!(
            base(Status::Applied, Action::Deactivate).key(),
            "alice@example.com"
        );
    }
}
