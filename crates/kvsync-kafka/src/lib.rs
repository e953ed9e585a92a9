//! Kafka adapter: topic administration, the event publisher and the group consumer.
//!
//! Delivery is at-least-once on both sides; exactly-once *effects* come from the
//! versioned, idempotent apply in the node, never from broker-side deduplication.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use kvsync_core::Event;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureProducer, FutureRecord, Producer},
    util::Timeout,
    ClientConfig, ClientContext,
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

    /// Creates the topic if it does not exist yet.
    pub async fn ensure_topic(&self) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> = self.config().create()?;
        // The topic is the log a late-joining node rebuilds from, so it must keep every
        // event: no time-based deletion. Compaction is no substitute: it keeps the last
        // offset per key, which under concurrent writes need not be the newest version.
        let topic = NewTopic::new(
            &self.topic,
            self.partitions,
            TopicReplication::Fixed(self.replication_factor),
        )
        .set("retention.ms", "-1")
        .set("cleanup.policy", "delete");
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
        for result in admin.create_topics([&topic], &options).await? {
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

/// Forwards librdkafka's own logs and errors to `tracing`.
#[derive(Clone, Default)]
pub struct Context {
    assigned: Arc<AtomicUsize>,
    brokers_down: Arc<AtomicBool>,
    /// Since when a completed rebalance has left the consumer without partitions.
    left_out: Arc<Mutex<Option<Instant>>>,
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
            // librdkafka repeats this while the outage lasts: say it once.
            if !self.brokers_down.swap(true, Ordering::Relaxed) {
                tracing::warn!(target: "librdkafka", "all brokers are down; reconnecting");
            }
            return;
        }
        tracing::warn!(target: "librdkafka", %error, "{reason}");
    }
}

impl ConsumerContext for Context {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(_) => {
                // Read the full assignment: with cooperative assignors the callback's list
                // is only the increment.
                let count = consumer.assignment().map(|a| a.count()).unwrap_or(0);
                self.assigned.store(count, Ordering::Relaxed);
                let mut left_out = self.left_out.lock().expect("left_out lock");
                *left_out = if count == 0 {
                    left_out.or(Some(Instant::now()))
                } else {
                    None
                };
                self.brokers_down.store(false, Ordering::Relaxed);
                tracing::info!(partitions = count, "consumer partitions assigned");
            }
            Rebalance::Revoke(_) => {
                self.assigned.store(0, Ordering::Relaxed);
                tracing::info!("consumer partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "consumer rebalance failed"),
        }
    }
}

/// Publishes events, keyed by pair key so one key's changes stay in one partition.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer<Context>,
    topic: String,
}

impl Publisher {
    pub fn new(settings: &KafkaSettings) -> Result<Self, BusError> {
        let producer = settings
            .config()
            .set("acks", "all")
            .set("linger.ms", "0")
            // Fail a delivery in bounded time: the outbox relay retries it later.
            .set("message.timeout.ms", "10000")
            // Same key, same partition as Java clients would pick.
            .set("partitioner", "murmur2_random")
            .create_with_context(Context::default())?;
        Ok(Self {
            producer,
            topic: settings.topic.clone(),
        })
    }

    /// Sends one event and waits for the broker's acknowledgement.
    pub async fn publish(&self, event: &Event) -> Result<(), BusError> {
        let payload = event.encode();
        let record = FutureRecord::to(&self.topic)
            .key(event.key.as_str())
            .payload(&payload);
        self.producer
            .send(record, Timeout::After(Duration::from_secs(5)))
            .await
            .map(|_| ())
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
    topic: String,
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

/// A group consumer that stores an offset only when told the message was handled.
pub struct Subscriber {
    consumer: StreamConsumer<Context>,
    context: Context,
    topic: String,
}

/// How long a consumer waits, with no partitions after a rebalance, before it rejoins.
const REJOIN_AFTER: Duration = Duration::from_secs(3);

impl Subscriber {
    /// A consumer whose partition assignment shows in `state`. Create it once the topic
    /// exists: a client that first met a missing broker or topic can take many seconds
    /// to join its group.
    pub fn new(
        settings: &KafkaSettings,
        group_id: &str,
        state: &ConsumerState,
    ) -> Result<Self, BusError> {
        let context = state.0.clone();
        let consumer: StreamConsumer<Context> = settings
            .config()
            .set("group.id", group_id)
            // A node that joins later (or lost its offsets) replays the whole topic.
            .set("auto.offset.reset", "earliest")
            // Offsets are stored only after the event is applied, then committed
            // periodically: at-least-once delivery into an idempotent apply.
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "1000")
            .set("fetch.wait.max.ms", settings.fetch_wait_ms.to_string())
            .set("fetch.error.backoff.ms", "100")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("topic.metadata.refresh.interval.ms", "5000")
            // Re-find the group coordinator within a second (a tenth of this) when the
            // broker comes up after the node, instead of the default minute.
            .set("coordinator.query.interval.ms", "10000")
            .set("allow.auto.create.topics", "false")
            // librdkafka prefetches up to 64 MiB per client by default; a node that lags
            // (catching up, or its database slow) should not hold that much in memory.
            .set("queued.max.messages.kbytes", "16384")
            .set("queued.min.messages", "10000")
            .create_with_context(context.clone())?;
        consumer.subscribe(&[&settings.topic])?;
        Ok(Self {
            consumer,
            context,
            topic: settings.topic.clone(),
        })
    }

    /// The next message, copied out of the consumer so that it can be handled while
    /// later ones are received.
    pub async fn recv(&self) -> Result<Delivery, BusError> {
        loop {
            tokio::select! {
                m = self.consumer.recv() => {
                    let m = m?;
                    return Ok(Delivery {
                        topic: m.topic().to_owned(),
                        partition: m.partition(),
                        offset: m.offset(),
                        payload: m.payload().map(<[u8]>::to_vec),
                    });
                }
                _ = tokio::time::sleep(REJOIN_AFTER) => self.rejoin_if_left_out(),
            }
        }
    }

    /// A node's consumer is the only member of its group, so a rebalance that gives it no
    /// partition is a broker's mistake (tansu completes a generation with an empty
    /// assignment when the previous leader, a crashed instance of this node, is evicted
    /// mid-rebalance) and would stop replication for good. Subscribing again rejoins.
    fn rejoin_if_left_out(&self) {
        {
            let mut left_out = self.context.left_out.lock().expect("left_out lock");
            if !left_out.is_some_and(|since| since.elapsed() >= REJOIN_AFTER) {
                return;
            }
            *left_out = Some(Instant::now());
        }
        tracing::warn!("the consumer group left this node without partitions; rejoining");
        // Leave first: the broker hands a member that merely rejoins the same (empty)
        // assignment again.
        self.consumer.unsubscribe();
        if let Err(e) = self.consumer.subscribe(&[&self.topic]) {
            tracing::warn!(error = %e, "could not rejoin the consumer group");
        }
    }

    /// Marks `delivery` (and everything before it in its partition) as handled; the
    /// offset is committed with the next commit.
    pub fn done(&self, delivery: &Delivery) -> Result<(), BusError> {
        Ok(self
            .consumer
            .store_offset(&delivery.topic, delivery.partition, delivery.offset)?)
    }

    pub fn assigned_partitions(&self) -> usize {
        self.context.assigned.load(Ordering::Relaxed)
    }

    /// Commits stored offsets now (at shutdown).
    pub fn commit(&self) {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            // Nothing stored since the last commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "final offset commit failed"),
        }
    }
}

/// The consumer's partition assignment, readable (for readiness checks) before the
/// consumer exists and while it runs.
#[derive(Clone, Default)]
pub struct ConsumerState(Context);

impl ConsumerState {
    pub fn assigned_partitions(&self) -> usize {
        self.0.assigned.load(Ordering::Relaxed)
    }
}
