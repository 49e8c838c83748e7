//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`, and the
//! blast-radius guard (`GET /guard`, `POST /guard/release`).
//!
//! `/healthz` answers 200 while the process serves HTTP at all: a liveness probe that restarts
//! only a wedged process. `/readyz` answers 200 only when the worker can do its job: partitions
//! are assigned, Netskope answered the last probe, and the worker is not stopping. Otherwise it
//! answers 503 with the reasons, so that an orchestrator (and an on-call human) sees why.
//!
//! The listener defaults to loopback: metrics name topics and operations, not secrets, but they
//! are nobody else's business. Releasing the guard lets the worker disable accounts in bulk, so
//! it also needs the admin token (`admin.token`, from env or file), compared in constant time;
//! without a configured token the release endpoint refuses every caller.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use netskope::NetskopeClient;
use offboarder_base::metric_names as names;
use offboarder_base::secret::SecretSource;

use crate::guard::Guard;

/// The readiness fault set while the blast-radius guard halts.
pub const GUARD_FAULT: &str = "guard";
/// The readiness fault set when the dead-letter limit stopped reading.
pub const DEAD_LETTER_FAULT: &str = "dead_letter_limit";
/// The readiness fault set while the consumer has not joined its group long after subscribing.
pub const CONSUMER_GROUP_FAULT: &str = "consumer_group";

/// Where `offboarder guard release` looks for the admin token when `admin.token` names none.
pub const ADMIN_TOKEN_ENV: &str = "OFFBOARDER_ADMIN_TOKEN";

/// The `[admin]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` listen.
    pub listen: SocketAddr,
    /// How often Netskope is probed for `/readyz` (one read-only request each time).
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// The token that `POST /guard/release` requires (`{ env = "VAR" }` or `{ file = "PATH" }`;
    /// by default the `OFFBOARDER_ADMIN_TOKEN` variable, if set).
    pub token: SecretSource,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            probe_interval: Duration::from_secs(15),
            token: SecretSource::default(),
        }
    }
}

impl AdminConfig {
    /// The admin token, if one is configured.
    pub fn read_token(&self) -> Result<Option<SecretString>, offboarder_base::secret::SecretError> {
        match self.token.read("admin.token", None)? {
            Some(t) => Ok(Some(t)),
            None => Ok(std::env::var(ADMIN_TOKEN_ENV)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .map(SecretString::from)),
        }
    }

    /// The URL a local client reaches the listener at (an unspecified address becomes
    /// loopback).
    pub fn local_url(&self) -> String {
        let ip = match self.listen.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            }
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            }
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.listen.port()))
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
    /// Faults that stop the worker's work without stopping the process (the blast-radius
    /// guard's halt, the dead-letter limit), by name: what the operator must do.
    faults: Mutex<std::collections::BTreeMap<&'static str, String>>,
}

impl Readiness {
    pub fn set_assigned(&self, partitions: usize) {
        self.assigned.store(partitions, Ordering::SeqCst);
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Sets (`Some`) or clears (`None`) the fault `name`.
    pub fn set_fault(&self, name: &'static str, reason: Option<String>) {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        match reason {
            Some(r) => faults.insert(name, r),
            None => faults.remove(name),
        };
        drop(faults);
        let _ = self.check();
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
        reasons.extend(
            self.faults
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned(),
        );
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
    guard: Arc<Guard>,
    token: Option<Arc<SecretString>>,
}

/// Binds the listener and serves it in the background; also starts the Netskope probe and the
/// metrics upkeep. Returns the bound address (a port of 0 picks a free one).
pub async fn serve(
    config: &AdminConfig,
    readiness: Arc<Readiness>,
    client: Arc<NetskopeClient>,
    metrics: Option<PrometheusHandle>,
    guard: Arc<Guard>,
    token: Option<SecretString>,
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
        .route("/guard", get(guard_status))
        .route("/guard/release", post(guard_release))
        .with_state(AppState {
            readiness,
            metrics,
            guard,
            token: token.map(Arc::new),
        });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin listener stopped");
        }
    });
    tracing::info!(%addr, "admin listener: /metrics, /healthz, /readyz, /guard");
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

async fn guard_status(State(state): State<AppState>) -> impl IntoResponse {
    axum::Json(state.guard.status())
}

/// `POST /guard/release` with `Authorization: Bearer <admin token>`.
async fn guard_release(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let refuse = |status: StatusCode, error: &str| {
        (status, axum::Json(serde_json::json!({ "error": error }))).into_response()
    };
    let Some(expected) = &state.token else {
        return refuse(
            StatusCode::FORBIDDEN,
            "no admin token is configured (admin.token or OFFBOARDER_ADMIN_TOKEN): the guard \
             can only be lifted by raising guard.max_deactivations and restarting",
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let matches: bool = given
        .as_bytes()
        .ct_eq(expected.expose_secret().as_bytes())
        .into();
    if !matches {
        tracing::warn!("guard release refused: missing or wrong admin token");
        return refuse(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
    }
    let before = match state.guard.release().await {
        Ok(before) => before,
        Err(e) => {
            tracing::error!(error = %e, "guard release failed");
            return refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
        }
    };
    if before.halted {
        state.readiness.set_fault(GUARD_FAULT, None);
        tracing::warn!(
            waiting = before.waiting,
            "blast-radius guard released by an operator: destructive actions resume"
        );
    }
    (StatusCode::OK, axum::Json(before)).into_response()
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
