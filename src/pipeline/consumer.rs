//! The Kafka consumer's side: its librdkafka context (statistics, rebalance callbacks), the
//! watchdog that says when the group is never joined, the resume-gap check on each partition's
//! first record, the consumer errors that stop the worker, and the start-up topic check.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer as _;
use rdkafka::{ClientContext, TopicPartitionList};

use offboarder_base::metric_names as m_names;

use super::budget::Budget;
use super::config::KafkaConfig;
use super::shared::{PartitionWork, PipelineError, Shared};

/// How many offsets lie between a partition's committed offset and the first record read
/// after its assignment, when that is more than one. A Kafka broker resumes exactly at the
/// committed offset, so a larger gap means records this worker never saw: deleted by retention
/// while the worker was down or behind (the consumer then starts over at the earliest record
/// left), compacted away, aborted transactions, or a broker that cannot resume inside a record
/// batch (tansu 0.6.0). A gap of one is the marker that follows every committed transaction.
pub(super) fn resume_gap(committed: rdkafka::Offset, first: i64) -> Option<i64> {
    match committed {
        rdkafka::Offset::Offset(c) if first - c > 1 => Some(first - c),
        _ => None,
    }
}

/// Rebalance hooks: forget revoked partitions (their events will be delivered to the new
/// owner), keep newly assigned partitions paused while the worker is full, and take the share
/// of the request budget that goes with the partitions held.
pub(super) struct Context {
    pub(super) shared: Arc<Shared>,
    pub(super) budget: Option<Arc<Budget>>,
    /// `pipeline.revoke_grace`.
    pub(super) revoke_grace: Duration,
}

impl ClientContext for Context {
    /// librdkafka's statistics (every `statistics.interval.ms`): the lag of each assigned
    /// partition.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(
                        m_names::CONSUMER_LAG,
                        "topic" => topic.clone(),
                        "partition" => partition.to_string()
                    )
                    .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let revoked: Vec<(String, i32)> = list
                .elements()
                .iter()
                .map(|p| (p.topic().to_string(), p.partition()))
                .collect();
            // Before the partitions go: their events stop, so none acts after the new owner
            // has started on the same users.
            let works = self.shared.take_partition_work(&revoked);
            let started = std::time::Instant::now();
            let abandoned = PartitionWork::drain_blocking(&works, self.revoke_grace);
            if !works.is_empty() {
                tracing::info!(
                    partitions = revoked.len(),
                    waited_ms = started.elapsed().as_millis() as u64,
                    abandoned,
                    "revoked partitions drained: their unfinished events are left to the new owner"
                );
            }
            // What finished on these partitions commits now, while this worker still owns
            // them, so that the new owner starts after it: in the open transaction with
            // `exactly_once`; otherwise the stored offsets, which the background auto-commit
            // would send only seconds later (librdkafka does not commit them on an incremental
            // revoke, and the new owner would act on those events again).
            if let Some(transactions) = &self.shared.transactions {
                if let Err(e) = transactions.commit(consumer.group_metadata()) {
                    *self
                        .shared
                        .transaction_failure
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            } else if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                // Nothing stored since the last commit is the common case, and not a fault.
                tracing::debug!(error = %e, "no offsets committed at the revoke");
            }
            let mut tracker = self.shared.tracker();
            let mut awaiting = self.shared.awaiting_first();
            for p in list.elements() {
                tracing::info!(
                    topic = p.topic(),
                    partition = p.partition(),
                    "partition revoked"
                );
                tracker.revoke(p.topic(), p.partition());
                if let Some(partitions) = awaiting.get_mut(p.topic()) {
                    partitions.remove(&p.partition());
                }
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let assigned = consumer.assignment().map_or(0, |a| a.count());
        self.shared.readiness.set_assigned(assigned);
        if let Some(budget) = &self.budget {
            budget.follow_assignment(assigned);
        }
        if matches!(rebalance, Rebalance::Assign(_))
            && !self.shared.joined.swap(true, Ordering::SeqCst)
        {
            self.shared
                .readiness
                .set_fault(crate::admin::CONSUMER_GROUP_FAULT, None);
        }
        if let Rebalance::Assign(list) = rebalance {
            let mut awaiting = self.shared.awaiting_first();
            for p in list.elements() {
                tracing::info!(
                    topic = p.topic(),
                    partition = p.partition(),
                    "partition assigned"
                );
                awaiting
                    .entry(p.topic().to_string())
                    .or_default()
                    .insert(p.partition());
            }
            drop(awaiting);
            if self.shared.paused.load(Ordering::SeqCst)
                && let Err(e) = consumer.pause(list)
            {
                tracing::warn!(error = %e, "cannot pause newly assigned partitions");
            }
            if self.shared.guard_paused.load(Ordering::SeqCst) {
                let held = only_topic(list, &self.shared.terminations_topic);
                if held.count() > 0
                    && let Err(e) = consumer.pause(&held)
                {
                    tracing::warn!(error = %e, "cannot pause newly assigned termination partitions");
                }
            }
        }
    }
}

pub(super) type KafkaConsumer = StreamConsumer<Context>;

/// Says loudly when the consumer has not joined its group twice `connect_timeout` after
/// subscribing. librdkafka keeps trying in silence in that case (its reason is only in its debug
/// log), and a worker that reads nothing while it looks alive is how terminations get missed.
/// The fault shows in `/readyz` until the first assignment arrives.
pub(super) async fn join_watchdog(shared: Arc<Shared>, kafka: KafkaConfig) {
    let after = kafka.connect_timeout.saturating_mul(2);
    tokio::time::sleep(after).await;
    if shared.joined.load(Ordering::SeqCst) {
        return;
    }
    let hint = if kafka.kip848() {
        "group.protocol is \"consumer\" (KIP-848): the brokers must support it (Apache Kafka \
         4.0 or later; tansu 0.6.0 does not). Remove the property to use the classic protocol"
    } else {
        "check that the group coordinator is reachable and that the credentials may join the \
         group (ACL: READ on the group)"
    };
    let reason = format!(
        "the consumer has not joined group {:?} after {}: no events are read. {hint}",
        kafka.group_id,
        humantime::format_duration(after)
    );
    tracing::error!(group = kafka.group_id, "{reason}");
    if !shared.joined.load(Ordering::SeqCst) {
        shared
            .readiness
            .set_fault(crate::admin::CONSUMER_GROUP_FAULT, Some(reason));
    }
}

/// The partitions of `list` that belong to `topic`.
pub(super) fn only_topic(list: &TopicPartitionList, topic: &str) -> TopicPartitionList {
    let mut out = TopicPartitionList::new();
    for p in list.elements().iter().filter(|p| p.topic() == topic) {
        out.add_partition(topic, p.partition());
    }
    out
}

/// The partitions of `list` that do not belong to `topic`.
pub(super) fn except_topic(list: &TopicPartitionList, topic: &str) -> TopicPartitionList {
    let mut out = TopicPartitionList::new();
    for p in list.elements().iter().filter(|p| p.topic() != topic) {
        out.add_partition(p.topic(), p.partition());
    }
    out
}

/// Compares the first record read from a newly assigned partition with the group's
/// committed offset, off the consumer loop (it is a request to the group coordinator), and
/// says loudly when records were skipped: each may be a termination never acted on.
pub(super) fn check_resume_gap(
    consumer: Arc<KafkaConsumer>,
    (topic, partition): (String, i32),
    first: i64,
) {
    tokio::task::spawn_blocking(move || {
        let committed = {
            let mut list = TopicPartitionList::new();
            list.add_partition(&topic, partition);
            consumer
                .committed_offsets(list, Duration::from_secs(10))
                .ok()
                .and_then(|l| l.find_partition(&topic, partition).map(|p| p.offset()))
        };
        let Some(committed) = committed else {
            tracing::debug!(
                topic,
                partition,
                "committed offset unknown; no resume check"
            );
            return;
        };
        if let Some(gap) = resume_gap(committed, first) {
            tracing::error!(
                topic,
                partition,
                committed = ?committed,
                first_read = first,
                skipped = gap,
                "records skipped on resume: the first record read after the assignment is not \
                 the committed offset. Those records were never seen by this worker: check the \
                 topic's retention (the worker may have been down longer), compaction and \
                 transactions, or the broker, then replay the range if it held events"
            );
            metrics::counter!(m_names::RESUME_SKIPPED, "topic" => topic)
                .increment(gap.unsigned_abs());
        }
    });
}

/// Consumer errors no retry can fix: the worker stops with the reason instead of logging the
/// same error forever.
pub(super) fn fatal_consumer_error(e: &KafkaError) -> Option<String> {
    use RDKafkaErrorCode as C;
    let code = e.rdkafka_error_code()?;
    let fatal = matches!(
        code,
        C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::Fatal
            | C::InvalidGroupId
    );
    fatal.then(|| format!("{e}: check the brokers' ACLs and the credentials in [kafka]"))
}

/// Checks, before consuming, that the brokers answer, that all five topics exist, and that the
/// state topic has one partition (the guard's log needs one order). Topics are never
/// auto-created: a typo in a topic name must not start a worker that reads nothing. Returns
/// how many partitions the two input topics have together: a worker's share of them is its
/// share of the request budget.
pub async fn check_topics(
    producer: &super::broker_errors::Producer,
    errors: &super::broker_errors::BrokerErrors,
    kafka: &KafkaConfig,
) -> Result<usize, PipelineError> {
    let producer = producer.clone();
    let timeout = kafka.connect_timeout;
    let brokers = kafka.brokers.clone();
    let metadata =
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout))
            .await
            .map_err(|e| {
                PipelineError::Config(format!("kafka: metadata request did not run: {e}"))
            })?
            .map_err(|e| {
                let why = errors.last().map_or_else(String::new, |reason| {
                    format!(
                        ". librdkafka's last error: {}",
                        super::broker_errors::explain(&reason)
                    )
                });
                PipelineError::Config(format!(
                    "kafka: cannot reach the brokers at {brokers} within {}: {e}{why}",
                    humantime::format_duration(timeout)
                ))
            })?;
    let t = &kafka.topics;
    let problems: Vec<String> = [
        ("terminations", &t.terminations),
        ("risk_signals", &t.risk_signals),
        ("outcomes", &t.outcomes),
        ("dead_letter", &t.dead_letter),
        ("state", &t.state),
    ]
    .into_iter()
    .filter_map(|(key, name)| {
        let problem = match metadata.topics().iter().find(|m| m.name() == name.as_str()) {
            None => "does not exist".to_string(),
            Some(m) => match m.error() {
                None if key == "state" && m.partitions().len() != 1 => format!(
                    "has {} partitions; the guard's log needs exactly 1",
                    m.partitions().len()
                ),
                None => return None,
                Some(e) => match RDKafkaErrorCode::from(e) {
                    RDKafkaErrorCode::UnknownTopicOrPartition => "does not exist".to_string(),
                    code => format!("{code}"),
                },
            },
        };
        Some(format!("{name} (kafka.topics.{key}): {problem}"))
    })
    .collect();
    if problems.is_empty() {
        Ok(metadata
            .topics()
            .iter()
            .filter(|m| *m.name() == t.terminations || *m.name() == t.risk_signals)
            .map(|m| m.partitions().len())
            .sum())
    } else {
        Err(PipelineError::Config(format!(
            "kafka: topics unusable on {}: {}. Create them, grant access, or fix the names in [kafka.topics]",
            kafka.brokers,
            problems.join("; ")
        )))
    }
}

/// The state topic's `cleanup.policy` as the brokers report it. It must be `compact` alone:
/// with `delete` (alone or with `compact`) the brokers drop old entries after the retention
/// time, and a halt nobody released would be forgotten with them.
pub async fn state_topic_policy(kafka: &KafkaConfig) -> Result<String, String> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = kafka
        .producer_config()
        .map_err(|e| e.to_string())?
        .create()
        .map_err(|e| format!("cannot create an admin client: {e}"))?;
    let options = AdminOptions::new().request_timeout(Some(kafka.connect_timeout));
    let topic = ResourceSpecifier::Topic(&kafka.topics.state);
    let results = admin
        .describe_configs([&topic], &options)
        .await
        .map_err(|e| e.to_string())?;
    let resource = results
        .into_iter()
        .next()
        .ok_or("the brokers returned no configuration")?
        .map_err(|code| code.to_string())?;
    resource
        .get("cleanup.policy")
        .and_then(|e| e.value.clone())
        .ok_or_else(|| "the brokers did not report cleanup.policy".to_string())
}

/// Whether a `cleanup.policy` keeps every entry of the guard's log.
pub fn keeps_every_entry(policy: &str) -> bool {
    let parts: Vec<&str> = policy.split(',').map(str::trim).collect();
    parts == ["compact"]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(protocol: Option<&str>) -> KafkaConfig {
        let mut kafka = KafkaConfig {
            group_id: "g".into(),
            connect_timeout: Duration::from_secs(15),
            ..KafkaConfig::default()
        };
        if let Some(p) = protocol {
            kafka
                .consumer_properties
                .insert("group.protocol".into(), p.into());
        }
        kafka
    }

    fn not_ready(shared: &Shared) -> Vec<String> {
        shared.readiness.check().err().unwrap_or_default()
    }

    #[test]
    fn only_a_gap_of_more_than_one_offset_is_a_skip() {
        use rdkafka::Offset;
        assert_eq!(resume_gap(Offset::Offset(4), 4), None, "resumed exactly");
        assert_eq!(
            resume_gap(Offset::Offset(4), 5),
            None,
            "a transaction marker"
        );
        assert_eq!(resume_gap(Offset::Offset(4), 10), Some(6));
        assert_eq!(
            resume_gap(Offset::Offset(4), 2),
            None,
            "behind: a redelivery"
        );
        assert_eq!(
            resume_gap(Offset::Invalid, 10),
            None,
            "nothing committed yet"
        );
        assert_eq!(resume_gap(Offset::Beginning, 10), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_that_never_joins_is_reported_after_twice_the_connect_timeout() {
        let shared = Arc::new(Shared::default());
        let watchdog = tokio::spawn(join_watchdog(shared.clone(), kafka(Some("consumer"))));
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(!not_ready(&shared).iter().any(|r| r.contains("joined")));
        watchdog.await.unwrap();
        let reasons = not_ready(&shared);
        let fault = reasons
            .iter()
            .find(|r| r.contains("has not joined group \"g\" after 30s"))
            .unwrap_or_else(|| panic!("{reasons:?}"));
        assert!(fault.contains("KIP-848"), "{fault}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_classic_protocol_gets_the_coordinator_hint() {
        let shared = Arc::new(Shared::default());
        join_watchdog(shared.clone(), kafka(None)).await;
        let reasons = not_ready(&shared);
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("has not joined") && r.contains("ACL")),
            "{reasons:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_that_joined_in_time_raises_nothing() {
        let shared = Arc::new(Shared::default());
        shared.joined.store(true, Ordering::SeqCst);
        join_watchdog(shared.clone(), kafka(Some("consumer"))).await;
        assert!(!not_ready(&shared).iter().any(|r| r.contains("joined")));
    }
}
