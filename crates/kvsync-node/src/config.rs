use std::{net::SocketAddr, time::Duration};

use clap::{Parser, ValueEnum};
use kvsync_core::NodeId;
use kvsync_kafka::KafkaSettings;
use secrecy::{ExposeSecret, SecretString};

/// A kvsync node: a REST API and web UI over its own MongoDB, replicated to its peers
/// through a Kafka topic. Every flag can also be set through the environment variable
/// shown with it.
///
/// Secrets are `SecretString`s, which print as `[REDACTED]`: the derived `Debug` cannot
/// show them, and reading one takes an explicit `expose_secret()`.
#[derive(Debug, Clone, Parser)]
#[command(name = "kvsync-node", version, about, long_about = None)]
pub struct Config {
    /// This node's id: ASCII letters, digits, '.', '_' or '-'. It names the node's
    /// consumer group (kvsync-<id>) and breaks ties between concurrent writes, so every
    /// node needs its own. Defaults to the host name.
    #[arg(long, env = "KVSYNC_NODE_ID")]
    pub node_id: Option<String>,

    /// Address the HTTP API and web UI listen on.
    #[arg(long, env = "KVSYNC_HTTP_ADDR", default_value = "0.0.0.0:3003")]
    pub http_addr: SocketAddr,

    /// MongoDB connection string (credentials may be included; they are never logged).
    #[arg(
        long,
        env = "KVSYNC_MONGODB_URI",
        default_value = "mongodb://127.0.0.1:27017",
        hide_env_values = true
    )]
    pub mongodb_uri: SecretString,

    /// MongoDB user name, for credentials kept out of the connection string. Any
    /// characters work here, unlike in the URI, where `@ : / ? #` must be percent-encoded.
    #[arg(long, env = "KVSYNC_MONGODB_USERNAME")]
    pub mongodb_username: Option<String>,

    /// MongoDB password for --mongodb-username, taken as it is: no encoding (never logged).
    #[arg(long, env = "KVSYNC_MONGODB_PASSWORD", hide_env_values = true)]
    pub mongodb_password: Option<SecretString>,

    /// Database that holds the MongoDB user of --mongodb-username.
    #[arg(long, env = "KVSYNC_MONGODB_AUTH_SOURCE", default_value = "admin")]
    pub mongodb_auth_source: String,

    /// MongoDB database holding this node's pairs.
    #[arg(long, env = "KVSYNC_MONGODB_DB", default_value = "kvsync")]
    pub mongodb_db: String,

    /// How long a MongoDB operation waits for a reachable server before the request
    /// fails with 503.
    #[arg(long, env = "KVSYNC_MONGODB_TIMEOUT_MS", default_value_t = 2000)]
    pub mongodb_timeout_ms: u64,

    /// Conditional writes sent to MongoDB in one command at most: writes that arrive while
    /// earlier ones are in flight go together (group commit). 1 sends each alone.
    #[arg(long, env = "KVSYNC_MONGODB_WRITE_BATCH", default_value_t = 128,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub mongodb_write_batch: u16,

    /// Kafka bootstrap servers, comma separated (host:port,...).
    #[arg(long, env = "KVSYNC_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// Topic that carries every change. Created at start-up if missing.
    #[arg(long, env = "KVSYNC_KAFKA_TOPIC", default_value = "kvsync.pairs")]
    pub kafka_topic: String,

    /// Partitions for the topic when this node creates it.
    #[arg(long, env = "KVSYNC_KAFKA_PARTITIONS", default_value_t = 3)]
    pub kafka_partitions: i32,

    /// Replication factor for the topic when this node creates it.
    #[arg(long, env = "KVSYNC_KAFKA_REPLICATION_FACTOR", default_value_t = 1)]
    pub kafka_replication_factor: i32,

    /// Longest time the broker may hold a fetch open (fetch.wait.max.ms). Apache Kafka
    /// answers a fetch as soon as a record arrives, so this only bounds idle fetches
    /// (about 1000/N a second per node). A broker that always waits this long (some
    /// Kafka-protocol brokers do) adds it to replication latency: set it low there.
    #[arg(long, env = "KVSYNC_KAFKA_FETCH_WAIT_MS", default_value_t = DEFAULT_FETCH_WAIT_MS)]
    pub kafka_fetch_wait_ms: u32,

    /// How long the broker keeps events (retention.ms of the data topic, set when this
    /// node creates it; -1 keeps them forever). A node that needs events older than this
    /// (one that joins, or comes back after being away) gets its peers' state instead of
    /// replaying history. Default: 7 days.
    #[arg(long, env = "KVSYNC_KAFKA_RETENTION_MS", default_value_t = 7 * DAY_MS as i64, allow_negative_numbers = true)]
    pub kafka_retention_ms: i64,

    /// Largest event this node publishes, in bytes of its JSON encoding. A write whose
    /// event would be larger is refused with 413 `too_large` and writes nothing. The
    /// producer's `message.max.bytes` and the topic's `max.message.bytes` (when this node
    /// creates it) are set to this plus the record's key and framing; keep it below the
    /// broker's limit for a topic created elsewhere (Kafka's default: 1,048,588 bytes).
    #[arg(long, env = "KVSYNC_MAX_EVENT_BYTES", default_value_t = kvsync_core::event::DEFAULT_PUBLISH_LIMIT as u64,
          value_parser = clap::value_parser!(u64).range(4096..=kvsync_core::event::MAX_EVENT_BYTES as u64))]
    pub max_event_bytes: u64,

    /// Kafka security.protocol: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(long, env = "KVSYNC_KAFKA_SECURITY_PROTOCOL")]
    pub kafka_security_protocol: Option<String>,

    /// Kafka SASL mechanism, e.g. PLAIN, SCRAM-SHA-256, SCRAM-SHA-512.
    #[arg(long, env = "KVSYNC_KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,

    /// Kafka SASL user name.
    #[arg(long, env = "KVSYNC_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,

    /// Kafka SASL password (never logged).
    #[arg(long, env = "KVSYNC_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<SecretString>,

    /// CA certificate file for verifying the brokers' TLS certificates.
    #[arg(long, env = "KVSYNC_KAFKA_SSL_CA_LOCATION")]
    pub kafka_ssl_ca_location: Option<String>,

    /// Further librdkafka properties as key=value, separated by ';' in the environment
    /// variable (e.g. "ssl.certificate.location=/certs/client.pem;ssl.key.location=...").
    /// Values are never logged.
    #[arg(
        long = "kafka-option",
        env = "KVSYNC_KAFKA_OPTIONS",
        value_delimiter = ';',
        value_parser = parse_key_value,
        hide_env_values = true
    )]
    pub kafka_options: Vec<(String, SecretString)>,

    /// Bearer token required on every API route except /healthz and /readyz (and the
    /// static UI). Unset: no authentication.
    #[arg(long, env = "KVSYNC_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<SecretString>,

    /// Origins allowed to call the API from other sites (CORS), comma separated, or '*'.
    /// Unset: CORS is off (the UI is served from the same origin and needs none).
    #[arg(long, env = "KVSYNC_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Log format.
    #[arg(long, env = "KVSYNC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in tracing's env-filter syntax, e.g. "info" or "info,kvsync_node=debug".
    #[arg(long, env = "KVSYNC_LOG", default_value = "info")]
    pub log: String,

    /// Clocks may differ by this much. A peer's event stamped further ahead of this
    /// node's clock is held (never skipped) until the clocks agree again; a node whose
    /// clock differs by more than this from most of its peers (at least two) refuses
    /// local writes with 503 clock_skew, and every node reports the skew in /readyz.
    #[arg(long, env = "KVSYNC_MAX_CLOCK_SKEW_MS", default_value_t = 300_000)]
    pub max_clock_skew_ms: u64,

    /// Once a peer's clock agrees again, its events stamped ahead during the skew are
    /// applied if at most this far ahead (moving this node's logical clock forward as
    /// far); events further ahead wait until real time reaches them.
    #[arg(long, env = "KVSYNC_MAX_CLOCK_JUMP_MS", default_value_t = 3_600_000)]
    pub max_clock_jump_ms: u64,

    /// How often this node announces itself (and its clock) on the control topic.
    #[arg(long, env = "KVSYNC_HEARTBEAT_INTERVAL_MS", default_value_t = 1000)]
    pub heartbeat_interval_ms: u64,

    /// A peer not heard from for this long is away: its clock stops counting.
    #[arg(long, env = "KVSYNC_PEER_AWAY_AFTER_MS", default_value_t = 10_000)]
    pub peer_away_after_ms: u64,

    /// A human-readable address of this node's UI, shown to peers in /api/cluster.
    #[arg(long, env = "KVSYNC_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// How often this node sends its peers a summary of its state (anti-entropy). Where
    /// a peer's summary differs, both exchange their keys in the differing buckets and
    /// re-publish the keys that differ, which every node merges as usual.
    #[arg(long, env = "KVSYNC_REPAIR_INTERVAL_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub repair_interval_ms: u64,

    /// How often the repair reads this node's whole database again. In between, its
    /// summaries follow the node's own writes, so a round reads nothing; a read catches
    /// what changed in the database behind the node's back (a hand edit, a restore). On a
    /// large database each read is a burst of load. Default: 1 hour.
    #[arg(long, env = "KVSYNC_REPAIR_RESCAN_INTERVAL_MS", default_value_t = 3_600_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub repair_rescan_interval_ms: u64,

    /// Most keys re-published for repair per repair interval (the repair's bandwidth).
    #[arg(long, env = "KVSYNC_REPAIR_MAX_KEYS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub repair_max_keys: u64,

    /// A deleted key's tombstone is removed once it is older than this and every member
    /// heard from within this time has applied past it. A member away for longer joins
    /// again from its peers' state, so nothing deleted comes back. Default: 7 days.
    #[arg(long, env = "KVSYNC_TOMBSTONE_HORIZON_MS", default_value_t = 7 * DAY_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub tombstone_horizon_ms: u64,

    /// A node that starts with an empty database gets its peers' state instead of
    /// replaying the topic's history. Off: it replays what the topic holds (which, with
    /// bounded retention, may no longer be everything).
    #[arg(long, env = "KVSYNC_JOIN_FROM_STATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub join_from_state: bool,

    /// A node that starts empty (or whose events are gone from the topic) asks its peers
    /// for their state; if none has answered within this time, it asks another (an answer
    /// to an earlier request still counts). A peer publishes its state at a few hundred
    /// keys a second on a small machine: leave room for that.
    #[arg(long, env = "KVSYNC_JOIN_TIMEOUT_MS", default_value_t = 120_000)]
    pub join_timeout_ms: u64,

    /// A partition whose position stands still this long while the broker holds newer
    /// records for it makes the node rebuild its consumer (counted in
    /// kvsync_consumer_recoveries_total); the same bound applies to a producer whose
    /// publications keep failing while the broker answers.
    #[arg(long, env = "KVSYNC_STALL_TIMEOUT_MS", default_value_t = 15_000)]
    pub stall_timeout_ms: u64,

    /// While changes wait in the outbox unpublished (at start-up after a crash, during a
    /// broker outage, after a burst that overflowed the relay's queue), how often the
    /// relay looks for them; it backs off while the broker is down. When nothing waits,
    /// it does not scan.
    #[arg(long, env = "KVSYNC_RELAY_INTERVAL_MS", default_value_t = 1000)]
    pub relay_interval_ms: u64,

    /// Longest time a request may take, from its arrival to the start of its answer; past
    /// it the node answers 504 with a JSON error (`timeout`). The event stream is exempt;
    /// "clear database" starts its answer once its first batch is read, then streams it.
    #[arg(long, env = "KVSYNC_REQUEST_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,

    /// Most client connections held open at once (event streams included). A connection
    /// past it is answered 503 with a JSON error (`too_many_connections`) and closed.
    #[arg(long, env = "KVSYNC_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=MAX_BOUND))]
    pub max_connections: u64,

    /// A connection must send a whole request head within this long of being opened,
    /// or of the first byte of a later request; otherwise it is closed.
    #[arg(long, env = "KVSYNC_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,

    /// A kept-alive connection with no request for this long after its last answer is
    /// closed (so idle sockets cannot hold every place under --max-connections).
    #[arg(long, env = "KVSYNC_IDLE_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_ms: u64,

    /// A request's body must have arrived within this long of its head; past it the node
    /// answers 408 with a JSON error (`body_timeout`).
    #[arg(long, env = "KVSYNC_BODY_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_ms: u64,

    /// Most event streams (`/api/events`) served at once; one more is answered 503 with a
    /// JSON error (`too_many_streams`).
    #[arg(long, env = "KVSYNC_MAX_EVENT_STREAMS", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=MAX_BOUND))]
    pub max_event_streams: u64,

    /// How long shutdown waits for in-flight requests (the HTTP drain), then for the
    /// consumer and the relay to finish: each phase is bounded by it.
    #[arg(long, env = "KVSYNC_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,

    /// Instead of running a node, ask the node listening on --http-addr on this host
    /// whether it is up (GET /healthz) and exit 0 if so, 1 if not. For container health
    /// checks, which then need no HTTP client in the image.
    #[arg(long)]
    pub health_check: bool,
}

const DAY_MS: u64 = 24 * 3600 * 1000;
/// See `--kafka-fetch-wait-ms`: Apache Kafka's own consumers default to 500 ms; a lower
/// bound keeps a node's reaction to a broker that holds fetches tolerable.
pub const DEFAULT_FETCH_WAIT_MS: u32 = 100;

/// Upper limit for the connection and stream caps: far beyond what one process can
/// serve, and within what a semaphore can count.
const MAX_BOUND: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_key_value(raw: &str) -> Result<(String, SecretString), String> {
    let (k, v) = raw
        .split_once('=')
        .ok_or_else(|| format!("expected key=value, got {:?}", raw.split('=').next()))?;
    let k = k.trim();
    if k.is_empty() {
        return Err("empty librdkafka property name".into());
    }
    Ok((k.to_owned(), v.into()))
}

impl Config {
    /// Parses the command line and environment, treating variables set to an empty
    /// string as unset (compose files pass optional settings as `VAR: ${VAR:-}`).
    pub fn load() -> Self {
        Self::parse().normalized()
    }

    pub fn normalized(mut self) -> Self {
        for field in [
            &mut self.node_id,
            &mut self.public_url,
            &mut self.kafka_security_protocol,
            &mut self.kafka_sasl_mechanism,
            &mut self.kafka_sasl_username,
            &mut self.kafka_ssl_ca_location,
            &mut self.mongodb_username,
        ] {
            if field.as_deref().is_some_and(|v| v.trim().is_empty()) {
                *field = None;
            }
        }
        for field in [
            &mut self.kafka_sasl_password,
            &mut self.api_token,
            &mut self.mongodb_password,
        ] {
            if field
                .as_ref()
                .is_some_and(|v| v.expose_secret().trim().is_empty())
            {
                *field = None;
            }
        }
        self.cors_origins.retain(|o| !o.trim().is_empty());
        self
    }

    pub fn node_id(&self) -> Result<NodeId, kvsync_core::NodeIdError> {
        match &self.node_id {
            Some(id) => NodeId::parse(id.clone()),
            None => Ok(NodeId::sanitize(&host_name())),
        }
    }

    pub fn kafka(&self, node: &NodeId) -> KafkaSettings {
        let mut extra = Vec::new();
        let password = self
            .kafka_sasl_password
            .as_ref()
            .map(|p| p.expose_secret().to_owned());
        let named = [
            ("security.protocol", self.kafka_security_protocol.clone()),
            ("sasl.mechanism", self.kafka_sasl_mechanism.clone()),
            ("sasl.username", self.kafka_sasl_username.clone()),
            ("sasl.password", password),
            ("ssl.ca.location", self.kafka_ssl_ca_location.clone()),
        ];
        for (k, v) in named {
            if let Some(v) = v {
                extra.push((k.to_owned(), v));
            }
        }
        // KafkaSettings hands these to librdkafka and never prints them.
        extra.extend(
            self.kafka_options
                .iter()
                .map(|(k, v)| (k.clone(), v.expose_secret().to_owned())),
        );
        KafkaSettings {
            brokers: self.kafka_brokers.clone(),
            topic: self.kafka_topic.clone(),
            partitions: self.kafka_partitions,
            replication_factor: self.kafka_replication_factor,
            fetch_wait_ms: self.kafka_fetch_wait_ms,
            retention_ms: self.kafka_retention_ms,
            max_event_bytes: self.max_event_bytes as usize,
            client_id: format!("kvsync-{node}"),
            extra,
        }
    }

    /// Where a health check on this host reaches the node: the listen address, with a
    /// wildcard IP replaced by loopback.
    pub fn local_http_addr(&self) -> SocketAddr {
        let mut addr = self.http_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        addr
    }

    /// Credentials given apart from the connection string, if any.
    pub fn mongodb_credentials(&self) -> Option<kvsync_store::Credentials> {
        let username = self.mongodb_username.clone()?;
        Some(kvsync_store::Credentials {
            username,
            password: self
                .mongodb_password
                .as_ref()
                .map(|p| p.expose_secret().to_owned())
                .unwrap_or_default(),
            source: self.mongodb_auth_source.clone(),
        })
    }

    pub fn mongodb_timeout(&self) -> Duration {
        Duration::from_millis(self.mongodb_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn connection_timeouts(&self) -> crate::http::Timeouts {
        crate::http::Timeouts {
            header_read: Duration::from_millis(self.header_read_timeout_ms),
            idle: Duration::from_millis(self.idle_timeout_ms),
            body: Duration::from_millis(self.body_timeout_ms),
        }
    }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kvsync".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn security_settings_pass_through() {
        let c = Config::try_parse_from([
            "kvsync-node",
            "--node-id",
            "n1",
            "--kafka-sasl-username",
            "u",
            "--kafka-sasl-password",
            "secret",
            "--kafka-option",
            "ssl.key.password=a=b",
        ])
        .unwrap();
        let k = c.kafka(&c.node_id().unwrap());
        assert!(k.extra.contains(&("sasl.password".into(), "secret".into())));
        assert!(k.extra.contains(&("ssl.key.password".into(), "a=b".into())));
        assert!(!format!("{k:?}").contains("secret"));
        assert!(Config::try_parse_from(["kvsync-node", "--kafka-option", "novalue"]).is_err());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = Config::try_parse_from([
            "kvsync-node",
            "--api-token",
            "tok-secret-1",
            "--kafka-sasl-password",
            "sasl-secret-2",
            "--mongodb-uri",
            "mongodb://user:mongo-secret-3@db.example:27017/",
            "--kafka-option",
            "ssl.key.password=opt-secret-4",
        ])
        .unwrap();
        let shown = format!("{c:?} {c:#?}");
        for secret in [
            "tok-secret-1",
            "sasl-secret-2",
            "mongo-secret-3",
            "opt-secret-4",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn mongodb_credentials_take_any_characters() {
        let password = "p@ss:w/rd?#%41";
        let c = Config::try_parse_from([
            "kvsync-node",
            "--mongodb-username",
            "us@er:/",
            "--mongodb-password",
            password,
        ])
        .unwrap()
        .normalized();
        let creds = c.mongodb_credentials().unwrap();
        assert_eq!(creds.username, "us@er:/");
        assert_eq!(creds.password, password);
        assert_eq!(creds.source, "admin");
        assert!(!format!("{c:?}").contains(password));
        let none = Config::try_parse_from(["kvsync-node", "--mongodb-username", ""])
            .unwrap()
            .normalized();
        assert!(none.mongodb_credentials().is_none());
    }

    #[test]
    fn defaults_suit_a_real_kafka() {
        let c = Config::try_parse_from(["kvsync-node"]).unwrap();
        // Apache Kafka answers a fetch when data arrives: a few ms would only cost
        // hundreds of empty fetches a second.
        assert!(c.kafka_fetch_wait_ms >= 100, "{}", c.kafka_fetch_wait_ms);
        // Below the 1,000,000 bytes a record may have by default, key and framing included.
        let k = c.kafka(&NodeId::parse("n1").unwrap());
        assert!(
            k.max_record_bytes() <= 1_000_000,
            "{}",
            k.max_record_bytes()
        );
        assert!(Config::try_parse_from(["kvsync-node", "--max-event-bytes", "5000000"]).is_err());
    }

    #[test]
    fn empty_settings_count_as_unset() {
        let c = Config::try_parse_from([
            "kvsync-node",
            "--api-token",
            "",
            "--node-id",
            " ",
            "--cors-origins",
            "",
        ])
        .unwrap()
        .normalized();
        assert!(c.api_token.is_none());
        assert_eq!(c.node_id, None);
        assert!(c.cors_origins.is_empty());
    }
}
