//! The `[netskope]` table of the worker's config, and the tokens it points at.
//!
//! Tokens are never part of the config file: the file names an environment variable or a file
//! that holds each token. That keeps secrets out of config repositories and lets Kubernetes or
//! systemd mount them.

use std::net::IpAddr;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use offboarder_base::secret::{SecretError, SecretSource};

/// Which HTTP header carries the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthHeader {
    /// `Netskope-Api-Token: <token>`, as Netskope documents.
    #[default]
    Netskope,
    /// `Authorization: Bearer <token>`, which Netskope also accepts and generic SCIM servers expect.
    Bearer,
}

/// Name of the audit endpoint's paging parameter: Netskope's v2 spec says `offset`, older
/// guides (API v1) say `skip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PagingParam {
    #[default]
    Offset,
    Skip,
}

impl PagingParam {
    pub fn as_str(self) -> &'static str {
        match self {
            PagingParam::Offset => "offset",
            PagingParam::Skip => "skip",
        }
    }
}

/// How a membership removal is written in a group PATCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RemoveStyle {
    /// One `remove` operation per member with the RFC 7644 filter path
    /// `members[value eq "<id>"]`. Standard, and accepted by Netskope; all operations still
    /// travel in one PATCH.
    #[default]
    PathFilter,
    /// One `remove` operation on `members` with a value list (the form Netskope's and Azure's
    /// integrations send). RFC 7644 reads a `remove` on `members` without a filter as "remove
    /// every member", so strict servers refuse it (scim2-server answers 400 `invalidValue`);
    /// the client then falls back to `PathFilter` for good.
    ValueList,
}

/// Retry limits for transient faults (429, 5xx, timeouts, connection errors).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per request, the first one included.
    pub max_attempts: u32,
    /// First backoff delay; it doubles per attempt, with jitter.
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    /// Upper bound of one backoff delay. Netskope's own integration waits 60 s on a 429.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Upper bound on a server's `Retry-After`; a larger value is clamped to it.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

/// The `[netskope]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetskopeConfig {
    /// `https://<tenant>.goskope.com`; the SCIM base and the audit URL derive from it.
    pub tenant_url: Option<String>,
    /// Overrides `<tenant_url>/api/v2/scim`, to target any SCIM 2.0 server.
    pub scim_base_url: Option<String>,
    /// Overrides `<tenant_url>/api/v2/events/data/audit`.
    pub audit_url: Option<String>,
    /// The SCIM token. Defaults to the env var `NETSKOPE_SCIM_TOKEN`.
    pub scim_token: SecretSource,
    /// An optional separate token for the audit endpoint. Without it the SCIM token is used.
    pub events_token: SecretSource,
    pub auth_header: AuthHeader,
    /// Budget per token. Netskope allows about 300/min per token (observed, not published).
    pub requests_per_minute: u32,
    /// Per-request timeout, connection included.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub retry: RetryConfig,
    /// Plain http is refused unless this is set *and* the host is a loopback address (the
    /// local simulator). A token sent over plain http to a remote host is a token leaked.
    pub allow_insecure_http: bool,
    /// Entries in the user-name → id cache.
    pub user_cache_size: usize,
    /// How long a resolved id is trusted. Short, because users can be deleted and re-created.
    #[serde(with = "humantime_serde")]
    pub user_cache_ttl: Duration,
    /// Lets the client list the whole directory (user name → id) when that costs fewer
    /// requests than resolving the names that wait one by one (see the `directory` module).
    pub directory_mirror: bool,
    /// Users per page of a directory listing (`count`). Netskope's guide uses 100.
    pub directory_page_size: usize,
    /// A tenant with more users than this is never listed: names are resolved one by one.
    /// Bounds the mirror's memory (under 100 bytes per user).
    pub directory_max_users: usize,
    /// Most members in one group PATCH. Netskope's own integration sends up to 5,000.
    pub members_batch_size: usize,
    pub member_remove_style: RemoveStyle,
    pub audit_paging_param: PagingParam,
    /// Largest response body read, in bytes. An audit page of 5,000 events is a few MiB.
    pub max_response_bytes: usize,
}

impl Default for NetskopeConfig {
    fn default() -> Self {
        Self {
            tenant_url: None,
            scim_base_url: None,
            audit_url: None,
            scim_token: SecretSource::default(),
            events_token: SecretSource::default(),
            auth_header: AuthHeader::default(),
            requests_per_minute: 300,
            request_timeout: Duration::from_secs(30),
            retry: RetryConfig::default(),
            allow_insecure_http: false,
            user_cache_size: 10_000,
            user_cache_ttl: Duration::from_secs(300),
            directory_mirror: true,
            directory_page_size: 100,
            directory_max_users: 250_000,
            members_batch_size: 500,
            member_remove_style: RemoveStyle::default(),
            audit_paging_param: PagingParam::default(),
            max_response_bytes: 32 * 1024 * 1024,
        }
    }
}

/// The default env var of the SCIM token when the config names no source.
pub const DEFAULT_SCIM_TOKEN_ENV: &str = "NETSKOPE_SCIM_TOKEN";

/// A configuration fault: the worker must not start. Messages name the setting, never a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "netskope: set tenant_url (e.g. https://acme.goskope.com), or scim_base_url (with audit_url when verification reads Netskope's audit trail)"
    )]
    MissingUrl,
    #[error("netskope.{field}: {value:?} is not a valid URL: {reason}")]
    BadUrl {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "netskope.{field}: {value:?} uses plain http; https is required. Plain http is allowed only for a loopback host with allow_insecure_http = true"
    )]
    InsecureUrl { field: &'static str, value: String },
    #[error("netskope.{field}: {value:?} must not carry credentials, a query or a fragment")]
    UrlExtras { field: &'static str, value: String },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("netskope.{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// The endpoints the client talks to, derived and checked once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// SCIM base without a trailing slash, e.g. `https://acme.goskope.com/api/v2/scim`.
    pub scim_base: Url,
    /// The audit events endpoint: `None` for a SCIM server without Netskope's audit trail
    /// (verification by read-back only).
    pub audit: Option<Url>,
}

/// Tokens loaded from their sources. `events` is `None` when the SCIM token serves both.
pub struct Tokens {
    pub scim: SecretString,
    pub events: Option<SecretString>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("scim", &"[redacted]")
            .field("events", &self.events.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl NetskopeConfig {
    /// Checks every setting and derives the endpoints. Reads no secret.
    pub fn endpoints(&self) -> Result<Endpoints, ConfigError> {
        let tenant = self
            .tenant_url
            .as_deref()
            .map(|t| self.parse_url("tenant_url", t))
            .transpose()?;
        let scim_base = match (&self.scim_base_url, &tenant) {
            (Some(u), _) => self.parse_url("scim_base_url", u)?,
            (None, Some(t)) => join(t, "api/v2/scim"),
            (None, None) => return Err(ConfigError::MissingUrl),
        };
        let audit = match (&self.audit_url, &tenant) {
            (Some(u), _) => Some(self.parse_url("audit_url", u)?),
            (None, Some(t)) => Some(join(t, "api/v2/events/data/audit")),
            (None, None) => None,
        };
        self.check_limits()?;
        Ok(Endpoints { scim_base, audit })
    }

    fn check_limits(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_string(),
            })
        };
        if self.requests_per_minute == 0 {
            return invalid("requests_per_minute", "must be at least 1");
        }
        if self.request_timeout.is_zero() {
            return invalid("request_timeout", "must be more than 0s");
        }
        if self.retry.max_attempts == 0 {
            return invalid("retry.max_attempts", "must be at least 1");
        }
        if self.user_cache_size == 0 {
            return invalid("user_cache_size", "must be at least 1");
        }
        if !(1..=1000).contains(&self.directory_page_size) {
            return invalid("directory_page_size", "must be between 1 and 1000");
        }
        if !(1..=5000).contains(&self.members_batch_size) {
            return invalid("members_batch_size", "must be between 1 and 5000");
        }
        if self.max_response_bytes < 64 * 1024 {
            return invalid("max_response_bytes", "must be at least 65536");
        }
        Ok(())
    }

    fn parse_url(&self, field: &'static str, value: &str) -> Result<Url, ConfigError> {
        let url = Url::parse(value.trim()).map_err(|e| ConfigError::BadUrl {
            field,
            value: value.to_string(),
            reason: e.to_string(),
        })?;
        if !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(ConfigError::UrlExtras {
                field,
                value: redact_userinfo(&url),
            });
        }
        match url.scheme() {
            "https" => {}
            "http" if self.allow_insecure_http && is_loopback(&url) => {}
            "http" => {
                return Err(ConfigError::InsecureUrl {
                    field,
                    value: value.to_string(),
                });
            }
            other => {
                return Err(ConfigError::BadUrl {
                    field,
                    value: value.to_string(),
                    reason: format!("scheme {other:?} is not https"),
                });
            }
        }
        if url.host().is_none() {
            return Err(ConfigError::BadUrl {
                field,
                value: value.to_string(),
                reason: "no host".into(),
            });
        }
        Ok(trim_slash(url))
    }

    /// Reads the tokens from their env vars or files.
    pub fn load_tokens(&self) -> Result<Tokens, ConfigError> {
        let which = "netskope.scim_token";
        let scim = self
            .scim_token
            .read(which, Some(DEFAULT_SCIM_TOKEN_ENV))?
            .ok_or_else(|| SecretError::EnvMissing {
                which: which.into(),
                var: DEFAULT_SCIM_TOKEN_ENV.into(),
            })?;
        let events = self.events_token.read("netskope.events_token", None)?;
        Ok(Tokens { scim, events })
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

fn trim_slash(mut url: Url) -> Url {
    let path = url.path().trim_end_matches('/').to_string();
    url.set_path(&path);
    url
}

fn join(base: &Url, tail: &str) -> Url {
    let mut url = base.clone();
    let path = format!("{}/{tail}", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

fn redact_userinfo(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tenant: &str) -> NetskopeConfig {
        NetskopeConfig {
            tenant_url: Some(tenant.into()),
            ..Default::default()
        }
    }

    #[test]
    fn derives_scim_and_audit_from_tenant() {
        let e = cfg("https://acme.goskope.com/").endpoints().unwrap();
        assert_eq!(e.scim_base.as_str(), "https://acme.goskope.com/api/v2/scim");
        assert_eq!(
            e.audit.map(String::from).as_deref(),
            Some("https://acme.goskope.com/api/v2/events/data/audit")
        );
    }

    #[test]
    fn a_scim_server_alone_needs_no_audit_url() {
        let c = NetskopeConfig {
            scim_base_url: Some("https://scim.example.org/v2".into()),
            ..Default::default()
        };
        let e = c.endpoints().unwrap();
        assert_eq!(e.scim_base.as_str(), "https://scim.example.org/v2");
        assert_eq!(e.audit, None);
    }

    #[test]
    fn overrides_win_over_tenant() {
        let mut c = cfg("https://acme.goskope.com");
        c.scim_base_url = Some("https://scim.example.org/v2/".into());
        let e = c.endpoints().unwrap();
        assert_eq!(e.scim_base.as_str(), "https://scim.example.org/v2");
        assert_eq!(
            e.audit.map(String::from).as_deref(),
            Some("https://acme.goskope.com/api/v2/events/data/audit")
        );
    }

    #[test]
    fn plain_http_needs_loopback_and_the_flag() {
        assert!(matches!(
            cfg("http://127.0.0.1:8089").endpoints(),
            Err(ConfigError::InsecureUrl { .. })
        ));
        let mut c = cfg("http://127.0.0.1:8089");
        c.allow_insecure_http = true;
        assert!(c.endpoints().is_ok());
        let mut c = cfg("http://localhost:8089");
        c.allow_insecure_http = true;
        assert!(c.endpoints().is_ok());
        let mut c = cfg("http://[::1]:8089");
        c.allow_insecure_http = true;
        assert!(c.endpoints().is_ok());
        let mut c = cfg("http://acme.goskope.com");
        c.allow_insecure_http = true;
        assert!(matches!(
            c.endpoints(),
            Err(ConfigError::InsecureUrl { .. })
        ));
        let mut c = cfg("http://10.0.0.5");
        c.allow_insecure_http = true;
        assert!(matches!(
            c.endpoints(),
            Err(ConfigError::InsecureUrl { .. })
        ));
    }

    #[test]
    fn urls_with_credentials_are_refused_without_echoing_them() {
        let err = cfg("https://admin:hunter2@acme.goskope.com")
            .endpoints()
            .unwrap_err();
        assert!(matches!(err, ConfigError::UrlExtras { .. }));
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn missing_url_is_a_clear_error() {
        assert_eq!(
            NetskopeConfig::default().endpoints(),
            Err(ConfigError::MissingUrl)
        );
    }

    #[test]
    fn limits_are_checked() {
        let mut c = cfg("https://acme.goskope.com");
        c.members_batch_size = 0;
        assert!(matches!(c.endpoints(), Err(ConfigError::Invalid { .. })));
        let mut c = cfg("https://acme.goskope.com");
        c.requests_per_minute = 0;
        assert!(matches!(c.endpoints(), Err(ConfigError::Invalid { .. })));
    }
}
