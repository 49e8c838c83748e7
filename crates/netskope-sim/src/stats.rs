//! Request counters by endpoint template and status.
//!
//! Tests and benchmarks assert on *what the client did to the tenant* ("exactly one PATCH per
//! user", "no retry after a 403", "the 429 was retried"), which a client's own metrics cannot
//! prove. Keys are route templates (`PATCH /api/v2/scim/Users/{id}`) so that counts do not depend
//! on generated ids.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Sim;

/// A snapshot of the simulator's request counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SimStats {
    /// `"METHOD route-template"` → status code → number of answers. Requests that match no route
    /// are counted under `"METHOD (unmatched)"`.
    pub requests: BTreeMap<String, BTreeMap<u16, u64>>,
}

impl SimStats {
    /// Requests answered on `endpoint` (e.g. `"PATCH /api/v2/scim/Users/{id}"`), any status.
    pub fn count(&self, endpoint: &str) -> u64 {
        self.requests
            .get(endpoint)
            .map_or(0, |by_status| by_status.values().sum())
    }

    /// Requests answered on `endpoint` with `status`.
    pub fn count_status(&self, endpoint: &str, status: u16) -> u64 {
        self.requests
            .get(endpoint)
            .and_then(|by_status| by_status.get(&status))
            .copied()
            .unwrap_or(0)
    }

    /// All requests counted.
    pub fn total(&self) -> u64 {
        self.requests
            .values()
            .flat_map(|by_status| by_status.values())
            .sum()
    }

    pub(crate) fn record(&mut self, endpoint: String, status: u16) {
        *self
            .requests
            .entry(endpoint)
            .or_default()
            .entry(status)
            .or_default() += 1;
    }
}

/// When one request reached the simulator and when its answer left, for benchmarks that split a
/// client's latency into its own share and the server's. Timestamps are the system's wall clock,
/// never the simulator's (pausable) clock, because they are compared with timestamps taken by
/// another process on the same machine.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestTiming {
    /// `GET`, `PATCH`, …
    pub method: String,
    /// Path and query as sent, still percent-encoded.
    pub target: String,
    pub status: u16,
    /// When the routed request entered the simulator (after its head was parsed).
    pub arrived: OffsetDateTime,
    /// When the simulator handed its answer back to the server to write.
    pub answered: OffsetDateTime,
}

/// A bounded log of [`RequestTiming`]s, off unless a benchmark asks for it: a long-running
/// `offboarder simulate` must not grow with every request.
#[derive(Debug, Default)]
pub(crate) struct Timings {
    /// Requests kept at most; 0 means "not recording".
    limit: usize,
    kept: Vec<RequestTiming>,
}

impl Timings {
    pub(crate) fn start(&mut self, limit: usize) {
        self.limit = limit;
        self.kept.clear();
    }

    pub(crate) fn recording(&self) -> bool {
        self.kept.len() < self.limit
    }

    fn push(&mut self, timing: RequestTiming) {
        if self.recording() {
            self.kept.push(timing);
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<RequestTiming> {
        self.kept.clone()
    }
}

/// The status recorded for a request whose client gave up (timed out, disconnected) before the
/// answer: nginx's "client closed request".
pub const CLIENT_CLOSED: u16 = 499;

/// Records one request when it is answered, or as [`CLIENT_CLOSED`] if its future is dropped
/// first (hyper drops it when the client goes away), so that requests a client abandoned still
/// show in the counters and timings.
struct Recording {
    sim: Arc<Sim>,
    endpoint: String,
    timed: Option<(String, String)>,
    arrived: OffsetDateTime,
    done: bool,
}

impl Recording {
    fn finish(&mut self, status: u16) {
        self.done = true;
        if let Some((method, target)) = self.timed.take() {
            self.sim.timings().push(RequestTiming {
                method,
                target,
                status,
                arrived: self.arrived,
                answered: OffsetDateTime::now_utc(),
            });
        }
        self.sim
            .stats()
            .record(std::mem::take(&mut self.endpoint), status);
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if !self.done {
            self.finish(CLIENT_CLOSED);
        }
    }
}

/// Route-layer middleware: counts the final status of every routed API request, including the
/// 401/403/429/5xx the gate answers before a handler runs and the requests a client abandoned
/// (499), and times it when asked to.
pub(crate) async fn count_requests(
    State(sim): State<Arc<Sim>>,
    req: Request,
    next: Next,
) -> Response {
    let arrived = OffsetDateTime::now_utc();
    let endpoint = match req.extensions().get::<MatchedPath>() {
        Some(path) => format!("{} {}", req.method(), path.as_str()),
        None => format!("{} (unmatched)", req.method()),
    };
    let timed = sim.timings().recording().then(|| {
        let target = req.uri().path_and_query().map_or_else(
            || req.uri().path().to_string(),
            |pq| pq.as_str().to_string(),
        );
        (req.method().to_string(), target)
    });
    let mut recording = Recording {
        sim,
        endpoint,
        timed,
        arrived,
        done: false,
    };
    let response = next.run(req).await;
    recording.finish(response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(n: u16) -> RequestTiming {
        RequestTiming {
            method: "GET".into(),
            target: format!("/{n}"),
            status: n,
            arrived: OffsetDateTime::UNIX_EPOCH,
            answered: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn timings_record_nothing_until_started_and_stop_at_their_limit() {
        let mut timings = Timings::default();
        timings.push(timing(1));
        assert!(timings.snapshot().is_empty(), "off by default");
        timings.start(2);
        for n in 2..6 {
            timings.push(timing(n));
        }
        let statuses: Vec<u16> = timings.snapshot().iter().map(|t| t.status).collect();
        assert_eq!(statuses, [2, 3]);
        assert!(!timings.recording());
    }

    #[test]
    fn counts_and_round_trips_as_json() {
        let mut stats = SimStats::default();
        stats.record("GET /a".into(), 200);
        stats.record("GET /a".into(), 200);
        stats.record("GET /a".into(), 429);
        stats.record("PATCH /b/{id}".into(), 204);
        assert_eq!(stats.count("GET /a"), 3);
        assert_eq!(stats.count_status("GET /a", 429), 1);
        assert_eq!(stats.count_status("GET /a", 500), 0);
        assert_eq!(stats.count("nope"), 0);
        assert_eq!(stats.total(), 4);
        let json = serde_json::to_string(&stats).unwrap_or_default();
        let back: SimStats = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, stats);
    }
}
