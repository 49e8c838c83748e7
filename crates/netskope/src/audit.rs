//! Pages of Netskope audit events (`GET /api/v2/events/data/audit`).
//!
//! The sources disagree on two points, and tenants differ: the paging parameter is `offset`
//! (v2 spec) or `skip` (older guides), and the events come under `result` (v2) or `data`
//! (guides). The parameter is configured; both wrappers are accepted. One malformed event does
//! not spoil a page: it is skipped with a warning.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::NetskopeClient;
use super::error::{NetskopeError, Op};

/// Netskope's largest page.
pub const MAX_PAGE_LIMIT: u32 = 5000;

/// A time window on the events' `timestamp`, in epoch seconds, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditWindow {
    pub start: u64,
    pub end: u64,
}

impl AuditWindow {
    pub fn contains(&self, timestamp: u64) -> bool {
        self.start <= timestamp && timestamp <= self.end
    }

    /// The smallest window that holds both.
    pub fn union(self, other: AuditWindow) -> AuditWindow {
        AuditWindow {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// What a change sent to the server leaves for verification.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Requests sent (a member change in chunks sends several; a removal the server refused
    /// as a value list is sent again with filter paths).
    pub requests: usize,
    /// When the server handled them, by the server's own clock: from each answer's `Date`
    /// header back to when its request left, with a few seconds of slack for the header's
    /// resolution. Its audit event is timestamped inside. `None` when an answer had no `Date`.
    pub server_window: Option<AuditWindow>,
}

impl Sent {
    pub(crate) fn one(server_window: Option<AuditWindow>) -> Self {
        Self {
            requests: 1,
            server_window,
        }
    }

    /// Both changes together: the requests of each, and a window that holds both (none when
    /// either is unknown).
    pub(crate) fn and(self, other: Sent) -> Sent {
        let server_window = match (self.server_window, other.server_window) {
            (Some(a), Some(b)) => Some(a.union(b)),
            (None, w) | (w, None) if self.requests == 0 || other.requests == 0 => w,
            _ => None,
        };
        Sent {
            requests: self.requests + other.requests,
            server_window,
        }
    }
}

/// One audit event. Only the fields verification needs are typed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AuditEvent {
    #[serde(rename = "_id", deserialize_with = "string_or_number")]
    pub id: String,
    #[serde(deserialize_with = "epoch_seconds")]
    pub timestamp: u64,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The admin or API token name that acted.
    #[serde(default)]
    pub user: Option<String>,
    /// What happened, e.g. `Rest API V2 Call`.
    #[serde(default)]
    pub audit_log_event: Option<String>,
    #[serde(default)]
    pub supporting_data: Option<SupportingData>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SupportingData {
    #[serde(default)]
    pub data_type: Option<String>,
    /// For a REST API v2 call: `[status, "METHOD", "/path", "trid=..."]`.
    #[serde(default)]
    pub data_values: Vec<Value>,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) if !s.is_empty() => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(serde::de::Error::custom(
            "expected a non-empty string or a number",
        )),
    }
}

fn epoch_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = Value::deserialize(d)?;
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .ok_or_else(|| serde::de::Error::custom("expected epoch seconds"))
}

/// Reads the events of a page, under `result` or `data`.
fn parse_page(op: Op, status: u16, body: &[u8]) -> Result<Vec<AuditEvent>, NetskopeError> {
    let invalid = |reason: String| NetskopeError::InvalidResponse { op, status, reason };
    let mut page: serde_json::Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not a JSON object: {e}")))?;
    if let Some(ok) = page.get("ok")
        && ok.as_i64() == Some(0)
    {
        let message = page
            .get("error")
            .or_else(|| page.get("message"))
            .map(|m| m.to_string())
            .unwrap_or_else(|| "no reason given".into());
        return Err(invalid(format!("the tenant answered ok=0: {message}")));
    }
    let events = match page.remove("result").or_else(|| page.remove("data")) {
        Some(Value::Array(events)) => events,
        Some(_) => return Err(invalid("`result`/`data` is not a list".into())),
        None => {
            return Err(invalid(
                "neither `result` nor `data` in the response".into(),
            ));
        }
    };
    let mut parsed = Vec::with_capacity(events.len());
    let mut skipped = 0usize;
    for event in events {
        match serde_json::from_value::<AuditEvent>(event) {
            Ok(e) => parsed.push(e),
            Err(_) => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "audit events without a usable _id or timestamp were skipped"
        );
    }
    Ok(parsed)
}

impl NetskopeClient {
    /// Reads one event of the last minute: proves the audit endpoint answers and the token
    /// has its scope.
    pub async fn probe_audit(&self) -> Result<(), NetskopeError> {
        let now = offboarder_base::clock::WallClock::new().now_secs();
        let window = AuditWindow {
            start: now.saturating_sub(60),
            end: now,
        };
        self.audit_page(window, 1, 0).await.map(|_| ())
    }

    /// One page of audit events in `window`, starting at `offset`. `limit` is clamped to
    /// 1..=5000. A page shorter than `limit` is the last one; callers also bound the number of
    /// pages, because a tenant that ignores the paging parameter returns the same page forever.
    pub async fn audit_page(
        &self,
        window: AuditWindow,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<AuditEvent>, NetskopeError> {
        let op = Op::AuditPage;
        let limit = limit.clamp(1, MAX_PAGE_LIMIT);
        let Some(url) = self.endpoints.audit.clone() else {
            return Err(NetskopeError::InvalidInput {
                op,
                reason: "no audit endpoint: set netskope.tenant_url or netskope.audit_url".into(),
            });
        };
        let paging = self.paging_param.as_str();
        let query = [
            ("starttime", window.start.to_string()),
            ("endtime", window.end.to_string()),
            ("limit", limit.to_string()),
            (paging, offset.to_string()),
        ];
        let reply = self
            .transport
            .send(&self.events_token, op, |http| {
                http.get(url.clone()).query(&query)
            })
            .await?;
        if !reply.is_success() {
            return Err(reply.rejected(op, &self.events_token));
        }
        parse_page(op, reply.status, &reply.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_and_data_wrappers() {
        let result = br#"{"ok":1,"result":[{"_id":"a1","timestamp":1700000000,"type":"admin_audit_logs","user":"svc","audit_log_event":"Rest API V2 Call","supporting_data":{"data_type":"api","data_values":[204,"PATCH","/api/v2/scim/Users/u1","trid=9"]}}]}"#;
        let data = br#"{"ok":1,"data":[{"_id":"a1","timestamp":1700000000.0,"type":"admin_audit_logs","user":"svc","audit_log_event":"Rest API V2 Call","supporting_data":{"data_type":"api","data_values":[204,"PATCH","/api/v2/scim/Users/u1","trid=9"]}}]}"#;
        let a = parse_page(Op::AuditPage, 200, result).unwrap();
        let b = parse_page(Op::AuditPage, 200, data).unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0].id, "a1");
        assert_eq!(a[0].timestamp, 1_700_000_000);
        assert_eq!(
            a[0].supporting_data.as_ref().unwrap().data_values[1],
            Value::from("PATCH")
        );
    }

    #[test]
    fn a_bad_event_is_skipped_not_fatal() {
        let body = br#"{"ok":1,"result":[{"timestamp":1},{"_id":"b","timestamp":2}]}"#;
        let events = parse_page(Op::AuditPage, 200, body).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id, "b");
    }

    #[test]
    fn missing_list_and_ok_zero_are_errors() {
        assert!(matches!(
            parse_page(Op::AuditPage, 200, br#"{"ok":1}"#),
            Err(NetskopeError::InvalidResponse { .. })
        ));
        let e = parse_page(Op::AuditPage, 200, br#"{"ok":0,"error":"bad window"}"#).unwrap_err();
        assert!(e.to_string().contains("bad window"), "{e}");
    }
}
