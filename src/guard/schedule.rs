//! Each user's latest termination, kept by the fleet in the state topic: scheduled, acted,
//! cancelled or undone.
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
//! entry (a new date), an immediate one acts and takes the entry over, a rescind cancels it,
//! and a fired event acts only if the entry still holds it. A termination that acted stays
//! here as [`State::Acted`] with what was done ([`Deed`]) for `policy.rescind_window`: that is
//! how a rescind knows offboarder itself deactivated the user, and the only way it may undo
//! it. It also lets a firing delivered again after a crash act again (idempotently) instead of
//! being taken for one that was replaced.
//!
//! Every worker reads the whole state topic, so the index below is the fleet's. It holds what
//! is needed to publish the event again, not the event: a compact entry per user.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use offboarder_base::clock::{WallClock, rfc3339};

/// The state topic's key prefix of a user's termination.
pub const KEY_PREFIX: &str = "schedule/";
/// The header that marks a termination published again because it came due; its value is the
/// event's `event_id`.
pub const SCHEDULED_HEADER: &str = "offboarder-scheduled";

/// The clock the schedule runs on: wall time (following tokio's clock), plus an offset that
/// only tests move, to run weeks of a schedule in seconds against a real broker. A worker never
/// moves it; clones share the offset.
#[derive(Debug, Clone, Default)]
pub struct Calendar {
    clock: WallClock,
    ahead_ms: Arc<AtomicI64>,
}

impl Calendar {
    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now_datetime()
            + time::Duration::milliseconds(self.ahead_ms.load(Ordering::SeqCst))
    }

    /// Milliseconds since the epoch.
    pub fn now_ms(&self) -> i64 {
        epoch_ms(self.now())
    }

    /// Sets how far ahead of wall time this calendar runs.
    pub fn set_ahead(&self, ahead: Duration) {
        let ms = i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX);
        self.ahead_ms.store(ms, Ordering::SeqCst);
    }
}

/// Where a user's latest termination stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waits for its `effective_at`.
    #[default]
    Pending,
    /// It acted: scheduled and fired, or immediate. [`Termination::deed`] says what was sent.
    Acted,
    /// Rescinded before it acted: nothing was sent.
    Cancelled,
    /// Rescinded after it acted, and offboarder reactivated the user.
    Reactivated,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Acted => "acted",
            State::Cancelled => "cancelled",
            State::Reactivated => "reactivated",
        }
    }
}

/// What offboarder sent for a termination, as a rescind needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deed {
    /// The user's SCIM id: a reactivation goes to this id, never to whatever the name resolves
    /// to later.
    pub user_id: String,
    /// A delete, which cannot be undone; a deactivation otherwise.
    #[serde(default)]
    pub deleted: bool,
    /// Whether the user was active before, when the lookup said so. `Some(false)`: someone
    /// else had disabled them already, and a rescind must not enable them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub was_active: Option<bool>,
    /// When it was sent, RFC 3339.
    pub at: String,
}

/// A user's latest termination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Termination {
    pub event_id: String,
    pub user_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub employee_id: Option<String>,
    /// RFC 3339, as the event had it.
    pub occurred_at: String,
    /// When it acts (acted), RFC 3339.
    pub effective_at: String,
    /// When it is due, ms since the epoch.
    pub due_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The input topic and partition the event was read from: their owner fires it, and
    /// forgets the entry once `policy.rescind_window` has passed since `changed_ms`.
    pub topic: String,
    pub partition: i32,
    #[serde(default)]
    pub state: State,
    /// What offboarder sent when it acted; kept through a later reschedule, so that a rescind
    /// still finds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deed: Option<Deed>,
    /// When the entry last changed, ms since the epoch.
    #[serde(default)]
    pub changed_ms: i64,
    /// The input record whose action made the entry acted. A due termination published twice
    /// (two owners around a rebalance) acts once: the second record finds the entry acted by
    /// another record. The same record delivered again (after a crash) acts again, idempotently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acted_by: Option<super::memory::Position>,
    /// `done: true` of the first version of this entry, which had no `state`: it acted.
    #[serde(default, rename = "done", skip_serializing)]
    legacy_done: bool,
}

/// Milliseconds since the epoch.
pub fn epoch_ms(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

impl Termination {
    /// The entry of `event` (read from `topic`, `partition`) that acts at `effective_at`, in
    /// `state`, written at `now`.
    pub fn new(
        event: &crate::event::Termination,
        effective_at: time::OffsetDateTime,
        (topic, partition): (&str, i32),
        state: State,
        now: time::OffsetDateTime,
    ) -> Self {
        Self {
            event_id: event.event_id.clone(),
            user_name: event.user.user_name.clone(),
            employee_id: event.user.employee_id.clone(),
            occurred_at: rfc3339(event.occurred_at),
            effective_at: rfc3339(effective_at),
            due_ms: epoch_ms(effective_at),
            source: event.source.clone(),
            reason: event.reason.clone(),
            topic: topic.to_string(),
            partition,
            state,
            deed: None,
            changed_ms: epoch_ms(now),
            acted_by: None,
            legacy_done: false,
        }
    }

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

    /// The entry in `state`, changed at `now_ms`.
    pub fn with_state(self, state: State, now_ms: i64) -> Self {
        Self {
            state,
            changed_ms: now_ms,
            ..self
        }
    }
}

/// The key of `user_name`'s entry.
pub fn key(user_name: &str) -> String {
    format!("{KEY_PREFIX}{}", user_name.to_lowercase())
}

/// The fleet's terminations, by key.
#[derive(Default)]
pub struct Schedule {
    entries: Mutex<HashMap<String, Termination>>,
    /// Events this process published again; not fired twice while it lives.
    fired: Mutex<HashSet<String>>,
}

impl Schedule {
    /// An entry read from the state topic (`None`: a tombstone).
    pub fn apply(&self, key: &str, entry: Option<Termination>) {
        let entry = entry.map(|mut e| {
            if std::mem::take(&mut e.legacy_done) && e.state == State::Pending {
                e.state = State::Acted;
            }
            e
        });
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entry {
            Some(e) => entries.insert(key.to_string(), e),
            None => entries.remove(key),
        };
    }

    pub fn get(&self, key: &str) -> Option<Termination> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(key).cloned()
    }

    /// Entries due at `now_ms` that have not acted, and that this process has not fired yet;
    /// `owned` says which input partitions this worker holds. Marks those returned as fired.
    pub fn take_due(&self, now_ms: i64, owned: impl Fn(&str, i32) -> bool) -> Vec<Termination> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut fired = self.fired.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .values()
            .filter(|e| {
                e.state == State::Pending && e.due_ms <= now_ms && owned(&e.topic, e.partition)
            })
            .filter(|e| fired.insert(e.event_id.clone()))
            .cloned()
            .collect()
    }

    /// A firing that failed: due again at the next look.
    pub fn unfire(&self, event_id: &str) {
        let mut fired = self.fired.lock().unwrap_or_else(|p| p.into_inner());
        fired.remove(event_id);
    }

    /// Keys of finished entries (not pending) last changed before `before_ms`, on partitions
    /// `owned` says this worker holds: their owner deletes them, so the index does not grow
    /// with every user ever terminated.
    pub fn expired(&self, before_ms: i64, owned: impl Fn(&str, i32) -> bool) -> Vec<String> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .filter(|(_, e)| {
                e.state != State::Pending
                    && e.changed_ms < before_ms
                    && owned(&e.topic, e.partition)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Scheduled terminations not yet acted on.
    pub fn pending(&self) -> usize {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .values()
            .filter(|e| e.state == State::Pending)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, due_ms: i64, partition: i32) -> Termination {
        Termination {
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
            state: State::Pending,
            deed: None,
            changed_ms: 0,
            acted_by: None,
            legacy_done: false,
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
            Some(entry("e1", 1_000, 2).with_state(State::Acted, 3_000)),
        );
        assert_eq!(s.pending(), 0);
        assert!(s.take_due(9_000, mine).is_empty(), "acted");
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
    fn finished_entries_expire_on_their_owner_and_pending_ones_never_do() {
        let s = Schedule::default();
        s.apply(&key("a@x.com"), Some(entry("e1", 1_000, 0)));
        let acted = Termination {
            user_name: "b@x.com".into(),
            ..entry("e2", 1_000, 0)
        };
        s.apply(&key("b@x.com"), Some(acted.with_state(State::Acted, 5_000)));
        let cancelled = Termination {
            user_name: "c@x.com".into(),
            ..entry("e3", 1_000, 1)
        };
        s.apply(
            &key("c@x.com"),
            Some(cancelled.with_state(State::Cancelled, 5_000)),
        );
        assert!(s.expired(5_000, |_, _| true).is_empty(), "not older yet");
        let mut old = s.expired(i64::MAX, |_, _| true);
        old.sort();
        assert_eq!(
            old,
            [key("b@x.com"), key("c@x.com")],
            "never the pending one"
        );
        assert_eq!(s.expired(i64::MAX, |_, p| p == 1), [key("c@x.com")]);
    }

    #[test]
    fn entries_of_the_first_version_keep_their_meaning() {
        let s = Schedule::default();
        let old = r#"{"event_id":"e1","user_name":"a@x.com","occurred_at":"2026-12-01T00:00:00Z","effective_at":"2026-12-05T17:00:00Z","due_ms":5,"topic":"hr","partition":0,"done":false}"#;
        s.apply("k1", Some(serde_json::from_str(old).unwrap()));
        assert_eq!(s.get("k1").map(|e| e.state), Some(State::Pending));
        let done = old.replace(r#""done":false"#, r#""done":true"#);
        s.apply("k2", Some(serde_json::from_str(&done).unwrap()));
        assert_eq!(
            s.get("k2").map(|e| e.state),
            Some(State::Acted),
            "never fired again"
        );
        assert_eq!(s.pending(), 1);
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
