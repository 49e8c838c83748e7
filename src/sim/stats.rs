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

/// Route-layer middleware: counts the final status of every routed API request, including the
/// 401/403/429/5xx the gate answers before a handler runs.
pub(crate) async fn count_requests(
    State(sim): State<Arc<Sim>>,
    req: Request,
    next: Next,
) -> Response {
    let endpoint = match req.extensions().get::<MatchedPath>() {
        Some(path) => format!("{} {}", req.method(), path.as_str()),
        None => format!("{} (unmatched)", req.method()),
    };
    let response = next.run(req).await;
    sim.stats().record(endpoint, response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

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
