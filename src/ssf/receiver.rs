//! `offboarder ssf-receiver`: the RFC 8935 push endpoint.
//!
//! A transmitter POSTs one SET per request. The receiver checks the bearer token (when one is
//! configured), verifies the SET, maps it to risk signals, claims its `jti`, writes the
//! signals to the risk-signals topic keyed by user, and answers 202 only once the brokers
//! acknowledged every write. A refused SET is answered 400 with an RFC 8935 error object
//! (`{"err": ..., "description": ...}`) and nothing is written; a failed write or a full
//! replay memory is answered 503 with `Retry-After`, and the transmitter delivers again.
//!
//! It is a process of its own rather than a listener of the worker: it faces the transmitters
//! (often the internet, through an ingress) and holds no Netskope token, while the worker
//! holds the tokens and needs no inbound port. Each can be scaled, restarted and exposed on
//! its own; Kafka between them keeps every accepted SET until the worker acts on it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rdkafka::producer::{FutureProducer, FutureRecord};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use offboarder_base::clock::WallClock;
use offboarder_base::metric_names as names;

use super::SetMapper;
use super::config::SsfConfig;
use super::replay::{Replays, Seen};
use super::set::{ErrorCode, SetError};

/// How long a write to the risk-signals topic may take before the SET is answered 503.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// What a 503 asks the transmitter to wait.
const RETRY_AFTER_SECS: u64 = 30;

/// The receiver's state, shared by every request.
pub struct Receiver {
    mapper: SetMapper,
    replays: Replays,
    producer: FutureProducer,
    topic: String,
    bearer: Option<SecretString>,
    clock: WallClock,
}

/// What became of one push.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Taken: this many risk signals written (0 when every event is ignored).
    Accepted(usize),
    Refused(ErrorCode, String),
    /// Not decided: the transmitter should deliver it again later.
    Unavailable(String),
}

impl Receiver {
    pub fn new(
        mapper: SetMapper,
        config: &SsfConfig,
        producer: FutureProducer,
        topic: String,
        bearer: Option<SecretString>,
    ) -> Self {
        Self {
            mapper,
            replays: Replays::new(config.max_age.as_secs(), config.replay_capacity),
            producer,
            topic,
            bearer,
            clock: WallClock::new(),
        }
    }

    /// Verifies, maps and writes one SET.
    pub async fn take(&self, token: &str) -> Pushed {
        let (set, signals) = match self.mapper.map(token).await {
            Ok(mapped) => mapped,
            Err(SetError::Refused { code, description }) => {
                return Pushed::Refused(code, description);
            }
            Err(SetError::Unavailable(why)) => return Pushed::Unavailable(why),
        };
        match self
            .replays
            .claim(&set.iss, &set.jti, self.clock.now_secs())
        {
            Seen::New => {}
            Seen::Replayed => {
                return Pushed::Refused(
                    ErrorCode::InvalidRequest,
                    format!(
                        "this jti was received from this issuer within ssf.max_age ({}): a replay",
                        humantime::format_duration(self.mapper.max_age())
                    ),
                );
            }
            Seen::Full => {
                return Pushed::Unavailable(
                    "the replay check's memory is full (ssf.replay_capacity)".into(),
                );
            }
        }
        let writes = signals.iter().map(|s| {
            let payload = serde_json::to_vec(&s.record).unwrap_or_default();
            let key = s.user_name.to_lowercase();
            let producer = &self.producer;
            let topic = self.topic.as_str();
            async move {
                let record = FutureRecord::to(topic).key(&key).payload(&payload);
                producer
                    .send(record, WRITE_TIMEOUT)
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e.to_string())
            }
        });
        let failed: Vec<String> = futures::future::join_all(writes)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if let Some(first) = failed.first() {
            // Signals written before the failure are written again with the retry: the worker
            // acts on a risk signal idempotently (a quarantined user is quarantined).
            self.replays.release(&set.iss, &set.jti);
            return Pushed::Unavailable(format!(
                "{} of {} risk signals could not be written to {}: {first}",
                failed.len(),
                signals.len(),
                self.topic
            ));
        }
        tracing::debug!(
            transmitter = set.transmitter.as_str(),
            jti = set.jti.as_str(),
            signals = signals.len(),
            "SET taken"
        );
        Pushed::Accepted(signals.len())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.bearer else {
            return true;
        };
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.get(..7)
                    .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
                    .map(|_| v[7..].trim())
            })
        else {
            return false;
        };
        given
            .as_bytes()
            .ct_eq(expected.expose_secret().as_bytes())
            .into()
    }
}

/// The push endpoint at `path`, and `/healthz`.
pub fn router(receiver: Arc<Receiver>, path: &str, max_body_bytes: usize) -> Router {
    Router::new()
        .route(path, post(push))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(receiver)
}

async fn push(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !receiver.authorized(&headers) {
        count("authentication_failed");
        tracing::info!("SET push refused: missing or wrong bearer token");
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::AuthenticationFailed,
            "a bearer token is required (ssf.bearer_token)",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            count("invalid_request");
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                &format!("the body cannot be read: {}", e.body_text()),
            );
        }
    };
    let Ok(token) = std::str::from_utf8(&body) else {
        count("invalid_request");
        return error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "the body is not a compact JWS",
        );
    };
    match receiver.take(token).await {
        Pushed::Accepted(signals) => {
            count("accepted");
            tracing::info!(signals, "SET accepted");
            StatusCode::ACCEPTED.into_response()
        }
        Pushed::Refused(code, description) => {
            count(code.as_str());
            // The description quotes the SET (its issuer, its event types): debug only. The
            // transmitter gets it in the answer.
            tracing::info!(
                err = code.as_str(),
                "SET refused (the reason at debug level)"
            );
            tracing::debug!(
                err = code.as_str(),
                description = description.as_str(),
                "SET refused"
            );
            error(StatusCode::BAD_REQUEST, code, &description)
        }
        Pushed::Unavailable(why) => {
            count("unavailable");
            tracing::warn!(
                reason = why.as_str(),
                "SET not taken now; the transmitter will deliver it again"
            );
            let mut response = (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            response
        }
    }
}

fn count(result: &'static str) {
    metrics::counter!(names::SSF_SETS, "result" => result).increment(1);
}

/// An RFC 8935 error response.
fn error(status: StatusCode, code: ErrorCode, description: &str) -> Response {
    let body = serde_json::json!({"err": code.as_str(), "description": description});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Builds the receiver from the config: the transmitters' keys (a JWKS URL is fetched now), the
/// producer, the bearer token.
pub async fn build(config: &crate::config::Config) -> Result<Arc<Receiver>, String> {
    let ssf = &config.ssf;
    if !ssf.enabled() {
        return Err(
            "ssf: no [[ssf.transmitters]] configured: the receiver would refuse every SET".into(),
        );
    }
    let mapper = SetMapper::from_config(ssf)
        .await
        .map_err(|e| e.to_string())?;
    let bearer = ssf
        .bearer_token
        .read("ssf.bearer_token", None)
        .map_err(|e| e.to_string())?;
    let producer = crate::tools::producer(&config.kafka).map_err(|e| e.to_string())?;
    check_topic(&producer, &config.kafka).await?;
    let receiver = Receiver::new(
        mapper,
        ssf,
        producer,
        config.kafka.topics.risk_signals.clone(),
        bearer,
    );
    Ok(Arc::new(receiver))
}

/// The brokers answer and the risk-signals topic exists: otherwise every push would be
/// answered 503, and the cause would only show in the log of each.
async fn check_topic(
    producer: &FutureProducer,
    kafka: &crate::pipeline::config::KafkaConfig,
) -> Result<(), String> {
    use rdkafka::producer::Producer as _;
    let (probe, timeout) = (producer.clone(), kafka.connect_timeout);
    // Every topic's metadata, not the one topic's: asking for a topic by name lets a broker
    // (and librdkafka's mock) create it on the spot.
    let metadata =
        tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, timeout))
            .await
            .map_err(|e| format!("kafka: metadata request did not run: {e}"))?
            .map_err(|e| {
                format!(
                    "kafka: cannot reach the brokers at {} within {}: {e}",
                    kafka.brokers,
                    humantime::format_duration(kafka.connect_timeout)
                )
            })?;
    let name = &kafka.topics.risk_signals;
    match metadata.topics().iter().find(|t| t.name() == name.as_str()) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
        _ => Err(format!(
            "{name} (kafka.topics.risk_signals): does not exist; the receiver writes risk signals there"
        )),
    }
}

/// Serves the push endpoint on `ssf.listen` and `/metrics` on `admin.listen` until `shutdown`
/// completes; returns the push endpoint's bound address through `bound` as soon as it listens.
pub async fn run(
    config: &crate::config::Config,
    bound: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let receiver = build(config).await?;
    for (name, issuer, keys) in receiver.mapper.transmitters().await {
        tracing::info!(
            transmitter = name.as_str(),
            issuer = issuer.as_str(),
            keys,
            "SSF transmitter"
        );
    }
    if receiver.bearer.is_none() {
        tracing::info!(
            "ssf.bearer_token is not set: the push endpoint takes SETs from anyone who can reach it (each SET still has to verify)"
        );
    }
    let ssf = &config.ssf;
    let listener = tokio::net::TcpListener::bind(ssf.listen)
        .await
        .map_err(|e| format!("ssf.listen {}: {e}", ssf.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    if let Ok(handle) = crate::metrics::install() {
        let metrics = Router::new()
            .route("/metrics", get(move || std::future::ready(handle.render())))
            .route("/healthz", get(|| async { "ok\n" }));
        match tokio::net::TcpListener::bind(config.admin.listen).await {
            Ok(admin) => {
                tokio::spawn(async move {
                    let _ = axum::serve(admin, metrics).await;
                });
            }
            Err(e) => {
                tracing::warn!(listen = %config.admin.listen, error = %e, "metrics are not served: cannot open admin.listen")
            }
        }
    }
    tracing::info!(%addr, path = ssf.path.as_str(), topic = receiver.topic.as_str(), "SSF push endpoint listening");
    if let Some(bound) = bound {
        let _ = bound.send(addr);
    }
    axum::serve(listener, router(receiver, &ssf.path, ssf.max_body_bytes))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| e.to_string())
}
