//! The quarantine memory, shared by the fleet through the state topic.
//!
//! A repeat critical signal for a user already quarantined would send one more (idempotent)
//! group PATCH; the memory lets a worker skip it. A memory that is wrong is worse than none:
//! a worker that remembered a quarantine another worker has since released would skip the
//! user's next critical signal. So three rules keep it right across workers, restarts and
//! rebalances:
//! - a release records "released" on the state topic, acknowledged, *before* its PATCH, and a
//!   release whose record cannot be written retries like any transient fault. By the time a
//!   release finishes (so before its partition can move to another worker), its record is in
//!   the topic;
//! - a worker trusts a remembered quarantine only after reading the state topic up to the end
//!   it has at that moment, so it has seen every release that finished before;
//! - each mark carries the input position of the event that wrote it, and a mark from an
//!   earlier offset of the same partition than the one held is ignored: a write from a worker
//!   that lost the partition, landing late, cannot undo a later release. A user's events all
//!   come from one partition, in order, so "later" is the partition's order.
//!
//! Marks are keyed `quarantine/<user id>/<group, lower-cased>` in the compacted topic, so it
//! keeps the latest per user and group (about 200 bytes each). Forgetting costs at most one
//! idempotent PATCH; so the memory drops marks rather than grow past [`CAPACITY`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Most (user, group) marks held.
pub const CAPACITY: usize = 100_000;
/// The state topic's key prefix of a mark.
pub const KEY_PREFIX: &str = "quarantine/";

/// Where an event was read: the order of the marks it writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One (user, group)'s state, as the last event that changed it left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// `true`: quarantined by a worker of the fleet; `false`: released since.
    pub quarantined: bool,
    /// When it was written (ms since the epoch, the writer's clock); the memory lasts
    /// `pipeline.quarantine_memory` from then.
    pub at_ms: u64,
    #[serde(flatten)]
    pub position: Position,
}

pub struct QuarantineMemory {
    ttl_ms: AtomicU64,
    marks: Mutex<HashMap<String, Mark>>,
}

impl Default for QuarantineMemory {
    fn default() -> Self {
        Self {
            ttl_ms: AtomicU64::new(3_600_000),
            marks: Mutex::default(),
        }
    }
}

impl QuarantineMemory {
    /// The key of `user_id` in `group` (group names match case-insensitively, as in Netskope).
    pub fn key(group: &str, user_id: &str) -> String {
        format!("{KEY_PREFIX}{user_id}/{}", group.to_lowercase())
    }

    /// How long a quarantine is remembered (`pipeline.quarantine_memory`).
    pub fn set_ttl(&self, ttl: Duration) {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.ttl_ms.store(ms, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Mark>> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `mark` for `key`, whatever order marks arrive in: one from an earlier offset of
    /// the partition of the mark held loses. Returns whether it was taken.
    pub fn apply(&self, key: &str, mark: Mark, now_ms: u64) -> bool {
        let ttl = self.ttl_ms.load(Ordering::Relaxed);
        let mut marks = self.lock();
        if let Some(held) = marks.get(key)
            && held.position.topic == mark.position.topic
            && held.position.partition == mark.position.partition
            && held.position.offset > mark.position.offset
        {
            return false;
        }
        if !marks.contains_key(key) && marks.len() >= CAPACITY {
            marks.retain(|_, m| m.at_ms.saturating_add(ttl) > now_ms);
            if marks.len() >= CAPACITY {
                return false;
            }
        }
        marks.insert(key.to_string(), mark);
        true
    }

    /// Whether a worker of the fleet quarantined `key` within the memory's time, with no
    /// release read since, for an event other than the one read at `asking`. The mark of the
    /// same event means a redelivery (the worker that acted stopped before finishing it): that
    /// event acts again, idempotently, and gets its verification, not a `skipped`.
    pub fn remembers(&self, key: &str, now_ms: u64, asking: &Position) -> bool {
        let ttl = self.ttl_ms.load(Ordering::Relaxed);
        self.lock().get(key).is_some_and(|m| {
            m.quarantined && m.at_ms.saturating_add(ttl) > now_ms && m.position != *asking
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(quarantined: bool, offset: i64, at_ms: u64) -> Mark {
        Mark {
            quarantined,
            at_ms,
            position: Position {
                topic: "risk".into(),
                partition: 3,
                offset,
            },
        }
    }

    /// The position of a later event that asks.
    fn later() -> Position {
        Position {
            topic: "risk".into(),
            partition: 3,
            offset: 1_000,
        }
    }

    #[test]
    fn a_late_quarantine_cannot_undo_a_later_release() {
        let m = QuarantineMemory::default();
        let key = QuarantineMemory::key("Quarantine", "u1");
        assert!(m.apply(&key, mark(true, 10, 0), 0));
        assert!(m.remembers(&key, 1, &later()));
        assert!(m.apply(&key, mark(false, 12, 5), 5));
        assert!(!m.remembers(&key, 6, &later()), "released");
        // The quarantine of offset 10 written again by a worker that lost the partition.
        assert!(!m.apply(&key, mark(true, 10, 7), 7));
        assert!(!m.remembers(&key, 8, &later()), "the release still holds");
        // A later quarantine of the same user is remembered again.
        assert!(m.apply(&key, mark(true, 14, 9), 9));
        assert!(m.remembers(&key, 10, &later()));
        assert!(
            m.remembers(&QuarantineMemory::key("QUARANTINE", "u1"), 10, &later()),
            "group names match case-insensitively"
        );
    }

    #[test]
    fn a_redelivered_event_is_not_skipped_by_its_own_mark() {
        let m = QuarantineMemory::default();
        let key = QuarantineMemory::key("q", "u1");
        m.apply(&key, mark(true, 10, 0), 0);
        assert!(!m.remembers(&key, 1, &mark(true, 10, 0).position));
        assert!(m.remembers(&key, 1, &later()));
    }

    #[test]
    fn a_quarantine_is_forgotten_after_the_memory_time() {
        let m = QuarantineMemory::default();
        m.set_ttl(Duration::from_secs(60));
        let key = QuarantineMemory::key("q", "u1");
        m.apply(&key, mark(true, 1, 1_000), 1_000);
        assert!(m.remembers(&key, 60_999, &later()));
        assert!(!m.remembers(&key, 61_000, &later()));
    }

    #[test]
    fn a_full_memory_drops_expired_marks_and_then_forgets_rather_than_grows() {
        let m = QuarantineMemory::default();
        m.set_ttl(Duration::from_secs(1));
        for n in 0..CAPACITY {
            m.apply(&format!("k{n}"), mark(true, 1, 0), 0);
        }
        assert!(
            !m.apply("new", mark(true, 1, 500), 500),
            "full, none expired"
        );
        assert!(!m.remembers("new", 500, &later()));
        assert!(
            m.apply("new", mark(true, 1, 1_000), 1_000),
            "the old ones expired"
        );
        assert!(m.remembers("new", 1_001, &later()));
        assert_eq!(m.lock().len(), 1);
    }
}
