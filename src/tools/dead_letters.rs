//! `offboarder dead-letters list|replay`: see why events were not processed, and send chosen
//! ones back to their input topic, fixed if need be.
//!
//! A dead letter is the original record, byte for byte, with the reason and where it came
//! from in headers (see [`crate::pipeline::publish::header`]). A replay publishes those bytes
//! (or a fixed copy) to the original topic with the original key, and records the replay in
//! the header `offboarder-replayed-from` (`<dead-letter topic>/<partition>/<offset>`), which
//! stays on the record if it fails again. The worker then handles it as a new event: its own
//! outcome, or a new dead letter.
//!
//! Nothing is replayed without a selection, and only to the two input topics.

use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use serde_json::Value;

use super::{ToolError, publish, read_topic};
use crate::pipeline::config::KafkaConfig;
use crate::pipeline::publish::{header, header_text};

/// The header that records a replay.
pub const REPLAYED_FROM: &str = "offboarder-replayed-from";
/// Most dead letters listed or replayed in one run.
pub const MAX_RECORDS: usize = 10_000;

/// Which dead letters: all that match every given criterion.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// The `offboarder-reason` header, e.g. `schema_violation`.
    pub reason: Option<String>,
    /// A partition of the dead-letter topic.
    pub partition: Option<i32>,
    /// Offsets of the dead-letter topic, both ends included.
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl Selection {
    fn matches(&self, dead: &DeadLetter) -> bool {
        self.reason.as_deref().is_none_or(|r| dead.reason == r)
            && self.partition.is_none_or(|p| dead.partition == p)
            && self.from.is_none_or(|f| dead.offset >= f)
            && self.to.is_none_or(|t| dead.offset <= t)
    }
}

/// One dead letter, as `list` shows it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    pub error: String,
    /// Where the event was read: topic, partition, offset.
    pub source: Option<(String, String, String)>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The payload was too large for the dead-letter topic and is not there.
    pub payload_omitted: bool,
    /// An earlier replay this record came from, when it failed again.
    pub replayed_from: Option<String>,
}

impl DeadLetter {
    fn from_record(m: &OwnedMessage) -> Self {
        let text = |name| header_text(m, name);
        let source = match (
            text(header::SOURCE_TOPIC),
            text(header::SOURCE_PARTITION),
            text(header::SOURCE_OFFSET),
        ) {
            (Some(t), Some(p), Some(o)) => Some((t, p, o)),
            _ => None,
        };
        Self {
            partition: m.partition(),
            offset: m.offset(),
            reason: text(header::REASON).unwrap_or_default(),
            error: text(header::ERROR).unwrap_or_default(),
            source,
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            payload_omitted: text(header::PAYLOAD_OMITTED).is_some(),
            replayed_from: text(REPLAYED_FROM),
        }
    }

    /// One line for `list`.
    pub fn line(&self, dead_letter_topic: &str) -> String {
        let source = self
            .source
            .as_ref()
            .map_or("-".to_string(), |(t, p, o)| format!("{t}/{p}/{o}"));
        let mut error: String = self.error.chars().take(160).collect();
        if self.error.chars().count() > 160 {
            error.push('…');
        }
        format!(
            "{dead_letter_topic}/{}/{}  {:<18} from {source}  {} bytes{}{}  {error}",
            self.partition,
            self.offset,
            self.reason,
            self.payload.len(),
            if self.payload_omitted {
                " (payload omitted)"
            } else {
                ""
            },
            self.replayed_from
                .as_ref()
                .map_or(String::new(), |r| format!(" (a replay of {r})")),
        )
    }
}

/// The dead letters that match `selection`, in log order.
pub async fn list(
    kafka: &KafkaConfig,
    selection: &Selection,
) -> Result<(Vec<DeadLetter>, bool), ToolError> {
    let read = read_topic(kafka, &kafka.topics.dead_letter, MAX_RECORDS, |m| {
        selection.matches(&DeadLetter::from_record(m))
    })
    .await?;
    let mut dead: Vec<DeadLetter> = read.records.iter().map(DeadLetter::from_record).collect();
    dead.sort_by_key(|d| (d.partition, d.offset));
    Ok((dead, read.truncated))
}

/// A fix applied to each replayed event: the JSON value at a JSON pointer (RFC 6901), e.g.
/// `/user/user_name` = `"bob@example.com"`. Missing objects on the way are created.
#[derive(Debug, Clone, PartialEq)]
pub struct Fix {
    pub pointer: String,
    pub value: Value,
}

impl std::str::FromStr for Fix {
    type Err = String;

    /// `POINTER=JSON`, e.g. `/user/user_name="bob@example.com"` or `/risk_score=90`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (pointer, value) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: write POINTER=JSON, e.g. /risk_score=90"))?;
        if !pointer.starts_with('/') {
            return Err(format!(
                "{pointer:?}: a JSON pointer starts with '/', e.g. /user/user_name"
            ));
        }
        let value = serde_json::from_str(value).map_err(|e| {
            format!(
                "{value:?} is not JSON ({e}); quote a string: /user/user_name=\"bob@example.com\""
            )
        })?;
        Ok(Fix {
            pointer: pointer.to_string(),
            value,
        })
    }
}

impl Fix {
    fn apply(&self, doc: &mut Value) -> Result<(), String> {
        let tokens: Vec<String> = self.pointer[1..]
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        let mut at = doc;
        for (i, token) in tokens.iter().enumerate() {
            let Some(object) = at.as_object_mut() else {
                return Err(format!(
                    "{}: /{} is not an object",
                    self.pointer,
                    tokens[..i].join("/")
                ));
            };
            if i + 1 == tokens.len() {
                object.insert(token.clone(), self.value.clone());
                return Ok(());
            }
            at = object
                .entry(token.clone())
                .or_insert_with(|| Value::Object(Default::default()));
        }
        Ok(())
    }
}

/// What a replay did with one dead letter.
#[derive(Debug)]
pub enum Replayed {
    /// Published to `topic` at `partition`/`offset` (or, in a dry run, would have been).
    Sent {
        topic: String,
        partition: i32,
        offset: i64,
    },
    /// Not published, and why.
    Refused(String),
}

/// Publishes each selected dead letter to its input topic, with `fixes` applied.
pub async fn replay(
    kafka: &KafkaConfig,
    dead: &[DeadLetter],
    fixes: &[Fix],
    dry_run: bool,
) -> Result<Vec<(DeadLetter, Replayed)>, ToolError> {
    let inputs = [&kafka.topics.terminations, &kafka.topics.risk_signals];
    let producer = super::producer(kafka)?;
    let mut done = Vec::new();
    for d in dead {
        let refuse = |why: String| (d.clone(), Replayed::Refused(why));
        let Some((topic, _, _)) = &d.source else {
            done.push(refuse("no offboarder-source-topic header".into()));
            continue;
        };
        if !inputs.contains(&topic) {
            done.push(refuse(format!("{topic} is not an input topic")));
            continue;
        }
        if d.payload_omitted {
            done.push(refuse(
                "the payload was too large for the dead-letter topic and is not there; replay it from the source"
                    .into(),
            ));
            continue;
        }
        let payload = if fixes.is_empty() {
            d.payload.clone()
        } else {
            let mut doc: Value = match serde_json::from_slice(&d.payload) {
                Ok(doc) => doc,
                Err(e) => {
                    done.push(refuse(format!("--set needs a JSON payload: {e}")));
                    continue;
                }
            };
            if let Err(e) = fixes.iter().try_for_each(|f| f.apply(&mut doc)) {
                done.push(refuse(e));
                continue;
            }
            serde_json::to_vec(&doc).map_err(|e| ToolError::Config(e.to_string()))?
        };
        if dry_run {
            done.push((
                d.clone(),
                Replayed::Sent {
                    topic: topic.clone(),
                    partition: -1,
                    offset: -1,
                },
            ));
            continue;
        }
        let from = format!("{}/{}/{}", kafka.topics.dead_letter, d.partition, d.offset);
        let headers = OwnedHeaders::new().insert(Header {
            key: REPLAYED_FROM,
            value: Some(&from),
        });
        let (partition, offset) =
            publish(&producer, topic, d.key.as_deref(), &payload, headers).await?;
        done.push((
            d.clone(),
            Replayed::Sent {
                topic: topic.clone(),
                partition,
                offset,
            },
        ));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_fix_sets_a_value_at_a_pointer_and_creates_what_is_missing() {
        let mut doc = json!({"event_id": "e1", "user": {"user_name": "Bob"}});
        let fix: Fix = "/user/user_name=\"bob@example.com\"".parse().unwrap();
        fix.apply(&mut doc).unwrap();
        let fix: Fix = "/occurred_at=\"2026-12-01T00:00:00Z\"".parse().unwrap();
        fix.apply(&mut doc).unwrap();
        let fix: Fix = "/a~1b/c=1".parse().unwrap();
        fix.apply(&mut doc).unwrap();
        assert_eq!(
            doc,
            json!({"event_id": "e1", "user": {"user_name": "bob@example.com"},
                   "occurred_at": "2026-12-01T00:00:00Z", "a/b": {"c": 1}})
        );
        let into_a_string: Fix = "/event_id/x=1".parse().unwrap();
        assert!(into_a_string.apply(&mut doc).is_err());
    }

    #[test]
    fn a_fix_must_be_a_pointer_and_json() {
        assert!("user_name=\"x\"".parse::<Fix>().is_err(), "not a pointer");
        let err = "/user/user_name=bob".parse::<Fix>().unwrap_err();
        assert!(err.contains("quote a string"), "{err}");
        assert!("/x".parse::<Fix>().is_err(), "no value");
    }
}
