//! The admin listener: `/metrics` (Prometheus text), `/healthz` and `/readyz`.
//!
//! `/healthz` answers 200 while the process serves HTTP at all: a liveness probe that restarts
//! only a wedged process. `/readyz` answers 200 only when the worker can do its job: partitions
//! are assigned, Netskope answered the last probe, and the worker is not stopping. Otherwise it
//! answers 503 with the reasons, so that an orchestrator (and an on-call human) sees why.
//!
//! The listener defaults to loopback: metrics name topics and operations, not secrets, but they
//! are nobody else's business.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;

use crate::metrics as names;
use crate::netskope::NetskopeClient;

/// The `[admin]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` listen.
    pub listen: SocketAddr,
    /// How often Netskope is probed for `/readyz` (one read-only request each time).
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            probe_interval: Duration::from_secs(15),
        }
    }
}

/// What `/readyz` reports, updated by the consumer's rebalance hooks, the Netskope probe and
/// the shutdown path.
#[derive(Debug, Default)]
pub struct Readiness {
    assigned: AtomicUsize,
    /// `None` while Netskope answers; the last problem otherwise.
    netskope: Mutex<Option<String>>,
    probed: AtomicBool,
    stopping: AtomicBool,
}

impl Readiness {
    pub fn set_assigned(&self, partitions: usize) {
        self.assigned.store(partitions, Ordering::SeqCst);
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn set_netskope(&self, problem: Option<String>) {
        *self.netskope.lock().unwrap_or_else(|p| p.into_inner()) = problem;
        self.probed.store(true, Ordering::SeqCst);
    }

    /// `Ok` when ready; otherwise every reason it is not.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if self.stopping.load(Ordering::SeqCst) {
            reasons.push("the worker is stopping".to_string());
        }
        if self.assigned.load(Ordering::SeqCst) == 0 {
            reasons.push("no partitions assigned".to_string());
        }
        if !self.probed.load(Ordering::SeqCst) {
            reasons.push("Netskope not probed yet".to_string());
        } else if let Some(problem) = self
            .netskope
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            reasons.push(format!("Netskope unreachable: {problem}"));
        }
        metrics::gauge!(names::READY).set(if reasons.is_empty() { 1.0 } else { 0.0 });
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

#[derive(Clone)]
struct AppState {
    readiness: Arc<Readiness>,
    metrics: Option<PrometheusHandle>,
}

/// Binds the listener and serves it in the background; also starts the Netskope probe and the
/// metrics upkeep. Returns the bound address (a port of 0 picks a free one).
pub async fn serve(
    config: &AdminConfig,
    readiness: Arc<Readiness>,
    client: Arc<NetskopeClient>,
    metrics: Option<PrometheusHandle>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(probe(client, readiness.clone(), config.probe_interval));
    if let Some(handle) = metrics.clone() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    }
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { readiness, metrics });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin listener stopped");
        }
    });
    tracing::info!(%addr, "admin listener: /metrics, /healthz, /readyz");
    Ok(addr)
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (status, body) = match state.readiness.check() {
        Ok(()) => (StatusCode::OK, serde_json::json!({"ready": true})),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"ready": false, "reasons": reasons}),
        ),
    };
    (status, axum::Json(body))
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    match state.metrics {
        Some(handle) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        ),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain")],
            "metrics are not enabled in this process\n".to_string(),
        ),
    }
}

/// Probes Netskope with one read-only request per interval. A probe that takes longer than the
/// interval counts as a failure: the client's own retries must not hide an outage from
/// `/readyz` for minutes.
async fn probe(client: Arc<NetskopeClient>, readiness: Arc<Readiness>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let problem = match tokio::time::timeout(interval, client.probe_scim()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "no answer within {}",
                humantime::format_duration(interval)
            )),
        };
        if let Some(p) = &problem {
            tracing::warn!(problem = p, "readiness: Netskope probe failed");
        }
        readiness.set_netskope(problem);
        let _ = readiness.check();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_assigned_probed_and_running() {
        let r = Readiness::default();
        let reasons = r.check().unwrap_err();
        assert!(
            reasons.iter().any(|x| x.contains("no partitions")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|x| x.contains("not probed")),
            "{reasons:?}"
        );
        r.set_assigned(3);
        r.set_netskope(None);
        assert_eq!(r.check(), Ok(()));
        r.set_netskope(Some("connection refused".into()));
        assert_eq!(
            r.check(),
            Err(vec!["Netskope unreachable: connection refused".into()])
        );
        r.set_netskope(None);
        r.set_stopping();
        assert_eq!(r.check(), Err(vec!["the worker is stopping".into()]));
    }
}
