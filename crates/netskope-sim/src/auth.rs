//! The tenant's API gateway: tokens and scopes, per-token rate limits, injected faults and latency.
//!
//! Checks run in the order a real gateway applies them — authentication (401), scope (403),
//! rate limit (429), then the backend (where faults and latency are injected) — because a
//! client's error handling depends on that order: a 403 must never be mistaken for something a
//! retry could fix, and a request refused by the gateway must not have touched any state.
//!
//! The 401/403/429 bodies are deliberately *not* SCIM errors: Netskope answers them before the
//! SCIM service sees the request, and its 403 has no body at all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;

use offboarder_base::clock::TokioClock;

use super::error::ScimError;
use super::{Sim, lock};

/// Audit-trail name of the SCIM token when it is distinct from the events token.
pub const SCIM_TOKEN_NAME: &str = "offboarder-scim";
/// Audit-trail name of the events token when it is distinct from the SCIM token.
pub const EVENTS_TOKEN_NAME: &str = "offboarder-events";
/// Audit-trail name of a single token that holds both scopes.
pub const COMBINED_TOKEN_NAME: &str = "offboarder";

/// The header Netskope documents for its API tokens.
const NETSKOPE_TOKEN_HEADER: &str = "netskope-api-token";

/// What an endpoint requires of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// `/api/v2/scim/Users` and `/api/v2/scim/Groups`.
    Scim,
    /// `/api/v2/events/data/audit`.
    Events,
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, StateInformationMiddleware>;

struct Token {
    /// Replaceable while running, as an admin rotates a token in the UI.
    secret: Mutex<Vec<u8>>,
    name: &'static str,
    scim: bool,
    events: bool,
    /// One bucket per token, as Netskope limits per token; `None` when limiting is off.
    limiter: Option<Limiter>,
}

impl Token {
    fn allows(&self, scope: Scope) -> bool {
        match scope {
            Scope::Scim => self.scim,
            Scope::Events => self.events,
        }
    }
}

/// Rate-limit state to report in `ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RateInfo {
    remaining: u32,
    reset_secs: u64,
}

/// Tokens, limiters and fault injection, shared by all requests.
pub(crate) struct Gate {
    tokens: Vec<Token>,
    rate_limit_headers: bool,
    fault_rate_bits: AtomicU64,
    /// Faults include 429s, not only 5xx.
    fault_throttle: std::sync::atomic::AtomicBool,
    rng: Mutex<StdRng>,
    /// Added to every authorized request, in milliseconds (changeable while running).
    latency_ms: AtomicU64,
}

impl Gate {
    pub(crate) fn new(
        scim_token: &str,
        events_token: &str,
        (rate_limit_per_min, burst): (u32, u32),
        rate_limit_headers: bool,
        fault_rate: f64,
        seed: Option<u64>,
        latency: Duration,
    ) -> Self {
        let limiter = || {
            std::num::NonZeroU32::new(rate_limit_per_min).map(|per_min| {
                // Refilled evenly over the minute; by default the burst is the whole quota.
                let quota = match std::num::NonZeroU32::new(burst) {
                    Some(burst) => Quota::per_minute(per_min).allow_burst(burst),
                    None => Quota::per_minute(per_min),
                };
                RateLimiter::direct_with_clock(quota, TokioClock::new())
                    .with_middleware::<StateInformationMiddleware>()
            })
        };
        let token = |secret: &str, name, scim, events| Token {
            secret: Mutex::new(secret.as_bytes().to_vec()),
            name,
            scim,
            events,
            limiter: limiter(),
        };
        let tokens = if scim_token == events_token {
            vec![token(scim_token, COMBINED_TOKEN_NAME, true, true)]
        } else {
            vec![
                token(scim_token, SCIM_TOKEN_NAME, true, false),
                token(events_token, EVENTS_TOKEN_NAME, false, true),
            ]
        };
        let rng = seed.map_or_else(rand::make_rng::<StdRng>, StdRng::seed_from_u64);
        let gate = Self {
            tokens,
            rate_limit_headers,
            fault_rate_bits: AtomicU64::new(0),
            fault_throttle: std::sync::atomic::AtomicBool::new(false),
            rng: Mutex::new(rng),
            latency_ms: AtomicU64::new(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX)),
        };
        gate.set_fault_rate(fault_rate);
        gate
    }

    /// Sets the share of requests answered with a 5xx; clamped to 0..=1 (NaN counts as 0).
    pub(crate) fn set_fault_rate(&self, rate: f64) {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self.fault_rate_bits
            .store(rate.to_bits(), Ordering::Relaxed);
    }

    /// The token a request presents, if it is one we know. Every known token is compared in
    /// constant time and all are compared, so timing reveals neither a prefix nor which matched.
    fn authenticate(&self, headers: &HeaderMap) -> Option<&Token> {
        let presented = presented_token(headers)?;
        let mut found = None;
        for token in &self.tokens {
            if constant_time_eq(&lock(&token.secret), presented) && found.is_none() {
                found = Some(token);
            }
        }
        found
    }

    /// Replaces the token `old` with `new` (same name, scopes and budget): requests with `old`
    /// are answered 401 from now on. Returns false if no token is `old`.
    pub(crate) fn rotate_token(&self, old: &str, new: &str) -> bool {
        for token in &self.tokens {
            let mut secret = lock(&token.secret);
            if constant_time_eq(&secret, old.as_bytes()) {
                *secret = new.as_bytes().to_vec();
                return true;
            }
        }
        false
    }

    pub(crate) fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.latency_ms.store(ms, Ordering::Relaxed);
    }

    /// Lets faults answer 429 too (a quarter of them), as a gateway under load does.
    pub(crate) fn set_fault_throttle(&self, on: bool) {
        self.fault_throttle.store(on, Ordering::Relaxed);
    }

    /// Draws whether this request fails, and with which 5xx (or 429).
    fn roll_fault(&self) -> Option<StatusCode> {
        let rate = f64::from_bits(self.fault_rate_bits.load(Ordering::Relaxed));
        if rate <= 0.0 {
            return None;
        }
        let mut rng = lock(&self.rng);
        if rng.random::<f64>() >= rate {
            return None;
        }
        let kinds = if self.fault_throttle.load(Ordering::Relaxed) {
            4
        } else {
            3
        };
        Some(match rng.random_range(0..kinds) {
            0 => StatusCode::INTERNAL_SERVER_ERROR,
            1 => StatusCode::BAD_GATEWAY,
            2 => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::TOO_MANY_REQUESTS,
        })
    }
}

/// `Netskope-Api-Token: <t>` or `Authorization: Bearer <t>` (the former wins if both are sent).
fn presented_token(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(NETSKOPE_TOKEN_HEADER) {
        return Some(value.as_bytes()).filter(|t| !t.is_empty());
    }
    let auth = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = auth.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    Some(token).filter(|t| !t.is_empty())
}

/// Compares two byte strings without an early exit on the first difference. (The length is not
/// hidden; token lengths are not secret.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Takes one cell from the token's bucket; `Err` holds the 429 to answer.
fn check_rate(token: &Token, headers: bool) -> Result<Option<RateInfo>, RateInfo> {
    let Some(limiter) = &token.limiter else {
        return Ok(None);
    };
    match limiter.check() {
        Ok(snapshot) => {
            let quota = snapshot.quota();
            let burst = quota.burst_size().get();
            let remaining = snapshot.remaining_burst_capacity();
            let missing = burst.saturating_sub(remaining);
            let reset = ceil_secs(quota.replenish_interval() * missing);
            let info = RateInfo {
                remaining,
                reset_secs: if missing > 0 { reset.max(1) } else { 0 },
            };
            Ok(headers.then_some(info))
        }
        Err(not_until) => {
            let quota = not_until.quota();
            let wait = not_until.wait_time_from(limiter.clock().now());
            // Time for one cell, then for the rest of the burst to refill.
            let full = wait + quota.replenish_interval() * (quota.burst_size().get() - 1);
            Err(RateInfo {
                remaining: 0,
                reset_secs: ceil_secs(full).max(1),
            })
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Whether a request changes the directory, and so leaves an audit event. A `POST .../.search`
/// is a read that uses POST only to carry its query in a body.
fn is_mutating(method: &Method, path: &str) -> bool {
    [Method::POST, Method::PUT, Method::PATCH, Method::DELETE].contains(method)
        && !path.ends_with("/.search")
}

/// Route-layer middleware for the API routes of one scope.
pub(crate) async fn gate(
    State((sim, scope)): State<(Arc<Sim>, Scope)>,
    req: Request,
    next: Next,
) -> Response {
    let gate = &sim.gate;
    let Some(token) = gate.authenticate(req.headers()) else {
        tracing::debug!(path = %req.uri().path(), "simulator: 401, missing or unknown token");
        return small_json(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    if !token.allows(scope) {
        tracing::debug!(path = %req.uri().path(), token = token.name, "simulator: 403, token lacks scope");
        return StatusCode::FORBIDDEN.into_response();
    }
    let rate = match check_rate(token, gate.rate_limit_headers) {
        Ok(rate) => rate,
        Err(limited) => {
            let mut response = small_json(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
            if gate.rate_limit_headers {
                add_rate_headers(&mut response, limited);
            }
            return response;
        }
    };
    let name = token.name;

    let mut response = if let Some(status) = gate.roll_fault() {
        fault_response(scope, status)
    } else {
        let latency = gate.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let response = next.run(req).await;
        if scope == Scope::Scim && is_mutating(&method, &path) && response.status().is_success() {
            let status = response.status().as_u16();
            sim.audit()
                .record(sim.wall.now_secs(), name, status, method.as_str(), &path);
        }
        response
    };
    if let Some(rate) = rate {
        add_rate_headers(&mut response, rate);
    }
    // The simulator's own clock, as Netskope's `Date` is Netskope's: the worker dates its
    // audit events by it, and in paused-time tests the simulator's clock is not the host's.
    let date = std::time::UNIX_EPOCH + std::time::Duration::from_secs(sim.wall.now_secs());
    if let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(date)) {
        response.headers_mut().insert(header::DATE, value);
    }
    response
}

fn fault_response(scope: Scope, status: StatusCode) -> Response {
    if status == StatusCode::TOO_MANY_REQUESTS {
        // Like the gateway's own 429: no Retry-After, a small JSON body.
        return small_json(status, "Too Many Requests");
    }
    let reason = status.canonical_reason().unwrap_or("Server Error");
    match scope {
        Scope::Scim => {
            ScimError::new(status, None, format!("simulated fault: {reason}")).into_response()
        }
        Scope::Events => small_json(status, reason),
    }
}

/// `{"status":<code>,"message":"..."}`, the gateway's error shape.
pub(crate) fn small_json(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"status": status.as_u16(), "message": message})),
    )
        .into_response()
}

fn add_rate_headers(response: &mut Response, rate: RateInfo) {
    let headers = response.headers_mut();
    headers.insert("ratelimit-remaining", HeaderValue::from(rate.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(rate.reset_secs));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        if let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::try_from(name),
            HeaderValue::try_from(value),
        ) {
            map.insert(n, v);
        }
        map
    }

    fn gate(scim: &str, events: &str, per_min: u32) -> Gate {
        Gate::new(
            scim,
            events,
            (per_min, 0),
            true,
            0.0,
            Some(7),
            Duration::ZERO,
        )
    }

    #[test]
    fn tokens_scopes_and_names() {
        let g = gate("s", "e", 0);
        let scim = g
            .authenticate(&headers("Netskope-Api-Token", "s"))
            .map(|t| (t.name, t.scim, t.events));
        assert_eq!(scim, Some((SCIM_TOKEN_NAME, true, false)));
        let events = g
            .authenticate(&headers("authorization", "bearer e"))
            .map(|t| (t.name, t.scim, t.events));
        assert_eq!(events, Some((EVENTS_TOKEN_NAME, false, true)));
        assert!(
            g.authenticate(&headers("Netskope-Api-Token", "x"))
                .is_none()
        );
        assert!(g.authenticate(&headers("Netskope-Api-Token", "")).is_none());
        assert!(
            g.authenticate(&headers("authorization", "Basic s"))
                .is_none()
        );
        assert!(g.authenticate(&HeaderMap::new()).is_none());

        let both = gate("t", "t", 0);
        let token = both
            .authenticate(&headers("Netskope-Api-Token", "t"))
            .map(|t| (t.name, t.scim, t.events));
        assert_eq!(token, Some((COMBINED_TOKEN_NAME, true, true)));
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_follows_tokio_time() {
        let g = gate("s", "e", 5);
        let token = g
            .authenticate(&headers("Netskope-Api-Token", "s"))
            .expect("token");
        let mut remaining = Vec::new();
        for _ in 0..5 {
            let info = check_rate(token, true).ok().flatten().expect("allowed");
            remaining.push(info.remaining);
            assert!(info.reset_secs >= 1);
        }
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        let limited = check_rate(token, true).expect_err("limited");
        assert_eq!(limited.remaining, 0);
        // One cell every 12 s; a full bucket after 60 s.
        assert_eq!(limited.reset_secs, 60);

        // The other token has its own bucket.
        let events = g
            .authenticate(&headers("Netskope-Api-Token", "e"))
            .expect("token");
        assert!(check_rate(events, true).is_ok());

        tokio::time::advance(Duration::from_secs(12)).await;
        assert!(check_rate(token, true).is_ok());
        assert!(check_rate(token, true).is_err());
        tokio::time::advance(Duration::from_secs(60)).await;
        let info = check_rate(token, true).ok().flatten().expect("allowed");
        assert_eq!((info.remaining, info.reset_secs), (4, 12));
    }

    #[test]
    fn fault_rate_extremes_and_seeded_determinism() {
        let g = gate("s", "e", 0);
        assert!((0..100).all(|_| g.roll_fault().is_none()));
        g.set_fault_rate(1.0);
        assert!((0..100).all(|_| g.roll_fault().is_some_and(|s| s.is_server_error())));
        g.set_fault_throttle(true);
        let statuses: std::collections::BTreeSet<u16> = (0..200)
            .filter_map(|_| g.roll_fault().map(|s| s.as_u16()))
            .collect();
        assert_eq!(
            statuses.into_iter().collect::<Vec<_>>(),
            [429, 500, 502, 503],
            "throttling adds 429 to the 5xx"
        );
        g.set_fault_rate(f64::NAN);
        assert!(g.roll_fault().is_none());

        let draws = |seed| {
            let g = Gate::new("s", "e", (0, 0), false, 0.5, Some(seed), Duration::ZERO);
            (0..64)
                .map(|_| g.roll_fault().map(|s| s.as_u16()))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(42), draws(42));
        let faults = draws(42).iter().filter(|d| d.is_some()).count();
        assert!((10..=54).contains(&faults), "{faults}");
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
