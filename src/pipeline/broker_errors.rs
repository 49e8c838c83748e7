//! What librdkafka last said about the brokers, kept for the start-up error.
//!
//! When the brokers cannot be reached, a metadata request only fails with "timed out". The
//! reason (a TLS certificate that does not verify, a plaintext listener spoken to over TLS, a
//! refused SASL login, a name that does not resolve) reaches the client's error callback
//! instead. The producer's context keeps the last one, so that the worker and `check-config`
//! can stop with the reason and a hint rather than a bare timeout.

use std::sync::{Arc, Mutex};

use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, ClientContext};

/// The producer of outcomes and dead letters, with its errors remembered.
pub type Producer = FutureProducer<BrokerErrors>;

/// A client context that logs librdkafka's errors and remembers the last one. Clones share
/// the memory: the producer owns one, whoever reports a failure keeps another.
#[derive(Clone, Default)]
pub struct BrokerErrors {
    last: Arc<Mutex<Option<String>>>,
}

/// A producer for `config`, and the memory of its errors.
pub fn producer(config: &ClientConfig) -> KafkaResult<(Producer, BrokerErrors)> {
    let errors = BrokerErrors::default();
    let producer = config.create_with_context(errors.clone())?;
    Ok((producer, errors))
}

impl BrokerErrors {
    /// The last error librdkafka reported, in its words (they name the broker, never a
    /// credential).
    pub fn last(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ClientContext for BrokerErrors {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "kafka client error");
        // "1/1 brokers are down" follows the failure that says why; keep that one.
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown) {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
        }
    }
}

/// What to check, for the reasons an operator is most likely to meet at start.
pub fn hint(reason: &str) -> Option<&'static str> {
    let r = reason.to_ascii_lowercase();
    let hint = if r.contains("certificate verify failed") || r.contains("unknown ca") {
        "the brokers' certificate is not signed by a CA that kafka.properties.\"ssl.ca.location\" \
         holds: point it at the CA that signed the brokers' certificates"
    } else if r.contains("wrong version number") || r.contains("packet length too long") {
        "TLS spoken to a listener that is not TLS (or the reverse): check \
         kafka.properties.\"security.protocol\" against the brokers' listener"
    } else if r.contains("disconnected while requesting apiversion") {
        "the broker closed the connection at once: a TLS listener spoken to in plaintext? \
         check kafka.properties.\"security.protocol\""
    } else if r.contains("authentication") || r.contains("sasl") {
        "the brokers refused the login: check sasl.mechanism, sasl.username and the secret in \
         kafka.secret_properties"
    } else if r.contains("resolve") {
        "a broker name does not resolve: check kafka.brokers"
    } else {
        return None;
    };
    Some(hint)
}

/// `reason`, followed by its hint when there is one.
pub fn explain(reason: &str) -> String {
    match hint(reason) {
        Some(h) => format!("{reason} ({h})"),
        None => reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_that_does_not_verify_points_at_the_ca_setting() {
        let reason = "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL \
                      routines::certificate verify failed: broker certificate could not be verified";
        let text = explain(reason);
        assert!(text.starts_with(reason));
        assert!(text.contains("ssl.ca.location"), "{text}");
    }

    #[test]
    fn tls_against_a_plaintext_listener_points_at_the_protocol() {
        let text = explain("ssl://b:9092/bootstrap: SSL handshake failed: wrong version number");
        assert!(text.contains("security.protocol"), "{text}");
    }

    #[test]
    fn an_unknown_reason_is_left_as_it_is() {
        assert_eq!(explain("something new"), "something new");
    }

    #[test]
    fn the_last_error_is_kept() {
        let ctx = BrokerErrors::default();
        let kept = ctx.clone();
        assert_eq!(kept.last(), None);
        ctx.error(KafkaError::Canceled, "first");
        ctx.error(KafkaError::Canceled, "second");
        assert_eq!(kept.last().as_deref(), Some("second"));
        let down = KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        ctx.error(down, "1/1 brokers are down");
        assert_eq!(kept.last().as_deref(), Some("second"));
    }
}
