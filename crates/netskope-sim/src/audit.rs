//! The tenant's audit trail: one "Rest API V2 Call" event per successful mutating SCIM call.
//!
//! Netskope indexes audit events minutes after the call; the worker verifies its SCIM actions
//! against this trail, so the simulator reproduces the two properties that make verification
//! hard: an indexing lag (events become visible only `lag` seconds after their `timestamp`),
//! and a choice of paging parameter and response wrapper, because sources disagree on both
//! (`offset` vs `skip`, `result` vs `data`). The `Ignore` paging mode answers the first page to
//! every request, to prove that a client bounds its paging loop instead of trusting the server.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::auth::small_json;
use super::{QueryParams, Sim};

/// Which query parameter moves through audit pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AuditPaging {
    /// Netskope's v2 spec and the SOAR/XSOAR connectors: `offset`.
    #[default]
    Offset,
    /// The guide in the seeds (API v1 naming): `skip`.
    Skip,
    /// Either parameter (`offset` wins if both are sent).
    Any,
    /// Neither: every request gets the first page.
    Ignore,
}

/// The key that holds the events in an audit response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AuditWrapper {
    /// `{"ok":1,"result":[...]}` (API v2).
    #[default]
    Result,
    /// `{"ok":1,"data":[...]}` (as in the guide).
    Data,
}

/// The order of the events in an answer (over all its pages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AuditOrder {
    /// By `timestamp`, oldest first.
    #[default]
    OldestFirst,
    /// By `timestamp`, newest first.
    NewestFirst,
}

/// Largest page the endpoint returns, as documented by Netskope.
pub(crate) const MAX_LIMIT: usize = 5_000;
/// Page size when the client sends no `limit`.
pub(crate) const DEFAULT_LIMIT: usize = 100;

#[derive(Debug, Clone)]
struct AuditEvent {
    timestamp: u64,
    body: Value,
}

/// A query on the audit endpoint, already parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuditQuery {
    /// Inclusive bounds on `timestamp`.
    pub(crate) start: Option<u64>,
    pub(crate) end: Option<u64>,
    /// Inclusive bounds on `_insertion_epoch_timestamp`.
    pub(crate) insertion_start: Option<u64>,
    pub(crate) insertion_end: Option<u64>,
    pub(crate) offset: usize,
    pub(crate) limit: usize,
}

impl Default for AuditQuery {
    fn default() -> Self {
        Self {
            start: None,
            end: None,
            insertion_start: None,
            insertion_end: None,
            offset: 0,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// All audit events recorded so far, in insertion order.
#[derive(Debug)]
pub(crate) struct AuditLog {
    lag_secs: u64,
    next: u64,
    events: Vec<AuditEvent>,
}

impl AuditLog {
    pub(crate) fn new(lag_secs: u64) -> Self {
        Self {
            lag_secs,
            next: 0,
            events: Vec::new(),
        }
    }

    /// Records one API call made at `now_secs` by the token named `user`.
    pub(crate) fn record(
        &mut self,
        now_secs: u64,
        user: &str,
        status: u16,
        method: &str,
        path: &str,
    ) {
        self.next += 1;
        // Mongo-ObjectId-like: 8 hex digits of time then a 16-digit counter, so ids are unique
        // and look like Netskope's 24-hex `_id`s.
        let id = format!("{now_secs:08x}{:016x}", self.next);
        let trid = uuid::Uuid::new_v4().simple().to_string();
        let body = json!({
            "_id": id,
            "timestamp": now_secs,
            "type": "admin_audit_logs",
            "user": user,
            "audit_log_event": "Rest API V2 Call",
            "severity_level": 2,
            "organization_unit": "",
            "supporting_data": {
                "data_type": "api",
                "data_values": [status, method, path, format!("trid={trid}")],
            },
            "_insertion_epoch_timestamp": now_secs.saturating_add(self.lag_secs),
        });
        self.events.push(AuditEvent {
            timestamp: now_secs,
            body,
        });
    }

    /// Number of events recorded, visible or not.
    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    /// The page of events visible at `now_secs` that `query` asks for, ordered by
    /// (`timestamp`, insertion order), or the reverse.
    pub(crate) fn query(&self, now_secs: u64, query: &AuditQuery, order: AuditOrder) -> Vec<Value> {
        let lag = self.lag_secs;
        let mut visible: Vec<&AuditEvent> = self
            .events
            .iter()
            .filter(|e| now_secs >= e.timestamp.saturating_add(lag))
            .filter(|e| query.start.is_none_or(|s| e.timestamp >= s))
            .filter(|e| query.end.is_none_or(|end| e.timestamp <= end))
            .filter(|e| {
                let inserted = e.timestamp.saturating_add(lag);
                query.insertion_start.is_none_or(|s| inserted >= s)
                    && query.insertion_end.is_none_or(|end| inserted <= end)
            })
            .collect();
        // Events are appended in time order already; the stable sort only guards the invariant.
        visible.sort_by_key(|e| e.timestamp);
        if order == AuditOrder::NewestFirst {
            visible.reverse();
        }
        visible
            .into_iter()
            .skip(query.offset)
            .take(query.limit)
            .map(|e| e.body.clone())
            .collect()
    }
}

/// Parses the query of `GET /api/v2/events/data/audit`. Only the paging parameter that `paging`
/// names is read; the other is ignored, as a tenant that does not know it would.
pub(crate) fn parse_query(params: &QueryParams, paging: AuditPaging) -> Result<AuditQuery, String> {
    let number = |key: &str| -> Result<Option<u64>, String> {
        params
            .get(key)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("`{key}` must be a non-negative integer, got `{v}`"))
            })
            .transpose()
    };
    let offset = match paging {
        AuditPaging::Offset => number("offset")?,
        AuditPaging::Skip => number("skip")?,
        AuditPaging::Any => number("offset")?.or(number("skip")?),
        AuditPaging::Ignore => None,
    };
    let limit = number("limit")?.map_or(DEFAULT_LIMIT, |l| {
        usize::try_from(l).unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT)
    });
    Ok(AuditQuery {
        start: number("starttime")?,
        end: number("endtime")?,
        insertion_start: number("insertionstarttime")?,
        insertion_end: number("insertionendtime")?,
        offset: offset.map_or(0, |o| usize::try_from(o).unwrap_or(usize::MAX)),
        limit,
    })
}

/// `GET /api/v2/events/data/audit`.
pub(crate) async fn audit_events(State(sim): State<Arc<Sim>>, RawQuery(q): RawQuery) -> Response {
    let params = QueryParams::parse(q.as_deref());
    let query = match parse_query(&params, sim.audit_paging) {
        Ok(query) => query,
        Err(message) => return small_json(StatusCode::BAD_REQUEST, &message),
    };
    let events = sim
        .audit()
        .query(sim.wall.now_secs(), &query, sim.audit_order);
    let key = match sim.audit_wrapper {
        AuditWrapper::Result => "result",
        AuditWrapper::Data => "data",
    };
    let mut body = serde_json::Map::new();
    body.insert("ok".into(), json!(1));
    body.insert(key.into(), Value::Array(events));
    Json(Value::Object(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use offboarder_base::clock::WallClock;
    use std::time::Duration;

    const T0: u64 = 1_700_000_000;

    #[tokio::test(start_paused = true)]
    async fn events_become_visible_after_the_lag() {
        let clock = WallClock::starting_at(Duration::from_secs(T0));
        let mut log = AuditLog::new(120);
        log.record(
            clock.now_secs(),
            "offboarder-scim",
            204,
            "PATCH",
            "/api/v2/scim/Users/u1",
        );
        assert_eq!(log.len(), 1);
        assert!(
            log.query(
                clock.now_secs(),
                &AuditQuery::default(),
                AuditOrder::OldestFirst
            )
            .is_empty()
        );

        tokio::time::advance(Duration::from_secs(119)).await;
        assert!(
            log.query(
                clock.now_secs(),
                &AuditQuery::default(),
                AuditOrder::OldestFirst
            )
            .is_empty()
        );

        tokio::time::advance(Duration::from_secs(1)).await;
        let events = log.query(
            clock.now_secs(),
            &AuditQuery::default(),
            AuditOrder::OldestFirst,
        );
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event["timestamp"], json!(T0));
        assert_eq!(event["_insertion_epoch_timestamp"], json!(T0 + 120));
        assert_eq!(event["user"], json!("offboarder-scim"));
        assert_eq!(event["audit_log_event"], json!("Rest API V2 Call"));
        assert_eq!(event["supporting_data"]["data_values"][0], json!(204));
        assert_eq!(event["supporting_data"]["data_values"][1], json!("PATCH"));
        assert_eq!(
            event["supporting_data"]["data_values"][2],
            json!("/api/v2/scim/Users/u1")
        );
        assert!(
            event["supporting_data"]["data_values"][3]
                .as_str()
                .is_some_and(|t| t.starts_with("trid="))
        );
        assert_eq!(event["_id"].as_str().map(str::len), Some(24));
    }

    #[test]
    fn query_parameters_per_paging_mode() {
        let params = QueryParams::parse(Some("offset=5&skip=7&limit=9000&starttime=10"));
        let offset = |paging| parse_query(&params, paging).map(|q| q.offset);
        assert_eq!(offset(AuditPaging::Offset), Ok(5));
        assert_eq!(offset(AuditPaging::Skip), Ok(7));
        assert_eq!(offset(AuditPaging::Any), Ok(5));
        assert_eq!(offset(AuditPaging::Ignore), Ok(0));
        let q = parse_query(&params, AuditPaging::Offset).expect("query");
        assert_eq!((q.limit, q.start, q.end), (MAX_LIMIT, Some(10), None));
        let skip_only = QueryParams::parse(Some("skip=3"));
        assert_eq!(
            parse_query(&skip_only, AuditPaging::Any).map(|q| q.offset),
            Ok(3)
        );
        assert_eq!(
            parse_query(&skip_only, AuditPaging::Offset).map(|q| q.offset),
            Ok(0)
        );
        assert!(
            parse_query(
                &QueryParams::parse(Some("starttime=-1")),
                AuditPaging::Offset
            )
            .is_err()
        );
    }

    #[test]
    fn window_and_paging() {
        let mut log = AuditLog::new(0);
        for i in 0..10 {
            log.record(T0 + i, "u", 204, "PATCH", &format!("/p/{i}"));
        }
        let path = |e: &Value| {
            e["supporting_data"]["data_values"][2]
                .as_str()
                .map(str::to_string)
        };
        let q = AuditQuery {
            start: Some(T0 + 2),
            end: Some(T0 + 6),
            offset: 1,
            limit: 2,
            ..AuditQuery::default()
        };
        let page: Vec<_> = log
            .query(T0 + 100, &q, AuditOrder::OldestFirst)
            .iter()
            .map(path)
            .collect();
        assert_eq!(page, [Some("/p/3".to_string()), Some("/p/4".to_string())]);
        let newest: Vec<_> = log
            .query(T0 + 100, &q, AuditOrder::NewestFirst)
            .iter()
            .map(path)
            .collect();
        assert_eq!(newest, [Some("/p/5".to_string()), Some("/p/4".to_string())]);

        let q = AuditQuery {
            start: Some(T0 + 8),
            ..AuditQuery::default()
        };
        assert_eq!(log.query(T0 + 100, &q, AuditOrder::OldestFirst).len(), 2);
        // Not yet "now": events from the future are not visible.
        assert_eq!(
            log.query(T0 + 4, &AuditQuery::default(), AuditOrder::OldestFirst)
                .len(),
            5
        );
        let ids: std::collections::HashSet<_> = log
            .query(T0 + 100, &AuditQuery::default(), AuditOrder::OldestFirst)
            .iter()
            .map(|e| e["_id"].clone())
            .collect();
        assert_eq!(ids.len(), 10);
    }
}
