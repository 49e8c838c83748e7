//! What an event calls for: the `[policy]` table and the pure function from an event to a
//! [`Decision`]. Nothing here does I/O, so every rule is tested on its own.

use serde::Deserialize;

use crate::event::{Event, RiskSignal, Severity, SignalState};
use crate::outcome::Action;

/// What a termination does to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TerminationAction {
    /// `PATCH active=false`: reversible, and Netskope's recommended way.
    #[default]
    Deactivate,
    /// `DELETE /Users/{id}`: irreversible.
    Delete,
}

/// The `[policy]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub on_termination: TerminationAction,
    /// A risk signal with a score at or above this quarantines the user (0–100).
    pub quarantine_score: u8,
    /// A risk signal with a severity at or above this quarantines the user.
    pub quarantine_severity: Severity,
    /// The SCIM group that quarantined users are put in; created when missing.
    pub quarantine_group: String,
    /// Users never acted on: exact user names, or `*@domain` for a whole domain. Matched
    /// case-insensitively. Break-glass and service accounts belong here.
    pub protected_users: Vec<String>,
    /// When on, no mutating request leaves the process; outcomes read `dry_run`.
    pub dry_run: bool,
    /// A rescinded termination that already acted reactivates the user (`PATCH active=true`),
    /// if offboarder itself deactivated them. Off by default: a rescind then only cancels what
    /// has not acted yet, and the outcome says the user stays deactivated.
    pub allow_reactivation: bool,
    /// How long offboarder remembers, for the fleet, that it deactivated a user: a rescind
    /// later than this finds no deactivation of offboarder's to undo, and reactivates nothing.
    #[serde(with = "humantime_serde")]
    pub rescind_window: std::time::Duration,
    /// When another actor undoes a verified deactivation or quarantine (a `reverted` outcome
    /// from `verify.drift_watch`), act once more, through the guard. Off by default: the
    /// `reverted` outcome alone alerts, and a person decides.
    pub reassert: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            on_termination: TerminationAction::Deactivate,
            quarantine_score: 80,
            quarantine_severity: Severity::High,
            quarantine_group: "Quarantine_HighRisk".into(),
            protected_users: Vec::new(),
            dry_run: false,
            allow_reactivation: false,
            rescind_window: std::time::Duration::from_secs(90 * 24 * 3600),
            reassert: false,
        }
    }
}

/// What to do for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Deactivate,
    Delete,
    Quarantine {
        group: String,
    },
    Release {
        group: String,
    },
    /// Undo offboarder's own deactivation of the user: their termination was rescinded. What
    /// happens depends on the fleet's record of that user (see `pipeline::process`).
    Reactivate,
    /// Do nothing; `action` is what would have been done (for a protected user) or
    /// [`Action::None`].
    Skip {
        action: Action,
        reason: String,
    },
}

impl Decision {
    pub fn action(&self) -> Action {
        match self {
            Decision::Deactivate => Action::Deactivate,
            Decision::Delete => Action::Delete,
            Decision::Quarantine { .. } => Action::Quarantine,
            Decision::Release { .. } => Action::Release,
            Decision::Reactivate => Action::Reactivate,
            Decision::Skip { action, .. } => *action,
        }
    }
}

/// A `protected_users` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Protected {
    /// A lower-cased user name.
    Exact(String),
    /// A lower-cased domain, from `*@domain`.
    Domain(String),
}

/// The policy, with its patterns checked and normalised once at start.
#[derive(Debug, Clone)]
pub struct Policy {
    config: PolicyConfig,
    protected: Vec<Protected>,
}

impl Policy {
    /// Checks the table. An unusable entry is a configuration fault: guessing what a
    /// protection pattern meant could expose the account it was meant to protect.
    pub fn new(config: PolicyConfig) -> Result<Self, String> {
        if config.quarantine_score > 100 {
            return Err(format!(
                "policy.quarantine_score: {} is above 100",
                config.quarantine_score
            ));
        }
        if config.rescind_window.is_zero() {
            return Err("policy.rescind_window must be longer than zero".into());
        }
        if config.quarantine_group.trim().is_empty() {
            return Err("policy.quarantine_group: must not be empty".into());
        }
        let mut protected = Vec::with_capacity(config.protected_users.len());
        for entry in &config.protected_users {
            let e = entry.trim().to_lowercase();
            let parsed = match e.strip_prefix("*@") {
                Some(domain) if !domain.is_empty() && !domain.contains(['*', '@']) => {
                    Protected::Domain(domain.to_string())
                }
                None if !e.is_empty() && !e.contains('*') => Protected::Exact(e),
                _ => {
                    return Err(format!(
                        "policy.protected_users: {entry:?} is neither an exact user name nor *@domain"
                    ));
                }
            };
            protected.push(parsed);
        }
        Ok(Self { config, protected })
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    pub fn dry_run(&self) -> bool {
        self.config.dry_run
    }

    fn protection(&self, user_name: &str) -> Option<&Protected> {
        let name = user_name.to_lowercase();
        self.protected.iter().find(|p| match p {
            Protected::Exact(n) => *n == name,
            Protected::Domain(d) => name.rsplit_once('@').is_some_and(|(_, domain)| domain == d),
        })
    }

    pub fn decide(&self, event: &Event) -> Decision {
        let wanted = match event {
            Event::Termination(t) if t.rescinded => Decision::Reactivate,
            Event::Termination(_) => match self.config.on_termination {
                TerminationAction::Deactivate => Decision::Deactivate,
                TerminationAction::Delete => Decision::Delete,
            },
            Event::RiskSignal(signal) => self.decide_signal(signal),
        };
        if let Decision::Skip { .. } = wanted {
            return wanted;
        }
        match self.protection(event.user_name()) {
            Some(p) => Decision::Skip {
                action: wanted.action(),
                reason: match p {
                    Protected::Exact(_) => "the user is in policy.protected_users".to_string(),
                    Protected::Domain(d) => {
                        format!("the user's domain {d} is protected (policy.protected_users)")
                    }
                },
            },
            None => wanted,
        }
    }

    fn decide_signal(&self, signal: &RiskSignal) -> Decision {
        let group = self.config.quarantine_group.clone();
        if signal.state == SignalState::Cleared {
            return Decision::Release { group };
        }
        let by_score = signal
            .risk_score
            .filter(|s| *s >= self.config.quarantine_score);
        let by_severity = signal
            .severity
            .filter(|s| *s >= self.config.quarantine_severity);
        if by_score.is_some() || by_severity.is_some() {
            return Decision::Quarantine { group };
        }
        let mut seen = Vec::new();
        if let Some(s) = signal.risk_score {
            seen.push(format!(
                "risk score {s} is below {}",
                self.config.quarantine_score
            ));
        }
        if let Some(s) = signal.severity {
            seen.push(format!(
                "severity {s} is below {}",
                self.config.quarantine_severity
            ));
        }
        Decision::Skip {
            action: Action::None,
            reason: format!("{}: no quarantine", seen.join(" and ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventUser, Termination};
    use time::OffsetDateTime;

    fn user(name: &str) -> EventUser {
        EventUser {
            user_name: name.into(),
            employee_id: None,
        }
    }

    fn termination(name: &str) -> Event {
        Event::Termination(Termination {
            event_id: "e1".into(),
            occurred_at: OffsetDateTime::UNIX_EPOCH,
            user: user(name),
            source: None,
            reason: None,
            effective_at: None,
            rescinded: false,
        })
    }

    fn signal(name: &str, score: Option<u8>, severity: Option<Severity>) -> RiskSignal {
        RiskSignal {
            event_id: "s1".into(),
            occurred_at: OffsetDateTime::UNIX_EPOCH,
            user: user(name),
            source: "edr".into(),
            risk_score: score,
            severity,
            state: SignalState::Open,
            detection_id: None,
            reason: None,
        }
    }

    fn policy(f: impl FnOnce(&mut PolicyConfig)) -> Policy {
        let mut c = PolicyConfig::default();
        f(&mut c);
        Policy::new(c).expect("valid policy")
    }

    #[test]
    fn terminations_deactivate_or_delete() {
        assert_eq!(
            policy(|_| {}).decide(&termination("a@x.com")),
            Decision::Deactivate
        );
        let p = policy(|c| c.on_termination = TerminationAction::Delete);
        assert_eq!(p.decide(&termination("a@x.com")), Decision::Delete);
    }

    #[test]
    fn a_rescinded_termination_asks_for_reactivation_unless_the_user_is_protected() {
        let mut rescind = termination("a@x.com");
        if let Event::Termination(t) = &mut rescind {
            t.rescinded = true;
        }
        for on_termination in [TerminationAction::Deactivate, TerminationAction::Delete] {
            let p = policy(|c| c.on_termination = on_termination);
            assert_eq!(p.decide(&rescind), Decision::Reactivate);
        }
        let p = policy(|c| c.protected_users = vec!["*@x.com".into()]);
        assert!(matches!(
            p.decide(&rescind),
            Decision::Skip {
                action: Action::Reactivate,
                ..
            }
        ));
    }

    #[test]
    fn score_or_severity_at_threshold_quarantines() {
        let p = policy(|_| {});
        let q = Decision::Quarantine {
            group: "Quarantine_HighRisk".into(),
        };
        for s in [
            signal("a@x.com", Some(80), None),
            signal("a@x.com", Some(100), Some(Severity::Low)),
            signal("a@x.com", None, Some(Severity::High)),
            signal("a@x.com", Some(10), Some(Severity::Critical)),
        ] {
            assert_eq!(p.decide(&Event::RiskSignal(s)), q);
        }
    }

    #[test]
    fn below_both_thresholds_is_skipped_with_the_figures() {
        let p = policy(|_| {});
        let d = p.decide(&Event::RiskSignal(signal(
            "a@x.com",
            Some(79),
            Some(Severity::Medium),
        )));
        let Decision::Skip { action, reason } = d else {
            panic!("{d:?}")
        };
        assert_eq!(action, Action::None);
        assert!(reason.contains("79") && reason.contains("80"), "{reason}");
        assert!(
            reason.contains("medium") && reason.contains("high"),
            "{reason}"
        );
    }

    #[test]
    fn cleared_releases_even_at_a_high_score() {
        let mut s = signal("a@x.com", Some(99), None);
        s.state = SignalState::Cleared;
        assert_eq!(
            policy(|c| c.quarantine_group = "Q".into()).decide(&Event::RiskSignal(s)),
            Decision::Release { group: "Q".into() }
        );
    }

    #[test]
    fn protected_users_are_skipped_case_insensitively() {
        let p = policy(|c| {
            c.protected_users = vec!["BreakGlass@corp.com".into(), "*@Vendor.example".into()]
        });
        for name in ["breakglass@CORP.com", "anyone@vendor.EXAMPLE"] {
            let d = p.decide(&termination(name));
            assert!(
                matches!(
                    d,
                    Decision::Skip {
                        action: Action::Deactivate,
                        ..
                    }
                ),
                "{name}: {d:?}"
            );
        }
        // Only the exact domain, not a suffix of it, and not a look-alike local part.
        for name in [
            "a@evil-vendor.example",
            "vendor.example@x.com",
            "a@corp.com",
        ] {
            assert_eq!(p.decide(&termination(name)), Decision::Deactivate, "{name}");
        }
        let q = p.decide(&Event::RiskSignal(signal(
            "x@vendor.example",
            Some(95),
            None,
        )));
        assert!(matches!(
            q,
            Decision::Skip {
                action: Action::Quarantine,
                ..
            }
        ));
    }

    #[test]
    fn unusable_patterns_and_limits_are_refused() {
        for bad in ["", "*", "*@", "adm*@corp.com", "*@*.corp.com"] {
            let c = PolicyConfig {
                protected_users: vec![bad.into()],
                ..PolicyConfig::default()
            };
            assert!(Policy::new(c).is_err(), "{bad:?} accepted");
        }
        let c = PolicyConfig {
            quarantine_score: 101,
            ..PolicyConfig::default()
        };
        assert!(Policy::new(c).is_err());
    }
}
