//! Inbound events: the bytes of one Kafka record, checked and turned into a typed [`Event`].
//!
//! The topic a record came from decides which schema it must satisfy ([`EventKind`]); nothing in
//! the payload is trusted to say what it is. The schemas in `schemas/` are the contract with the
//! producers, and they are embedded into the binary with `include_str!` so that the code and the
//! published schema files cannot drift apart: a schema that does not compile fails the tests and
//! [`Schemas::load`] at start, never an event.
//!
//! Every refusal is a [`Rejection`] whose reason and detail go into the dead-letter record. Input
//! may be huge or hostile, so the size is checked before parsing, and a detail never quotes more
//! than 200 characters of the input per violation.

use std::fmt::{self, Display, Write as _};
use std::str::FromStr;

use jsonschema::{ValidationError, Validator};
use serde::de::DeserializeOwned;
use serde_json::Value;
use time::OffsetDateTime;

/// At most this many violations are listed in a rejection's detail; the rest are only counted.
const MAX_LISTED_VIOLATIONS: usize = 5;
/// Each message in a detail is cut to this many characters, because jsonschema and serde quote
/// the offending value and it may be as large as the whole payload.
const MAX_MESSAGE_CHARS: usize = 200;
/// An instance path names schema properties, so it is short; the cap is only a safety net.
const MAX_PATH_CHARS: usize = 100;
/// A whole detail stays small enough for a Kafka header and a log line.
const MAX_DETAIL_CHARS: usize = 1024;

/// Which topic an event came from decides which schema it must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Termination,
    RiskSignal,
}

impl EventKind {
    /// The schema's file name in `schemas/` without `.json`; also used in logs and reports.
    pub fn schema_name(self) -> &'static str {
        match self {
            EventKind::Termination => "hr-termination.v1",
            EventKind::RiskSignal => "risk-signal.v1",
        }
    }

    fn schema_source(self) -> &'static str {
        match self {
            EventKind::Termination => include_str!("../schemas/hr-termination.v1.json"),
            EventKind::RiskSignal => include_str!("../schemas/risk-signal.v1.json"),
        }
    }
}

/// The person an event is about.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct EventUser {
    /// The Netskope SCIM `userName`, usually the email address; used exactly as sent.
    pub user_name: String,
    #[serde(default)]
    pub employee_id: Option<String>,
}

/// An HR system says a person has left or is leaving (schema `hr-termination.v1`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Termination {
    pub event_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    pub user: EventUser,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// When access should end, if not at `occurred_at`.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub effective_at: Option<OffsetDateTime>,
    /// The HR system withdrew this user's termination: cancel it, or undo it.
    #[serde(default)]
    pub rescinded: bool,
}

/// A security product's severity. Ordered `Low < Medium < High < Critical` so a configured
/// minimum can be compared directly.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        })
    }
}

/// A string that is not one of the lowercase severity names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown severity {0:?}: expected low, medium, high or critical")]
pub struct ParseSeverityError(pub String);

impl FromStr for Severity {
    type Err = ParseSeverityError;

    /// Accepts exactly the names the schema and [`Display`] use, so config and events agree.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "low" => Ok(Severity::Low),
            "medium" => Ok(Severity::Medium),
            "high" => Ok(Severity::High),
            "critical" => Ok(Severity::Critical),
            _ => Err(ParseSeverityError(s.to_owned())),
        }
    }
}

/// Whether a risk signal is raised or withdrawn; producers that never clear omit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalState {
    #[default]
    Open,
    Cleared,
}

/// A security product reports risk for a user (schema `risk-signal.v1`). The schema guarantees
/// that at least one of `risk_score` and `severity` is present.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RiskSignal {
    pub event_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    pub user: EventUser,
    pub source: String,
    #[serde(default)]
    pub risk_score: Option<u8>,
    #[serde(default)]
    pub severity: Option<Severity>,
    #[serde(default)]
    pub state: SignalState,
    #[serde(default)]
    pub detection_id: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// One decoded inbound event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Termination(Termination),
    RiskSignal(RiskSignal),
}

impl Event {
    pub fn event_id(&self) -> &str {
        match self {
            Event::Termination(termination) => &termination.event_id,
            Event::RiskSignal(signal) => &signal.event_id,
        }
    }

    /// Who asked: the event's `source` (the HR system, the security product, or
    /// `operator:<name>` for `offboarder act`).
    pub fn origin(&self) -> Option<&str> {
        match self {
            Event::Termination(termination) => termination.source.as_deref(),
            Event::RiskSignal(signal) => Some(&signal.source),
        }
    }

    pub fn user_name(&self) -> &str {
        match self {
            Event::Termination(termination) => &termination.user.user_name,
            Event::RiskSignal(signal) => &signal.user.user_name,
        }
    }

    pub fn kind(&self) -> EventKind {
        match self {
            Event::Termination(_) => EventKind::Termination,
            Event::RiskSignal(_) => EventKind::RiskSignal,
        }
    }
}

/// Why an input was refused; goes into the dead-letter record's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// No payload at all (a tombstone) or zero bytes.
    Empty,
    /// Larger than the configured limit; never parsed.
    Oversized,
    /// Not JSON at all, or not valid UTF-8.
    NotUtf8Json,
    /// JSON, but not an event of the topic's schema.
    SchemaViolation,
    /// A Security Event Token on the risk-signals topic that was refused: its signature,
    /// claims, events or subject (the detail names the RFC 8935 error code).
    InvalidSet,
    /// A verified Security Event Token whose events the `[ssf.events]` rules ignore: nothing
    /// to act on. Not counted by the dead-letter flood limit.
    IgnoredSet,
}

impl RejectReason {
    /// Stable names for headers, logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Empty => "empty",
            RejectReason::Oversized => "oversized",
            RejectReason::NotUtf8Json => "invalid_json",
            RejectReason::SchemaViolation => "schema_violation",
            RejectReason::InvalidSet => "invalid_set",
            RejectReason::IgnoredSet => "ignored_set",
        }
    }
}

impl Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An input that will never become an event, with a bounded explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// The compiled schemas, built once at start.
pub struct Schemas {
    termination: Validator,
    risk_signal: Validator,
}

impl Schemas {
    /// Compiles the schemas embedded from `schemas/`. An error here is a build defect, not a
    /// bad event, so the worker should refuse to start.
    pub fn load() -> Result<Self, String> {
        Ok(Schemas {
            termination: compile(EventKind::Termination)?,
            risk_signal: compile(EventKind::RiskSignal)?,
        })
    }

    /// Decodes one Kafka payload of the given kind: size first (so an oversized payload is
    /// never parsed), then JSON, then the schema, then the typed struct.
    pub fn decode(
        &self,
        kind: EventKind,
        payload: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<Event, Rejection> {
        let bytes = match payload {
            None => {
                return Err(Rejection::new(
                    RejectReason::Empty,
                    "the record has no value",
                ));
            }
            Some([]) => return Err(Rejection::new(RejectReason::Empty, "the value is empty")),
            Some(bytes) => bytes,
        };
        if bytes.len() > max_bytes {
            return Err(Rejection::new(
                RejectReason::Oversized,
                format!(
                    "the value is {} bytes; the limit is {max_bytes}",
                    bytes.len()
                ),
            ));
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|error| Rejection::new(RejectReason::NotUtf8Json, bounded(&error)))?;

        let validator = self.validator(kind);
        if !validator.is_valid(&value) {
            return Err(Rejection::new(
                RejectReason::SchemaViolation,
                violations_detail(validator.iter_errors(&value)),
            ));
        }
        match kind {
            EventKind::Termination => typed(value).map(Event::Termination),
            EventKind::RiskSignal => typed(value).map(Event::RiskSignal),
        }
    }

    fn validator(&self, kind: EventKind) -> &Validator {
        match kind {
            EventKind::Termination => &self.termination,
            EventKind::RiskSignal => &self.risk_signal,
        }
    }
}

fn compile(kind: EventKind) -> Result<Validator, String> {
    let name = kind.schema_name();
    let schema: Value = serde_json::from_str(kind.schema_source())
        .map_err(|error| format!("schemas/{name}.json is not valid JSON: {error}"))?;
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .map_err(|error| {
            format!("schemas/{name}.json is not a valid JSON Schema (draft 2020-12): {error}")
        })
}

/// The serde step after the schema passed. The schema is meant to make this infallible, but
/// where the two disagree (a score written as `91.0` is an integer to JSON Schema, not a `u8` to
/// serde) the event is refused the same way.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, Rejection> {
    serde_json::from_value(value).map_err(|error| {
        let detail = format_args!("passes the schema but not the event type: {error}");
        Rejection::new(RejectReason::SchemaViolation, bounded(&detail))
    })
}

/// Lists the first violations as `<instance path>: <message>`, each bounded.
fn violations_detail<'a>(violations: impl Iterator<Item = ValidationError<'a>>) -> String {
    let mut detail = String::new();
    let mut unlisted = 0usize;
    for (index, violation) in violations.enumerate() {
        if index >= MAX_LISTED_VIOLATIONS {
            unlisted += 1;
            continue;
        }
        if index > 0 {
            detail.push_str("; ");
        }
        let path = violation.instance_path().as_str();
        push_bounded(
            &mut detail,
            if path.is_empty() { "(root)" } else { path },
            MAX_PATH_CHARS,
        );
        detail.push_str(": ");
        detail.push_str(&violation_message(&violation));
    }
    if unlisted > 0 {
        detail.push_str(&format!("; and {unlisted} more"));
    }
    bounded_to(&detail, MAX_DETAIL_CHARS)
}

/// jsonschema's message quotes the offending value, often at its start. The masked form
/// ("value is longer than 512 characters") is used when quoting would not fit, where it keeps
/// the explanation that a cut-off quote would lose, and for objects and arrays, where the quote
/// would be the event itself and the instance path already says which part is meant.
fn violation_message(violation: &ValidationError<'_>) -> String {
    // "not valid under any of the schemas listed in 'anyOf'" does not say what is missing; the
    // branches' own errors do ("\"risk_score\" is a required property").
    if let jsonschema::error::ValidationErrorKind::AnyOf { context } = violation.kind() {
        let branches: Vec<String> = context
            .iter()
            .filter_map(|errors| errors.first())
            .map(|e| bounded(&e.masked()))
            .collect();
        if !branches.is_empty() {
            return bounded(&format_args!(
                "one of these must hold: {}",
                branches.join(", or ")
            ));
        }
    }
    let is_structure = matches!(
        violation.instance().as_ref(),
        Value::Object(_) | Value::Array(_)
    );
    if !is_structure {
        let mut quoted = String::new();
        if !push_bounded(&mut quoted, violation, MAX_MESSAGE_CHARS) {
            return quoted;
        }
    }
    bounded(&violation.masked())
}

fn bounded(value: &impl Display) -> String {
    bounded_to(value, MAX_MESSAGE_CHARS)
}

fn bounded_to(value: &impl Display, limit: usize) -> String {
    let mut out = String::new();
    push_bounded(&mut out, value, limit);
    out
}

/// Appends at most `limit` characters of `value`, ending in `…` if it was cut, and returns
/// whether it was. Rendering stops at the limit, so a huge value is never rendered in full.
fn push_bounded(out: &mut String, value: impl Display, limit: usize) -> bool {
    let mut writer = BoundedWriter {
        out,
        remaining: limit,
        cut: false,
    };
    // The only error is the writer's own "limit reached", recorded in `cut`.
    let _ = write!(writer, "{value}");
    if writer.cut {
        writer.out.pop();
        writer.out.push('…');
    }
    writer.cut
}

/// A `fmt::Write` that takes whole characters up to a limit, then fails to end the rendering.
struct BoundedWriter<'a> {
    out: &'a mut String,
    remaining: usize,
    cut: bool,
}

impl fmt::Write for BoundedWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for (taken, (offset, _)) in s.char_indices().enumerate() {
            if taken == self.remaining {
                self.out.push_str(&s[..offset]);
                self.remaining = 0;
                self.cut = true;
                return Err(fmt::Error);
            }
        }
        self.remaining -= s.chars().count();
        self.out.push_str(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::sync::LazyLock;

    const LIMIT: usize = 64 * 1024;

    /// Compiled once for all tests, as the worker does at start.
    fn schemas() -> &'static Schemas {
        static SCHEMAS: LazyLock<Schemas> =
            LazyLock::new(|| Schemas::load().expect("embedded schemas compile"));
        &SCHEMAS
    }

    fn decode_value(kind: EventKind, value: &Value) -> Result<Event, Rejection> {
        let bytes = serde_json::to_vec(value).expect("serializable");
        schemas().decode(kind, Some(&bytes), LIMIT)
    }

    fn rejection(kind: EventKind, value: &Value) -> Rejection {
        decode_value(kind, value).expect_err("should be rejected")
    }

    fn termination() -> Value {
        json!({
            "event_id": "hr-2026-000999",
            "occurred_at": "2026-03-02T09:15:00Z",
            "user": { "user_name": "user9@example.com" }
        })
    }

    fn risk_signal() -> Value {
        json!({
            "event_id": "cs-det-00000001",
            "occurred_at": "2026-03-02T09:15:00Z",
            "user": { "user_name": "user9@example.com" },
            "source": "crowdstrike",
            "risk_score": 85
        })
    }

    fn examples() -> Vec<(String, EventKind, Vec<u8>)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).expect("examples/ is readable") {
            let path = entry.expect("directory entry").path();
            if path.extension().and_then(|ext| ext.to_str()) != Some("json") {
                continue;
            }
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .expect("UTF-8 file name")
                .to_owned();
            let kind = if name.starts_with("termination") {
                EventKind::Termination
            } else if name.starts_with("risk-signal") {
                EventKind::RiskSignal
            } else {
                panic!("examples/{name}: name must start with termination or risk-signal");
            };
            found.push((
                name,
                kind,
                std::fs::read(&path).expect("example is readable"),
            ));
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    fn example(name: &str) -> Event {
        let (_, kind, bytes) = examples()
            .into_iter()
            .find(|(found, _, _)| found == name)
            .expect("example exists");
        schemas()
            .decode(kind, Some(&bytes), LIMIT)
            .expect("example decodes")
    }

    #[test]
    fn every_example_decodes_as_its_kind() {
        let schemas = schemas();
        let examples = examples();
        assert!(examples.len() >= 6, "examples/ holds {}", examples.len());
        for (name, kind, bytes) in examples {
            let event = schemas
                .decode(kind, Some(&bytes), LIMIT)
                .unwrap_or_else(|rejection| panic!("examples/{name}: {rejection}"));
            assert_eq!(event.kind(), kind, "examples/{name}");
            let raw: Value = serde_json::from_slice(&bytes).expect("JSON");
            assert_eq!(event.event_id(), raw["event_id"], "examples/{name}");
            assert_eq!(
                event.user_name(),
                raw["user"]["user_name"],
                "examples/{name}"
            );
        }
    }

    #[test]
    fn examples_carry_what_their_names_say() {
        let Event::Termination(termination) = example("termination-with-effective-at.json") else {
            panic!("a termination");
        };
        assert_eq!(
            termination.effective_at.map(OffsetDateTime::unix_timestamp),
            Some(1_774_969_200)
        );
        let Event::RiskSignal(high) = example("risk-signal-score-high.json") else {
            panic!("a risk signal");
        };
        assert_eq!(high.risk_score, Some(91));
        let Event::RiskSignal(low) = example("risk-signal-low.json") else {
            panic!("a risk signal");
        };
        assert_eq!((low.risk_score, low.severity), (Some(30), None));
        assert_eq!(low.state, SignalState::Open);
        let Event::RiskSignal(critical) = example("risk-signal-critical.json") else {
            panic!("a risk signal");
        };
        assert_eq!(
            (critical.risk_score, critical.severity),
            (None, Some(Severity::Critical))
        );
        let Event::RiskSignal(cleared) = example("risk-signal-cleared.json") else {
            panic!("a risk signal");
        };
        assert_eq!(cleared.state, SignalState::Cleared);
    }

    #[test]
    fn minimal_events_decode_and_unknown_fields_are_ignored() {
        let mut value = termination();
        value["producer_trace"] = json!({ "id": [1, 2, 3] });
        value["user"]["department"] = json!("finance");
        let Ok(Event::Termination(event)) = decode_value(EventKind::Termination, &value) else {
            panic!("a termination");
        };
        assert_eq!(event.user.user_name, "user9@example.com");
        assert_eq!((event.source, event.effective_at), (None, None));

        let Ok(Event::RiskSignal(event)) = decode_value(EventKind::RiskSignal, &risk_signal())
        else {
            panic!("a risk signal");
        };
        assert_eq!(event.state, SignalState::Open);
        assert_eq!(event.risk_score, Some(85));
    }

    /// `event` with the member at `pointer` set to `member` (added if absent).
    fn with(mut event: Value, pointer: &str, member: Value) -> Value {
        let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
        event
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .expect("parent is an object")
            .insert(key.to_owned(), member);
        event
    }

    fn without(mut event: Value, key: &str) -> Value {
        event.as_object_mut().expect("an object").remove(key);
        event
    }

    #[test]
    fn schema_violations_are_rejected_with_the_path() {
        use EventKind::{RiskSignal, Termination};
        let long_name = format!("{}@example.com", "a".repeat(510));
        let cases = [
            (
                "missing user_name",
                Termination,
                with(termination(), "/user", json!({ "employee_id": "E1" })),
                "/user",
            ),
            (
                "neither score nor severity",
                RiskSignal,
                without(risk_signal(), "risk_score"),
                "(root)",
            ),
            (
                "missing source",
                RiskSignal,
                without(risk_signal(), "source"),
                "(root)",
            ),
            (
                "score 101",
                RiskSignal,
                with(risk_signal(), "/risk_score", json!(101)),
                "/risk_score",
            ),
            (
                "negative score",
                RiskSignal,
                with(risk_signal(), "/risk_score", json!(-1)),
                "/risk_score",
            ),
            (
                "bad date",
                Termination,
                with(termination(), "/occurred_at", json!("2026-13-01T00:00:00Z")),
                "/occurred_at",
            ),
            (
                "date without offset",
                Termination,
                with(termination(), "/effective_at", json!("2026-03-01 10:00:00")),
                "/effective_at",
            ),
            (
                "severity urgent",
                RiskSignal,
                with(risk_signal(), "/severity", json!("urgent")),
                "/severity",
            ),
            (
                "state unknown",
                RiskSignal,
                with(risk_signal(), "/state", json!("closed")),
                "/state",
            ),
            (
                "newline in user_name",
                Termination,
                with(
                    termination(),
                    "/user/user_name",
                    json!("user1@example.com\n"),
                ),
                "/user/user_name",
            ),
            (
                "NUL in user_name",
                RiskSignal,
                with(
                    risk_signal(),
                    "/user/user_name",
                    json!("user1@\u{0}example.com"),
                ),
                "/user/user_name",
            ),
            (
                "DEL in event_id",
                Termination,
                with(termination(), "/event_id", json!("hr-\u{7f}1")),
                "/event_id",
            ),
            (
                "empty event_id",
                Termination,
                with(termination(), "/event_id", json!("")),
                "/event_id",
            ),
            (
                "empty source",
                RiskSignal,
                with(risk_signal(), "/source", json!("")),
                "/source",
            ),
            (
                "user_name over 512 chars",
                Termination,
                with(termination(), "/user/user_name", json!(long_name)),
                "/user/user_name",
            ),
            (
                "a JSON array",
                Termination,
                json!([termination()]),
                "(root)",
            ),
            ("null", RiskSignal, Value::Null, "(root)"),
        ];
        for (case, kind, value, path) in cases {
            let rejection = rejection(kind, &value);
            assert_eq!(rejection.reason, RejectReason::SchemaViolation, "{case}");
            assert!(
                rejection.detail.starts_with(&format!("{path}: ")),
                "{case}: {}",
                rejection.detail
            );
        }
    }

    #[test]
    fn the_typed_step_refuses_what_the_schema_lets_through() {
        let mut value = risk_signal();
        value["risk_score"] = json!(91.0);
        let rejection = rejection(EventKind::RiskSignal, &value);
        assert_eq!(rejection.reason, RejectReason::SchemaViolation);
        assert!(rejection.detail.contains("u8"), "{}", rejection.detail);
    }

    #[test]
    fn bytes_that_are_not_an_event_are_rejected_before_the_schema() {
        let schemas = schemas();
        let reason = |payload: Option<&[u8]>, max_bytes: usize| {
            schemas
                .decode(EventKind::Termination, payload, max_bytes)
                .expect_err("should be rejected")
                .reason
        };
        assert_eq!(reason(None, LIMIT), RejectReason::Empty);
        assert_eq!(reason(Some(b""), LIMIT), RejectReason::Empty);
        assert_eq!(reason(Some(b"not json"), LIMIT), RejectReason::NotUtf8Json);
        assert_eq!(reason(Some(b"  \n"), LIMIT), RejectReason::NotUtf8Json);
        assert_eq!(
            reason(Some(b"{\"event_id\":"), LIMIT),
            RejectReason::NotUtf8Json
        );
        assert_eq!(
            reason(Some(b"{\"event_id\":\"\xff\"}"), LIMIT),
            RejectReason::NotUtf8Json
        );
        // The size is checked first: oversized garbage is oversized, not invalid JSON.
        assert_eq!(reason(Some(&[b'x'; 65]), 64), RejectReason::Oversized);

        let valid = serde_json::to_vec(&termination()).expect("serializable");
        assert_eq!(
            reason(Some(&valid), valid.len() - 1),
            RejectReason::Oversized
        );
        assert!(
            schemas
                .decode(EventKind::Termination, Some(&valid), valid.len())
                .is_ok()
        );
    }

    #[test]
    fn reasons_have_stable_names() {
        let names: Vec<&str> = [
            RejectReason::Empty,
            RejectReason::Oversized,
            RejectReason::NotUtf8Json,
            RejectReason::SchemaViolation,
        ]
        .map(RejectReason::as_str)
        .to_vec();
        assert_eq!(
            names,
            ["empty", "oversized", "invalid_json", "schema_violation"]
        );
        let rejection = Rejection::new(RejectReason::Oversized, "too big");
        assert_eq!(rejection.to_string(), "oversized: too big");
    }

    #[test]
    fn severities_are_ordered_and_named_in_lowercase() {
        use Severity::*;
        assert!(Low < Medium && Medium < High && High < Critical);
        for severity in [Low, Medium, High, Critical] {
            assert_eq!(severity.to_string().parse::<Severity>(), Ok(severity));
        }
        assert!("Critical".parse::<Severity>().is_err());
        assert!("urgent".parse::<Severity>().is_err());
    }

    #[test]
    fn a_huge_hostile_value_is_quoted_at_most_200_characters_at_a_time() {
        let hostile = "\u{1F4A3}".repeat(100_000);
        let mut value = termination();
        value["event_id"] = json!(hostile);
        value["user"]["user_name"] = json!(hostile);
        value["occurred_at"] = json!(hostile);
        value["reason"] = json!(hostile);
        value["effective_at"] = json!(hostile);
        value["source"] = json!(["not", "a", "string", hostile]);
        let bytes = serde_json::to_vec(&value).expect("serializable");
        let rejection = schemas()
            .decode(EventKind::Termination, Some(&bytes), bytes.len())
            .expect_err("should be rejected");

        assert_eq!(rejection.reason, RejectReason::SchemaViolation);
        assert!(rejection.detail.chars().count() <= MAX_DETAIL_CHARS);
        let longest_quote = rejection
            .detail
            .split(|c| c != '\u{1F4A3}')
            .map(|run| run.chars().count())
            .max();
        assert!(
            longest_quote <= Some(MAX_MESSAGE_CHARS),
            "{}",
            rejection.detail
        );
        assert_eq!(
            rejection.detail.matches("; ").count(),
            MAX_LISTED_VIOLATIONS
        );
        assert!(rejection.detail.ends_with(" more"), "{}", rejection.detail);
        // Too long to quote, so the message says what is wrong without the value.
        assert!(
            rejection
                .detail
                .contains("value is longer than 256 characters"),
            "{}",
            rejection.detail
        );
    }

    #[test]
    fn a_root_violation_does_not_quote_the_whole_event() {
        let value = with(
            without(risk_signal(), "risk_score"),
            "/padding",
            json!("p".repeat(10_000)),
        );
        let rejection = rejection(EventKind::RiskSignal, &value);
        assert!(!rejection.detail.contains("ppp"), "{}", rejection.detail);
        // It names what is missing instead.
        for field in ["risk_score", "severity"] {
            assert!(rejection.detail.contains(field), "{}", rejection.detail);
        }
    }

    #[test]
    fn bounded_cuts_on_a_character_boundary() {
        assert_eq!(bounded_to(&"abc", 3), "abc");
        assert_eq!(bounded_to(&"abcd", 3), "ab…");
        assert_eq!(bounded_to(&"ééééé", 4), "ééé…");
    }

    #[test]
    fn schemas_can_be_shared_between_tasks() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Schemas>();
    }

    fn payloads() -> impl Strategy<Value = (EventKind, Vec<u8>)> {
        let kinds = prop_oneof![Just(EventKind::Termination), Just(EventKind::RiskSignal)];
        let arbitrary = proptest::collection::vec(any::<u8>(), 0..512);
        // Mostly valid examples with a few bytes changed reach the schema and serde steps,
        // which arbitrary bytes almost never do.
        let mutated = (
            proptest::sample::select(examples()),
            proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..4),
        )
            .prop_map(|((_, _, mut bytes), edits)| {
                for (index, byte) in edits {
                    let at = index.index(bytes.len());
                    bytes[at] = byte;
                }
                bytes
            });
        (kinds, prop_oneof![arbitrary, mutated])
    }

    proptest! {
        #[test]
        fn decode_never_panics((kind, bytes) in payloads(), max_bytes in 0usize..1024) {
            let schemas = schemas();
            if let Err(rejection) = schemas.decode(kind, Some(&bytes), max_bytes) {
                prop_assert!(rejection.detail.chars().count() <= MAX_DETAIL_CHARS);
            }
        }
    }
}
