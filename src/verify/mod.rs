//! Verification: did Netskope record the change? One shared audit poller, read-back as the
//! second witness; then a watch for someone else undoing the change ([`drift`]).
//!
//! A 204 says Netskope accepted a request, not that it took effect. Netskope audits every REST
//! API v2 call (`Rest API V2 Call`, with `[status, method, path, trid]` in `data_values`), after
//! an indexing delay of minutes. So every applied action waits here, and ONE poller serves all
//! of them: each poll reads the audit events inserted since the last poll, page by page
//! ([`netskope::AuditCursor`]), and matches them against everything pending. Each audit event is
//! read once: verification costs one pass over the audit volume, however many actions wait and
//! however long.
//!
//! An audit event verifies one of our requests only if it is *ours*: the same method and path,
//! timestamped inside the window in which the server handled our request (from its answer's
//! `Date`, by the server's own clock), and made by our token's audit identity (configured, or
//! learned from the first such match). An IdP re-enabling the user a few seconds before or
//! after, or an administrator's edit, does not verify us.
//!
//! An action still unmatched at `timeout` is read back, when read-back is on: the user's
//! `active` flag, its absence after a delete, or the group's members. Read-back alone
//! (`mode = "readback"`) reads back at the first poll after the action.
//!
//! Read-back shows the state now, not the state our action left. When a later action of ours
//! on the same user changes what read-back would see (a release after a quarantine, a delete
//! after a deactivation) before the earlier one is verified, the earlier one ends
//! `superseded` instead of being read back: reading it back could only raise a false alarm.
//! An audit event still verifies it, since that shows our own request.
//!
//! Paging is defensive, because audit pages shift while events are indexed and a tenant may
//! ignore the paging parameter: events are de-duplicated by `_id`, a page identical to the one
//! before ends the poll, and so does `max_pages` (the next poll goes on from there).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

pub mod drift;

use netskope::{AuditCursor, AuditEvent, AuditWindow, ErrorClass, NetskopeClient, NetskopeError};
use offboarder_base::clock::WallClock;
use offboarder_base::metric_names as names;

/// Transient read-back failures of one action before it is reported unverified.
const MAX_READBACK_FAILURES: u32 = 5;

/// Which witnesses verify an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum VerifyMode {
    #[serde(rename = "audit")]
    Audit,
    #[serde(rename = "readback")]
    Readback,
    #[default]
    #[serde(rename = "audit+readback")]
    AuditThenReadback,
    #[serde(rename = "off")]
    Off,
}

impl VerifyMode {
    /// The mode as the config file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyMode::Audit => "audit",
            VerifyMode::Readback => "readback",
            VerifyMode::AuditThenReadback => "audit+readback",
            VerifyMode::Off => "off",
        }
    }

    /// Whether this mode reads Netskope's audit trail.
    pub fn uses_audit(self) -> bool {
        matches!(self, VerifyMode::Audit | VerifyMode::AuditThenReadback)
    }
}

/// The `[verify]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    pub mode: VerifyMode,
    /// How often the audit trail is read (and read-backs are due).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long an action waits for its audit event before it is read back (or, in audit-only
    /// mode, reported unverified).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Audit events per page (Netskope allows up to 5,000).
    pub page_limit: u32,
    /// Pages read per poll at most, so that a tenant ignoring the paging parameter, or a very
    /// busy window, cannot hold the poller.
    pub max_pages: u32,
    /// Actions waiting for verification. At the bound, consumption pauses.
    pub max_pending: usize,
    /// Allowance for the difference between this host's clock and Netskope's, for an answer
    /// without a `Date` header: its request's audit event is looked for this long either side
    /// of when the answer came. (With `Date`, the window is the server's own.)
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
    /// `audit_log_event` values that record a REST API call.
    pub audit_events: Vec<String>,
    /// Only audit events whose `user` is this name (the API token's name as Netskope shows
    /// it) count, so an administrator's or an IdP's change cannot verify ours. Unset: learned
    /// from the first audit event that matches one of our requests inside its window.
    pub audit_user: Option<String>,
    /// After a deactivation or a quarantine is verified, the audit trail is watched this long
    /// for another actor undoing it (a `reverted` outcome). `0s` turns the watch off. Needs a
    /// mode that reads the audit trail.
    #[serde(with = "humantime_serde")]
    pub drift_watch: Duration,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            mode: VerifyMode::default(),
            poll_interval: Duration::from_secs(15),
            timeout: Duration::from_secs(600),
            page_limit: 1000,
            max_pages: 20,
            max_pending: 50_000,
            clock_skew: Duration::from_secs(120),
            audit_events: vec!["Rest API V2 Call".into()],
            audit_user: None,
            drift_watch: Duration::from_secs(24 * 3600),
        }
    }
}

impl VerifyConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=netskope::audit::MAX_PAGE_LIMIT).contains(&self.page_limit) {
            return Err("verify.page_limit: must be between 1 and 5000".into());
        }
        if self.poll_interval.is_zero() {
            return Err("verify.poll_interval: must be more than 0s".into());
        }
        if self.max_pages == 0 || self.max_pending == 0 {
            return Err("verify.max_pages and verify.max_pending: must be at least 1".into());
        }
        if self.mode.uses_audit() && self.audit_events.is_empty() {
            return Err("verify.audit_events: name at least one audit event".into());
        }
        Ok(())
    }

    /// Whether the endpoints fit the mode: a mode that reads the audit trail needs its URL.
    pub fn check_endpoints(&self, endpoints: &netskope::Endpoints) -> Result<(), String> {
        if self.mode.uses_audit() && endpoints.audit.is_none() {
            return Err(format!(
                "verify.mode = \"{}\" reads Netskope's audit trail, but netskope has neither tenant_url nor audit_url: set one, or set verify.mode = \"readback\" for a SCIM server without Netskope's audit trail",
                self.mode.as_str()
            ));
        }
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.mode != VerifyMode::Off
    }
}

/// What read-back must see for an action to be verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The user reads `active: false`.
    UserInactive {
        user_id: String,
    },
    /// The user reads `active: true` (a reactivation).
    UserActive {
        user_id: String,
    },
    /// The user is gone (404).
    UserGone {
        user_id: String,
    },
    InGroup {
        group_id: String,
        user_id: String,
    },
    NotInGroup {
        group_id: String,
        user_id: String,
    },
}

impl Check {
    /// Whether `self`, the check of a later action, changes what read-back of `earlier` would
    /// show: the same user, and a state that contradicts the earlier one.
    pub fn supersedes(&self, earlier: &Check) -> bool {
        use Check::*;
        match (self, earlier) {
            (
                NotInGroup {
                    group_id: g,
                    user_id: u,
                },
                InGroup { group_id, user_id },
            )
            | (
                InGroup {
                    group_id: g,
                    user_id: u,
                },
                NotInGroup { group_id, user_id },
            ) => g == group_id && u == user_id,
            (
                UserGone { user_id: u },
                InGroup { user_id, .. } | UserInactive { user_id } | UserActive { user_id },
            )
            | (UserActive { user_id: u }, UserInactive { user_id })
            | (UserInactive { user_id: u }, UserActive { user_id }) => u == user_id,
            _ => false,
        }
    }

    /// The action behind this check, in words.
    pub fn describe(&self) -> String {
        match self {
            Check::UserInactive { user_id } => format!("a later deactivation of user {user_id}"),
            Check::UserActive { user_id } => format!("a later reactivation of user {user_id}"),
            Check::UserGone { user_id } => format!("a later delete of user {user_id}"),
            Check::InGroup { group_id, user_id } => {
                format!("a later quarantine of user {user_id} in group {group_id}")
            }
            Check::NotInGroup { group_id, user_id } => {
                format!("a later release of user {user_id} from group {group_id}")
            }
        }
    }
}

/// The request whose audit event verifies an action. Actions carried by one PATCH share it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub method: &'static str,
    /// The full request path as the audit trail shows it, e.g. `/api/v2/scim/Users/<id>`.
    pub path: String,
    /// Distinguishes two requests with the same method and path (a redelivery, two batches).
    pub seq: u64,
}

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(1);

/// A number no other request of this process has.
pub fn next_request_seq() -> u64 {
    REQUEST_SEQ.fetch_add(1, Ordering::Relaxed)
}

/// What would show that an applied action took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The request whose audit event is the first witness.
    pub request: RequestKey,
    /// What read-back must see, the second witness.
    pub check: Check,
    /// When the server handled the request, by its own clock (from its answer's `Date`): the
    /// audit event of that request is timestamped inside. `None` when the answer had no
    /// `Date`; the window is then guessed from this host's clock and `clock_skew`.
    pub server_window: Option<AuditWindow>,
}

/// An applied action waiting for its witness.
#[derive(Debug, Clone)]
pub struct Pending {
    pub expected: Expected,
    /// When the request was answered, epoch seconds.
    pub acted_at: u64,
    /// Watch the change for `verify.drift_watch` once verified, reporting with this; `None`:
    /// not watched.
    pub watch: Option<Box<drift::Watched>>,
}

/// How an action was verified, or what was seen instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub verified: bool,
    /// `audit` or `readback`; `none` when no witness could be asked.
    pub method: &'static str,
    pub audit_event_id: Option<String>,
    /// The audit event's timestamp, epoch seconds.
    pub audit_timestamp: Option<u64>,
    /// What was seen, in words.
    pub evidence: String,
    /// A later action of ours on the same user changed what read-back would show before this
    /// one was verified (`evidence` names it): neither verified nor a failure.
    pub superseded: bool,
}

/// The handle through which the pipeline submits actions. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    tx: mpsc::Sender<(Pending, oneshot::Sender<Verification>)>,
    pending: Arc<AtomicUsize>,
    /// The reports of the drift watch, until the pipeline takes them.
    drifts: Arc<std::sync::Mutex<Option<mpsc::Receiver<drift::Drift>>>>,
    /// Whether verified changes are watched (`drift_watch` set, the audit trail read).
    watches: bool,
}

impl Verifier {
    /// Starts the poller. `mode` may be narrower than the config's (read-back only, when the
    /// events token lacks the audit scope).
    pub fn spawn(client: Arc<NetskopeClient>, config: VerifyConfig, mode: VerifyMode) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let (drifts, drift_reports) = mpsc::channel(1024);
        let pending = Arc::new(AtomicUsize::new(0));
        let config_actor = config.audit_user.clone();
        let watches = !config.drift_watch.is_zero() && mode.uses_audit();
        let poller = Poller {
            watches: Vec::new(),
            drifts,
            client,
            mode,
            config,
            clock: WallClock::new(),
            waiting: Vec::new(),
            seen: HashMap::new(),
            cursor: None,
            pending: pending.clone(),
            actor: config_actor,
        };
        tokio::spawn(poller.run(rx));
        Self {
            tx,
            pending,
            drifts: Arc::new(std::sync::Mutex::new(Some(drift_reports))),
            watches,
        }
    }

    /// Whether a verified change is watched for drift: a [`Pending::watch`] is wasted
    /// otherwise.
    pub fn watches(&self) -> bool {
        self.watches
    }

    /// The drift watch's reports ([`drift::Drift`]); `Some` once, for the one who publishes
    /// them. Untaken, reports beyond the channel's room are dropped with a warning.
    pub fn take_drifts(&self) -> Option<mpsc::Receiver<drift::Drift>> {
        self.drifts.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Queues an action; the answer comes once its witness is found or its time is up.
    pub async fn submit(&self, action: Pending) -> oneshot::Receiver<Verification> {
        let (reply, answer) = oneshot::channel();
        let n = self.pending.fetch_add(1, Ordering::SeqCst) + 1;
        metrics::gauge!(names::PENDING_VERIFICATIONS).set(n as f64);
        if self.tx.send((action, reply)).await.is_err() {
            // The poller is gone (it died): the receiver reports a closed channel, and the
            // pipeline stops on it.
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
        answer
    }

    /// Actions waiting for verification.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }
}

/// Checks once, at start, whether the events token may read the audit trail. Returns the mode
/// to run in: read-back only, with one clear warning, when it may not.
pub async fn effective_mode(client: &NetskopeClient, config: &VerifyConfig) -> VerifyMode {
    if !config.mode.uses_audit() {
        return config.mode;
    }
    match client.probe_audit().await {
        Ok(()) => config.mode,
        Err(e) if e.class() == ErrorClass::Config => {
            tracing::warn!(
                error = %e,
                "verification cannot read the audit trail; verifying by read-back only"
            );
            VerifyMode::Readback
        }
        Err(e) => {
            tracing::warn!(error = %e, "the audit trail did not answer at start; will keep trying");
            config.mode
        }
    }
}

struct Waiting {
    action: Pending,
    reply: oneshot::Sender<Verification>,
    /// The audit event that matched (its `_id`, timestamp and actor), while read-back is not
    /// needed.
    matched: Option<(String, u64, Option<String>)>,
    /// Read-back attempts that failed with a transient error.
    readback_failures: u32,
    /// A later action of ours on the same user, which read-back would see instead of this one.
    superseded_by: Option<String>,
}

struct Poller {
    client: Arc<NetskopeClient>,
    mode: VerifyMode,
    config: VerifyConfig,
    clock: WallClock,
    waiting: Vec<Waiting>,
    /// Audit `_id`s already used to verify a request, with their timestamps, so that one event
    /// never verifies two requests (the cursor may read one again after a rewind); pruned as
    /// the oldest window moves on.
    seen: HashMap<String, u64>,
    /// Where reading the audit trail goes on from; `None` until the first read.
    cursor: Option<AuditCursor>,
    pending: Arc<AtomicUsize>,
    /// Whose audit events can verify ours: `verify.audit_user`, or the `user` of the first
    /// audit event that matched one of our requests inside its window (this token's own name
    /// in the audit trail). Once known, another actor's change of the same path, an IdP's or
    /// an administrator's, never verifies ours.
    actor: Option<String>,
    /// Verified changes watched for another actor undoing them.
    watches: Vec<drift::Watch>,
    /// Where the drift watch reports.
    drifts: mpsc::Sender<drift::Drift>,
}

impl Poller {
    async fn run(mut self, mut rx: mpsc::Receiver<(Pending, oneshot::Sender<Verification>)>) {
        let mut tick = tokio::time::interval(self.config.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                submitted = rx.recv() => match submitted {
                    Some((action, reply)) => {
                        self.unwatch_superseded(&action.expected.check);
                        for w in &mut self.waiting {
                            if w.superseded_by.is_none()
                                && action.expected.check.supersedes(&w.action.expected.check)
                            {
                                w.superseded_by = Some(action.expected.check.describe());
                            }
                        }
                        // Its audit event may lie behind where reading has got to (a poll
                        // ran between the request and now): read from its window again.
                        let start = self.window_of_action(&action).start;
                        if let Some(cursor) = &mut self.cursor
                            && start < cursor.from()
                        {
                            cursor.move_to(start);
                        }
                        self.waiting.push(Waiting {
                            action,
                            reply,
                            matched: None,
                            readback_failures: 0,
                            superseded_by: None,
                        });
                    }
                    // The pipeline is gone, and with it everyone waiting for an answer.
                    None => return,
                },
                _ = tick.tick() => self.poll().await,
            }
        }
    }

    async fn poll(&mut self) {
        if self.waiting.is_empty() && !self.watching() {
            return;
        }
        let now = self.clock.now_secs();
        if self.mode.uses_audit()
            && (self.waiting.iter().any(|w| w.matched.is_none()) || self.watching())
        {
            self.read_audit().await;
        }
        self.check_watches(now).await;
        let timeout = self.config.timeout.as_secs();
        // Read back what is due, reading each group's members once per poll.
        let mut members: HashMap<String, Result<HashSet<String>, NetskopeError>> = HashMap::new();
        let mut done: BTreeMap<usize, Verification> = BTreeMap::new();
        for (index, w) in self.waiting.iter_mut().enumerate() {
            let timed_out = now.saturating_sub(w.action.acted_at) >= timeout;
            let request = &w.action.expected.request;
            let readback_due = match (&w.matched, self.mode) {
                (Some((id, ts, actor)), _) => {
                    done.insert(
                        index,
                        Verification::by_audit(id, *ts, actor.as_deref(), request),
                    );
                    continue;
                }
                (None, VerifyMode::Audit) if timed_out => {
                    let evidence = format!(
                        "no audit event for {} {} within {}",
                        request.method,
                        request.path,
                        humantime::format_duration(self.config.timeout)
                    );
                    done.insert(index, Verification::unverified("audit", evidence));
                    continue;
                }
                (None, VerifyMode::Readback) => true,
                (None, VerifyMode::AuditThenReadback) => timed_out,
                _ => false,
            };
            if !readback_due {
                continue;
            }
            if let Some(later) = &w.superseded_by {
                done.insert(index, Verification::superseded(later));
                continue;
            }
            match read_back(&self.client, &w.action.expected.check, &mut members).await {
                Ok(v) => {
                    done.insert(index, v);
                }
                Err(e) if e.is_transient() && w.readback_failures < MAX_READBACK_FAILURES => {
                    w.readback_failures += 1;
                    tracing::warn!(error = %e, "read-back failed; trying again at the next poll");
                }
                Err(e) => {
                    let evidence = format!("read-back failed: {e}");
                    done.insert(index, Verification::unverified("readback", evidence));
                }
            }
        }
        // Highest index first, so that swap_remove moves only entries already handled.
        for (index, v) in done.into_iter().rev() {
            let mut w = self.waiting.swap_remove(index);
            if v.verified
                && let Some(watched) = w.action.watch.take()
            {
                let after = v.audit_timestamp.unwrap_or_else(|| self.window_of(&w).end);
                let expected = &w.action.expected;
                self.watch(&expected.request.path, &expected.check, after, *watched);
            }
            let left = self
                .pending
                .fetch_sub(1, Ordering::SeqCst)
                .saturating_sub(1);
            metrics::gauge!(names::PENDING_VERIFICATIONS).set(left as f64);
            metrics::histogram!(
                names::VERIFICATION_LATENCY,
                "method" => v.method,
                "result" => v.result()
            )
            .record(now.saturating_sub(w.action.acted_at) as f64);
            let _ = w.reply.send(v);
        }
    }

    /// Where the audit event of `w`'s request must lie, by the server's clock: the window its
    /// answer gave, or, without a `Date` in the answer, `clock_skew` around when it came.
    fn window_of(&self, w: &Waiting) -> AuditWindow {
        self.window_of_action(&w.action)
    }

    fn window_of_action(&self, action: &Pending) -> AuditWindow {
        action.expected.server_window.unwrap_or_else(|| {
            let skew = self.config.clock_skew.as_secs();
            AuditWindow {
                start: action.acted_at.saturating_sub(skew),
                end: action.acted_at + skew,
            }
        })
    }

    /// Reads the audit events inserted since the last read, page by page, and marks the
    /// requests they verify. Each event is read once: the cost follows the audit volume, not
    /// the number of actions waiting or how long they wait.
    async fn read_audit(&mut self) {
        // An event that can verify a waiting action was inserted no earlier than the start of
        // that action's window (Netskope indexes an event after it happens).
        // Without one, watches need only what comes next.
        let start = self
            .waiting
            .iter()
            .filter(|w| w.matched.is_none())
            .map(|w| self.window_of(w).start)
            .min()
            .or(self.cursor.as_ref().map(AuditCursor::from))
            .or(self.watched_since());
        let Some(start) = start else {
            return;
        };
        self.seen.retain(|_, ts| *ts >= start);
        let cursor = self
            .cursor
            .get_or_insert_with(|| AuditCursor::starting_at(start));
        if start > cursor.from() {
            cursor.move_to(start);
        }
        let read = self
            .client
            .read_audit(cursor, self.config.page_limit, self.config.max_pages)
            .await;
        let mut events = match read {
            Ok(read) => read.events,
            Err(e) if e.class() == ErrorClass::Config => {
                tracing::warn!(
                    error = %e,
                    "the audit trail refused the token; verifying by read-back only from now on"
                );
                self.mode = VerifyMode::Readback;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit poll failed; trying again at the next poll");
                return;
            }
        };
        events.sort_by_key(|e| e.timestamp);
        for e in events {
            if self.seen.contains_key(&e.id) {
                continue;
            }
            self.notice(&e);
            let Some((method, path)) = self.api_call(&e) else {
                continue;
            };
            // The oldest request with this method and path whose window holds the event. Two
            // of our requests on one path (a quarantine and a release of one group) are told
            // apart by their windows, and within overlapping windows by their order: the
            // audit trail records no body.
            let request = self
                .waiting
                .iter()
                .filter(|w| {
                    w.matched.is_none()
                        && w.action.expected.request.method == method
                        && w.action.expected.request.path == path
                        && self.window_of(w).contains(e.timestamp)
                })
                .min_by_key(|w| (w.action.acted_at, w.action.expected.request.seq))
                .map(|w| w.action.expected.request.clone());
            let Some(request) = request else { continue };
            if self.actor.is_none()
                && let Some(user) = &e.user
            {
                tracing::info!(
                    actor = user.as_str(),
                    audit_event_id = e.id.as_str(),
                    "verification: this token acts as {user:?} in the audit trail (learned from the first audit event of one of its requests); from now on only its events verify an action. Set verify.audit_user to pin it"
                );
                self.actor = Some(user.clone());
            }
            self.seen.insert(e.id.clone(), e.timestamp);
            for w in self
                .waiting
                .iter_mut()
                .filter(|w| w.action.expected.request == request)
            {
                w.matched = Some((e.id.clone(), e.timestamp, e.user.clone()));
            }
        }
    }

    /// `(method, path)` of an audit event that records a successful REST API call by us.
    fn api_call<'e>(&self, e: &'e AuditEvent) -> Option<(&'e str, &'e str)> {
        if let Some(user) = &self.actor
            && e.user.as_deref() != Some(user.as_str())
        {
            return None;
        }
        self.rest_call(e)
    }

    /// `(method, path)` of an audit event that records a successful REST API call, by anyone.
    fn rest_call<'e>(&self, e: &'e AuditEvent) -> Option<(&'e str, &'e str)> {
        let name = e.audit_log_event.as_deref()?;
        if !self.config.audit_events.iter().any(|n| n == name) {
            return None;
        }
        let values = &e.supporting_data.as_ref()?.data_values;
        let status = values.first().and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        })?;
        if !(200..300).contains(&status) {
            return None;
        }
        let method = values.get(1)?.as_str()?;
        let path = values.get(2)?.as_str()?;
        Some((method, path))
    }
}

impl Verification {
    fn by_audit(id: &str, timestamp: u64, actor: Option<&str>, request: &RequestKey) -> Self {
        Self {
            verified: true,
            method: "audit",
            audit_event_id: Some(id.to_string()),
            audit_timestamp: Some(timestamp),
            evidence: format!(
                "audit event {id}: {} {} by {} answered 2xx",
                request.method,
                request.path,
                actor.map_or("(no user given)".to_string(), |a| format!("{a:?}"))
            ),
            superseded: false,
        }
    }

    fn unverified(method: &'static str, evidence: String) -> Self {
        Self {
            verified: false,
            method,
            audit_event_id: None,
            audit_timestamp: None,
            evidence,
            superseded: false,
        }
    }

    fn superseded(later: &str) -> Self {
        Self {
            superseded: true,
            ..Self::unverified(
                "none",
                format!("not read back: {later} followed before this action was verified"),
            )
        }
    }

    /// `verified`, `unverified` or `superseded`.
    pub fn result(&self) -> &'static str {
        if self.verified {
            "verified"
        } else if self.superseded {
            "superseded"
        } else {
            "unverified"
        }
    }
}

async fn read_back(
    client: &NetskopeClient,
    check: &Check,
    members: &mut HashMap<String, Result<HashSet<String>, NetskopeError>>,
) -> Result<Verification, NetskopeError> {
    let seen = |verified: bool, evidence: String| Verification {
        verified,
        method: "readback",
        audit_event_id: None,
        audit_timestamp: None,
        evidence,
        superseded: false,
    };
    match check {
        Check::UserInactive { user_id } | Check::UserActive { user_id } => {
            let want = matches!(check, Check::UserActive { .. });
            Ok(match client.get_user(user_id).await? {
                Some(u) if u.active == Some(want) => {
                    seen(true, format!("user {user_id} reads active={want}"))
                }
                Some(u) => seen(
                    false,
                    format!(
                        "user {user_id} reads active={}",
                        u.active.map_or("(absent)".to_string(), |a| a.to_string())
                    ),
                ),
                None => seen(false, format!("user {user_id} no longer exists (404)")),
            })
        }
        Check::UserGone { user_id } => Ok(match client.get_user(user_id).await? {
            None => seen(true, format!("user {user_id} is gone (404)")),
            Some(u) => seen(
                false,
                format!("user {user_id} still exists (active={:?})", u.active),
            ),
        }),
        Check::InGroup { group_id, user_id } | Check::NotInGroup { group_id, user_id } => {
            let want_member = matches!(check, Check::InGroup { .. });
            if !members.contains_key(group_id) {
                let read = client
                    .group_members(group_id)
                    .await
                    .map(|m| m.into_iter().collect());
                members.insert(group_id.clone(), read);
            }
            let group = members
                .get(group_id)
                .cloned()
                .unwrap_or_else(|| Ok(HashSet::new()))?;
            let is_member = group.contains(user_id);
            let state = if is_member {
                "a member"
            } else {
                "not a member"
            };
            Ok(seen(
                is_member == want_member,
                format!("user {user_id} is {state} of group {group_id}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain SCIM server has no audit trail: read-back alone needs no audit URL, a mode
    /// that reads the trail says what to set.
    #[test]
    fn only_a_mode_that_reads_the_audit_trail_needs_its_url() {
        let endpoints = netskope::NetskopeConfig {
            scim_base_url: Some("https://scim.example.org/v2".into()),
            ..Default::default()
        }
        .endpoints()
        .expect("endpoints");
        let config = |mode| VerifyConfig {
            mode,
            ..VerifyConfig::default()
        };
        assert_eq!(
            config(VerifyMode::Readback).check_endpoints(&endpoints),
            Ok(())
        );
        assert_eq!(config(VerifyMode::Off).check_endpoints(&endpoints), Ok(()));
        let err = config(VerifyMode::AuditThenReadback)
            .check_endpoints(&endpoints)
            .unwrap_err();
        assert!(err.contains("verify.mode = \"readback\""), "{err}");
    }
}
