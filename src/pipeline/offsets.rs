//! Which offset of each partition may be committed.
//!
//! Events finish out of order: a termination for one user can wait out a 429 while events for
//! other users, later in the same partition, are done. Committing the offset of a later event
//! would skip the slow one on a crash. So per partition the tracker keeps the offsets that are
//! still open, and the committable position is just below the lowest of them: the highest
//! offset below which every event has its final outcome acknowledged (invariant 1).
//!
//! Partitions move between consumers on rebalances. An assignment has a generation: offsets of
//! an older generation that finish late are ignored, because the partition's new owner will
//! deliver those events again and we may not store offsets for a partition we no longer own.

use std::collections::{BTreeSet, HashMap};

/// One received event's place in its partition. Hand it back to [`OffsetTracker::finish`] once
/// the event's final outcome (or dead letter) is acknowledged by the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    generation: u64,
}

impl Ticket {
    /// Where the event was read, for the order of what it writes to the state topic.
    pub fn position(&self) -> crate::guard::memory::Position {
        crate::guard::memory::Position {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// The open offsets of one partition.
#[derive(Debug, Default)]
struct Partition {
    generation: u64,
    /// Received and not yet finished.
    open: BTreeSet<i64>,
    /// The first and the highest offset received in this generation.
    first_seen: Option<i64>,
    highest_seen: Option<i64>,
    /// The last offset reported as committable (every offset up to it is finished).
    stored: Option<i64>,
}

impl Partition {
    /// The highest offset of this generation with no open offset at or below it; `None` while
    /// the generation's first event is still open.
    fn committable(&self) -> Option<i64> {
        match self.open.first() {
            Some(lowest) => Some(lowest - 1).filter(|o| self.first_seen.is_some_and(|f| *o >= f)),
            None => self.highest_seen,
        }
    }
}

/// Open offsets per `(topic, partition)`.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<(String, i32), Partition>,
    /// Generations are unique across partitions and never reused.
    next_generation: u64,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a received event. A partition delivers offsets in increasing order; an offset
    /// at or below one already seen means the consumer re-fetched from an earlier position
    /// (after a rebalance or a seek), so the partition starts a new generation.
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) -> Ticket {
        let key = (topic.to_string(), partition);
        let fresh = match self.partitions.get(&key) {
            None => true,
            Some(p) => p.highest_seen.is_some_and(|h| offset <= h),
        };
        if fresh {
            self.next_generation += 1;
            self.partitions.insert(
                key.clone(),
                Partition {
                    generation: self.next_generation,
                    ..Partition::default()
                },
            );
        }
        let p = self.partitions.entry(key).or_default();
        p.open.insert(offset);
        p.first_seen.get_or_insert(offset);
        p.highest_seen = Some(offset);
        Ticket {
            topic: topic.to_string(),
            partition,
            offset,
            generation: p.generation,
        }
    }

    /// Marks an event finished. Returns the offset to store when the committable position moved
    /// forward, `None` when it did not (an earlier event is still open) or when the ticket
    /// belongs to an assignment that has since been revoked.
    pub fn finish(&mut self, ticket: &Ticket) -> Option<i64> {
        let p = self
            .partitions
            .get_mut(&(ticket.topic.clone(), ticket.partition))?;
        if p.generation != ticket.generation || !p.open.remove(&ticket.offset) {
            return None;
        }
        let next = p.committable()?;
        if p.stored.is_some_and(|s| s >= next) {
            return None;
        }
        p.stored = Some(next);
        Some(next)
    }

    /// Forgets a partition that this consumer no longer owns. Its open events may still finish;
    /// their tickets are then ignored.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_string(), partition));
    }

    /// Events received and not yet finished, over all partitions.
    pub fn open(&self) -> usize {
        self.partitions.values().map(|p| p.open.len()).sum()
    }

    /// Open events of one partition (for tests and metrics).
    pub fn open_in(&self, topic: &str, partition: i32) -> usize {
        self.partitions
            .get(&(topic.to_string(), partition))
            .map_or(0, |p| p.open.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_slow_event_holds_back_later_ones() {
        let mut t = OffsetTracker::new();
        let a = t.begin("hr", 0, 10);
        let b = t.begin("hr", 0, 11);
        let c = t.begin("hr", 0, 12);
        assert_eq!(t.finish(&b), None, "10 is still open");
        assert_eq!(t.finish(&c), None, "10 is still open");
        assert_eq!(t.finish(&a), Some(12), "all three done");
        assert_eq!(t.open(), 0);
    }

    #[test]
    fn in_order_completion_advances_each_time() {
        let mut t = OffsetTracker::new();
        let a = t.begin("hr", 0, 0);
        let b = t.begin("hr", 0, 1);
        assert_eq!(t.finish(&a), Some(0));
        assert_eq!(t.finish(&b), Some(1));
    }

    #[test]
    fn gaps_in_numbering_are_not_holes() {
        // Compacted topics and transaction markers leave offsets that are never delivered.
        let mut t = OffsetTracker::new();
        let a = t.begin("hr", 0, 5);
        let b = t.begin("hr", 0, 9);
        assert_eq!(t.finish(&b), None, "5 is still open");
        assert_eq!(
            t.finish(&a),
            Some(9),
            "6, 7 and 8 never came and are not waited for"
        );
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::new();
        let a0 = t.begin("hr", 0, 3);
        let a1 = t.begin("hr", 1, 7);
        let b1 = t.begin("xdr", 1, 2);
        assert_eq!(t.finish(&a1), Some(7));
        assert_eq!(t.finish(&b1), Some(2));
        assert_eq!(t.open_in("hr", 0), 1);
        assert_eq!(t.finish(&a0), Some(3));
    }

    #[test]
    fn a_ticket_from_a_revoked_assignment_is_ignored() {
        let mut t = OffsetTracker::new();
        let old = t.begin("hr", 0, 4);
        t.revoke("hr", 0);
        // Reassigned: the committed position was 2, so 3 and 4 come again.
        let again3 = t.begin("hr", 0, 3);
        let again4 = t.begin("hr", 0, 4);
        assert_eq!(t.finish(&old), None, "old generation");
        assert_eq!(t.open(), 2);
        assert_eq!(t.finish(&again4), None);
        assert_eq!(t.finish(&again3), Some(4));
    }

    #[test]
    fn a_refetch_without_revoke_starts_a_new_generation() {
        let mut t = OffsetTracker::new();
        let first = t.begin("hr", 0, 8);
        let refetched = t.begin("hr", 0, 8);
        assert_ne!(first, refetched);
        assert_eq!(t.finish(&first), None);
        assert_eq!(t.finish(&refetched), Some(8));
    }

    #[test]
    fn finishing_twice_stores_nothing_new() {
        let mut t = OffsetTracker::new();
        let a = t.begin("hr", 0, 1);
        assert_eq!(t.finish(&a), Some(1));
        assert_eq!(t.finish(&a), None);
    }

    proptest! {
        /// Whatever order events finish in, every stored offset is one below which all events
        /// are finished, stored offsets only grow, and once all are finished the last one is
        /// stored.
        #[test]
        fn stored_offsets_never_skip_an_open_event(
            steps in proptest::collection::vec(1i64..4, 1..60),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 60),
        ) {
            let mut t = OffsetTracker::new();
            let mut offset = 0;
            let mut open = Vec::new();
            for step in &steps {
                offset += step;
                open.push(t.begin("hr", 0, offset));
            }
            let last = offset;
            let mut stored = None;
            for pick in order.iter().take(steps.len()) {
                let ticket = open.swap_remove(pick.index(open.len()));
                if let Some(s) = t.finish(&ticket) {
                    prop_assert!(stored.is_none_or(|p| s > p), "stored offsets grow");
                    prop_assert!(
                        open.iter().all(|o| o.offset > s),
                        "stored {} past an open event", s
                    );
                    stored = Some(s);
                }
            }
            prop_assert_eq!(stored, Some(last));
            prop_assert_eq!(t.open(), 0);
        }
    }
}
