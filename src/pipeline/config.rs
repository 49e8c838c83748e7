//! The `[kafka]` and `[pipeline]` tables.
//!
//! librdkafka properties pass through unchanged, so TLS, SASL and tuning work as on any Kafka
//! client. The properties that carry the worker's guarantees (manual offset store, idempotent
//! acks=all producer, the group and brokers) are set by the worker and may not be overridden,
//! and secret properties are read from env or file like the Netskope tokens.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use secrecy::ExposeSecret;
use serde::Deserialize;

use offboarder_base::secret::{SecretError, SecretSource};

/// Topic names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    pub terminations: String,
    pub risk_signals: String,
    pub outcomes: String,
    pub dead_letter: String,
    /// The blast-radius guard's log, shared by every worker (see `guard::ledger`): one
    /// partition, `cleanup.policy=compact`.
    pub state: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            terminations: "hr.terminations".into(),
            risk_signals: "xdr.risk-signals".into(),
            outcomes: "offboarder.outcomes".into(),
            dead_letter: "offboarder.dead-letter".into(),
            state: "offboarder.state".into(),
        }
    }
}

/// The `[kafka]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `kafka-1:9092,kafka-2:9092`.
    pub brokers: String,
    pub group_id: String,
    pub topics: Topics,
    /// librdkafka properties for both the consumer and the producer (TLS, SASL, timeouts).
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the consumer only (e.g. `group.protocol`).
    pub consumer_properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only (e.g. `compression.type`).
    pub producer_properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets (`sasl.password`, ...), each read from an
    /// env var or a file.
    pub secret_properties: BTreeMap<String, SecretSource>,
    /// How long to wait for the brokers at start before giving up with a clear error.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Each final outcome (or dead letter) and the input offset it covers are committed in
    /// one Kafka transaction, so that a `read_committed` reader of the outcomes topic sees each
    /// event's final outcome once, even after a crash. Needs brokers with transactions (Apache
    /// Kafka 2.5 or later; tansu 0.6.0 has none).
    pub exactly_once: bool,
    /// The producer's `transactional.id` with `exactly_once`: unique per worker, and the same
    /// across a worker's restarts, so that a restarted worker aborts what its crashed
    /// predecessor left open at once instead of after `transaction.timeout.ms`. Default:
    /// `<group_id>.<host name>`.
    pub transactional_id: Option<String>,
    /// With `exactly_once`: how often the open transaction is committed. Outcomes become
    /// visible to `read_committed` readers at each commit.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".into(),
            group_id: "offboarder".into(),
            topics: Topics::default(),
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            secret_properties: BTreeMap::new(),
            connect_timeout: Duration::from_secs(15),
            exactly_once: false,
            transactional_id: None,
            commit_interval: Duration::from_millis(100),
        }
    }
}

/// Properties the worker sets itself. Overriding them would break a guarantee: offsets stored
/// before outcomes are delivered lose events, a producer without acks=all or idempotence can
/// lose or double outcomes.
const OWNED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.offset.store",
    "enable.auto.commit",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "enable.partition.eof",
    "transactional.id",
    "isolation.level",
];

/// Property names whose values are secrets: they belong in `secret_properties`.
fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("password")
        || n.contains("secret")
        || n.ends_with(".key.pem")
        || n == "sasl.oauthbearer.config"
}

/// A `[kafka]` setting cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KafkaConfigError {
    #[error("kafka.{table}: {name:?} is set by offboarder itself and cannot be overridden")]
    Owned { table: &'static str, name: String },
    #[error(
        "kafka.{table}: {name:?} holds a secret; move it to kafka.secret_properties as {{ env = \"VAR\" }} or {{ file = \"/path\" }}"
    )]
    SecretInPlainText { table: &'static str, name: String },
    #[error("kafka.{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Secret(#[from] SecretError),
}

impl KafkaConfig {
    /// Checks the table without reading any secret.
    pub fn validate(&self) -> Result<(), KafkaConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(KafkaConfigError::Invalid {
                field: "brokers",
                reason: "must name at least one broker".into(),
            });
        }
        if self.group_id.trim().is_empty() {
            return Err(KafkaConfigError::Invalid {
                field: "group_id",
                reason: "must not be empty".into(),
            });
        }
        let t = &self.topics;
        let names = [
            &t.terminations,
            &t.risk_signals,
            &t.outcomes,
            &t.dead_letter,
            &t.state,
        ];
        if names.iter().any(|n| n.trim().is_empty()) {
            return Err(KafkaConfigError::Invalid {
                field: "topics",
                reason: "no topic name may be empty".into(),
            });
        }
        let inputs = [&t.terminations, &t.risk_signals];
        if inputs
            .iter()
            .any(|i| *i == &t.outcomes || *i == &t.dead_letter || *i == &t.state)
            || t.terminations == t.risk_signals
            || [&t.outcomes, &t.dead_letter].contains(&&t.state)
        {
            return Err(KafkaConfigError::Invalid {
                field: "topics",
                reason: "the two input topics and the outcome, dead-letter and state topics must all differ (an output topic read as input would loop)".into(),
            });
        }
        for (table, map) in [
            ("properties", &self.properties),
            ("consumer_properties", &self.consumer_properties),
            ("producer_properties", &self.producer_properties),
        ] {
            for (name, value) in map {
                check_name(table, name)?;
                if name.eq_ignore_ascii_case("sasl.oauthbearer.method")
                    && value.eq_ignore_ascii_case("oidc")
                {
                    return Err(KafkaConfigError::Invalid {
                        field: table,
                        reason: "sasl.oauthbearer.method = \"oidc\" is not available: \
                                 librdkafka is built in without libcurl, which it needs to fetch \
                                 OIDC tokens. Use SASL/SCRAM, SASL/PLAIN or mutual TLS (see \
                                 docs/configuration.md)"
                            .into(),
                    });
                }
                if is_secret_name(name) {
                    return Err(KafkaConfigError::SecretInPlainText {
                        table,
                        name: name.clone(),
                    });
                }
            }
        }
        for name in self.secret_properties.keys() {
            check_name("secret_properties", name)?;
        }
        if self.connect_timeout.is_zero() {
            return Err(KafkaConfigError::Invalid {
                field: "connect_timeout",
                reason: "must be more than 0s".into(),
            });
        }
        if self.commit_interval.is_zero() || self.commit_interval > Duration::from_secs(10) {
            return Err(KafkaConfigError::Invalid {
                field: "commit_interval",
                reason: "must be more than 0s and at most 10s (outcomes wait for it)".into(),
            });
        }
        if self
            .transactional_id
            .as_ref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(KafkaConfigError::Invalid {
                field: "transactional_id",
                reason: "must not be empty; leave it out for <group_id>.<host name>".into(),
            });
        }
        Ok(())
    }

    /// The librdkafka config shared by the consumer and the producer, secrets included.
    fn base(&self) -> Result<ClientConfig, KafkaConfigError> {
        self.validate()?;
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        for (k, source) in &self.secret_properties {
            let which = format!("kafka.secret_properties.{k}");
            match source.read(&which, None)? {
                Some(secret) => {
                    c.set(k, secret.expose_secret());
                }
                None => {
                    return Err(KafkaConfigError::Invalid {
                        field: "secret_properties",
                        reason: format!("{k:?} names neither env nor file"),
                    });
                }
            }
        }
        Ok(c)
    }

    /// The consumer: offsets are stored by the worker, only once an event's final outcome is
    /// acknowledged, and committed in the background from that store. With `exactly_once` they
    /// are committed in the outcomes' transactions instead, never by the consumer. Either way
    /// it reads only committed records, so that an aborted upstream transaction is not acted on.
    pub fn consumer_config(&self) -> Result<ClientConfig, KafkaConfigError> {
        let mut c = self.base()?;
        c.set("group.id", &self.group_id)
            .set(
                "enable.auto.commit",
                if self.exactly_once { "false" } else { "true" },
            )
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed");
        // A new group starts at the oldest retained event: a termination published before the
        // first deployment must still be acted on. Overridable.
        let unset =
            |k: &str| !self.consumer_properties.contains_key(k) && !self.properties.contains_key(k);
        // A rebalance moves only the partitions that change owner; the others keep flowing.
        // KIP-848 (`group.protocol=consumer`) assigns on the broker and is incremental anyway.
        if unset("partition.assignment.strategy") && !self.kip848() {
            c.set("partition.assignment.strategy", "cooperative-sticky");
        }
        if unset("auto.offset.reset") {
            c.set("auto.offset.reset", "earliest");
        }
        // What librdkafka fetches ahead waits in its queue while the worker is at its bound:
        // keep that queue small (the default is 64 MiB).
        if unset("queued.max.messages.kbytes") {
            c.set("queued.max.messages.kbytes", "8192");
        }
        // Consumer lag for the metrics comes from librdkafka's statistics.
        if unset("statistics.interval.ms") {
            c.set("statistics.interval.ms", "15000");
        }
        for (k, v) in &self.consumer_properties {
            c.set(k, v);
        }
        probe_system_cas(&mut c);
        Ok(c)
    }

    /// The consumer uses the KIP-848 group protocol (`group.protocol=consumer`).
    pub fn kip848(&self) -> bool {
        self.consumer_properties
            .iter()
            .chain(&self.properties)
            .any(|(k, v)| k == "group.protocol" && v.eq_ignore_ascii_case("consumer"))
    }

    /// The guard's reader of the state topic: assigned its one partition from the start, in
    /// no consumer group and committing nothing. A short fetch wait, because a destructive
    /// action waits to read its own claim back: 50 ms, or the main consumer's
    /// `fetch.wait.max.ms` when that is shorter.
    pub fn state_reader_config(&self) -> Result<ClientConfig, KafkaConfigError> {
        let mut c = self.base()?;
        let wait = self
            .consumer_properties
            .get("fetch.wait.max.ms")
            .and_then(|w| w.trim().parse::<u32>().ok())
            .map_or(50, |w| w.min(50));
        c.set("group.id", format!("{}.guard", self.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", wait.to_string());
        probe_system_cas(&mut c);
        Ok(c)
    }

    /// The reader of the operator tools (`history`, `dead-letters`): partitions assigned by
    /// hand, in no consumer group and committing nothing, so that it never moves the worker's
    /// offsets.
    pub fn tool_reader_config(&self) -> Result<ClientConfig, KafkaConfigError> {
        let mut c = self.base()?;
        c.set("group.id", format!("{}.tools", self.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest");
        probe_system_cas(&mut c);
        Ok(c)
    }

    /// The producer of outcomes and dead letters: acks from all in-sync replicas, idempotent so
    /// its own retries neither lose nor duplicate records.
    pub fn producer_config(&self) -> Result<ClientConfig, KafkaConfigError> {
        let mut c = self.base()?;
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5");
        for (k, v) in &self.producer_properties {
            c.set(k, v);
        }
        probe_system_cas(&mut c);
        Ok(c)
    }

    /// The producer of the state topic (guard claims, schedule entries, quarantine marks) and
    /// of offboarder's own input events: [`Self::producer_config`] without the linger, unless
    /// `producer_properties` sets one. An event waits for each of these writes, so a batching
    /// delay is pure latency; what queues while a request is in flight still goes in one batch.
    pub fn state_producer_config(&self) -> Result<ClientConfig, KafkaConfigError> {
        let mut c = self.producer_config()?;
        if !self.producer_properties.contains_key("linger.ms") {
            c.set("linger.ms", "0");
        }
        Ok(c)
    }

    /// The producer of outcomes and dead letters: [`Self::producer_config`], transactional
    /// with `exactly_once`. Only the pipeline's publisher uses it: two producers with one
    /// `transactional.id` fence each other.
    pub fn outcome_producer_config(&self) -> Result<ClientConfig, KafkaConfigError> {
        let mut c = self.producer_config()?;
        if self.exactly_once {
            c.set("transactional.id", self.transactional_id());
        }
        Ok(c)
    }

    /// `transactional_id`, or `<group_id>.<host name>`: a pod's or container's host name is
    /// its own, and stays the same across restarts of a StatefulSet pod or a container.
    pub fn transactional_id(&self) -> String {
        self.transactional_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into());
            format!("{}.{host}", self.group_id)
        })
    }
}

/// OpenSSL is built into the binary, so its compiled-in certificate directory is that of the
/// build (`/usr/local/ssl`), not the host's. librdkafka takes the system CAs only when told to
/// `probe` the usual places (`/etc/ssl/certs/ca-certificates.crt`, `/etc/pki/tls/certs/...`).
/// Without this, TLS to brokers with publicly signed certificates (Confluent Cloud, MSK) would
/// fail unless every operator set the CA path. Set only where TLS is in use and the operator
/// named no CA of their own.
fn probe_system_cas(c: &mut ClientConfig) {
    let protocol = c.get("security.protocol").unwrap_or("plaintext");
    let tls = protocol.eq_ignore_ascii_case("ssl") || protocol.eq_ignore_ascii_case("sasl_ssl");
    let unset = ["ssl.ca.location", "ssl.ca.pem", "ssl.ca.certificate.stores"]
        .iter()
        .all(|k| c.get(k).is_none());
    if tls && unset {
        c.set("ssl.ca.location", "probe");
    }
}

fn check_name(table: &'static str, name: &str) -> Result<(), KafkaConfigError> {
    if OWNED.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(KafkaConfigError::Owned {
            table,
            name: name.to_string(),
        });
    }
    Ok(())
}

/// The `[pipeline]` table: bounds and timing of the worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Events received and being acted on. At the bound, reading stops until one finishes.
    pub max_in_flight: usize,
    /// At the bound with no event finishing for this long (Netskope slow or down), the
    /// partitions are paused, so that the consumer can go on polling and stay in its group.
    #[serde(with = "humantime_serde")]
    pub pause_after: Duration,
    /// Users whose events are processed at the same time.
    pub max_concurrent_users: usize,
    /// Largest event payload accepted; a bigger one goes to the dead-letter topic.
    pub max_event_bytes: usize,
    /// How long quarantine and release requests for one group are gathered into one PATCH.
    #[serde(with = "humantime_serde")]
    pub batch_window: Duration,
    /// Most members gathered into one group PATCH before it is sent.
    pub batch_max_members: usize,
    /// Split each token's `requests_per_minute` among the workers of the group: by their share
    /// of the input partitions at every rebalance, then every 500 ms by their share of the events
    /// waiting to act across the fleet (published on the state topic). Off: every worker takes
    /// the whole budget (for a single worker that shares its token with nothing, the same).
    pub split_budget: bool,
    /// How long an event keeps retrying transient faults (429, 5xx, timeouts) before it is
    /// given up as `failed` and its bytes go to the dead-letter topic for replay.
    #[serde(with = "humantime_serde")]
    pub transient_retry_for: Duration,
    /// On shutdown, how long in-flight events may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// When a rebalance takes partitions away, how long events of theirs that are already
    /// acting may take to finish and publish. The rest are abandoned unpublished, for the new
    /// owner to do again; the partitions move only after this. Keep it well under the group's
    /// rebalance timeout (`max.poll.interval.ms`, 300 s by default).
    #[serde(with = "humantime_serde")]
    pub revoke_grace: Duration,
    /// How long the fleet remembers a user it quarantined: a repeat signal within this time,
    /// on any worker and across restarts (the memory lives in the state topic), sends no
    /// second PATCH. A quarantine that ends `unverified` is forgotten at once, and a release
    /// forgets it for every worker.
    #[serde(with = "humantime_serde")]
    pub quarantine_memory: Duration,
    /// The dead-letter limit's window: how many of the most recent events are counted.
    pub dead_letter_window: usize,
    /// The share (0 to 1) of invalid events in that window past which reading stops as a
    /// deployment fault instead of dead-lettering on. 1 turns the limit off.
    pub dead_letter_max_ratio: f64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 1000,
            pause_after: Duration::from_secs(5),
            max_concurrent_users: 64,
            max_event_bytes: 64 * 1024,
            batch_window: Duration::from_millis(200),
            batch_max_members: 500,
            split_budget: true,
            transient_retry_for: Duration::from_secs(30 * 60),
            shutdown_grace: Duration::from_secs(30),
            revoke_grace: Duration::from_secs(10),
            quarantine_memory: Duration::from_secs(3600),
            dead_letter_window: 100,
            dead_letter_max_ratio: 0.5,
        }
    }
}

impl PipelineConfig {
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_in_flight", self.max_in_flight),
            ("max_concurrent_users", self.max_concurrent_users),
            ("batch_max_members", self.batch_max_members),
            ("dead_letter_window", self.dead_letter_window),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(format!("pipeline.{field}: must be at least 1"));
            }
        }
        if self.batch_max_members > 5000 {
            return Err("pipeline.batch_max_members: at most 5000".into());
        }
        if !(self.dead_letter_max_ratio > 0.0 && self.dead_letter_max_ratio <= 1.0) {
            return Err(
                "pipeline.dead_letter_max_ratio: must be above 0 and at most 1 (1 turns the limit off)"
                    .into(),
            );
        }
        if self.max_event_bytes < 1024 {
            return Err("pipeline.max_event_bytes: at least 1024".into());
        }
        if self.revoke_grace > Duration::from_secs(120) {
            return Err("pipeline.revoke_grace: at most 2m (a rebalance waits for it)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_without_a_ca_of_its_own_probes_the_system_cas() {
        let mut c = KafkaConfig::default();
        c.properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        for built in [c.consumer_config().unwrap(), c.producer_config().unwrap()] {
            assert_eq!(built.get("ssl.ca.location"), Some("probe"));
        }
    }

    #[test]
    fn oidc_is_refused_with_what_to_use_instead() {
        let mut c = KafkaConfig::default();
        c.properties
            .insert("sasl.oauthbearer.method".into(), "OIDC".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("libcurl") && e.contains("SCRAM"), "{e}");
    }

    /// The librdkafka built into the binary has what docs/configuration.md promises. librdkafka's own
    /// configure silently leaves out a library it cannot find (it dropped a static libcurl,
    /// whose directory rdkafka-sys does not pass on, so OIDC is not built in), and a build that
    /// lost one would otherwise only show when an operator's config is refused.
    #[test]
    fn the_built_in_librdkafka_has_tls_sasl_and_every_codec() {
        use rdkafka::producer::BaseProducer;
        let cases: &[&[(&str, &str)]] = &[
            &[("security.protocol", "ssl")],
            &[
                ("security.protocol", "sasl_ssl"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "u"),
                ("sasl.password", "p"),
            ],
            &[
                ("security.protocol", "sasl_ssl"),
                ("sasl.mechanism", "PLAIN"),
                ("sasl.username", "u"),
                ("sasl.password", "p"),
            ],
            &[("security.protocol", "ssl"), ("ssl.ca.location", "probe")],
            &[("compression.codec", "gzip")],
            &[("compression.codec", "zstd")],
            &[("compression.codec", "lz4")],
            &[("compression.codec", "snappy")],
        ];
        for props in cases {
            let mut c = ClientConfig::new();
            c.set("bootstrap.servers", "127.0.0.1:1");
            for (k, v) in *props {
                c.set(*k, *v);
            }
            if let Err(e) = c.create::<BaseProducer>() {
                panic!("{props:?}: {e}");
            }
        }
    }

    #[test]
    fn a_named_ca_and_plaintext_are_left_alone() {
        let mut c = KafkaConfig::default();
        assert_eq!(c.producer_config().unwrap().get("ssl.ca.location"), None);
        c.properties
            .insert("security.protocol".into(), "ssl".into());
        c.properties
            .insert("ssl.ca.location".into(), "/etc/kafka/ca.pem".into());
        let built = c.consumer_config().unwrap();
        assert_eq!(built.get("ssl.ca.location"), Some("/etc/kafka/ca.pem"));
    }

    #[test]
    fn guarantees_cannot_be_overridden() {
        for name in ["enable.auto.offset.store", "acks", "Enable.Idempotence"] {
            let mut c = KafkaConfig::default();
            c.properties.insert(name.into(), "x".into());
            assert!(
                matches!(c.validate(), Err(KafkaConfigError::Owned { .. })),
                "{name}"
            );
        }
    }

    #[test]
    fn exactly_once_makes_only_the_outcome_producer_transactional() {
        let mut c = KafkaConfig {
            group_id: "g".into(),
            ..KafkaConfig::default()
        };
        assert_eq!(
            c.outcome_producer_config().unwrap().get("transactional.id"),
            None
        );
        assert_eq!(
            c.consumer_config().unwrap().get("enable.auto.commit"),
            Some("true")
        );
        c.exactly_once = true;
        c.transactional_id = Some("worker-1".into());
        let outcomes = c.outcome_producer_config().unwrap();
        assert_eq!(outcomes.get("transactional.id"), Some("worker-1"));
        // The guard's producer shares no transactional id with it: they would fence each other.
        assert_eq!(c.producer_config().unwrap().get("transactional.id"), None);
        // Offsets go in the transactions only, never through the consumer's own commits.
        let consumer = c.consumer_config().unwrap();
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("isolation.level"), Some("read_committed"));
        c.transactional_id = None;
        assert!(
            c.transactional_id().starts_with("g."),
            "{}",
            c.transactional_id()
        );
        c.transactional_id = Some(" ".into());
        assert!(c.validate().is_err());
        for name in ["transactional.id", "isolation.level"] {
            let mut c = KafkaConfig::default();
            c.producer_properties.insert(name.into(), "x".into());
            assert!(
                matches!(c.validate(), Err(KafkaConfigError::Owned { .. })),
                "{name}"
            );
        }
    }

    #[test]
    fn secrets_in_plain_text_are_refused_without_echoing_them() {
        let mut c = KafkaConfig::default();
        c.properties
            .insert("sasl.password".into(), "hunter2-kafka".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("secret_properties"), "{e}");
        assert!(!e.contains("hunter2-kafka"), "{e}");
    }

    #[test]
    fn secret_properties_are_read_from_their_source() {
        let var = "OFFBOARDER_TEST_KAFKA_PASSWORD_1";
        // SAFETY: the variable name is unique to this test.
        unsafe { std::env::set_var(var, "s3cret") };
        let mut c = KafkaConfig::default();
        c.secret_properties.insert(
            "sasl.password".into(),
            SecretSource {
                env: Some(var.into()),
                file: None,
            },
        );
        let cc = c.consumer_config().unwrap();
        assert_eq!(cc.get("sasl.password"), Some("s3cret"));
        assert_eq!(cc.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(cc.get("auto.offset.reset"), Some("earliest"));
        let pc = c.producer_config().unwrap();
        assert_eq!(pc.get("acks"), Some("all"));
        assert_eq!(pc.get("enable.idempotence"), Some("true"));
        assert_eq!(pc.get("group.id"), None);
    }

    #[test]
    fn an_output_topic_may_not_be_an_input() {
        let mut c = KafkaConfig::default();
        c.topics.outcomes = c.topics.terminations.clone();
        assert!(c.validate().is_err());
    }
}
