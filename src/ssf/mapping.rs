//! SET events (RISC and CAEP) to risk signals (`schemas/risk-signal.v1.json`).
//!
//! Each event type the receiver understands has a rule, from the table below unless
//! `[ssf.events]` overrides it: `ignore` (accepted, nothing written), a severity (`low`,
//! `medium`, `high`, `critical`: an open signal, which quarantines at or above
//! `policy.quarantine_severity`), or `clear` (a cleared signal, which releases the user from
//! quarantine whatever raised it; that is why no default clears). An event type not in the
//! table is refused (`invalid_request`), so a transmitter sending more than was agreed learns
//! it. The SSF stream-verification event is accepted and writes nothing.
//!
//! | rule key | event (and the payload value that selects it) | default |
//! |---|---|---|
//! | `account-disabled` | RISC account-disabled | high |
//! | `account-purged` | RISC account-purged | critical |
//! | `credential-compromise` | RISC credential-compromise | critical |
//! | `identifier-changed` | RISC identifier-changed | ignore |
//! | `account-enabled` | RISC account-enabled | ignore |
//! | `session-revoked` | CAEP session-revoked | medium |
//! | `credential-change` | CAEP credential-change | ignore |
//! | `assurance-level-change` | CAEP assurance-level-change, `change_direction: decrease` (an increase writes nothing) | medium |
//! | `device-compliance-change` | CAEP device-compliance-change, `current_status: not-compliant` | high |
//! | `device-compliance-change:compliant` | the same, `current_status: compliant` | ignore |
//! | `risk-level-change:high` | CAEP risk-level-change, `current_level: HIGH` | high |
//! | `risk-level-change:medium` | the same, `MEDIUM` | medium |
//! | `risk-level-change:low` | the same, `LOW` | ignore |

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::clip;
use super::set::{ErrorCode, SetError, VerifiedSet};
use super::subject::{SubjectRules, user_name};

const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";
const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
/// SSF's stream verification event: proves the stream works, says nothing about a user.
pub const SSF_VERIFICATION: &str =
    "https://schemas.openid.net/secevent/ssf/event-type/verification";

/// What an event becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    Ignore,
    Clear,
    Low,
    Medium,
    High,
    Critical,
}

impl Rule {
    fn severity(self) -> Option<&'static str> {
        match self {
            Rule::Low => Some("low"),
            Rule::Medium => Some("medium"),
            Rule::High => Some("high"),
            Rule::Critical => Some("critical"),
            Rule::Ignore | Rule::Clear => None,
        }
    }
}

/// The rule keys and their defaults, in the order of the table above.
pub const DEFAULT_RULES: &[(&str, Rule)] = &[
    ("account-disabled", Rule::High),
    ("account-purged", Rule::Critical),
    ("credential-compromise", Rule::Critical),
    ("identifier-changed", Rule::Ignore),
    ("account-enabled", Rule::Ignore),
    ("session-revoked", Rule::Medium),
    ("credential-change", Rule::Ignore),
    ("assurance-level-change", Rule::Medium),
    ("device-compliance-change", Rule::High),
    ("device-compliance-change:compliant", Rule::Ignore),
    ("risk-level-change:high", Rule::High),
    ("risk-level-change:medium", Rule::Medium),
    ("risk-level-change:low", Rule::Ignore),
];

/// The rules in force: the defaults with `[ssf.events]` over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules(BTreeMap<&'static str, Rule>);

impl Rules {
    /// The defaults overridden by `overrides`; a key that is not a rule key is an error.
    pub fn new(overrides: &BTreeMap<String, Rule>) -> Result<Self, String> {
        let mut rules: BTreeMap<&'static str, Rule> = DEFAULT_RULES.iter().copied().collect();
        for (key, rule) in overrides {
            let Some((known, _)) = DEFAULT_RULES.iter().find(|(k, _)| k == key) else {
                let keys: Vec<&str> = DEFAULT_RULES.iter().map(|(k, _)| *k).collect();
                return Err(format!(
                    "ssf.events: {key:?} is not an event rule; the rules are {}",
                    keys.join(", ")
                ));
            };
            rules.insert(known, *rule);
        }
        Ok(Rules(rules))
    }

    fn get(&self, key: &str) -> Rule {
        self.0.get(key).copied().unwrap_or(Rule::Ignore)
    }
}

impl Default for Rules {
    fn default() -> Self {
        Rules(DEFAULT_RULES.iter().copied().collect())
    }
}

/// One risk signal to write, keyed by its user.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub user_name: String,
    /// The risk signal, valid against `risk-signal.v1`.
    pub record: Value,
}

/// The risk signals a verified SET stands for: none when every event is ignored. Any event
/// that cannot be mapped (unknown type, a subject that names no user, a payload without what
/// its type requires) refuses the whole SET, so that a SET is taken whole or not at all.
pub fn signals(
    set: &VerifiedSet,
    rules: &Rules,
    subjects: SubjectRules,
) -> Result<Vec<Signal>, SetError> {
    let refuse = |why: String| SetError::refused(ErrorCode::InvalidRequest, why);
    let mut mapped = Vec::new();
    for (event_type, payload) in &set.events {
        if event_type == SSF_VERIFICATION {
            continue;
        }
        let payload = payload.as_object().cloned().unwrap_or_default();
        let (profile, name) = if let Some(name) = event_type.strip_prefix(RISC) {
            ("RISC", name)
        } else if let Some(name) = event_type.strip_prefix(CAEP) {
            ("CAEP", name)
        } else {
            return Err(refuse(format!(
                "event type {:?} is not one this receiver handles",
                clip(event_type, 120)
            )));
        };
        let Some(key) = rule_key(profile, name, &payload)? else {
            continue;
        };
        let rule = rules.get(key);
        if rule == Rule::Ignore {
            continue;
        }
        let subject = payload
            .get("subject")
            .or(set.sub_id.as_ref())
            .ok_or_else(|| refuse(format!("{profile} {name}: no subject (\"sub_id\")")))?;
        let user = user_name(subject, subjects)?;
        mapped.push((profile, name, key, rule, payload, user));
    }
    let several = mapped.len() > 1;
    Ok(mapped
        .into_iter()
        .map(|(profile, name, key, rule, payload, user)| {
            let event_id = if several {
                format!("{}/{name}", set.jti)
            } else {
                set.jti.clone()
            };
            // CAEP's event_timestamp is seconds; some transmitters write milliseconds.
            let occurred = payload
                .get("event_timestamp")
                .and_then(Value::as_u64)
                .map(|t| if t > 100_000_000_000 { t / 1000 } else { t })
                .or(set.toe)
                .unwrap_or(set.iat);
            let mut record = json!({
                "event_id": event_id,
                "occurred_at": rfc3339(occurred),
                "user": {"user_name": user},
                "source": set.transmitter,
                "detection_id": set.jti,
                "reason": reason(profile, name, &set.transmitter, &payload),
                "ssf": {
                    "iss": set.iss,
                    "jti": set.jti,
                    "event_type": format!("{profile} {name}"),
                    "rule": key,
                },
            });
            match rule.severity() {
                Some(severity) => {
                    record["severity"] = severity.into();
                    record["state"] = "open".into();
                }
                None => {
                    record["risk_score"] = 0.into();
                    record["state"] = "cleared".into();
                }
            }
            if let Some(txn) = &set.txn {
                record["ssf"]["txn"] = clip(txn, 200).into();
            }
            Signal {
                user_name: user,
                record,
            }
        })
        .collect())
}

/// Which rule an event falls under; `None` for an event that writes nothing whatever the
/// rules (an assurance increase).
fn rule_key(
    profile: &str,
    name: &str,
    payload: &Map<String, Value>,
) -> Result<Option<&'static str>, SetError> {
    let refuse = |why: String| SetError::refused(ErrorCode::InvalidRequest, why);
    let field = |key: &str| -> Result<String, SetError> {
        payload
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| refuse(format!("{profile} {name}: no \"{key}\"")))
    };
    let key = match (profile, name) {
        ("RISC", "account-disabled") => "account-disabled",
        ("RISC", "account-purged") => "account-purged",
        ("RISC", "credential-compromise") => "credential-compromise",
        ("RISC", "identifier-changed") => "identifier-changed",
        ("RISC", "account-enabled") => "account-enabled",
        ("CAEP", "session-revoked") => "session-revoked",
        ("CAEP", "credential-change") => "credential-change",
        ("CAEP", "assurance-level-change") => match field("change_direction") {
            Ok(d) if d == "increase" => return Ok(None),
            // Without a direction, compare the levels only when they are numbers; otherwise a
            // change is taken as a decrease (the cautious reading).
            _ => "assurance-level-change",
        },
        ("CAEP", "device-compliance-change") => match field("current_status")?.as_str() {
            "not-compliant" => "device-compliance-change",
            "compliant" => "device-compliance-change:compliant",
            other => {
                return Err(refuse(format!(
                    "CAEP device-compliance-change: current_status {:?} is neither compliant nor not-compliant",
                    clip(other, 40)
                )));
            }
        },
        ("CAEP", "risk-level-change") => match field("current_level")?.as_str() {
            "high" => "risk-level-change:high",
            "medium" => "risk-level-change:medium",
            "low" => "risk-level-change:low",
            other => {
                return Err(refuse(format!(
                    "CAEP risk-level-change: current_level {:?} is not LOW, MEDIUM or HIGH",
                    clip(other, 40)
                )));
            }
        },
        _ => {
            return Err(refuse(format!(
                "{profile} event type {:?} is not one this receiver handles",
                clip(name, 80)
            )));
        }
    };
    Ok(Some(key))
}

/// A line for the audit trail: what happened, from whom, and the transmitter's own words.
fn reason(profile: &str, name: &str, transmitter: &str, payload: &Map<String, Value>) -> String {
    let mut reason = format!("{profile} {name} from {transmitter}");
    let text = |v: Option<&Value>| -> Option<String> {
        match v? {
            Value::String(s) => Some(s.clone()),
            // CAEP's reason_admin / reason_user: language tag → text.
            Value::Object(by_language) => by_language
                .get("en")
                .or_else(|| by_language.values().next())
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        }
    };
    for key in [
        "reason",
        "credential_type",
        "change_type",
        "risk_reason",
        "reason_admin",
    ] {
        if let Some(value) = text(payload.get(key)) {
            reason.push_str(&format!("; {key}: {}", clip(&value, 200)));
        }
    }
    clip(&reason, 1000)
}

fn rfc3339(secs: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    offboarder_base::clock::rfc3339(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(events: Value) -> VerifiedSet {
        VerifiedSet {
            transmitter: "okta".into(),
            iss: "https://idp.example.com".into(),
            jti: "756E69717565206964656E746966696572".into(),
            iat: 1_615_305_159,
            toe: None,
            txn: None,
            sub_id: Some(json!({"format": "email", "email": "alice@example.com"})),
            events: events.as_object().expect("object").clone(),
        }
    }

    fn one(events: Value, rules: &Rules) -> Result<Option<Value>, Option<ErrorCode>> {
        let mut s = signals(&set(events), rules, SubjectRules::default()).map_err(|e| e.code())?;
        assert!(s.len() <= 1);
        Ok(s.pop().map(|s| s.record))
    }

    #[test]
    fn each_default_rule_maps_as_its_table_says() {
        let rules = Rules::default();
        let severity = |events: Value| {
            one(events, &rules).map(|r| {
                r.map(|r| {
                    format!(
                        "{} {}",
                        r["state"].as_str().unwrap_or_default(),
                        r["severity"].as_str().unwrap_or("-")
                    )
                })
            })
        };
        let risc = |name: &str, payload: Value| json!({ format!("{RISC}{name}"): payload });
        let caep = |name: &str, payload: Value| json!({ format!("{CAEP}{name}"): payload });
        let cases = [
            (
                risc("account-disabled", json!({"reason": "hijacking"})),
                Some("open high"),
            ),
            (risc("account-purged", json!({})), Some("open critical")),
            (
                risc(
                    "credential-compromise",
                    json!({"credential_type": "password"}),
                ),
                Some("open critical"),
            ),
            (
                risc("identifier-changed", json!({"new-value": "a@b"})),
                None,
            ),
            (risc("account-enabled", json!({})), None),
            (
                caep("session-revoked", json!({"event_timestamp": 1_615_304_991})),
                Some("open medium"),
            ),
            (
                caep(
                    "credential-change",
                    json!({"credential_type": "password", "change_type": "update"}),
                ),
                None,
            ),
            (
                caep(
                    "assurance-level-change",
                    json!({"namespace": "NIST-AAL", "current_level": "aal1", "previous_level": "aal2", "change_direction": "decrease"}),
                ),
                Some("open medium"),
            ),
            (
                caep(
                    "assurance-level-change",
                    json!({"namespace": "NIST-AAL", "current_level": "aal2", "previous_level": "aal1", "change_direction": "increase"}),
                ),
                None,
            ),
            (
                caep(
                    "device-compliance-change",
                    json!({"previous_status": "compliant", "current_status": "not-compliant"}),
                ),
                Some("open high"),
            ),
            (
                caep(
                    "device-compliance-change",
                    json!({"previous_status": "not-compliant", "current_status": "compliant"}),
                ),
                None,
            ),
            (
                caep(
                    "risk-level-change",
                    json!({"current_level": "HIGH", "risk_reason": "PASSWORD_FOUND_IN_DATA_BREACH"}),
                ),
                Some("open high"),
            ),
            (
                caep("risk-level-change", json!({"current_level": "MEDIUM"})),
                Some("open medium"),
            ),
            (
                caep("risk-level-change", json!({"current_level": "LOW"})),
                None,
            ),
        ];
        for (events, want) in cases {
            assert_eq!(
                severity(events.clone()),
                Ok(want.map(str::to_string)),
                "{events}"
            );
        }
    }

    #[test]
    fn a_mapped_signal_is_a_valid_risk_signal() {
        let schemas = crate::event::Schemas::load().expect("schemas");
        let events = json!({
            format!("{RISC}account-disabled"): {"reason": "hijacking"},
            format!("{CAEP}device-compliance-change"): {"current_status": "not-compliant", "reason_admin": {"en": "Location policy violation"}},
        });
        let mut rules = BTreeMap::new();
        rules.insert("account-disabled".to_string(), Rule::Clear);
        let rules = Rules::new(&rules).expect("rules");
        let out = signals(&set(events), &rules, SubjectRules::default()).expect("mapped");
        assert_eq!(out.len(), 2);
        for s in &out {
            assert_eq!(s.user_name, "alice@example.com");
            let bytes = serde_json::to_vec(&s.record).expect("json");
            schemas
                .decode(crate::event::EventKind::RiskSignal, Some(&bytes), 1 << 20)
                .unwrap_or_else(|e| panic!("{} is not a valid risk signal: {e}", s.record));
            assert!(
                s.record["event_id"]
                    .as_str()
                    .is_some_and(|id| id.contains('/')),
                "two events, two ids"
            );
        }
        let cleared = out
            .iter()
            .find(|s| s.record["state"] == "cleared")
            .expect("the account-disabled rule clears");
        assert_eq!(cleared.record["ssf"]["rule"], "account-disabled");
        let open = out
            .iter()
            .find(|s| s.record["state"] == "open")
            .expect("one open");
        assert!(
            open.record["reason"]
                .as_str()
                .is_some_and(|r| r.contains("Location policy violation")),
            "{}",
            open.record
        );
    }

    #[test]
    fn unknown_events_and_bad_payloads_refuse_the_whole_set() {
        let rules = Rules::default();
        for events in [
            json!({"https://schemas.openid.net/secevent/risc/event-type/opt-out-initiated": {}}),
            json!({"https://example.com/custom": {}}),
            json!({format!("{CAEP}risk-level-change"): {"current_level": "SEVERE"}}),
            json!({format!("{CAEP}device-compliance-change"): {}}),
            json!({
                format!("{RISC}account-purged"): {},
                "https://example.com/custom": {},
            }),
        ] {
            assert_eq!(
                one(events.clone(), &rules),
                Err(Some(ErrorCode::InvalidRequest)),
                "{events}"
            );
        }
        // The stream's verification event writes nothing and is no error.
        assert_eq!(
            one(json!({SSF_VERIFICATION: {"state": "abc"}}), &rules),
            Ok(None)
        );
    }

    #[test]
    fn a_rule_key_that_does_not_exist_is_a_configuration_error() {
        let mut bad = BTreeMap::new();
        bad.insert("account-deleted".to_string(), Rule::High);
        let err = Rules::new(&bad).expect_err("unknown key");
        assert!(err.contains("account-disabled"), "{err}");
    }
}
