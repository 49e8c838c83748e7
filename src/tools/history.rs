//! `offboarder history`: one user's outcomes, oldest first, for an auditor.
//!
//! The outcomes topic is keyed by the lower-cased user name, so a user's outcomes are all in
//! one partition, in the order they were published. The command reads the topic to its end as
//! of now (every partition: which one holds the key depends on the producer's partitioner)
//! and keeps the records with that key.

use rdkafka::message::{Message, OwnedMessage};
use serde_json::Value;

use super::{ToolError, read_topic};
use crate::pipeline::config::KafkaConfig;

/// Most outcomes kept for one user; more are reported, not printed.
pub const MAX_OUTCOMES: usize = 100_000;

/// The user's outcomes, oldest first, and whether there were more than [`MAX_OUTCOMES`].
pub async fn history(kafka: &KafkaConfig, user: &str) -> Result<(Vec<Value>, bool), ToolError> {
    let key = user.to_lowercase();
    let read = read_topic(kafka, &kafka.topics.outcomes, MAX_OUTCOMES, |m| {
        m.key() == Some(key.as_bytes())
    })
    .await?;
    let mut records: Vec<&OwnedMessage> = read.records.iter().collect();
    records.sort_by_key(|m| (m.partition(), m.offset()));
    let outcomes = records
        .into_iter()
        .filter_map(|m| serde_json::from_slice::<Value>(m.payload()?).ok())
        .collect();
    Ok((outcomes, read.truncated))
}

/// One outcome as a line: when, what, how it ended, and for which event.
pub fn line(o: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let ts = &o["timestamps"];
    let when = ["verified", "acted", "received"]
        .iter()
        .find_map(|k| ts[*k].as_str())
        .unwrap_or("-");
    let detail = o["verification"]["evidence"]
        .as_str()
        .or(o["error"]["message"].as_str())
        .or(o["reason"].as_str())
        .unwrap_or("");
    format!(
        "{when}  {:<10} {:<10} event {} ({} {}/{})  {detail}",
        text(&o["action"]),
        text(&o["status"]),
        text(&o["source_event_id"]),
        text(&o["source"]["topic"]),
        o["source"]["partition"],
        o["source"]["offset"],
    )
}
