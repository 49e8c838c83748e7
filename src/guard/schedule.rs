//! Scheduled terminations, kept by the fleet in the state topic.
//!
//! HR systems publish a termination when it is decided, often weeks before the last day. A
//! termination whose `effective_at` is in the future is written here, under the key
//! `schedule/<user name, lower-cased>`, and its event finishes at once with a `scheduled`
//! outcome: no input offset is held for weeks. When it comes due, the worker that owns the
//! event's input partition publishes the termination again to that topic (with the header
//! [`SCHEDULED_HEADER`]), and the pipeline handles it like any other: guard (so a layoff
//! scheduled for Friday 17:00 trips the guard then), the user's order, verification, outcomes.
//!
//! One key per user, so the latest HR event for a user wins: a later termination replaces the
//! entry (a new date), an immediate one acts and marks it done, and a fired event acts only if
//! the entry still holds it. An entry that acted is marked `done` rather than deleted, so that
//! a firing delivered again after a crash acts again (idempotently) instead of being taken for
//! one that was replaced.
//!
//! Every worker reads the whole state topic, so the index below is the fleet's. It holds what
//! is needed to publish the event again, not the event: a compact entry per user.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The state topic's key prefix of a scheduled termination.
pub const KEY_PREFIX: &str = "schedule/";
/// The header that marks a termination published again because it came due; its value is the
/// event's `event_id`.
pub const SCHEDULED_HEADER: &str = "offboarder-scheduled";

/// One scheduled termination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduled {
    pub event_id: String,
    pub user_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub employee_id: Option<String>,
    /// RFC 3339, as the event had it.
    pub occurred_at: String,
    pub effective_at: String,
    /// When it is due, ms since the epoch.
    pub due_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The input topic and partition the event was read from: their owner fires it.
    pub topic: String,
    pub partition: i32,
    /// It acted (a firing, or a later immediate termination).
    #[serde(default)]
    pub done: bool,
}

impl Scheduled {
    /// The termination event to publish again when due.
    pub fn event(&self) -> serde_json::Value {
        let mut e = serde_json::json!({
            "event_id": self.event_id,
            "occurred_at": self.occurred_at,
            "effective_at": self.effective_at,
            "user": {"user_name": self.user_name},
        });
        if let Some(id) = &self.employee_id {
            e["user"]["employee_id"] = id.clone().into();
        }
        if let Some(s) = &self.source {
            e["source"] = s.clone().into();
        }
        if let Some(r) = &self.reason {
            e["reason"] = r.clone().into();
        }
        e
    }
}

/// The key of `user_name`'s entry.
pub fn key(user_name: &str) -> String {
    format!("{KEY_PREFIX}{}", user_name.to_lowercase())
}

/// The fleet's scheduled terminations, by key.
#[derive(Default)]
pub struct Schedule {
    entries: Mutex<HashMap<String, Scheduled>>,
    /// Events this process published again; not fired twice while it lives.
    fired: Mutex<HashSet<String>>,
}

impl Schedule {
    /// An entry read from the state topic (`None`: a tombstone).
    pub fn apply(&self, key: &str, entry: Option<Scheduled>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entry {
            Some(e) => entries.insert(key.to_string(), e),
            None => entries.remove(key),
        };
    }

    pub fn get(&self, key: &str) -> Option<Scheduled> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).cloned()
    }

    /// Entries due at `now_ms` that have not acted, and that this process has not fired yet;
    /// `owned` says which input partitions this worker holds. Marks those returned as fired.
    pub fn take_due(&self, now_ms: i64, owned: impl Fn(&str, i32) -> bool) -> Vec<Scheduled> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut fired = self.fired.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .values()
            .filter(|e| !e.done && e.due_ms <= now_ms && owned(&e.topic, e.partition))
            .filter(|e| fired.insert(e.event_id.clone()))
            .cloned()
            .collect()
    }

    /// A firing that failed: due again at the next look.
    pub fn unfire(&self, event_id: &str) {
        let mut fired = self.fired.lock().unwrap_or_else(|p| p.into_inner());
        fired.remove(event_id);
    }

    /// Scheduled terminations not yet acted on.
    pub fn pending(&self) -> usize {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.values().filter(|e| !e.done).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, due_ms: i64, partition: i32) -> Scheduled {
        Scheduled {
            event_id: id.into(),
            user_name: "Ann@Example.com".into(),
            employee_id: None,
            occurred_at: "2026-12-01T00:00:00Z".into(),
            effective_at: "2026-12-05T17:00:00Z".into(),
            due_ms,
            source: Some("workday".into()),
            reason: None,
            topic: "hr".into(),
            partition,
            done: false,
        }
    }

    #[test]
    fn an_entry_fires_once_when_due_on_the_owner_of_its_partition() {
        let s = Schedule::default();
        let k = key("Ann@Example.com");
        s.apply(&k, Some(entry("e1", 1_000, 2)));
        let mine = |_: &str, p: i32| p == 2;
        assert!(s.take_due(999, mine).is_empty(), "not due yet");
        assert!(
            s.take_due(1_000, |_, p| p == 3).is_empty(),
            "not this worker's"
        );
        assert_eq!(s.take_due(1_000, mine).len(), 1);
        assert!(s.take_due(2_000, mine).is_empty(), "fired once");
        assert_eq!(s.pending(), 1);
        s.apply(
            &k,
            Some(Scheduled {
                done: true,
                ..entry("e1", 1_000, 2)
            }),
        );
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn the_latest_event_for_a_user_replaces_the_entry() {
        let s = Schedule::default();
        let k = key("ann@example.com");
        s.apply(&k, Some(entry("e1", 1_000, 0)));
        s.apply(&key("ANN@example.com"), Some(entry("e2", 9_000, 0)));
        assert!(s.take_due(5_000, |_, _| true).is_empty(), "e1 was replaced");
        assert_eq!(s.get(&k).map(|e| e.event_id), Some("e2".into()));
        s.apply(&k, None);
        assert_eq!(s.get(&k), None);
    }

    #[test]
    fn the_event_published_again_is_a_valid_termination() {
        let schemas = crate::event::Schemas::load().unwrap();
        let bytes = serde_json::to_vec(&entry("e1", 0, 0).event()).unwrap();
        let decoded = schemas
            .decode(
                crate::event::EventKind::Termination,
                Some(&bytes),
                64 * 1024,
            )
            .unwrap_or_else(|r| panic!("{}", r.detail));
        assert_eq!(decoded.event_id(), "e1");
    }
}
