//! Logs and traces.
//!
//! Logs: human-readable on a terminal, JSON lines otherwise (for log shippers), or as chosen
//! with `--log-format` / `OFFBOARDER_LOG_FORMAT`. The level comes from `RUST_LOG`, else the
//! command's default (`info` for the worker, `warn` for the demo, whose output is a table).
//!
//! Traces: OpenTelemetry over OTLP/HTTP, on when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, off otherwise; `OTEL_SERVICE_NAME` names the
//! service (default `offboarder`). Each event's span continues the trace of the W3C
//! `traceparent` header it arrived with, and the outcome and dead-letter records carry the
//! same trace onward ([`EventTrace`]).
//!
//! No token is ever a field of a span or event: the client keeps tokens inside and marks the
//! header value sensitive, and errors are built without them.

use std::io::IsTerminal;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use rdkafka::message::{BorrowedHeaders, Headers};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    Human,
    Json,
}

/// Flushes buffered spans when dropped at the end of `main`.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("OpenTelemetry: spans may be lost: {e}");
        }
    }
}

/// Installs the global subscriber: logs to stderr (stdout stays for results), and the
/// OpenTelemetry layer when an OTLP endpoint is configured.
pub fn init(format: LogFormat, default_level: &str) -> TelemetryGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !terminal,
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(terminal)
        .with_writer(std::io::stderr);
    let logs = if json {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    };
    let (provider, otel_error) = match otlp_provider() {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e)),
    };
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("offboarder"))
            .boxed()
    });
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .with(filter)
        .try_init();
    if let Some(e) = otel_error {
        tracing::warn!(error = %e, "OpenTelemetry export is off: the OTLP exporter could not be built");
    }
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing::info!("OpenTelemetry traces are exported over OTLP/HTTP");
    }
    TelemetryGuard { provider }
}

/// A tracer provider exporting over OTLP/HTTP, when the standard variables ask for one.
fn otlp_provider() -> Result<Option<SdkTracerProvider>, String> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()));
    if !configured {
        return Ok(None);
    }
    offboarder_base::tls::install();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("offboarder");
    }
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}

/// Reads W3C trace context from Kafka headers.
struct KafkaHeaders<'a>(Option<&'a BorrowedHeaders>);

impl Extractor for KafkaHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0?
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(key))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map_or_else(Vec::new, |h| h.iter().map(|h| h.key).collect())
    }
}

/// The trace an event belongs to, as it travels into the outcome and dead-letter records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTrace {
    /// 32 lower-case hex digits: the `trace_id` of the outcome.
    pub trace_id: String,
    /// The W3C `traceparent` header for records this event produces.
    pub traceparent: String,
}

/// The span of one event, child of the trace in its `traceparent` header when it has one.
///
/// With OpenTelemetry on, the ids are the span's own. Without it (no exporter configured, or no
/// subscriber at all, as in tests), the incoming trace id is still kept, or a new one made, so
/// outcomes always carry a trace id that joins them to their input.
pub fn event_span(
    headers: Option<&BorrowedHeaders>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> (tracing::Span, EventTrace) {
    let parent = TraceContextPropagator::new().extract(&KafkaHeaders(headers));
    let span = tracing::info_span!(
        "event",
        otel.name = "offboarder.event",
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.destination.name = topic,
        messaging.kafka.destination.partition = partition,
        messaging.kafka.message.offset = offset,
        source_event_id = tracing::field::Empty,
        user = tracing::field::Empty,
        action = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let parent_context = parent.span().span_context().clone();
    if parent_context.is_valid() {
        // Fails only when no OpenTelemetry layer is installed; the ids below cover that.
        let _ = span.set_parent(parent);
    }
    let own = span.context().span().span_context().clone();
    let (trace_id, span_id, sampled) = if own.is_valid() {
        (own.trace_id(), own.span_id(), own.is_sampled())
    } else {
        let trace_id = if parent_context.is_valid() {
            parent_context.trace_id()
        } else {
            TraceId::from_bytes(rand::random())
        };
        (trace_id, SpanId::from_bytes(rand::random()), true)
    };
    let trace = EventTrace {
        trace_id: trace_id.to_string(),
        traceparent: format!("00-{trace_id}-{span_id}-{:02x}", u8::from(sampled)),
    };
    (span, trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_parent_a_new_trace_is_made() {
        let (_, a) = event_span(None, "hr", 0, 1);
        let (_, b) = event_span(None, "hr", 0, 2);
        assert_eq!(a.trace_id.len(), 32);
        assert_ne!(a.trace_id, b.trace_id);
        assert!(a.traceparent.starts_with(&format!("00-{}-", a.trace_id)));
        assert_eq!(a.traceparent.len(), 55);
    }
}
