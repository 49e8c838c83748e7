//! A self-contained world for the demo, the tests and the benchmarks: librdkafka's in-process
//! mock Kafka cluster and the Netskope tenant simulator, with a [`Config`] that points the
//! worker at both. Both are test doubles: nothing here talks to a real cluster or tenant.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use secrecy::SecretString;

use crate::config::Config;
use crate::netskope::{NetskopeClient, Tokens};
use crate::pipeline::config::Topics;
use crate::sim::{self, SimArgs, SimHandle};

const SCIM_TOKEN_ENV: &str = "OFFBOARDER_SANDBOX_SCIM_TOKEN";
const EVENTS_TOKEN_ENV: &str = "OFFBOARDER_SANDBOX_EVENTS_TOKEN";

/// A sandbox could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("mock Kafka cluster: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("tenant simulator: {0}")]
    Sim(#[from] std::io::Error),
    #[error("Netskope client: {0}")]
    Client(#[from] crate::netskope::ConfigError),
}

pub struct Sandbox {
    /// Declared first so that it is dropped first: clients of the cluster must go before it.
    producer: FutureProducer,
    pub sim: SimHandle,
    sim_tokens: (String, String),
    kafka: MockCluster<'static, DefaultProducerContext>,
    pub topics: Topics,
}

impl Sandbox {
    /// Starts a one-broker mock cluster with the four topics (`partitions` each for the inputs
    /// and outcomes, one for dead letters) and a simulator with `sim_args`.
    pub async fn start(sim_args: SimArgs, partitions: i32) -> Result<Self, SandboxError> {
        let kafka = MockCluster::new(1)?;
        let topics = Topics::default();
        for (topic, n) in [
            (&topics.terminations, partitions),
            (&topics.risk_signals, partitions),
            (&topics.outcomes, partitions),
            (&topics.dead_letter, 1),
        ] {
            kafka.create_topic(topic, n, 1)?;
        }
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", kafka.bootstrap_servers())
            .set("linger.ms", "1")
            .create()?;
        let sim_tokens = (sim_args.scim_token.clone(), sim_args.events_token.clone());
        let sim = sim::start(sim_args).await?;
        Ok(Self {
            producer,
            sim,
            sim_tokens,
            kafka,
            topics,
        })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.kafka.bootstrap_servers()
    }

    /// The mock cluster, to inject faults (broker down, request errors).
    pub fn kafka(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.kafka
    }

    /// A worker config file for this sandbox, consumer group `group_id`. The consumer uses the
    /// KIP-848 group protocol, which the mock cluster supports and which joins in a tenth of a
    /// second instead of three. Tokens come from the variables of [`Sandbox::token_env`];
    /// anything else can be changed with `OFFBOARDER_<SECTION>__<KEY>` variables.
    pub fn config_toml(&self, group_id: &str) -> String {
        format!(
            r#"[netskope]
tenant_url = "{tenant}"
allow_insecure_http = true
scim_token = {{ env = "{SCIM_TOKEN_ENV}" }}
events_token = {{ env = "{EVENTS_TOKEN_ENV}" }}

# The simulator's audit lag is seconds, not Netskope's minutes: poll accordingly.
[verify]
poll_interval = "1s"
timeout = "30s"

[admin]
listen = "127.0.0.1:0"

[kafka]
brokers = "{brokers}"
group_id = "{group_id}"
connect_timeout = "5s"

[kafka.consumer_properties]
"group.protocol" = "consumer"
"#,
            tenant = self.sim.base_url(),
            brokers = self.bootstrap_servers(),
        )
    }

    /// The environment variables that hand the simulator's tokens to a worker process started
    /// with [`Sandbox::config_toml`].
    pub fn token_env(&self) -> [(&'static str, String); 2] {
        [
            (SCIM_TOKEN_ENV, self.sim_tokens.0.clone()),
            (EVENTS_TOKEN_ENV, self.sim_tokens.1.clone()),
        ]
    }

    /// The same config, parsed, for a worker in this process (use [`Sandbox::client`] for its
    /// Netskope client).
    pub fn config(&self, group_id: &str) -> Config {
        // The text is ours; a parse failure is a bug in this function, not an input problem.
        Config::from_toml(&self.config_toml(group_id)).expect("the sandbox config parses")
    }

    /// A Netskope client for `config` with the simulator's tokens (no env vars needed).
    pub fn client(&self, config: &Config) -> Result<Arc<NetskopeClient>, SandboxError> {
        let client = NetskopeClient::builder(&config.netskope)
            .tokens(Tokens {
                scim: SecretString::from(self.sim_tokens.0.clone()),
                events: Some(SecretString::from(self.sim_tokens.1.clone())),
            })
            .build()?;
        Ok(Arc::new(client))
    }

    /// Publishes records concurrently and waits for every acknowledgement.
    pub async fn publish(
        &self,
        records: &[(String, String, Vec<u8>)],
    ) -> Result<(), rdkafka::error::KafkaError> {
        let sends = records.iter().map(|(topic, key, payload)| {
            self.producer.send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(5),
            )
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e)?;
        }
        Ok(())
    }

    /// Publishes one record with headers and waits for its acknowledgement.
    pub async fn publish_with_headers(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<(), rdkafka::error::KafkaError> {
        use rdkafka::message::{Header, OwnedHeaders};
        let mut owned = OwnedHeaders::new();
        for (key, value) in headers {
            owned = owned.insert(Header {
                key,
                value: Some(*value),
            });
        }
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(owned);
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }

    /// Reads `topic` from the beginning, without a consumer group, until `enough` says the
    /// records read so far suffice or `timeout` passes. Returns what was read.
    pub async fn read(
        &self,
        topic: &str,
        timeout: Duration,
        enough: impl Fn(&[OwnedMessage]) -> bool,
    ) -> Result<Vec<OwnedMessage>, rdkafka::error::KafkaError> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .set("group.id", "offboarder-sandbox-reader")
            .set("enable.auto.commit", "false")
            .create()?;
        let partitions = self.partitions_of(topic)?;
        {
            // Dropped before the consumer: a live list would hang the consumer's drop.
            let mut list = TopicPartitionList::new();
            for p in 0..partitions {
                list.add_partition_offset(topic, p, Offset::Beginning)?;
            }
            consumer.assign(&list)?;
        }
        let mut read = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while !enough(&read) {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => read.push(m.detach()),
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
        }
        Ok(read)
    }

    fn partitions_of(&self, topic: &str) -> Result<i32, rdkafka::error::KafkaError> {
        use rdkafka::producer::Producer;
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(5))?;
        Ok(metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len() as i32))
    }
}

/// The payload of a message as UTF-8 text (lossy), for printing and assertions.
pub fn text(m: &OwnedMessage) -> String {
    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()
}

/// A header's value as text.
pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Sums every sample of metric `name` in Prometheus text whose labels contain all of `labels`
/// (each written as `key="value"`).
pub fn prometheus_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
