//! Kafka adapter: topic administration, the event publisher, the consumer and a probe
//! of the topic's partitions and high watermarks.
//!
//! Delivery is at-least-once on both sides; exactly-once *effects* come from the
//! versioned, idempotent apply in the node, never from broker-side deduplication.
//!
//! A node's consumer is the only member of its own group, so group coordination would
//! buy it nothing but offset storage, and bring rebalances, session timeouts and the
//! broker's group bugs (a crash-restart or a network cut could leave a node with some or
//! none of the partitions, for good). So the consumer assigns itself every partition of
//! the topic explicitly and uses the group id only to commit and fetch offsets.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kvsync_core::Event;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureProducer, FutureRecord, Producer},
    util::Timeout,
    ClientConfig, ClientContext, Offset, TopicPartitionList,
};

pub use rdkafka::message::Message;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating topic {topic}: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("topic {0} does not exist (yet)")]
    NoTopic(String),
}

impl BusError {
    /// The producer or the broker refuses the record for its size: trying again cannot
    /// help until the record or the limit changes.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            BusError::Kafka(e) if matches!(
                e.rdkafka_error_code(),
                Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
            )
        )
    }
}

/// Connection and topic settings shared by every client of one node.
#[derive(Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Upper bound on how long the broker may hold a fetch open. Some brokers always
    /// wait this long, so it bounds replication latency from below.
    pub fetch_wait_ms: u32,
    /// How long the broker keeps events (`retention.ms` of the data topic when the node
    /// creates it): a node that needs older ones joins from its peers' state instead.
    pub retention_ms: i64,
    /// Largest event published, encoded: records and the topic are sized from it.
    pub max_event_bytes: usize,
    pub client_id: String,
    /// librdkafka properties passed through verbatim (security settings and the like).
    /// They may hold secrets: never log them.
    pub extra: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("fetch_wait_ms", &self.fetch_wait_ms)
            .field("retention_ms", &self.retention_ms)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("client_id", &self.client_id)
            .field(
                "extra",
                &self.extra.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl KafkaSettings {
    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            // Small messages, latency matters more than packet count.
            .set("socket.nagle.disable", "true")
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "2000")
            .set_log_level(RDKafkaLogLevel::Warning);
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }

    /// Largest record: the largest event plus its key and the record's framing. The
    /// producer's `message.max.bytes` and the topic's `max.message.bytes` (when the node
    /// creates it), unless an operator set the producer's in the extra properties.
    pub fn max_record_bytes(&self) -> usize {
        self.max_event_bytes + kvsync_core::event::RECORD_OVERHEAD
    }

    /// The producer's configuration.
    fn producer_config(&self) -> ClientConfig {
        let mut c = self.config();
        c.set("acks", "all")
            .set("linger.ms", "0")
            // Fail a delivery in bounded time: the outbox relay retries it later.
            .set("message.timeout.ms", "10000")
            // Same key, same partition as Java clients would pick.
            .set("partitioner", "murmur2_random")
            // A publication to a topic that does not exist yet must not create it with
            // the broker's defaults (one partition, replication factor 1): the node
            // creates it, with its own settings, before publishing.
            .set("allow.auto.create.topics", "false");
        if !self.extra.iter().any(|(k, _)| k == "message.max.bytes") {
            c.set("message.max.bytes", self.max_record_bytes().to_string());
        }
        c
    }

    /// The control topic next to the data topic: members' heartbeats.
    pub fn control_topic(&self) -> String {
        format!("{}.members", self.topic)
    }

    /// Creates the data and control topics if they do not exist yet.
    pub async fn ensure_topic(&self) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> = self.config().create()?;
        // History is kept for a bounded time: a node that needs events older than that
        // (one that joins late, or was away long) gets its peers' state instead.
        // Compaction is no substitute: it keeps the last offset per key, which under
        // concurrent writes need not be the newest version.
        let retention = self.retention_ms.to_string();
        let max_record = self.max_record_bytes().to_string();
        let topic = NewTopic::new(
            &self.topic,
            self.partitions,
            TopicReplication::Fixed(self.replication_factor),
        )
        .set("retention.ms", &retention)
        .set("cleanup.policy", "delete")
        .set("max.message.bytes", &max_record)
        // Records are stamped by the broker: a producer whose clock runs more than an
        // hour fast would otherwise have every record refused by Kafka 4
        // (log.message.timestamp.after.max.ms), and one that runs slow would have its
        // records deleted early by time-based retention.
        .set("message.timestamp.type", "LogAppendTime");
        // Heartbeats matter only while fresh: an hour of them is plenty. Retention
        // deletes whole segments, and a segment rolls after segment.ms (7 days by
        // default): an hour's segments keep the hour meant.
        let control_name = self.control_topic();
        let control = NewTopic::new(
            &control_name,
            1,
            TopicReplication::Fixed(self.replication_factor),
        )
        .set("retention.ms", "3600000")
        .set("segment.ms", "3600000")
        .set("cleanup.policy", "delete")
        .set("max.message.bytes", &max_record)
        .set("message.timestamp.type", "LogAppendTime");
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
        for result in admin.create_topics([&topic, &control], &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                // Not ours to create here: an operator provisions it. Go on and consume.
                Err((topic, code @ RDKafkaErrorCode::TopicAuthorizationFailed))
                | Err((topic, code @ RDKafkaErrorCode::ClusterAuthorizationFailed))
                | Err((topic, code @ RDKafkaErrorCode::PolicyViolation)) => {
                    tracing::warn!(%topic, %code, "not allowed to create the topic; assuming it exists");
                }
                Err((topic, code)) => return Err(BusError::CreateTopic { topic, code }),
            }
        }
        Ok(())
    }
}

/// How often "all brokers are down" is said while an outage lasts.
const BROKERS_DOWN_EVERY: Duration = Duration::from_secs(60);

/// Forwards librdkafka's own logs and errors to `tracing`.
#[derive(Clone, Default)]
pub struct Context {
    /// When "all brokers are down" was last said.
    brokers_down: Arc<Mutex<Option<Instant>>>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
            _ => tracing::debug!(target: "librdkafka", fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            // librdkafka repeats this many times a second while the outage lasts: say it
            // once, and again a minute later if it still lasts (or for a later outage).
            let mut last = self.brokers_down.lock().expect("brokers_down lock");
            if last.is_none_or(|t| t.elapsed() >= BROKERS_DOWN_EVERY) {
                *last = Some(Instant::now());
                tracing::warn!(target: "librdkafka", "all brokers are down; reconnecting");
            }
            return;
        }
        tracing::warn!(target: "librdkafka", %error, "{reason}");
    }
}

impl ConsumerContext for Context {}

/// Publishes records and waits for the broker's acknowledgement.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer<Context>,
    topic: String,
}

impl Publisher {
    pub fn new(settings: &KafkaSettings) -> Result<Self, BusError> {
        let producer = settings
            .producer_config()
            .create_with_context(Context::default())?;
        Ok(Self {
            producer,
            topic: settings.topic.clone(),
        })
    }

    /// Sends one event, keyed by its pair key so one key's changes stay in one partition.
    /// Returns where the broker stored it: `(partition, offset)`.
    pub async fn publish(&self, event: &Event) -> Result<(i32, i64), BusError> {
        self.publish_encoded(event.key.as_str(), &event.encode())
            .await
    }

    /// [`Publisher::publish`] for an event already encoded, keyed by its pair key.
    pub async fn publish_encoded(&self, key: &str, payload: &[u8]) -> Result<(i32, i64), BusError> {
        self.send(&self.topic, key, payload).await
    }

    /// Sends one record to `topic`; returns its `(partition, offset)`.
    pub async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
    ) -> Result<(i32, i64), BusError> {
        let record = FutureRecord::to(topic).key(key).payload(payload);
        self.producer
            .send(record, Timeout::After(Duration::from_secs(5)))
            .await
            .map_err(|(e, _)| e.into())
    }

    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "producer flush did not complete");
        }
    }
}

/// One consumed message.
#[derive(Debug, Clone)]
pub struct Delivery {
    partition: i32,
    offset: i64,
    payload: Option<Vec<u8>>,
}

impl Delivery {
    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn offset(&self) -> i64 {
        self.offset
    }
}

/// Where a newly assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The offset committed under the node's group (the beginning if none).
    Committed,
    /// This offset.
    At(i64),
    /// The end: only records produced from now on.
    End,
}

/// A consumer that owns the partitions it is told to, stores an offset only when told
/// the message was handled, and commits under its group id.
pub struct Subscriber {
    consumer: StreamConsumer<Context>,
    topic: String,
}

impl Subscriber {
    /// A consumer of `topic` committing under `group_id` (none: nothing is committed).
    /// It owns no partition until [`Subscriber::assign`].
    pub fn new(
        settings: &KafkaSettings,
        topic: &str,
        group_id: Option<&str>,
    ) -> Result<Self, BusError> {
        let mut config = settings.config();
        config
            // A node that joins later (or lost its offsets) replays the whole topic.
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", settings.fetch_wait_ms.to_string())
            .set("fetch.error.backoff.ms", "100")
            .set("topic.metadata.refresh.interval.ms", "5000")
            // A request the broker never answers (a network blackhole) fails after this,
            // and the connection is made anew.
            .set("socket.timeout.ms", "10000")
            .set("socket.keepalive.enable", "true")
            .set("allow.auto.create.topics", "false")
            // librdkafka prefetches up to 64 MiB per client by default; a node that lags
            // (catching up, or its database slow) should not hold that much in memory.
            .set("queued.max.messages.kbytes", "16384")
            .set("queued.min.messages", "10000");
        match group_id {
            Some(group) => {
                config
                    .set("group.id", group)
                    // Offsets are stored only after the event is applied, then committed
                    // periodically: at-least-once delivery into an idempotent apply.
                    .set("enable.auto.commit", "true")
                    .set("enable.auto.offset.store", "false")
                    .set("auto.commit.interval.ms", "1000")
                    // Re-find the group coordinator quickly when the broker comes back.
                    .set("coordinator.query.interval.ms", "10000");
            }
            None => {
                // librdkafka wants a group id for a consumer; it is never used.
                config
                    .set("group.id", "kvsync-uncommitted")
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false");
            }
        }
        let consumer: StreamConsumer<Context> = config.create_with_context(Context::default())?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
        })
    }

    /// Adds partitions to what this consumer owns, each from where `Start` says.
    pub fn assign(&self, partitions: &[(i32, Start)]) -> Result<(), BusError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (p, start) in partitions {
            let offset = match start {
                Start::Committed => Offset::Stored,
                Start::At(o) => Offset::Offset(*o),
                Start::End => Offset::End,
            };
            list.add_partition_offset(&self.topic, *p, offset)?;
        }
        self.consumer.incremental_assign(&list)?;
        Ok(())
    }

    /// The partitions this consumer owns.
    pub fn owned(&self) -> Vec<i32> {
        self.consumer
            .assignment()
            .map(|a| a.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default()
    }

    /// The next message, copied out of the consumer so that it can be handled while
    /// later ones are received.
    pub async fn recv(&self) -> Result<Delivery, BusError> {
        let m = self.consumer.recv().await?;
        Ok(Delivery {
            partition: m.partition(),
            offset: m.offset(),
            payload: m.payload().map(<[u8]>::to_vec),
        })
    }

    /// Marks everything before `next` in `partition` as handled; committed with the
    /// next commit.
    pub fn done_before(&self, partition: i32, next: i64) -> Result<(), BusError> {
        // store_offset takes the last handled offset and commits the one after it.
        Ok(self
            .consumer
            .store_offset(&self.topic, partition, next - 1)?)
    }

    /// Commits stored offsets now (at shutdown, and before the consumer is replaced).
    pub fn commit(&self) {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing stored since the last commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "offset commit failed"),
        }
    }
}

/// Asks the broker about a topic: its partitions, their watermarks and the offsets
/// committed under the node's group. Calls block (up to their timeout): run them on a
/// blocking thread.
pub struct Probe {
    client: BaseConsumer<Context>,
    topic: String,
}

impl Probe {
    pub fn new(settings: &KafkaSettings, group_id: &str) -> Result<Self, BusError> {
        let client: BaseConsumer<Context> = settings
            .config()
            // Only to read the group's committed offsets: this client never joins it.
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("socket.timeout.ms", "5000")
            .set("allow.auto.create.topics", "false")
            .create_with_context(Context::default())?;
        Ok(Self {
            client,
            topic: settings.topic.clone(),
        })
    }

    /// The topic's partition count.
    pub fn partitions(&self, timeout: Duration) -> Result<i32, BusError> {
        let md = self
            .client
            .fetch_metadata(Some(&self.topic), Timeout::After(timeout))?;
        let topic = md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .ok_or_else(|| BusError::NoTopic(self.topic.clone()))?;
        if topic.error().is_some() || topic.partitions().is_empty() {
            return Err(BusError::NoTopic(self.topic.clone()));
        }
        Ok(topic.partitions().len() as i32)
    }

    /// `(low, high)` watermarks of each of the first `partitions` partitions: the first
    /// offset still stored, and the one after the last record. `None` for a partition
    /// whose leader did not answer (a broker down with the only replica): the others are
    /// judged on their own. An error only when none answered.
    pub fn watermarks(
        &self,
        partitions: i32,
        timeout: Duration,
    ) -> Result<Vec<Option<(i64, i64)>>, BusError> {
        let mut first_error = None;
        let marks: Vec<Option<(i64, i64)>> = (0..partitions)
            .map(|p| {
                match self
                    .client
                    .fetch_watermarks(&self.topic, p, Timeout::After(timeout))
                {
                    Ok(marks) => Some(marks),
                    Err(e) => {
                        tracing::debug!(partition = p, error = %e, "no watermarks for a partition");
                        first_error.get_or_insert(e);
                        None
                    }
                }
            })
            .collect();
        match first_error {
            Some(e) if marks.iter().all(Option::is_none) => Err(e.into()),
            _ => Ok(marks),
        }
    }

    /// The offsets committed under the group for `partitions` (`None`: nothing committed).
    pub fn committed(
        &self,
        partitions: &[i32],
        timeout: Duration,
    ) -> Result<Vec<(i32, Option<i64>)>, BusError> {
        let mut list = TopicPartitionList::new();
        for p in partitions {
            list.add_partition(&self.topic, *p);
        }
        let committed = self
            .client
            .committed_offsets(list, Timeout::After(timeout))?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset().to_raw().filter(|o| *o >= 0)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &[(&str, &str)]) -> KafkaSettings {
        KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            topic: "t".into(),
            partitions: 3,
            replication_factor: 1,
            fetch_wait_ms: 100,
            retention_ms: 1000,
            max_event_bytes: 950_000,
            client_id: "c".into(),
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_producer_creates_no_topic_and_sends_what_the_node_accepts() {
        let c = settings(&[]).producer_config();
        assert_eq!(c.get("allow.auto.create.topics"), Some("false"));
        let max: usize = c.get("message.max.bytes").unwrap().parse().unwrap();
        assert!(max >= 950_000 + kvsync_core::key::MAX_KEY_BYTES, "{max}");
        // An operator who knows the broker's limit has the last word.
        let c = settings(&[("message.max.bytes", "2000000")]).producer_config();
        assert_eq!(c.get("message.max.bytes"), Some("2000000"));
    }

    #[test]
    fn size_refusals_are_told_apart() {
        let too_large = BusError::Kafka(KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge,
        ));
        assert!(too_large.is_too_large());
        let down = BusError::Kafka(KafkaError::MessageProduction(
            RDKafkaErrorCode::AllBrokersDown,
        ));
        assert!(!down.is_too_large());
    }
}
