//! How outcomes and dead letters are framed on their topics: offboarder's own format (the
//! outcome JSON as the value, `traceparent` in a header), or CloudEvents 1.0 with its Kafka
//! protocol binding, for SOC tools that read a standard envelope.
//!
//! In CloudEvents' binary mode (the default with `format = "cloudevents"`) the value stays
//! exactly what it is in the native format and the attributes travel as `ce_*` headers, so a
//! reader that ignores headers sees no change. Structured mode puts the whole event, the
//! outcome under `data`, in the value (`content-type: application/cloudevents+json`).
//!
//! Attributes: `id` is the outcome's `outcome_id` (unique per outcome; with `source`, what a
//! consumer deduplicates on), and a dead letter's is its input's place
//! (`topic/partition/offset`), so that a dead letter published again after a crash is the same
//! event. `type` is `com.offboarder.outcome.<status>` or `com.offboarder.deadletter.<reason>`,
//! `subject` the user, `time` when the record was made, and the event's W3C trace context
//! travels as the distributed-tracing extension (`ce_traceparent`), besides the plain
//! `traceparent` header that every record carries.

use rdkafka::message::{Header, OwnedHeaders};
use serde::Deserialize;
use serde_json::{Map, Value};

use offboarder_base::clock::{WallClock, rfc3339};

use crate::outcome::Outcome;

/// The `$id` of the outcome schema: the `dataschema` of outcome events.
pub const OUTCOME_SCHEMA: &str = "https://offboarder.dev/schemas/outcome.v1.json";
const SPEC_VERSION: &str = "1.0";
const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";

/// The `[outcomes]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutcomesConfig {
    /// `native` (the default) or `cloudevents`.
    pub format: Format,
    /// With `cloudevents`: `binary` (the default: `ce_*` headers, the value unchanged) or
    /// `structured` (the whole event in the value).
    pub mode: Mode,
    /// The CloudEvents `source`: a URI reference that names this deployment. Default:
    /// `urn:offboarder:<kafka.group_id>`.
    pub source: Option<String>,
}

impl Default for OutcomesConfig {
    fn default() -> Self {
        Self {
            format: Format::Native,
            mode: Mode::Binary,
            source: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Native,
    Cloudevents,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Binary,
    Structured,
}

impl OutcomesConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(source) = &self.source
            && (source.trim().is_empty() || source.chars().any(char::is_whitespace))
        {
            return Err(format!(
                "outcomes.source {source:?} must be a URI reference (no spaces)"
            ));
        }
        Ok(())
    }
}

/// A record's value and headers, framed.
pub struct Framed {
    pub payload: Vec<u8>,
    pub headers: OwnedHeaders,
}

/// Frames records as configured.
pub struct Envelope {
    format: Format,
    mode: Mode,
    source: String,
    clock: WallClock,
}

/// A dead letter's place and reason, for its envelope.
pub struct DeadLetterRef<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub reason: &'a str,
    pub key: Option<&'a [u8]>,
}

impl Envelope {
    pub fn new(config: &OutcomesConfig, group_id: &str) -> Self {
        Self {
            format: config.format,
            mode: config.mode,
            source: config
                .source
                .clone()
                .unwrap_or_else(|| format!("urn:offboarder:{group_id}")),
            clock: WallClock::new(),
        }
    }

    /// An outcome with the trace context of its event.
    pub fn outcome(&self, outcome: &Outcome, traceparent: &str) -> Framed {
        let payload = outcome.to_json();
        let headers = OwnedHeaders::new().insert(header("traceparent", traceparent));
        if self.format == Format::Native {
            return Framed { payload, headers };
        }
        let attributes = Attributes {
            id: &outcome.outcome_id,
            kind: format!("com.offboarder.outcome.{}", outcome.status.as_str()),
            subject: Some(&outcome.user_name),
            content_type: Some("application/json"),
            schema: Some(OUTCOME_SCHEMA),
            traceparent,
        };
        self.frame(attributes, headers, payload, Data::Json)
    }

    /// A dead letter: `payload` is the input as it came, `headers` the dead-letter headers.
    pub fn dead_letter(
        &self,
        place: &DeadLetterRef<'_>,
        headers: OwnedHeaders,
        payload: Vec<u8>,
        traceparent: &str,
    ) -> Framed {
        if self.format == Format::Native {
            return Framed { payload, headers };
        }
        let id = format!("{}/{}/{}", place.topic, place.partition, place.offset);
        let subject = place.key.and_then(|k| std::str::from_utf8(k).ok());
        let data = if serde_json::from_slice::<Value>(&payload).is_ok() {
            Data::Json
        } else if std::str::from_utf8(&payload).is_ok() {
            Data::Text
        } else {
            Data::Bytes
        };
        let attributes = Attributes {
            id: &id,
            kind: format!("com.offboarder.deadletter.{}", place.reason),
            subject,
            content_type: match data {
                Data::Json => Some("application/json"),
                Data::Text => Some("text/plain; charset=utf-8"),
                Data::Bytes => Some("application/octet-stream"),
            },
            schema: None,
            traceparent,
        };
        self.frame(attributes, headers, payload, data)
    }

    fn frame(
        &self,
        a: Attributes<'_>,
        headers: OwnedHeaders,
        payload: Vec<u8>,
        data: Data,
    ) -> Framed {
        let time = rfc3339(self.clock.now_datetime());
        match self.mode {
            Mode::Binary => {
                let mut headers = headers
                    .insert(header("ce_specversion", SPEC_VERSION))
                    .insert(header("ce_id", a.id))
                    .insert(header("ce_source", &self.source))
                    .insert(header("ce_type", &a.kind))
                    .insert(header("ce_time", &time))
                    .insert(header("ce_traceparent", a.traceparent));
                if let Some(subject) = a.subject {
                    headers = headers.insert(header("ce_subject", subject));
                }
                if let Some(schema) = a.schema {
                    headers = headers.insert(header("ce_dataschema", schema));
                }
                if let Some(content_type) = a.content_type {
                    headers = headers.insert(header("content-type", content_type));
                }
                Framed { payload, headers }
            }
            Mode::Structured => {
                let mut event = Map::new();
                let mut put = |k: &str, v: &str| {
                    event.insert(k.into(), Value::from(v));
                };
                put("specversion", SPEC_VERSION);
                put("id", a.id);
                put("source", &self.source);
                put("type", &a.kind);
                put("time", &time);
                put("traceparent", a.traceparent);
                if let Some(subject) = a.subject {
                    put("subject", subject);
                }
                if let Some(schema) = a.schema {
                    put("dataschema", schema);
                }
                if let Some(content_type) = a.content_type {
                    put("datacontenttype", content_type);
                }
                match data {
                    Data::Json => {
                        let value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
                        event.insert("data".into(), value);
                    }
                    Data::Text => {
                        let text = String::from_utf8_lossy(&payload).into_owned();
                        event.insert("data".into(), Value::from(text));
                    }
                    Data::Bytes => {
                        use base64::Engine as _;
                        let encoded = base64::engine::general_purpose::STANDARD.encode(&payload);
                        event.insert("data_base64".into(), Value::from(encoded));
                    }
                }
                Framed {
                    payload: serde_json::to_vec(&event).unwrap_or_default(),
                    headers: headers.insert(header("content-type", STRUCTURED_CONTENT_TYPE)),
                }
            }
        }
    }
}

struct Attributes<'a> {
    id: &'a str,
    kind: String,
    subject: Option<&'a str>,
    content_type: Option<&'a str>,
    schema: Option<&'a str>,
    traceparent: &'a str,
}

/// What the value holds, for a structured event's `data`.
#[derive(Clone, Copy)]
enum Data {
    Json,
    Text,
    Bytes,
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    fn headers_of(h: &OwnedHeaders) -> Vec<(String, String)> {
        h.iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect()
    }

    fn get<'a>(h: &'a [(String, String)], k: &str) -> Option<&'a str> {
        h.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }

    fn envelope(format: Format, mode: Mode) -> Envelope {
        Envelope::new(
            &OutcomesConfig {
                format,
                mode,
                source: None,
            },
            "offboarder",
        )
    }

    const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_dead_letter_keeps_its_bytes_in_binary_mode_and_is_embedded_in_structured_mode() {
        let place = DeadLetterRef {
            topic: "xdr.signals",
            partition: 2,
            offset: 41,
            reason: "invalid_json",
            key: Some(b"alice@example.com"),
        };
        let binary = envelope(Format::Cloudevents, Mode::Binary).dead_letter(
            &place,
            OwnedHeaders::new(),
            b"not json".to_vec(),
            TRACE,
        );
        assert_eq!(binary.payload, b"not json");
        let h = headers_of(&binary.headers);
        assert_eq!(get(&h, "ce_id"), Some("xdr.signals/2/41"));
        assert_eq!(
            get(&h, "ce_type"),
            Some("com.offboarder.deadletter.invalid_json")
        );
        assert_eq!(get(&h, "ce_subject"), Some("alice@example.com"));
        assert_eq!(get(&h, "ce_source"), Some("urn:offboarder:offboarder"));
        assert_eq!(get(&h, "ce_traceparent"), Some(TRACE));
        assert_eq!(get(&h, "content-type"), Some("text/plain; charset=utf-8"));

        let structured = envelope(Format::Cloudevents, Mode::Structured).dead_letter(
            &place,
            OwnedHeaders::new(),
            vec![0xff, 0x00],
            TRACE,
        );
        let event: Value = serde_json::from_slice(&structured.payload).expect("JSON");
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["data_base64"], "/wA=");
        assert!(event.get("data").is_none());
        let native = envelope(Format::Native, Mode::Structured).dead_letter(
            &place,
            OwnedHeaders::new(),
            b"raw".to_vec(),
            TRACE,
        );
        assert_eq!(native.payload, b"raw");
        assert!(headers_of(&native.headers).is_empty());
    }
}
