//! A Netskope tenant simulator: SCIM 2.0 Users and Groups, the audit-event endpoint, token scopes,
//! per-token rate limits, injected faults and latency, served by axum on a local port.
//!
//! It exists so that the worker can be exercised end to end — by `offboarder simulate`, the demo,
//! integration tests and benchmarks — against the behaviours that make the real tenant hard to
//! talk to: 403s without a body, 429s without `Retry-After`, PATCH answered with 204 *or* 200,
//! audit events that appear minutes late and pages that ignore their paging parameter. Each such
//! behaviour is a flag in [`SimArgs`], so a test can pick the variant it wants to prove the
//! client survives.
//!
//! Time is read only through [`offboarder_base::clock`], so the audit lag and the rate limiter follow
//! `tokio::time::pause`.
//!
//! | module | what it does |
//! |---|---|
//! | `auth` | tokens, scopes, rate limit, faults, latency (the gateway middleware) |
//! | `scim` | HTTP handlers for Users and Groups |
//! | `discovery` | `/ServiceProviderConfig`, `/ResourceTypes`, `/Schemas` (RFC 7644 §4) |
//! | `state` | the in-memory directory and its SCIM JSON rendering |
//! | `filter` | the `<attr> eq <value>` filter subset |
//! | `patch` | PATCH operations |
//! | `audit` | the audit trail and its endpoint |
//! | `view` | `attributes` / `excludedAttributes` projections |
//! | `stats` | request counters (`/_sim/stats`) and, for benchmarks, request timings |

mod audit;
mod auth;
mod discovery;
mod error;
mod filter;
mod patch;
mod scim;
mod state;
mod stats;
mod view;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use offboarder_base::clock::WallClock;

use audit::AuditLog;
use auth::{Gate, Scope};
use error::ScimError;
use state::Directory;
use stats::Timings;

pub use audit::{AuditOrder, AuditPaging, AuditWrapper};
pub use auth::{COMBINED_TOKEN_NAME, EVENTS_TOKEN_NAME, SCIM_TOKEN_NAME};
pub use stats::{CLIENT_CLOSED, RequestTiming, SimStats};

/// Request bodies above this size are refused with 413 (SCIM PATCHes of 5,000 members stay far
/// below it).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Where the SCIM routes live, relative to the base URL.
pub const SCIM_PATH: &str = "/api/v2/scim";
/// Where the audit-event route lives, relative to the base URL.
pub const AUDIT_PATH: &str = "/api/v2/events/data/audit";

/// Options of `offboarder simulate`, also used programmatically (`SimArgs { users: 3,
/// ..Default::default() }`).
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on. The simulator has no real security: keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
    /// Token with the SCIM scope (Users and Groups).
    #[arg(
        long,
        env = "OFFBOARDER_SIM_SCIM_TOKEN",
        default_value = "sim-scim-token",
        hide_env_values = true
    )]
    pub scim_token: String,
    /// Token with the audit-events scope. The same value as --scim-token gives one token both scopes.
    #[arg(
        long,
        env = "OFFBOARDER_SIM_EVENTS_TOKEN",
        default_value = "sim-events-token",
        hide_env_values = true
    )]
    pub events_token: String,
    /// Seed user1@example.com … userN@example.com (active) at start.
    #[arg(long, default_value_t = 0)]
    pub users: usize,
    /// Requests per minute per token; 0 turns limiting off.
    #[arg(long = "rate-limit", default_value_t = 300)]
    pub rate_limit_per_min: u32,
    /// Requests a token may send at once before the per-minute pace applies; 0 means the
    /// whole minute's quota. Netskope does not publish its own.
    #[arg(long = "rate-limit-burst", default_value_t = 0)]
    pub rate_limit_burst: u32,
    /// Seconds before an audit event becomes visible (Netskope's indexing delay).
    #[arg(long = "audit-lag", default_value_t = 0)]
    pub audit_lag_secs: u64,
    /// Share (0..=1) of authorized requests answered with 500/502/503 before touching state.
    #[arg(long = "fault-rate", default_value_t = 0.0)]
    pub fault_rate: f64,
    /// Injected faults include 429 Too Many Requests (a quarter of them), not only 5xx.
    #[arg(long = "fault-throttle", default_value_t = false)]
    pub fault_throttle: bool,
    /// Delay added to every authorized request, in milliseconds.
    #[arg(long = "latency-ms", default_value_t = 0)]
    pub latency_ms: u64,
    /// Seed of the fault RNG (random if absent).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Which audit paging parameter the tenant honours.
    #[arg(long = "audit-paging", value_enum, default_value = "offset")]
    pub audit_paging: AuditPaging,
    /// Key of the audit events array: `result` (API v2) or `data` (as in the guide).
    #[arg(long = "audit-wrapper", value_enum, default_value = "result")]
    pub audit_wrapper: AuditWrapper,
    /// The order of audit events in a page: Netskope does not document it.
    #[arg(long = "audit-order", value_enum, default_value = "oldest-first")]
    pub audit_order: AuditOrder,
    /// Status of a successful PATCH: 204 (Netskope spec, empty body) or 200 (with the resource).
    #[arg(long = "patch-status", default_value_t = 204)]
    pub patch_status: u16,
    /// Send `ratelimit-remaining` / `ratelimit-reset` on every answer to a known token.
    #[arg(long = "rate-limit-headers", default_value_t = false)]
    pub rate_limit_headers: bool,
}

impl Default for SimArgs {
    /// The flags' defaults, except an ephemeral port so that parallel tests never collide.
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            scim_token: "sim-scim-token".into(),
            events_token: "sim-events-token".into(),
            users: 0,
            rate_limit_per_min: 300,
            rate_limit_burst: 0,
            audit_lag_secs: 0,
            fault_rate: 0.0,
            fault_throttle: false,
            latency_ms: 0,
            seed: None,
            audit_paging: AuditPaging::Offset,
            audit_wrapper: AuditWrapper::Result,
            audit_order: AuditOrder::OldestFirst,
            patch_status: 204,
            rate_limit_headers: false,
        }
    }
}

/// A user as tests see it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct SimUser {
    pub id: String,
    pub user_name: String,
    pub active: bool,
}

/// State shared by all requests of one simulator.
pub(crate) struct Sim {
    directory: Mutex<Directory>,
    audit: Mutex<AuditLog>,
    stats: Mutex<SimStats>,
    timings: Mutex<Timings>,
    pub(crate) gate: Gate,
    pub(crate) wall: WallClock,
    /// `http://host:port`, for `meta.location` of the discovery documents.
    pub(crate) base_url: String,
    pub(crate) patch_status: StatusCode,
    pub(crate) audit_paging: AuditPaging,
    pub(crate) audit_wrapper: AuditWrapper,
    pub(crate) audit_order: AuditOrder,
}

impl Sim {
    fn new(args: &SimArgs, base_url: &str) -> Self {
        let wall = WallClock::new();
        let mut directory = Directory::new(base_url);
        directory.seed_users(args.users, wall.now());
        let patch_status = if args.patch_status == 200 {
            StatusCode::OK
        } else {
            StatusCode::NO_CONTENT
        };
        Self {
            directory: Mutex::new(directory),
            audit: Mutex::new(AuditLog::new(args.audit_lag_secs)),
            stats: Mutex::new(SimStats::default()),
            timings: Mutex::new(Timings::default()),
            gate: Gate::new(
                &args.scim_token,
                &args.events_token,
                (args.rate_limit_per_min, args.rate_limit_burst),
                args.rate_limit_headers,
                args.fault_rate,
                args.seed,
                Duration::from_millis(args.latency_ms),
            ),
            wall,
            base_url: base_url.to_string(),
            patch_status,
            audit_paging: args.audit_paging,
            audit_wrapper: args.audit_wrapper,
            audit_order: args.audit_order,
        }
    }

    pub(crate) fn directory(&self) -> MutexGuard<'_, Directory> {
        lock(&self.directory)
    }

    pub(crate) fn audit(&self) -> MutexGuard<'_, AuditLog> {
        lock(&self.audit)
    }

    pub(crate) fn stats(&self) -> MutexGuard<'_, SimStats> {
        lock(&self.stats)
    }

    pub(crate) fn timings(&self) -> MutexGuard<'_, Timings> {
        lock(&self.timings)
    }
}

/// Locks a mutex, ignoring poisoning: every critical section leaves its data consistent (state
/// is committed in one step), so a panic elsewhere must not take the simulator down with it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Decoded query-string pairs; names are looked up case-insensitively (`startindex` works), as
/// SCIM clients are not consistent about it.
pub(crate) struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    pub(crate) fn parse(query: Option<&str>) -> Self {
        Self(
            url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn router(sim: Arc<Sim>) -> Router {
    use scim::*;
    let users_item = "/api/v2/scim/Users/{id}";
    let groups_item = "/api/v2/scim/Groups/{id}";
    let scim_routes = Router::new()
        .route("/api/v2/scim/Users", get(list_users).post(create_user))
        // RFC 7644 §3.4.3 searches; the static `.search` segment wins over `{id}`.
        .route("/api/v2/scim/Users/.search", post(search_users))
        .route("/api/v2/scim/Groups/.search", post(search_groups))
        .route("/api/v2/scim/.search", post(search_all))
        .route(
            users_item,
            get(get_user)
                .put(replace_user)
                .patch(patch_user)
                .delete(delete_user),
        )
        .route("/api/v2/scim/Groups", get(list_groups).post(create_group))
        .route(
            groups_item,
            get(get_group)
                .put(replace_group)
                .patch(patch_group)
                .delete(delete_group),
        )
        // Discovery (RFC 7644 §4) sits behind the same SCIM token: Netskope documents nothing
        // about these endpoints, and a narrower rule than "SCIM scope" would be invented.
        .route(
            "/api/v2/scim/ServiceProviderConfig",
            get(discovery::get_service_provider_config),
        )
        .route(
            "/api/v2/scim/ResourceTypes",
            get(discovery::list_resource_types),
        )
        .route(
            "/api/v2/scim/ResourceTypes/{id}",
            get(discovery::get_resource_type),
        )
        .route("/api/v2/scim/Schemas", get(discovery::list_schemas))
        .route("/api/v2/scim/Schemas/{id}", get(discovery::get_schema))
        .route_layer(from_fn_with_state((sim.clone(), Scope::Scim), auth::gate));
    let event_routes = Router::new()
        .route(AUDIT_PATH, get(audit::audit_events))
        .route_layer(from_fn_with_state((sim.clone(), Scope::Events), auth::gate));
    scim_routes
        .merge(event_routes)
        // Outermost, so it counts the gate's 401/403/429/5xx too.
        .route_layer(from_fn_with_state(sim.clone(), stats::count_requests))
        // Added after the route layers: never authenticated, never counted.
        .route("/_sim/stats", get(sim_stats))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(sim)
}

/// `GET /_sim/stats`.
async fn sim_stats(State(sim): State<Arc<Sim>>) -> Response {
    let snapshot = sim.stats().clone();
    axum::Json(snapshot).into_response()
}

/// Any unrouted request: counted (a client calling a wrong path should show up in stats), except
/// under `/_sim/`.
async fn not_found(State(sim): State<Arc<Sim>>, req: Request) -> Response {
    let path = req.uri().path();
    if !path.starts_with("/_sim/") {
        sim.stats()
            .record(format!("{} (unmatched)", req.method()), 404);
    }
    if path.starts_with(SCIM_PATH) {
        ScimError::not_found(format!("no such endpoint: {path}")).into_response()
    } else {
        auth::small_json(StatusCode::NOT_FOUND, "Not Found")
    }
}

/// A running simulator. Dropping it stops the server too (without waiting); [`SimHandle::shutdown`]
/// stops it and waits.
pub struct SimHandle {
    addr: SocketAddr,
    base_url: String,
    sim: Arc<Sim>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Binds the listener, seeds users and serves in a spawned task.
///
/// Fails with `InvalidInput` for a fault rate outside 0..=1 or a PATCH status other than 200/204,
/// rather than silently clamping a typo on the command line.
pub async fn start(args: SimArgs) -> std::io::Result<SimHandle> {
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
    if !(0.0..=1.0).contains(&args.fault_rate) {
        return Err(invalid(format!(
            "fault rate must be within 0..=1, got {}",
            args.fault_rate
        )));
    }
    if args.patch_status != 200 && args.patch_status != 204 {
        return Err(invalid(format!(
            "patch status must be 200 or 204, got {}",
            args.patch_status
        )));
    }
    if !args.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %args.listen,
            "the Netskope simulator is a local test tool with well-known default tokens and an \
             unauthenticated /_sim/stats; it is listening beyond loopback"
        );
    }
    let listener = TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let base_url = base_url_for(addr);
    let sim = Arc::new(Sim::new(&args, &base_url));
    sim.gate.set_fault_throttle(args.fault_throttle);
    let app = router(sim.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                // A dropped sender also means "stop".
                let _ = rx.await;
            })
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "simulator server failed");
        }
    });
    Ok(SimHandle {
        addr,
        base_url,
        sim,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// An address a client can reach: `0.0.0.0` / `::` are replaced with loopback.
fn base_url_for(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// Serves until ctrl-c (`offboarder simulate`). Logs where to point a client and which token
/// *names* exist, never the token values.
pub async fn run(args: SimArgs) -> std::io::Result<()> {
    let users = args.users;
    let one_token = args.scim_token == args.events_token;
    let handle = start(args).await?;
    tracing::info!(
        listen = %handle.addr(),
        base_url = %handle.base_url(),
        scim_base_url = %handle.scim_base_url(),
        audit_url = %handle.audit_url(),
        seeded_users = users,
        "Netskope simulator listening"
    );
    if one_token {
        tracing::info!(
            token = COMBINED_TOKEN_NAME,
            "one token holds the SCIM and events scopes (--scim-token / OFFBOARDER_SIM_SCIM_TOKEN)"
        );
    } else {
        tracing::info!(
            scim_token = SCIM_TOKEN_NAME,
            events_token = EVENTS_TOKEN_NAME,
            "tokens: SCIM scope from --scim-token / OFFBOARDER_SIM_SCIM_TOKEN, events scope from \
             --events-token / OFFBOARDER_SIM_EVENTS_TOKEN"
        );
    }
    tokio::signal::ctrl_c().await?;
    tracing::info!("simulator shutting down");
    handle.shutdown().await;
    Ok(())
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// `base_url` + `/api/v2/scim`
    pub fn scim_base_url(&self) -> String {
        format!("{}{SCIM_PATH}", self.base_url)
    }

    /// `base_url` + `/api/v2/events/data/audit`
    pub fn audit_url(&self) -> String {
        format!("{}{AUDIT_PATH}", self.base_url)
    }

    /// A snapshot of the request counters.
    pub fn stats(&self) -> SimStats {
        self.sim.stats().clone()
    }

    /// Starts timing routed requests, forgetting earlier timings; at most `limit` are kept.
    pub fn record_timings(&self, limit: usize) {
        self.sim.timings().start(limit);
    }

    /// The requests timed since [`SimHandle::record_timings`], in the order they were answered.
    pub fn timings(&self) -> Vec<RequestTiming> {
        self.sim.timings().snapshot()
    }

    /// The user with this `userName` (case-insensitive).
    pub fn user(&self, user_name: &str) -> Option<SimUser> {
        self.sim
            .directory()
            .user_by_name(user_name)
            .map(|u| SimUser {
                id: u.id.clone(),
                user_name: u.user_name().to_string(),
                active: u.active(),
            })
    }

    /// Member user ids of the group with this `displayName` (case-insensitive), sorted.
    pub fn group_members(&self, display_name: &str) -> Option<Vec<String>> {
        self.sim
            .directory()
            .group_by_name(display_name)
            .map(|g| g.members.iter().cloned().collect())
    }

    /// Id of the group with this `displayName` (case-insensitive).
    pub fn group_id(&self, display_name: &str) -> Option<String> {
        self.sim
            .directory()
            .group_by_name(display_name)
            .map(|g| g.id.clone())
    }

    /// Changes a user "behind the client's back" (as an admin in the UI would): no API call, no
    /// audit event. Returns false if there is no such user.
    pub fn set_user_active(&self, user_name: &str, active: bool) -> bool {
        let now = self.sim.wall.now();
        self.sim.directory().set_user_active(user_name, active, now)
    }

    /// Changes a user as another API client would (an IdP's provisioning, an administrator's
    /// script): `PATCH /Users/{id}` setting `active`, audited under `actor`'s name. Returns
    /// false if there is no such user.
    pub fn set_user_active_as(&self, actor: &str, user_name: &str, active: bool) -> bool {
        let now = self.sim.wall.now();
        let mut directory = self.sim.directory();
        let Some(id) = directory.user_by_name(user_name).map(|u| u.id.clone()) else {
            return false;
        };
        directory.set_user_active(user_name, active, now);
        drop(directory);
        let path = format!("/api/v2/scim/Users/{id}");
        self.sim
            .audit()
            .record(self.sim.wall.now_secs(), actor, 200, "PATCH", &path);
        true
    }

    /// Takes a user out of a group as another API client would: `PATCH /Groups/{id}`
    /// removing the member, audited under `actor`'s name. Returns false if either is unknown.
    pub fn remove_member_as(&self, actor: &str, group: &str, user_name: &str) -> bool {
        let now = self.sim.wall.now();
        let mut directory = self.sim.directory();
        let (Some(group_id), Some(user_id)) = (
            directory.group_by_name(group).map(|g| g.id.clone()),
            directory.user_by_name(user_name).map(|u| u.id.clone()),
        ) else {
            return false;
        };
        let body = serde_json::json!({
            "schemas": [patch::PATCH_OP_SCHEMA],
            "Operations": [{"op": "remove", "path": format!("members[value eq \"{user_id}\"]")}],
        });
        let Ok(ops) = patch::parse_patch(&body) else {
            return false;
        };
        if directory.patch_group(&group_id, &ops, now).is_err() {
            return false;
        }
        drop(directory);
        let path = format!("/api/v2/scim/Groups/{group_id}");
        self.sim
            .audit()
            .record(self.sim.wall.now_secs(), actor, 200, "PATCH", &path);
        true
    }

    /// Records `n` audit events of unrelated API calls by `actor`, as a busy tenant has.
    pub fn record_unrelated_audit(&self, actor: &str, n: usize) {
        let now = self.sim.wall.now_secs();
        let mut audit = self.sim.audit();
        for i in 0..n {
            let path = format!("/api/v2/policy/urllist/{i}");
            audit.record(now, actor, 200, "PATCH", &path);
        }
    }

    /// Rotates a token, as an admin does when one expires: `old` is refused (401) from now on
    /// and `new` has its scopes and budget. Returns false if `old` is not a token of this tenant.
    pub fn rotate_token(&self, old: &str, new: &str) -> bool {
        self.sim.gate.rotate_token(old, new)
    }

    /// Changes the delay added to every authorized request.
    pub fn set_latency(&self, latency: Duration) {
        self.sim.gate.set_latency(latency);
    }

    /// Lets injected faults answer 429 too (a quarter of them).
    pub fn set_fault_throttle(&self, on: bool) {
        self.sim.gate.set_fault_throttle(on);
    }

    /// Changes the fault rate of a running simulator (clamped to 0..=1).
    pub fn set_fault_rate(&self, rate: f64) {
        self.sim.gate.set_fault_rate(rate);
    }

    /// Audit events recorded so far, visible yet or not.
    pub fn audit_event_count(&self) -> usize {
        self.sim.audit().len()
    }

    /// Stops accepting, lets in-flight requests finish, and waits (at most 5 s) for the server.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            tracing::warn!("simulator did not stop within 5 s; aborting it");
            task.abort();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_replaces_unspecified_addresses() {
        let v4: SocketAddr = "0.0.0.0:80".parse().expect("addr");
        assert_eq!(base_url_for(v4), "http://127.0.0.1:80");
        let v6: SocketAddr = "[::]:81".parse().expect("addr");
        assert_eq!(base_url_for(v6), "http://[::1]:81");
    }

    #[test]
    fn query_params_decode_and_ignore_case() {
        let p = QueryParams::parse(Some("filter=userName%20eq%20%22a%2Bb%22&StartIndex=2"));
        assert_eq!(p.get("filter"), Some("userName eq \"a+b\""));
        assert_eq!(p.get("startIndex"), Some("2"));
        assert_eq!(p.get("count"), None);
    }

    #[test]
    fn sim_args_parse_from_flags() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            sim: SimArgs,
        }
        let cli = Cli::try_parse_from([
            "x",
            "--users",
            "3",
            "--rate-limit",
            "0",
            "--audit-paging",
            "skip",
            "--audit-wrapper",
            "data",
            "--patch-status",
            "200",
            "--rate-limit-headers",
        ]);
        let sim = cli.map(|c| c.sim).expect("flags parse");
        assert_eq!(sim.users, 3);
        assert_eq!(sim.rate_limit_per_min, 0);
        assert_eq!(sim.audit_paging, AuditPaging::Skip);
        assert_eq!(sim.audit_wrapper, AuditWrapper::Data);
        assert_eq!(sim.patch_status, 200);
        assert!(sim.rate_limit_headers);
        assert_eq!(sim.listen.port(), 8089);
    }
}
