//! The Netskope client: SCIM users and groups, audit-event pages.
//!
//! | module | what it does |
//! |---|---|
//! | [`config`] | the `[netskope]` config table, endpoint derivation, https enforcement, token loading |
//! | [`error`] | typed errors and their class: transient, permanent per event, configuration |
//! | [`transport`] | one logical request: budget, auth header, retries with backoff, bounded body |
//! | [`limiter`] | one request budget per token, slowed by 429s and rate-limit headers |
//! | [`scim`] | users (resolve, deactivate, delete, read back) and groups (ensure, members) |
//! | [`audit`] | pages of audit events (`result` or `data`, `offset` or `skip`) |
//! | [`filter`] | SCIM filter values escaped as JSON string literals |
//! | [`cache`] | bounded caches with expiry for user and group ids |
//! | [`directory`] | the directory mirror (user name → id) and when listing it pays |
//! | [`user`] | a user as the server knows it, what a resolve or a listing yields |

pub mod audit;
pub mod cache;
pub mod config;
pub mod directory;
pub mod error;
pub mod filter;
pub mod limiter;
pub mod scim;
pub mod transport;
pub mod user;

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use url::Url;

use cache::TtlCache;
use config::{PagingParam, RemoveStyle};
use directory::Directory;
use limiter::TokenLimiter;
use transport::{Token, TokenFile, Transport};

pub use audit::{AuditCursor, AuditEvent, AuditRead, AuditWindow, Inserted, Sent};
pub use config::{ConfigError, Endpoints, NetskopeConfig, Tokens};
pub use directory::Demand;
pub use error::{ErrorClass, NetskopeError, Op, TokenRole};
pub use user::{ScimUser, UserRef};

/// How long a group id stays cached. Groups are few and long-lived; a PATCH that finds the group
/// gone drops the entry at once.
const GROUP_CACHE_TTL: Duration = Duration::from_secs(3600);
const GROUP_CACHE_SIZE: usize = 256;

/// A client for one Netskope tenant (or any SCIM 2.0 server).
///
/// Cheap to share behind an `Arc`; every method takes `&self`. Tokens live inside and are never
/// printed: `Debug` shows the endpoints and limiter state only.
pub struct NetskopeClient {
    endpoints: Endpoints,
    transport: Transport,
    scim_token: Arc<Token>,
    /// The same `Arc` as `scim_token` when one token serves both, so both share one budget.
    events_token: Arc<Token>,
    users: TtlCache<String, UserRef>,
    directory: Arc<Directory>,
    groups: TtlCache<String, String>,
    members_batch_size: usize,
    remove_style: RemoveStyle,
    /// Set once the server refused a value-list removal: removals are then written with filter
    /// paths, which every RFC 7644 server accepts (see [`NetskopeClient::remove_members`]).
    value_list_refused: std::sync::atomic::AtomicBool,
    paging_param: PagingParam,
}

impl std::fmt::Debug for NetskopeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetskopeClient")
            .field("scim_base", &self.endpoints.scim_base.as_str())
            .field("audit", &self.endpoints.audit.as_ref().map(Url::as_str))
            .field("scim_limiter", &self.scim_token.limiter)
            .field("separate_events_token", &self.has_separate_events_token())
            .finish()
    }
}

/// Builds a [`NetskopeClient`] from the config, with overrides for tests.
pub struct ClientBuilder<'a> {
    config: &'a NetskopeConfig,
    tokens: Option<Tokens>,
    request_timeout: Option<Duration>,
}

impl<'a> ClientBuilder<'a> {
    /// Use these tokens instead of reading the config's env vars or files.
    pub fn tokens(mut self, tokens: Tokens) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Turns the per-request timeout off. Only for tests under `tokio::time::pause`, where an
    /// armed timer fires as soon as the runtime idles on a socket.
    pub fn without_request_timeout(mut self) -> Self {
        self.request_timeout = None;
        self
    }

    pub fn build(self) -> Result<NetskopeClient, ConfigError> {
        let cfg = self.config;
        let endpoints = cfg.endpoints()?;
        // Tokens read from files can be read again after a 401; tokens handed in by the
        // caller or read from env vars cannot.
        let from_config = self.tokens.is_none();
        let file = |source: &offboarder_base::secret::SecretSource, which| {
            source
                .file
                .clone()
                .filter(|_| from_config)
                .map(|path| TokenFile { which, path })
        };
        let tokens = match self.tokens {
            Some(t) => t,
            None => cfg.load_tokens()?,
        };
        let transport = Transport::new(
            cfg.auth_header,
            cfg.retry.clone(),
            cfg.max_response_bytes,
            self.request_timeout,
        )
        .map_err(|e| ConfigError::Invalid {
            field: "tls",
            reason: format!("cannot build the HTTP client: {e}"),
        })?;
        let scim_token = Arc::new(
            Token::new(
                TokenRole::Scim,
                tokens.scim.clone(),
                cfg.requests_per_minute,
            )
            .with_file(file(&cfg.scim_token, "netskope.scim_token")),
        );
        // The same string twice is one token with one server-side budget: share its limiter.
        let separate_events = tokens
            .events
            .filter(|e| e.expose_secret() != tokens.scim.expose_secret());
        let events_token = match separate_events {
            Some(secret) => Arc::new(
                Token::new(TokenRole::Events, secret, cfg.requests_per_minute)
                    .with_file(file(&cfg.events_token, "netskope.events_token")),
            ),
            None => scim_token.clone(),
        };
        let client = NetskopeClient {
            endpoints,
            transport,
            scim_token,
            events_token,
            users: TtlCache::new(cfg.user_cache_size, cfg.user_cache_ttl),
            directory: Arc::new(Directory::new(directory::Settings {
                enabled: cfg.directory_mirror,
                page_size: cfg.directory_page_size,
                max_users: cfg.directory_max_users,
                fresh_for: cfg.user_cache_ttl,
            })),
            groups: TtlCache::new(GROUP_CACHE_SIZE, GROUP_CACHE_TTL),
            members_batch_size: cfg.members_batch_size,
            remove_style: cfg.member_remove_style,
            value_list_refused: std::sync::atomic::AtomicBool::new(false),
            paging_param: cfg.audit_paging_param,
        };
        // The whole budget until a consumer group says which share is this worker's.
        client.set_budget_share(1.0);
        Ok(client)
    }
}

impl NetskopeClient {
    /// A client from the config, reading tokens from their env vars or files.
    pub fn from_config(config: &NetskopeConfig) -> Result<Self, ConfigError> {
        Self::builder(config).build()
    }

    pub fn builder(config: &NetskopeConfig) -> ClientBuilder<'_> {
        ClientBuilder {
            config,
            tokens: None,
            request_timeout: Some(config.request_timeout),
        }
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The request budget of the SCIM token.
    pub fn scim_limiter(&self) -> &TokenLimiter {
        &self.scim_token.limiter
    }

    /// The request budget of the audit calls: the SCIM token's own when one token serves both.
    pub fn events_limiter(&self) -> &TokenLimiter {
        &self.events_token.limiter
    }

    /// Gives this worker `share` of each token's `requests_per_minute` (at least
    /// [`limiter::MIN_SHARE`]): workers that split one token between them each take the share
    /// of the work they were given, so that together they stay within the token's budget.
    pub fn set_budget_share(&self, share: f64) {
        let mut tokens = vec![&self.scim_token];
        if self.has_separate_events_token() {
            tokens.push(&self.events_token);
        }
        for token in tokens {
            token.limiter.set_share(share);
            metrics::gauge!(offboarder_base::metric_names::REQUEST_BUDGET, "token" => token.role.to_string())
                .set(f64::from(token.limiter.ceiling_per_min()));
        }
    }

    pub fn has_separate_events_token(&self) -> bool {
        !Arc::ptr_eq(&self.scim_token, &self.events_token)
    }

    /// `<scim base>/<segments...>`, each segment percent-encoded so that an id from a server
    /// can never change the path.
    fn scim_url(&self, segments: &[&str]) -> Url {
        let mut url = self.endpoints.scim_base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }
}
