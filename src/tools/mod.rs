//! Operator tools: commands that read or write the topics directly, for people rather than
//! for the worker.
//!
//! - [`act`]: `offboarder act` publishes an operator's action as an ordinary input event, so
//!   that it goes through policy, the guard, verification and outcomes like any other;
//! - [`history`]: `offboarder history` prints one user's outcomes, oldest first, for an
//!   auditor;
//! - [`dead_letters`]: `offboarder dead-letters list|replay` shows dead letters with their
//!   reasons and sends chosen ones, fixed if need be, back to their input topic.
//!
//! They run beside the worker, never instead of it: they act on Netskope only through events
//! the worker consumes.

pub mod act;
pub mod dead_letters;
pub mod history;

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::pipeline::config::KafkaConfig;

/// Why a tool could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The config, or what the operator asked, cannot work.
    #[error("{0}")]
    Config(String),
    /// The brokers failed or did not answer.
    #[error("kafka: {0}")]
    Kafka(String),
}

/// How long a tool waits for the brokers on any one request.
const BROKER_TIMEOUT: Duration = Duration::from_secs(30);

/// Every record of `topic`, partition by partition in log order, up to its end as of now, and
/// at most `max` of them (`truncated` says when more were left). `keep` filters as they come,
/// so that only the kept ones are held.
pub async fn read_topic(
    kafka: &KafkaConfig,
    topic: &str,
    max: usize,
    keep: impl Fn(&OwnedMessage) -> bool,
) -> Result<Read, ToolError> {
    let config = kafka
        .tool_reader_config()
        .map_err(|e| ToolError::Config(e.to_string()))?;
    let consumer: StreamConsumer = config
        .create()
        .map_err(|e| ToolError::Kafka(format!("cannot create a reader: {e}")))?;
    let consumer = std::sync::Arc::new(consumer);
    let ends = {
        let (consumer, topic) = (consumer.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || partition_ends(&consumer, &topic))
            .await
            .map_err(|e| ToolError::Kafka(format!("reading the topic's ends did not run: {e}")))??
    };
    {
        // Dropped before the consumer can be: a list alive at a consumer's drop hangs it.
        let mut assignment = TopicPartitionList::new();
        for &(partition, low, high) in &ends {
            if high > low {
                assignment
                    .add_partition_offset(topic, partition, Offset::Offset(low))
                    .map_err(|e| ToolError::Kafka(e.to_string()))?;
            }
        }
        consumer
            .assign(&assignment)
            .map_err(|e| ToolError::Kafka(format!("cannot read {topic}: {e}")))?;
    }
    let mut left: std::collections::HashMap<i32, i64> = ends
        .iter()
        .filter(|(_, low, high)| high > low)
        .map(|&(p, _, high)| (p, high))
        .collect();
    let mut read = Read::default();
    while !left.is_empty() {
        let message = tokio::time::timeout(BROKER_TIMEOUT, consumer.recv())
            .await
            .map_err(|_| ToolError::Kafka(format!("{topic} stopped answering")))?
            .map_err(|e| ToolError::Kafka(format!("cannot read {topic}: {e}")))?;
        read.scanned += 1;
        let (partition, offset) = (message.partition(), message.offset());
        if left.get(&partition).is_some_and(|end| offset + 1 >= *end) {
            left.remove(&partition);
        }
        let message = message.detach();
        if keep(&message) {
            if read.records.len() == max {
                read.truncated = true;
                break;
            }
            read.records.push(message);
        }
    }
    Ok(read)
}

/// What [`read_topic`] kept.
#[derive(Default)]
pub struct Read {
    pub records: Vec<OwnedMessage>,
    /// Records read, kept or not.
    pub scanned: u64,
    /// `max` were kept before the end: there are more.
    pub truncated: bool,
}

/// Each partition of `topic` with its low and high watermarks.
fn partition_ends(
    consumer: &StreamConsumer,
    topic: &str,
) -> Result<Vec<(i32, i64, i64)>, ToolError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), BROKER_TIMEOUT)
        .map_err(|e| ToolError::Kafka(format!("cannot describe {topic}: {e}")))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(ToolError::Config(format!(
            "topic {topic} does not exist (or this principal may not describe it)"
        )));
    }
    partitions
        .into_iter()
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, BROKER_TIMEOUT)
                .map(|(low, high)| (p, low, high))
                .map_err(|e| ToolError::Kafka(format!("cannot read the end of {topic}/{p}: {e}")))
        })
        .collect()
}

/// A producer for the tools: the worker's producer settings (idempotent, acks from all
/// in-sync replicas).
pub fn producer(kafka: &KafkaConfig) -> Result<FutureProducer, ToolError> {
    kafka
        .producer_config()
        .map_err(|e| ToolError::Config(e.to_string()))?
        .create()
        .map_err(|e| ToolError::Kafka(format!("cannot create a producer: {e}")))
}

/// Publishes one record and waits for the brokers to acknowledge it; returns its partition
/// and offset.
pub async fn publish(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: OwnedHeaders,
) -> Result<(i32, i64), ToolError> {
    let mut record = FutureRecord::to(topic).payload(payload).headers(headers);
    if let Some(key) = key {
        record = record.key(key);
    }
    producer
        .send(record, BROKER_TIMEOUT)
        .await
        .map(|delivery| (delivery.partition, delivery.offset))
        .map_err(|(e, _)| ToolError::Kafka(format!("cannot publish to {topic}: {e}")))
}
