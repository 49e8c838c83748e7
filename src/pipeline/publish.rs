//! Publishes outcomes and dead letters, and returns only once the broker has acknowledged them.
//!
//! The acknowledgement is what lets an event's offset be stored (invariant 1), so a record
//! that fails to deliver is sent again, with backoff, until it is acknowledged. The only way
//! out is a fatal producer error (the idempotent producer lost its guarantees): the worker then
//! stops and the event's offset stays where it was.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rdkafka::Message;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer as _};

use super::broker_errors::Producer;
use super::envelope::{DeadLetterRef, Envelope};
use super::transactions::{Entered, Transactions};

use crate::outcome::Outcome;

/// The dead-letter reason of an event whose transient faults outlasted `transient_retry_for`
/// (the other reasons are [`crate::event::RejectReason`]s).
pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";

/// Dead-letter headers. The record itself is the original, byte for byte (in CloudEvents'
/// structured mode, the `data` of the event).
pub mod header {
    /// Why the event was not processed: `empty`, `oversized`, `invalid_json`,
    /// `schema_violation`, `invalid_set`, `ignored_set` or `retries_exhausted`.
    pub const REASON: &str = "offboarder-reason";
    /// The details: the schema violations, the last error.
    pub const ERROR: &str = "offboarder-error";
    pub const SOURCE_TOPIC: &str = "offboarder-source-topic";
    pub const SOURCE_PARTITION: &str = "offboarder-source-partition";
    pub const SOURCE_OFFSET: &str = "offboarder-source-offset";
    /// Set to the original size when the payload was too large for the dead-letter topic and
    /// had to be left out.
    pub const PAYLOAD_OMITTED: &str = "offboarder-payload-omitted-bytes";
}

/// The value of header `name` of a record, as text.
pub fn header_text(message: &OwnedMessage, name: &str) -> Option<String> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The W3C trace-context header.
const TRACEPARENT: &str = "traceparent";

/// How long one send may wait for room in the producer's local queue before it is retried.
const QUEUE_WAIT: Duration = Duration::from_secs(5);
/// Pause before trying again to hand a record to a full local queue.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(5);

/// A record the publisher owns, so that it can be sent again.
struct Record {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
    what: &'static str,
}

impl Record {
    fn future_record(&self) -> FutureRecord<'_, [u8], [u8]> {
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).payload(&self.payload);
        if let Some(k) = &self.key {
            record = record.key(k);
        }
        if let Some(h) = &self.headers {
            record = record.headers(h.clone());
        }
        record
    }
}

/// A record handed to the producer. Its broker acknowledgement is awaited separately, so that
/// a lane can move on to its user's next event while the acknowledgement travels.
pub struct Delivery {
    producer: Producer,
    record: Record,
    first: Result<DeliveryFuture, KafkaError>,
    /// The transaction it was sent in: a failure loses the transaction, so it is not sent
    /// again.
    transaction: Option<std::sync::Arc<Transactions>>,
}

impl Delivery {
    /// Waits until the broker has acknowledged the record, sending it again after a failure.
    pub async fn acknowledged(self) -> Result<(), FatalProducerError> {
        let error = match self.first {
            Ok(future) => match future.await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err((e, _))) => e,
                Err(_) => KafkaError::Canceled,
            },
            Err(e) => e,
        };
        if let Some(transaction) = &self.transaction {
            // The open transaction can no longer commit; a record sent again would land in the
            // next one, apart from the offsets it belongs with.
            return Err(FatalProducerError {
                code: error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail),
                reason: format!(
                    "the open transaction lost a {} that was not delivered: {}",
                    self.record.what,
                    transaction.explain(&error)
                ),
            });
        }
        // Boxed: the resend loop's future is large and rarely needed; unboxed, every event's
        // completion task would carry its space.
        Box::pin(deliver(&self.producer, self.record, error)).await
    }
}

/// The producer gave up for good: the worker must stop.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the Kafka producer failed fatally ({code:?}): {reason}")]
pub struct FatalProducerError {
    code: RDKafkaErrorCode,
    reason: String,
}

/// Called with the open transaction right after the producer took a record, before any
/// commit can close that transaction (`None` without `exactly_once`). An event whose final
/// record this is finishes its offset there.
pub type OnSent<'a> = &'a (dyn Fn(Option<&Entered<'_>>) + Sync);

/// For records that finish nothing.
pub const NOTHING: OnSent<'static> = &|_| {};

pub struct Publisher {
    producer: Producer,
    envelope: Envelope,
    outcomes_topic: String,
    dead_letter_topic: String,
    /// With `exactly_once`: every record joins the open transaction.
    transactions: Option<std::sync::Arc<Transactions>>,
}

impl Publisher {
    pub fn new(
        producer: Producer,
        envelope: Envelope,
        outcomes_topic: String,
        dead_letter_topic: String,
        transactions: Option<std::sync::Arc<Transactions>>,
    ) -> Self {
        Self {
            producer,
            envelope,
            outcomes_topic,
            dead_letter_topic,
            transactions,
        }
    }

    /// Hands an outcome (keyed by the lower-cased user name, with the event's W3C
    /// `traceparent`) to the producer now, so that one user's outcomes keep their order, and
    /// returns its [`Delivery`]. Waits only while the producer's local queue is full (or a
    /// transaction commits).
    pub async fn enqueue_outcome(
        &self,
        outcome: &Outcome,
        traceparent: &str,
        on_sent: OnSent<'_>,
    ) -> Delivery {
        let framed = self.envelope.outcome(outcome, traceparent);
        self.enqueue(
            Record {
                topic: self.outcomes_topic.clone(),
                key: Some(outcome.key().into_bytes()),
                payload: framed.payload,
                headers: Some(framed.headers),
                what: "outcome",
            },
            on_sent,
        )
        .await
    }

    /// Publishes `original` unchanged to the dead-letter topic, with the reason in headers,
    /// and waits for the acknowledgement. Its headers are kept, but for `traceparent`, which
    /// becomes the event's own span (a child of the original).
    pub async fn dead_letter(
        &self,
        original: &OwnedMessage,
        reason: &str,
        error: &str,
        traceparent: &str,
        on_sent: OnSent<'_>,
    ) -> Result<(), FatalProducerError> {
        let mut headers = OwnedHeaders::new();
        if let Some(h) = original.headers() {
            for header in h
                .iter()
                .filter(|h| !h.key.eq_ignore_ascii_case(TRACEPARENT))
            {
                headers = headers.insert(header);
            }
        }
        headers = headers.insert(Header {
            key: TRACEPARENT,
            value: Some(traceparent),
        });
        let partition = original.partition().to_string();
        let offset = original.offset().to_string();
        headers = headers
            .insert(Header {
                key: header::REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: header::ERROR,
                value: Some(error),
            })
            .insert(Header {
                key: header::SOURCE_TOPIC,
                value: Some(original.topic()),
            })
            .insert(Header {
                key: header::SOURCE_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: header::SOURCE_OFFSET,
                value: Some(&offset),
            });
        let place = DeadLetterRef {
            topic: original.topic(),
            partition: original.partition(),
            offset: original.offset(),
            reason,
            key: original.key(),
        };
        let framed = self.envelope.dead_letter(
            &place,
            headers,
            original.payload().unwrap_or_default().to_vec(),
            traceparent,
        );
        let record = Record {
            topic: self.dead_letter_topic.clone(),
            key: original.key().map(<[u8]>::to_vec),
            payload: framed.payload,
            headers: Some(framed.headers),
            what: "dead letter",
        };
        self.enqueue(record, on_sent).await.acknowledged().await
    }

    async fn enqueue(&self, record: Record, on_sent: OnSent<'_>) -> Delivery {
        let first = loop {
            match self.try_send(&record, on_sent) {
                Some(sent) => break sent,
                None => tokio::time::sleep(QUEUE_FULL_WAIT).await,
            }
        };
        Delivery {
            producer: self.producer.clone(),
            record,
            first,
            transaction: self.transactions.clone(),
        }
    }

    /// One attempt to hand `record` to the producer; `None` when it should be tried again
    /// shortly (the local queue is full, or a transaction is being committed). Synchronous, so
    /// that the hold on the open transaction is never kept across an await.
    fn try_send(
        &self,
        record: &Record,
        on_sent: OnSent<'_>,
    ) -> Option<Result<DeliveryFuture, KafkaError>> {
        let entered = match &self.transactions {
            Some(t) => Some(t.enter()?),
            None => None,
        };
        match self.producer.send_result(record.future_record()) {
            Ok(delivery) => {
                if let Some(e) = &entered {
                    e.sent();
                }
                on_sent(entered.as_ref());
                Some(Ok(delivery))
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => None,
            Err((e, _)) => Some(Err(e)),
        }
    }

    /// Waits up to `timeout` for queued records to be delivered.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "records still queued at shutdown");
        }
    }
}

/// After a failed first attempt: sends until acknowledged. Each failure is logged and retried
/// with backoff; a record too large for the topic is sent once more without its payload, so
/// that it cannot block its partition forever. Only a fatal producer error ends the loop.
async fn deliver(
    producer: &Producer,
    mut record: Record,
    first_error: KafkaError,
) -> Result<(), FatalProducerError> {
    let mut delays = ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .without_max_times()
        .build();
    let mut error = first_error;
    loop {
        if let Some((code, reason)) = producer.client().fatal_error() {
            return Err(FatalProducerError { code, reason });
        }
        let (topic, what) = (record.topic.clone(), record.what);
        if error == KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
            && !record.payload.is_empty()
        {
            tracing::error!(
                topic,
                bytes = record.payload.len(),
                "{what} is too large for the topic; sending it without its payload"
            );
            let size = record.payload.len().to_string();
            record.headers = Some(record.headers.take().unwrap_or_default().insert(Header {
                key: header::PAYLOAD_OMITTED,
                value: Some(&size),
            }));
            record.payload.clear();
        } else {
            let delay = delays.next().unwrap_or(Duration::from_secs(30));
            tracing::warn!(topic, error = %error, retry_in = ?delay, "{what} not delivered; sending again");
            tokio::time::sleep(delay).await;
        }
        error = match producer.send(record.future_record(), QUEUE_WAIT).await {
            Ok(_) => return Ok(()),
            Err((e, _)) => e,
        };
    }
}
