//! Exactly-once outcomes (`[kafka] exactly_once`): each event's final record and the input
//! offset it covers are committed in one Kafka transaction.
//!
//! Without transactions a crash between publishing an event's final outcome and committing its
//! offset makes the restarted worker process the event again and publish a second final
//! outcome. Here the outcomes producer is transactional and one transaction is always open;
//! [`Transactions::commit`] closes it every `commit_interval` with the offsets finished in it,
//! and opens the next. Either both the outcome and its offset are committed, or neither: a
//! `read_committed` reader sees each event's final outcome once.
//!
//! The invariant that makes this hold: an event's offset joins the transaction that holds its
//! final record. Both happen under the gate's read lock ([`Transactions::enter`]), and a commit
//! takes the write lock, so no record or offset slips in between sending a transaction's
//! offsets and committing it. (Waiting for the broker's acknowledgement first, as the
//! at-least-once path does, would let a commit fall between the record and its offset.)
//!
//! Any failure of a transaction stops the worker: the transaction is aborted, with its outcomes
//! and offsets, and the restarted worker processes those events again. Netskope requests may
//! therefore repeat; they are idempotent. Zombie fencing: the offsets carry the consumer's
//! group metadata (KIP-447), so a worker that lost its partitions cannot commit offsets for
//! them, and a restart with the same `transactional.id` aborts its predecessor's open
//! transaction at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};

use offboarder_base::metric_names as m_names;

use super::broker_errors::Producer;

/// A transaction could not be opened or committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransactionError {
    /// The brokers lack transactions, or refuse this producer's `transactional.id`.
    #[error(
        "kafka: transactions are not available for transactional.id {id:?}: {reason}. \
         exactly_once needs brokers with Kafka transactions (Apache Kafka 2.5 or later; tansu \
         0.6.0 has no EndTxn) and, with ACLs, WRITE on the transactional id; or set \
         kafka.exactly_once = false"
    )]
    Unavailable { id: String, reason: String },
    /// Committing failed; the transaction was aborted.
    #[error(
        "kafka: the outcomes transaction failed and was aborted; its events are processed \
         again after a restart: {reason}"
    )]
    Aborted { reason: String },
}

/// The transaction currently open on the outcomes producer, and the offsets finished in it.
pub struct Transactions {
    producer: Producer,
    id: String,
    /// Read: a record and its offset join the open transaction. Write: the transaction commits.
    gate: RwLock<()>,
    /// Next offset to consume per (topic, partition), finished in the open transaction.
    offsets: Mutex<BTreeMap<(String, i32), i64>>,
    /// Records handed to the producer in the open transaction.
    records: AtomicU64,
    timeout: Duration,
}

impl Transactions {
    /// Registers the producer's `transactional.id` with the brokers (aborting what a crashed
    /// predecessor with the same id left open) and proves that the brokers can end a
    /// transaction: one holding a single empty record on the state topic is opened and
    /// aborted. Readers of the state topic read committed records only, so it is never seen.
    /// Blocking: run it off the async threads.
    pub fn open(
        producer: Producer,
        id: String,
        probe_topic: &str,
        timeout: Duration,
    ) -> Result<Self, TransactionError> {
        let unavailable = |e: KafkaError| TransactionError::Unavailable {
            id: id.clone(),
            reason: e.to_string(),
        };
        producer.init_transactions(timeout).map_err(unavailable)?;
        producer.begin_transaction().map_err(unavailable)?;
        let key = format!("probe/{id}");
        let probe = FutureRecord::<str, [u8]>::to(probe_topic).key(&key);
        producer
            .send_result(probe)
            .map_err(|(e, _)| unavailable(e))?;
        // Delivered first, so that the partition is in the transaction and the abort has to
        // reach the brokers (an abort of a transaction that holds nothing yet sends nothing).
        producer.flush(timeout).map_err(unavailable)?;
        producer.abort_transaction(timeout).map_err(unavailable)?;
        producer.begin_transaction().map_err(unavailable)?;
        Ok(Self {
            producer,
            id,
            gate: RwLock::new(()),
            offsets: Mutex::new(BTreeMap::new()),
            records: AtomicU64::new(0),
            timeout,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The open transaction, held until the guard drops: records sent and offsets added
    /// meanwhile belong to it. `None` while a commit is under way; try again shortly.
    pub fn enter(&self) -> Option<Entered<'_>> {
        let guard = self.gate.try_read().ok()?;
        Some(Entered {
            transactions: self,
            _gate: guard,
        })
    }

    /// Commits the open transaction with the offsets finished in it and opens the next. Does
    /// nothing when the transaction is empty. Blocking: it waits for the producer to deliver
    /// the transaction's records and for the brokers to commit.
    pub fn commit(&self, group: Option<ConsumerGroupMetadata>) -> Result<(), TransactionError> {
        let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let offsets = std::mem::take(&mut *self.offsets.lock().unwrap_or_else(|p| p.into_inner()));
        let records = self.records.swap(0, Ordering::SeqCst);
        if offsets.is_empty() && records == 0 {
            return Ok(());
        }
        let result = self.send_and_commit(&offsets, group);
        let ended = if result.is_ok() {
            "committed"
        } else {
            "aborted"
        };
        metrics::counter!(m_names::TRANSACTIONS, "result" => ended).increment(1);
        if let Err(e) = &result {
            tracing::error!(error = %e, records, "outcomes transaction failed");
        } else {
            tracing::debug!(
                records,
                partitions = offsets.len(),
                "outcomes transaction committed"
            );
        }
        result
    }

    /// Aborts the open transaction, so that `read_committed` readers need not wait for the
    /// brokers to time it out. Used when the worker stops on a failure.
    pub fn abort(&self) {
        let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        metrics::counter!(m_names::TRANSACTIONS, "result" => "aborted").increment(1);
        if let Err(e) = self.producer.abort_transaction(self.timeout) {
            tracing::warn!(error = %e, "the open transaction could not be aborted; the brokers abort it after transaction.timeout.ms");
        }
    }

    /// Why the open transaction was lost, in words: `e`, and when the producer or the group
    /// member was fenced, the likely cause and what to change. A fence may first show as the
    /// failed delivery of a record ("Fatal"), so the producer's own fatal error is asked too.
    pub fn explain(&self, e: &KafkaError) -> String {
        use rdkafka::types::RDKafkaErrorCode as C;
        let fatal = self.producer.client().fatal_error().map(|(code, _)| code);
        let fenced = fatal.into_iter().chain(e.rdkafka_error_code()).any(|c| {
            matches!(
                c,
                C::Fenced
                    | C::ProducerFenced
                    | C::InvalidProducerEpoch
                    | C::IllegalGeneration
                    | C::UnknownMemberId
                    | C::FencedInstanceId
                    | C::FencedMemberEpoch
            )
        });
        if fenced {
            format!(
                "{e}. The producer or the group member was fenced: another worker uses \
                 transactional.id {:?}, or this worker lost its partitions; give each worker its \
                 own kafka.transactional_id",
                self.id
            )
        } else {
            e.to_string()
        }
    }

    fn send_and_commit(
        &self,
        offsets: &BTreeMap<(String, i32), i64>,
        group: Option<ConsumerGroupMetadata>,
    ) -> Result<(), TransactionError> {
        let failed = |e: KafkaError| TransactionError::Aborted {
            reason: self.explain(&e),
        };
        let attempt = || -> Result<(), KafkaError> {
            if !offsets.is_empty() {
                let group = group.as_ref().ok_or(KafkaError::Canceled)?;
                let mut list = TopicPartitionList::new();
                for ((topic, partition), next) in offsets {
                    list.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
                }
                self.producer
                    .send_offsets_to_transaction(&list, group, self.timeout)?;
            }
            self.producer.commit_transaction(self.timeout)
        };
        if let Err(e) = attempt() {
            // Whatever failed, the transaction is lost: abort it so that the producer can be
            // closed cleanly. Its events were never committed and come again.
            let _ = self.producer.abort_transaction(self.timeout);
            return Err(failed(e));
        }
        self.producer.begin_transaction().map_err(failed)
    }
}

/// A hold on the open transaction (see [`Transactions::enter`]).
pub struct Entered<'a> {
    transactions: &'a Transactions,
    _gate: RwLockReadGuard<'a, ()>,
}

impl Entered<'_> {
    /// A record was handed to the producer in this transaction.
    pub fn sent(&self) {
        self.transactions.records.fetch_add(1, Ordering::SeqCst);
    }

    /// Every event of `partition` up to `offset` is finished: the transaction commits the
    /// consumer's position there (`offset + 1`).
    pub fn finished(&self, topic: &str, partition: i32, offset: i64) {
        let mut offsets = self
            .transactions
            .offsets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let next = offsets.entry((topic.to_string(), partition)).or_default();
        *next = (*next).max(offset + 1);
    }
}
