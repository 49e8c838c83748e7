//! A self-contained world for the demo, the tests and the benchmarks: librdkafka's in-process
//! mock Kafka cluster and the Netskope tenant simulator, with a [`Config`] that points the
//! worker at both. Both are test doubles. The interoperability tests swap the mock cluster for a
//! real broker ([`Sandbox::start_on_broker`]), in topics of their own.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use secrecy::SecretString;

use netskope::{NetskopeClient, Tokens};
use netskope_sim::{SimArgs, SimHandle};

use crate::config::Config;
use crate::pipeline::config::Topics;

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
    Client(#[from] netskope::ConfigError),
    #[error("topic: {0}")]
    Topic(String),
}

/// The five topics and their partition counts: `partitions` for the inputs and the outcomes,
/// one for dead letters and one for the guard's state.
fn topic_layout(topics: &Topics, partitions: i32) -> [(&str, i32); 5] {
    [
        (&topics.terminations, partitions),
        (&topics.risk_signals, partitions),
        (&topics.outcomes, partitions),
        (&topics.dead_letter, 1),
        (&topics.state, 1),
    ]
}

pub struct Sandbox {
    /// Declared first so that it is dropped first: clients of the cluster must go before it.
    producer: FutureProducer,
    pub sim: SimHandle,
    sim_tokens: (String, String),
    kafka: Cluster,
    /// librdkafka properties every client of the sandbox's Kafka needs (TLS, for instance):
    /// its own clients use them, and [`Sandbox::config_toml`] writes them to `[kafka.properties]`.
    kafka_properties: Vec<(String, String)>,
    pub topics: Topics,
}

/// Where the sandbox's Kafka is.
enum Cluster {
    /// librdkafka's in-process mock cluster, owned by the sandbox.
    Mock(MockCluster<'static, DefaultProducerContext>),
    /// A broker someone else runs, at this `bootstrap.servers`.
    Broker(String),
}

impl Sandbox {
    /// Starts a one-broker mock cluster with the four topics (`partitions` each for the inputs
    /// and outcomes, one for dead letters) and a simulator with `sim_args`.
    pub async fn start(sim_args: SimArgs, partitions: i32) -> Result<Self, SandboxError> {
        let kafka = MockCluster::new(1)?;
        let topics = Topics::default();
        for (topic, n) in topic_layout(&topics, partitions) {
            kafka.create_topic(topic, n, 1)?;
        }
        Self::with(Cluster::Mock(kafka), Vec::new(), topics, sim_args).await
    }

    /// Like [`Sandbox::start`], on a real broker at `bootstrap`: the five topics are created
    /// there with a unique suffix, so that tests sharing the broker do not see each other's
    /// records, and they are left behind (the broker is a throwaway).
    pub async fn start_on_broker(
        bootstrap: &str,
        sim_args: SimArgs,
        partitions: i32,
    ) -> Result<Self, SandboxError> {
        Self::start_on_broker_with(bootstrap, &[], sim_args, partitions).await
    }

    /// Like [`Sandbox::start_on_broker`], with librdkafka `properties` for every client of the
    /// broker (e.g. `security.protocol` and `ssl.ca.location` for a TLS listener).
    pub async fn start_on_broker_with(
        bootstrap: &str,
        properties: &[(&str, &str)],
        sim_args: SimArgs,
        partitions: i32,
    ) -> Result<Self, SandboxError> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        let properties: Vec<(String, String)> = properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let suffix = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        let base = Topics::default();
        let topics = Topics {
            terminations: format!("{}.{suffix}", base.terminations),
            risk_signals: format!("{}.{suffix}", base.risk_signals),
            outcomes: format!("{}.{suffix}", base.outcomes),
            dead_letter: format!("{}.{suffix}", base.dead_letter),
            state: format!("{}.{suffix}", base.state),
        };
        let admin: AdminClient<DefaultClientContext> =
            client_config(bootstrap, &properties).create()?;
        let layout = topic_layout(&topics, partitions);
        let new: Vec<NewTopic> = layout
            .iter()
            .map(|(name, n)| {
                let topic = NewTopic::new(name, *n, TopicReplication::Fixed(1));
                // The guard's log must keep every entry (see guard::ledger).
                if *name == topics.state.as_str() {
                    topic.set("cleanup.policy", "compact")
                } else {
                    topic
                }
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics(&new, &options).await? {
            result.map_err(|(topic, code)| {
                SandboxError::Topic(format!("creating {topic}: {code:?}"))
            })?;
        }
        Self::with(
            Cluster::Broker(bootstrap.to_string()),
            properties,
            topics,
            sim_args,
        )
        .await
    }

    async fn with(
        kafka: Cluster,
        kafka_properties: Vec<(String, String)>,
        topics: Topics,
        sim_args: SimArgs,
    ) -> Result<Self, SandboxError> {
        let bootstrap = match &kafka {
            Cluster::Mock(mock) => mock.bootstrap_servers(),
            Cluster::Broker(servers) => servers.clone(),
        };
        let producer: FutureProducer = client_config(&bootstrap, &kafka_properties)
            .set("linger.ms", "1")
            .create()?;
        let sim_tokens = (sim_args.scim_token.clone(), sim_args.events_token.clone());
        let sim = netskope_sim::start(sim_args).await?;
        let sandbox = Self {
            producer,
            sim,
            sim_tokens,
            kafka,
            kafka_properties,
            topics,
        };
        // A real broker may take a moment before a new topic shows in its metadata; the mock
        // creates its topics before this point.
        if let Cluster::Broker(_) = sandbox.kafka {
            for topic in [
                &sandbox.topics.terminations,
                &sandbox.topics.risk_signals,
                &sandbox.topics.outcomes,
                &sandbox.topics.dead_letter,
                &sandbox.topics.state,
            ] {
                sandbox.wait_for_topic(topic).await?;
            }
        }
        Ok(sandbox)
    }

    async fn wait_for_topic(&self, topic: &str) -> Result<(), SandboxError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if self.partitions_of(topic)? > 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SandboxError::Topic(format!(
                    "{topic} has no partitions after 15 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn bootstrap_servers(&self) -> String {
        match &self.kafka {
            Cluster::Mock(mock) => mock.bootstrap_servers(),
            Cluster::Broker(servers) => servers.clone(),
        }
    }

    /// The mock cluster, to inject faults (broker down, request errors); `None` on a real
    /// broker.
    pub fn kafka(&self) -> Option<&MockCluster<'static, DefaultProducerContext>> {
        match &self.kafka {
            Cluster::Mock(mock) => Some(mock),
            Cluster::Broker(_) => None,
        }
    }

    /// A worker config file for this sandbox, consumer group `group_id`. On the mock cluster
    /// the consumer uses the KIP-848 group protocol, which the mock supports and which joins in
    /// a tenth of a second instead of three; on a real broker it uses the classic protocol,
    /// which every broker has. Tokens come from the variables of [`Sandbox::token_env`];
    /// anything else can be changed with `OFFBOARDER_<SECTION>__<KEY>` variables.
    pub fn config_toml(&self, group_id: &str) -> String {
        // The mock's topics have the default names; a broker's carry a suffix and are named.
        let (topics, consumer_properties) = match self.kafka {
            Cluster::Mock(_) => (
                String::new(),
                "\n[kafka.consumer_properties]\n\"group.protocol\" = \"consumer\"\n".to_string(),
            ),
            Cluster::Broker(_) => {
                let t = &self.topics;
                let topics = format!(
                    "\n[kafka.topics]\nterminations = \"{}\"\nrisk_signals = \"{}\"\noutcomes = \"{}\"\ndead_letter = \"{}\"\nstate = \"{}\"\n",
                    t.terminations, t.risk_signals, t.outcomes, t.dead_letter, t.state
                );
                (topics, String::new())
            }
        };
        let properties = if self.kafka_properties.is_empty() {
            String::new()
        } else {
            // A JSON string is a TOML basic string.
            let lines: Vec<String> = self
                .kafka_properties
                .iter()
                .map(|(k, v)| format!("{} = {}", json_string(k), json_string(v)))
                .collect();
            format!("\n[kafka.properties]\n{}\n", lines.join("\n"))
        };
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
{topics}{consumer_properties}{properties}"#,
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

    /// Publishes one record with one header, acknowledged.
    pub async fn publish_with_header(
        &self,
        (topic, key, payload): &(String, String, Vec<u8>),
        (name, value): (&str, &str),
    ) -> Result<(), rdkafka::error::KafkaError> {
        let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: name,
            value: Some(value),
        });
        self.producer
            .send(
                FutureRecord::to(topic)
                    .key(key)
                    .payload(payload)
                    .headers(headers),
                Duration::from_secs(5),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }

    /// Publishes records one at a time, each acknowledged before the next is sent, so that each
    /// travels in a producer batch of its own (slower: one round trip per record).
    pub async fn publish_one_by_one(
        &self,
        records: &[(String, String, Vec<u8>)],
    ) -> Result<(), rdkafka::error::KafkaError> {
        for record in records {
            self.publish(std::slice::from_ref(record)).await?;
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
        let consumer: StreamConsumer =
            client_config(&self.bootstrap_servers(), &self.kafka_properties)
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

/// A client config for `bootstrap` with `properties`.
fn client_config(bootstrap: &str, properties: &[(String, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    for (k, v) in properties {
        c.set(k, v);
    }
    c
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
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
