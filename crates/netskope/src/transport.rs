//! Sends one logical request: waits for the token's budget, attaches the token, retries
//! transient faults with jittered exponential backoff, reads a bounded body and turns statuses
//! that mean the same thing for every operation (401, 403, 429, 3xx, 5xx) into typed errors.
//! What a 2xx, 404 or 409 means is left to the operation.

use std::path::PathBuf;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{
    ACCEPT, AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER,
};
use secrecy::{ExposeSecret, SecretString};
use tracing::{Instrument, debug, warn};

use offboarder_base::metric_names as names;
use offboarder_base::secret::SecretSource;

use super::config::{AuthHeader, RetryConfig};
use super::error::{NetskopeError, Op, TokenRole};
use super::limiter::TokenLimiter;

/// What to do about a 401, by where the token came from.
const UNAUTHORIZED_ENV: &str = "Issue a new REST API v2 token and restart with it";
const UNAUTHORIZED_FILE: &str =
    "Issue a new REST API v2 token and write it to the token's file: it is read again on a 401";
const UNAUTHORIZED_SAME_FILE: &str =
    "The token's file was read again and holds the same token: write a new REST API v2 token there";

const NETSKOPE_TOKEN_HEADER: HeaderName = HeaderName::from_static("netskope-api-token");
/// Longest piece of a server's error text kept in an error message.
const MAX_DETAIL_CHARS: usize = 512;

/// A token, the role it plays and its request budget.
///
/// A token read from a file can be replaced while the worker runs: Netskope tokens expire, and a
/// secret store rotates the mounted file. On a 401 the file is read again, and if it holds a new
/// token the request is sent once more with it (see [`Transport::send`]).
pub struct Token {
    pub role: TokenRole,
    current: RwLock<Current>,
    /// Where the token came from, when it can be read again; `None` for an env var, which a
    /// running process cannot see change.
    file: Option<TokenFile>,
    pub limiter: TokenLimiter,
}

/// The token in use, and how many times it has been replaced.
struct Current {
    secret: SecretString,
    generation: u64,
}

/// The file a token is read from, and the setting that names it (for messages).
#[derive(Debug, Clone)]
pub struct TokenFile {
    pub which: &'static str,
    pub path: PathBuf,
}

/// What reading a token's file again found.
#[derive(Debug, PartialEq, Eq)]
enum Reload {
    /// A token other than the one the failed request used: send again.
    Newer,
    /// The same token: a retry would be refused again.
    Same,
    /// No file to read (the token came from an env var or the caller).
    NoFile,
    /// The file could not be read; the message names the path, never the content.
    Unreadable(String),
}

impl Token {
    pub fn new(role: TokenRole, secret: SecretString, per_min: u32) -> Self {
        Self {
            role,
            current: RwLock::new(Current {
                secret,
                generation: 0,
            }),
            file: None,
            limiter: TokenLimiter::new(per_min),
        }
    }

    /// The same token, read again from `file` after a 401.
    pub fn with_file(mut self, file: Option<TokenFile>) -> Self {
        self.file = file;
        self
    }

    fn current(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    fn generation(&self) -> u64 {
        self.current().generation
    }

    /// After a 401 for a request sent with generation `used`: is there a newer token? Another
    /// request may have read the file already, so a generation past `used` counts as newer
    /// without a second read. The file is small and local (a mounted secret, at most
    /// 16 KiB), so it is read in place.
    fn reload_after(&self, used: u64) -> Reload {
        let Some(file) = &self.file else {
            return Reload::NoFile;
        };
        if self.generation() != used {
            return Reload::Newer;
        }
        let source = SecretSource {
            env: None,
            file: Some(file.path.clone()),
        };
        let fresh = match source.read(file.which, None) {
            Ok(Some(secret)) => secret,
            Ok(None) => return Reload::Unreadable(format!("{}: empty", file.which)),
            Err(e) => return Reload::Unreadable(e.to_string()),
        };
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.generation != used {
            return Reload::Newer;
        }
        if current.secret.expose_secret() == fresh.expose_secret() {
            return Reload::Same;
        }
        current.secret = fresh;
        current.generation += 1;
        metrics::counter!(names::TOKEN_RELOADS, "token" => self.role.to_string()).increment(1);
        Reload::Newer
    }

    /// Removes the token from text that came from elsewhere (a server's error body), in case a
    /// server or proxy echoes request headers back.
    fn scrub(&self, text: &str) -> String {
        let current = self.current();
        let secret = current.secret.expose_secret();
        if secret.is_empty() {
            text.to_string()
        } else {
            text.replace(secret, "[redacted]")
        }
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("role", &self.role)
            .field("secret", &"[redacted]")
            .field("file", &self.file)
            .field("limiter", &self.limiter)
            .finish()
    }
}

/// A response with a status the operation has to interpret.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub attempts: u32,
    /// When the server handled the request, by its own clock (see [`crate::Sent`]).
    pub server_window: Option<crate::AuditWindow>,
    /// The answer's `Date`, epoch seconds.
    pub server_date: Option<u64>,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// A 4xx the operation does not expect, as an error carrying the SCIM `detail`.
    pub fn rejected(&self, op: Op, token: &Token) -> NetskopeError {
        let (scim_type, detail) = scim_error_detail(&self.body);
        let detail = token.scrub(&detail);
        match self.status {
            404 => NetskopeError::NotFound { op, what: detail },
            409 => NetskopeError::Conflict { op, detail },
            status => NetskopeError::Rejected {
                op,
                status,
                scim_type,
                detail,
            },
        }
    }
}

/// The SCIM error's `scimType` and `detail`, or a short excerpt of a non-SCIM body.
fn scim_error_detail(body: &[u8]) -> (Option<String>, String) {
    #[derive(serde::Deserialize)]
    struct ScimError {
        #[serde(rename = "scimType")]
        scim_type: Option<String>,
        detail: Option<String>,
        message: Option<String>,
    }
    if let Ok(e) = serde_json::from_slice::<ScimError>(body)
        && let Some(detail) = e.detail.or(e.message)
    {
        return (e.scim_type, truncate(&detail));
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        (None, "no detail in the response".into())
    } else {
        (None, truncate(text))
    }
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_DETAIL_CHARS {
        text.to_string()
    } else {
        let cut: String = text.chars().take(MAX_DETAIL_CHARS).collect();
        format!("{cut}…")
    }
}

/// One attempt's failure, with the server's `Retry-After` kept for the backoff.
struct Attempt {
    error: NetskopeError,
    retry_after: Option<Duration>,
}

impl From<NetskopeError> for Attempt {
    fn from(error: NetskopeError) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

pub struct Transport {
    http: reqwest::Client,
    auth_header: AuthHeader,
    retry: RetryConfig,
    max_body: usize,
}

impl Transport {
    pub fn new(
        auth_header: AuthHeader,
        retry: RetryConfig,
        max_body: usize,
        timeout: Option<Duration>,
    ) -> Result<Self, reqwest::Error> {
        offboarder_base::tls::install();
        let mut builder = reqwest::Client::builder()
            // A redirect would carry the token header to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("offboarder/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10));
        if let Some(t) = timeout {
            builder = builder.timeout(t);
        }
        Ok(Self {
            http: builder.build()?,
            auth_header,
            retry,
            max_body,
        })
    }

    /// Sends the request built by `build` with `token`, retrying transient faults. A 401 with
    /// a token read from a file reads the file again: if it now holds another token, the
    /// request is sent once more with that one. A 401 is the gateway's answer before the
    /// request reaches the tenant, so sending it again changes nothing twice.
    pub async fn send<F>(&self, token: &Token, op: Op, build: F) -> Result<Reply, NetskopeError>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        let used = token.generation();
        let first = self.send_with_retries(token, op, &build).await;
        let Err(NetskopeError::Unauthorized { .. }) = &first else {
            return first;
        };
        match token.reload_after(used) {
            Reload::Newer => {
                warn!(op = op.name(), token = %token.role, "token refused (401); sending again with the token now in its file");
                self.send_with_retries(token, op, &build).await
            }
            Reload::NoFile => first,
            Reload::Same => Err(NetskopeError::Unauthorized {
                op,
                token: token.role,
                hint: UNAUTHORIZED_SAME_FILE,
            }),
            Reload::Unreadable(reason) => {
                warn!(op = op.name(), token = %token.role, %reason, "token refused (401), and its file cannot be read again");
                first
            }
        }
    }

    async fn send_with_retries<F>(
        &self,
        token: &Token,
        op: Op,
        build: &F,
    ) -> Result<Reply, NetskopeError>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        let attempts = AtomicU32::new(0);
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.retry.initial_delay)
            .with_max_delay(self.retry.max_delay)
            .with_max_times(self.retry.max_attempts.saturating_sub(1) as usize);
        let max_retry_after = self.retry.max_retry_after;
        // OpenTelemetry's HTTP client conventions: the route template, never an id or token.
        let span = tracing::info_span!(
            "netskope.request",
            otel.name = %format_args!("{} {}", op.method(), op.route()),
            otel.kind = "client",
            op = op.name(),
            http.request.method = op.method(),
            url.template = op.route(),
            http.response.status_code = tracing::field::Empty,
            attempts = tracing::field::Empty,
        );
        let result = (|| {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.attempt(token, op, build)
        })
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|a: &Attempt| a.error.is_transient())
        .adjust(|a, next| next.map(|d| a.retry_after.map_or(d, |r| r.min(max_retry_after))))
        .notify(|a, wait| {
            if a.error.http_status() == Some(429) {
                // The whole token waits, not just this request.
                token.limiter.pause_for(wait);
            }
            warn!(op = op.name(), error = %a.error, wait_ms = wait.as_millis() as u64, "retrying");
        })
        .instrument(span.clone())
        .await;
        let attempts = attempts.load(Ordering::Relaxed);
        span.record("attempts", attempts);
        match result {
            Ok(mut reply) => {
                span.record("http.response.status_code", reply.status);
                reply.attempts = attempts;
                Ok(reply)
            }
            Err(a) => {
                if let Some(s) = a.error.http_status() {
                    span.record("http.response.status_code", s);
                }
                Err(match a.error {
                    NetskopeError::Transient {
                        op, status, reason, ..
                    } => NetskopeError::Transient {
                        op,
                        status,
                        reason,
                        attempts,
                    },
                    other => other,
                })
            }
        }
    }

    async fn attempt<F>(&self, token: &Token, op: Op, build: &F) -> Result<Reply, Attempt>
    where
        F: Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    {
        let waited = token.limiter.acquire().await;
        let role = token.role.to_string();
        metrics::histogram!(names::LIMITER_WAIT, "token" => role.clone())
            .record(waited.as_secs_f64());
        let request = build(&self.http)
            .header(ACCEPT, "application/scim+json, application/json")
            .header(self.auth_name(), self.auth_value(token));
        let sent = tokio::time::Instant::now();
        let response = request.send().await.map_err(|e| {
            metrics::counter!(names::SCIM_REQUESTS, "op" => op.name(), "status" => "error")
                .increment(1);
            Attempt::from(transient(op, None, describe(&e)))
        })?;
        let status = response.status().as_u16();
        metrics::histogram!(names::SCIM_REQUEST_DURATION, "op" => op.name())
            .record(sent.elapsed().as_secs_f64());
        metrics::counter!(names::SCIM_REQUESTS, "op" => op.name(), "status" => status.to_string())
            .increment(1);
        let headers = response.headers().clone();
        let server_date = date_header(&headers);
        let server_window = server_date.map(|answered| server_window(answered, sent.elapsed()));
        let (remaining, reset) = rate_headers(&headers);
        token.limiter.on_rate_headers(remaining, reset);
        debug!(op = op.name(), status, "response");
        match status {
            429 => {
                metrics::counter!(names::THROTTLED, "token" => role).increment(1);
                let retry_after = retry_after(&headers);
                token.limiter.on_throttled(retry_after);
                return Err(Attempt {
                    error: transient(op, Some(429), "rate limited (429)".into()),
                    retry_after,
                });
            }
            401 => {
                let hint = if token.file.is_some() {
                    UNAUTHORIZED_FILE
                } else {
                    UNAUTHORIZED_ENV
                };
                return Err(NetskopeError::Unauthorized {
                    op,
                    token: token.role,
                    hint,
                }
                .into());
            }
            403 => {
                let (endpoint, access) = op.scope();
                let hint = if token.role == TokenRole::Scim && op == Op::AuditPage {
                    ", or set netskope.events_token to a token that has it"
                } else {
                    ""
                };
                return Err(NetskopeError::Forbidden {
                    op,
                    token: token.role,
                    endpoint,
                    access,
                    hint,
                }
                .into());
            }
            300..=399 => {
                let location = headers
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(|l| truncate(l.split('?').next().unwrap_or_default()))
                    .unwrap_or_default();
                return Err(NetskopeError::Redirect {
                    op,
                    status,
                    location,
                }
                .into());
            }
            408 | 500 | 502..=599 => {
                return Err(Attempt {
                    error: transient(op, Some(status), format!("server error (HTTP {status})")),
                    retry_after: retry_after(&headers),
                });
            }
            _ => {}
        }
        let body = read_bounded(response, self.max_body)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => Attempt::from(NetskopeError::InvalidResponse {
                    op,
                    status,
                    reason: format!("the body is larger than {} bytes", self.max_body),
                }),
                BodyError::Read(reason) => Attempt::from(transient(op, Some(status), reason)),
            })?;
        if (200..300).contains(&status) {
            token.limiter.on_success();
        }
        Ok(Reply {
            status,
            body,
            attempts: 0,
            server_window,
            server_date,
        })
    }

    fn auth_name(&self) -> HeaderName {
        match self.auth_header {
            AuthHeader::Netskope => NETSKOPE_TOKEN_HEADER,
            AuthHeader::Bearer => AUTHORIZATION,
        }
    }

    fn auth_value(&self, token: &Token) -> HeaderValue {
        let current = token.current();
        let secret = current.secret.expose_secret();
        let value = match self.auth_header {
            AuthHeader::Netskope => HeaderValue::from_str(secret),
            AuthHeader::Bearer => HeaderValue::from_str(&format!("Bearer {secret}")),
        };
        // A token with bytes a header cannot carry fails on the server as a 401, which names
        // the cause better than a panic here would.
        let mut value = value.unwrap_or_else(|_| HeaderValue::from_static("invalid-token"));
        value.set_sensitive(true);
        value
    }
}

fn transient(op: Op, status: Option<u16>, reason: String) -> NetskopeError {
    NetskopeError::Transient {
        op,
        status,
        reason,
        attempts: 1,
    }
}

/// A transport error without the URL (it carries the user-name filter) but with its causes.
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let head = if e.is_timeout() {
        "request timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else if e.is_body() || e.is_decode() {
        "reading the response failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut out = head;
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    truncate(&out)
}

fn header_u64(headers: &HeaderMap, names: &[&str]) -> Option<u64> {
    names.iter().find_map(|n| {
        headers
            .get(*n)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    })
}

/// `ratelimit-remaining` and `ratelimit-reset` (seconds), also under their `x-` names.
fn rate_headers(headers: &HeaderMap) -> (Option<u64>, Option<Duration>) {
    let remaining = header_u64(headers, &["ratelimit-remaining", "x-ratelimit-remaining"]);
    let reset =
        header_u64(headers, &["ratelimit-reset", "x-ratelimit-reset"]).map(Duration::from_secs);
    (remaining, reset)
}

/// When the server handled a request that took `took`, by the server's clock: its `Date`
/// header (whole seconds; servers may cache it for up to a second) back to when the request
/// left. Two seconds of slack before, for the header's resolution and caching; five after, for
/// those and for an audit record stamped just after the answer went out.
fn server_window(answered: u64, took: Duration) -> crate::AuditWindow {
    let took = took.as_secs() + u64::from(took.subsec_nanos() > 0);
    crate::AuditWindow {
        start: answered.saturating_sub(took + 2),
        end: answered + 5,
    }
}

/// The `Date` header, epoch seconds.
fn date_header(headers: &HeaderMap) -> Option<u64> {
    let date = headers.get(reqwest::header::DATE)?.to_str().ok()?;
    Some(
        httpdate::parse_http_date(date)
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs(),
    )
}

/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

enum BodyError {
    TooLarge,
    Read(String),
}

async fn read_bounded(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Read(describe(&e)))?
    {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scim_detail_is_extracted_or_excerpted() {
        let body = br#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"409","scimType":"uniqueness","detail":"group exists"}"#;
        assert_eq!(
            scim_error_detail(body),
            (Some("uniqueness".into()), "group exists".into())
        );
        assert_eq!(
            scim_error_detail(b""),
            (None, "no detail in the response".into())
        );
        let long = vec![b'x'; 2000];
        let (_, d) = scim_error_detail(&long);
        assert_eq!(d.chars().count(), MAX_DETAIL_CHARS + 1);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("12"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(12)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(
            retry_after(&h),
            Some(Duration::ZERO),
            "a past date means now"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn rate_headers_under_both_names() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        h.insert("ratelimit-reset", HeaderValue::from_static("9"));
        assert_eq!(rate_headers(&h), (Some(0), Some(Duration::from_secs(9))));
    }

    #[test]
    fn scrub_removes_the_token() {
        let t = Token::new(TokenRole::Scim, SecretString::from("s3cr3t-token"), 60);
        assert_eq!(t.scrub("echo: s3cr3t-token!"), "echo: [redacted]!");
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }
}
