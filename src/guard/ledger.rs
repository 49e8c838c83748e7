//! The guard's log in Kafka: the state topic, one partition, read from its start by every
//! worker.
//!
//! One partition gives every entry a place in one order that all replicas read alike, so their
//! verdicts agree (see [`super::window`]). A destructive action writes a claim and waits until
//! it reads the claim back: its verdict is decided by what precedes it in the log, whichever
//! replica wrote that. A release is written the same way and lifts the halt on every replica
//! when each reads it. A worker that starts, after a crash or in a rolling upgrade, replays
//! the whole log before it consumes an event, so the window and any halt are where they were.
//!
//! Each entry has a key of its own (`guard/<worker>/<seq>`), so that a topic with
//! `cleanup.policy=compact` keeps every one: time-based deletion would forget a halt that
//! nobody released before the retention ran out. An entry is some 150 bytes; one is written
//! per destructive action and per release.
//!
//! The topic also carries each worker's budget demand (see [`super::demand`]), keyed
//! `demand/<worker>`: one key per worker process, so compaction keeps only its latest, and a
//! worker that stops cleanly writes a tombstone so that compaction drops the key.
//!
//! And it carries the fleet's quarantine memory (see [`super::memory`]), keyed
//! `quarantine/<user id>/<group>`: compaction keeps the latest mark of each.

use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::memory::{self, Mark};
use super::schedule::{self, Termination};
use super::{Entry, Guard, GuardConfig, GuardError};

/// How long a worker waits to read back an entry it wrote before it treats the state topic as
/// unavailable (and retries, holding the action back).
pub const READ_BACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest entry read; anything bigger was not written by a guard and is skipped.
const MAX_ENTRY_BYTES: usize = 4096;
/// How long writing an entry may take before the guard reports the topic unavailable.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// One record of the state topic.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// The worker process that wrote it: a random id per start.
    worker: String,
    seq: u64,
    entry: Entry,
    /// The event a claim is for (`<topic>/<event_id>`), so that a redelivery can be told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<String>,
}

/// A worker's demand for the request budget.
#[derive(Debug, Serialize, Deserialize)]
struct DemandRecord {
    worker: String,
    /// Its events waiting to act.
    waiting: u64,
}

const DEMAND_PREFIX: &[u8] = b"demand/";

/// How the guard reaches its state topic.
pub struct Kafka {
    /// For writing entries: idempotent, acknowledged by all in-sync replicas.
    pub producer: ClientConfig,
    /// For reading the topic from its start, outside any consumer group.
    pub reader: ClientConfig,
    pub topic: String,
    /// How long a request to the brokers may take while the worker starts.
    pub timeout: Duration,
}

/// The writing side, held by the guard.
pub struct Writer {
    producer: FutureProducer,
    /// The reader's client, asked for the topic's end.
    reader: Arc<StreamConsumer>,
    topic: String,
    worker: String,
    seq: AtomicU64,
}

impl Writer {
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The id of this worker process in its entries.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Publishes this worker's budget demand (`None`: a tombstone, as the worker stops, so
    /// that compaction drops its key); acknowledged, not read back.
    pub async fn write_demand(&self, waiting: Option<u64>) -> Result<(), GuardError> {
        let value = match waiting {
            Some(waiting) => Some(
                serde_json::to_vec(&DemandRecord {
                    worker: self.worker.clone(),
                    waiting,
                })
                .map_err(|e| self.error(&e.to_string()))?,
            ),
            None => None,
        };
        self.send(&format!("demand/{}", self.worker), value.as_deref())
            .await
    }

    /// Writes `value` under `key` (`None`: a tombstone) to the topic's one partition,
    /// acknowledged.
    async fn send(&self, key: &str, value: Option<&[u8]>) -> Result<(), GuardError> {
        let mut to = FutureRecord::<str, [u8]>::to(&self.topic)
            .key(key)
            .partition(0);
        if let Some(value) = value {
            to = to.payload(value);
        }
        self.producer
            .send(to, Timeout::After(WRITE_TIMEOUT))
            .await
            .map(|_| ())
            .map_err(|(e, _)| self.error(&format!("cannot write: {e}")))
    }

    /// The offset the next entry written to the topic will get.
    pub async fn end(&self) -> Result<i64, GuardError> {
        let (reader, topic) = (self.reader.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || reader.fetch_watermarks(&topic, 0, WRITE_TIMEOUT))
            .await
            .map_err(|e| self.error(&format!("reading its end did not run: {e}")))?
            .map(|(_, end)| end)
            .map_err(|e| self.error(&format!("cannot read its end: {e}")))
    }

    /// Writes a tombstone for `key`, acknowledged.
    pub async fn delete(&self, key: &str) -> Result<(), GuardError> {
        self.send(key, None).await
    }

    /// Writes `value` as JSON under `key`, acknowledged.
    pub async fn write_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), GuardError> {
        let value = serde_json::to_vec(value).map_err(|e| self.error(&e.to_string()))?;
        self.send(key, Some(&value)).await
    }

    /// Publishes an input event of offboarder's own (a due termination, a repeat of an undone
    /// change) to `topic`, keyed by `user`, with one header that says why; acknowledged.
    pub async fn publish_input(
        &self,
        topic: &str,
        user: &str,
        value: &[u8],
        (name, why): (&str, &str),
    ) -> Result<(), GuardError> {
        let headers = OwnedHeaders::new().insert(Header {
            key: name,
            value: Some(why),
        });
        let to = FutureRecord::to(topic)
            .key(user)
            .payload(value)
            .headers(headers);
        self.producer
            .send(to, Timeout::After(WRITE_TIMEOUT))
            .await
            .map(|_| ())
            .map_err(|(e, _)| GuardError::Ledger {
                topic: topic.to_string(),
                reason: format!("cannot publish an input event: {e}"),
            })
    }

    /// Queues a quarantine mark now (so that it stays in order with this worker's later
    /// marks) without waiting for it: a lost one costs a repeat PATCH, never a wrong skip.
    pub fn write_mark_in_background(&self, key: &str, mark: &Mark) {
        let Ok(value) = serde_json::to_vec(mark) else {
            return;
        };
        let to = FutureRecord::to(&self.topic)
            .key(key)
            .payload(&value)
            .partition(0);
        match self.producer.send_result(to) {
            Ok(delivery) => {
                tokio::spawn(async move {
                    if let Ok(Err((e, _))) = delivery.await {
                        tracing::debug!(error = %e, "quarantine memory: a mark not written");
                    }
                });
            }
            Err((e, _)) => tracing::debug!(error = %e, "quarantine memory: a mark not queued"),
        }
    }

    pub fn error(&self, reason: &str) -> GuardError {
        GuardError::Ledger {
            topic: self.topic.clone(),
            reason: reason.to_string(),
        }
    }

    pub async fn write(
        &self,
        entry: &Entry,
        event: Option<&str>,
        seq: u64,
    ) -> Result<(), GuardError> {
        let record = Record {
            worker: self.worker.clone(),
            seq,
            entry: *entry,
            event: event.map(str::to_string),
        };
        self.write_json(&format!("guard/{}/{seq}", self.worker), &record)
            .await
    }
}

/// Opens the guard on its state topic: replays the topic to its end, so that the guard starts
/// where the fleet is, then follows it in a task of its own for as long as the guard lives.
pub async fn open(config: &GuardConfig, kafka: Kafka) -> Result<Arc<Guard>, GuardError> {
    let fail = |reason: String| GuardError::Ledger {
        topic: kafka.topic.clone(),
        reason,
    };
    let producer: FutureProducer = kafka
        .producer
        .create()
        .map_err(|e| fail(format!("cannot create its producer: {e}")))?;
    let reader: StreamConsumer = kafka
        .reader
        .create()
        .map_err(|e| fail(format!("cannot create its reader: {e}")))?;
    let reader = Arc::new(reader);
    let (topic, timeout) = (kafka.topic.clone(), kafka.timeout);
    let watermarks = {
        let reader = reader.clone();
        tokio::task::spawn_blocking(move || reader.fetch_watermarks(&topic, 0, timeout))
            .await
            .map_err(|e| fail(format!("reading its end did not run: {e}")))?
            .map_err(|e| fail(format!("cannot read its end: {e}")))?
    };
    {
        // Dropped before the reader can be: a list alive at a consumer's drop hangs it.
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&kafka.topic, 0, Offset::Beginning)
            .map_err(|e| fail(e.to_string()))?;
        reader
            .assign(&assignment)
            .map_err(|e| fail(format!("cannot read it: {e}")))?;
    }
    let worker = format!("{:016x}", rand::random::<u64>());
    let writer = Writer {
        producer,
        reader: reader.clone(),
        topic: kafka.topic.clone(),
        worker: worker.clone(),
        seq: AtomicU64::new(0),
    };
    let guard = Arc::new(Guard::with_ledger(config, Some(writer)));
    let (low, end) = watermarks;
    let mut replayed = 0u64;
    let mut next = low;
    while next < end {
        let message = tokio::time::timeout(timeout, reader.recv())
            .await
            .map_err(|_| {
                fail(format!(
                    "stopped answering while replaying it at offset {next} of {end}"
                ))
            })?
            .map_err(|e| fail(format!("cannot replay it: {e}")))?;
        next = message.offset() + 1;
        apply(&guard, &message, &worker, true);
        replayed += 1;
    }
    let status = guard.status();
    tracing::info!(
        topic = kafka.topic,
        entries = replayed,
        halted = status.halted,
        in_window = status.in_window,
        "blast-radius guard: state topic replayed"
    );
    tokio::spawn(follow(
        Arc::downgrade(&guard),
        reader,
        worker,
        guard.stop.clone(),
    ));
    Ok(guard)
}

/// Applies every entry written after the replay, until the guard is dropped.
async fn follow(
    guard: Weak<Guard>,
    reader: Arc<StreamConsumer>,
    worker: String,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            m = reader.recv() => m,
        };
        let Some(guard) = guard.upgrade() else { break };
        match message {
            Ok(m) => apply(&guard, &m, &worker, false),
            Err(e) => tracing::warn!(error = %e, "the guard's state topic: read error; retrying"),
        }
    }
}

/// Applies one record. A replayed demand is skipped: its age is unknown (the worker that wrote
/// it may be long gone), and live workers publish theirs again within seconds.
fn apply(guard: &Guard, message: &BorrowedMessage<'_>, worker: &str, replaying: bool) {
    apply_entry(guard, message, worker, replaying);
    guard.read_to.send_replace(message.offset() + 1);
}

fn apply_entry(guard: &Guard, message: &BorrowedMessage<'_>, worker: &str, replaying: bool) {
    if let Some(key) = message
        .key()
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|k| k.starts_with(schedule::KEY_PREFIX))
    {
        let entry = message
            .payload()
            .filter(|p| p.len() <= MAX_ENTRY_BYTES)
            .and_then(|p| serde_json::from_slice::<Termination>(p).ok());
        guard.schedule.apply(key, entry);
        return;
    }
    // A tombstone, or an entry of a kind this version does not know, decides nothing here.
    let Some(payload) = message.payload() else {
        return;
    };
    if let Some(key) = message
        .key()
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|k| k.starts_with(memory::KEY_PREFIX))
    {
        if payload.len() <= MAX_ENTRY_BYTES
            && let Ok(mark) = serde_json::from_slice::<Mark>(payload)
        {
            guard.memory.apply(key, mark, guard.now_ms());
        }
        return;
    }
    if message.key().is_some_and(|k| k.starts_with(DEMAND_PREFIX)) {
        if !replaying && let Ok(d) = serde_json::from_slice::<DemandRecord>(payload) {
            guard.demands.record(&d.worker, d.waiting);
        }
        return;
    }
    if payload.len() > MAX_ENTRY_BYTES {
        tracing::warn!(
            offset = message.offset(),
            bytes = payload.len(),
            "the guard's state topic: an entry too large to be a guard's; skipped"
        );
        return;
    }
    match serde_json::from_slice::<Record>(payload) {
        Ok(r) => {
            let mine = (r.worker == worker).then_some(r.seq);
            guard.apply(r.entry, r.event.as_deref(), mine);
        }
        Err(e) => tracing::warn!(
            offset = message.offset(),
            error = %e,
            "the guard's state topic: an entry that is not a guard's; skipped"
        ),
    }
}
