//! Prometheus metrics. The same counters feed `/metrics` and `/api/node`.

use std::sync::{atomic::AtomicU64, Arc};

use kvsync_core::{ConflictKind, EventError};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub connections_refused: Counter,
    pub local_writes: Counter,
    pub published: Counter,
    pub publish_failures: Counter,
    pub applied: Counter,
    pub skipped_stale: Counter,
    pub skipped_own: Counter,
    pub renumbered: Counter,
    pub rejected: Family<ReasonLabels, Counter>,
    pub replication_lag: Histogram,
    pub outbox_backlog: Gauge,
    pub assigned_partitions: Gauge,
    pub topic_partitions: Gauge,
    pub consumer_lag: Gauge,
    pub consumer_recoveries: Counter,
    pub publisher_recoveries: Counter,
    pub clock_offset: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    pub events_held: Family<PeerLabels, Gauge>,
    pub clock_off: Gauge,
    pub conflicts: Family<KindLabels, Counter>,
    pub peer_up: Family<PeerLabels, Gauge>,
    pub peer_lag_events: Family<PeerLabels, Gauge>,
    pub peer_lag: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    pub heartbeats_sent: Counter,
    pub repair_rounds: Counter,
    pub repair_scans: Counter,
    pub repair_buckets: Counter,
    pub repair_listings: Counter,
    pub repair_keys: Counter,
    pub snapshots_served: Counter,
    pub tombstones_collected: Counter,
    pub events_too_old: Counter,
    pub oversized_keys: Family<LimitLabels, Gauge>,
    pub oversized_skips: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let http_requests = Family::<HttpLabels, Counter>::default();
        let connections_refused = Counter::default();
        let local_writes = Counter::default();
        let published = Counter::default();
        let publish_failures = Counter::default();
        let applied = Counter::default();
        let skipped_stale = Counter::default();
        let skipped_own = Counter::default();
        let renumbered = Counter::default();
        let rejected = Family::<ReasonLabels, Counter>::default();
        // 0.5 ms to ~16 s.
        let replication_lag = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let outbox_backlog = Gauge::default();
        let assigned_partitions = Gauge::default();
        let topic_partitions = Gauge::default();
        let consumer_lag = Gauge::default();
        let consumer_recoveries = Counter::default();
        let publisher_recoveries = Counter::default();
        let clock_offset = Family::<PeerLabels, Gauge<f64, AtomicU64>>::default();
        let events_held = Family::<PeerLabels, Gauge>::default();
        let clock_off = Gauge::default();
        let conflicts = Family::<KindLabels, Counter>::default();
        let peer_up = Family::<PeerLabels, Gauge>::default();
        let peer_lag_events = Family::<PeerLabels, Gauge>::default();
        let peer_lag = Family::<PeerLabels, Gauge<f64, AtomicU64>>::default();
        let heartbeats_sent = Counter::default();
        let repair_rounds = Counter::default();
        let repair_scans = Counter::default();
        let repair_buckets = Counter::default();
        let repair_listings = Counter::default();
        let repair_keys = Counter::default();
        let snapshots_served = Counter::default();
        let tombstones_collected = Counter::default();
        let events_too_old = Counter::default();
        let oversized_keys = Family::<LimitLabels, Gauge>::default();
        let oversized_skips = Counter::default();
        for limit in crate::oversize::Limit::ALL {
            let _ = oversized_keys.get_or_create(&LimitLabels {
                limit: limit.label().to_owned(),
            });
        }
        // Every kind shows from the start, at 0: a dashboard need not wait for the first.
        for kind in ConflictKind::ALL {
            let _ = conflicts.get_or_create(&KindLabels {
                kind: kind.as_str().to_owned(),
            });
        }

        let mut r = Registry::with_prefix("kvsync");
        r.register(
            "http_requests",
            "HTTP requests by method, route and status",
            http_requests.clone(),
        );
        r.register(
            "http_connections_refused",
            "Connections refused because the node held KVSYNC_MAX_CONNECTIONS already",
            connections_refused.clone(),
        );
        r.register(
            "local_writes",
            "Changes made on this node",
            local_writes.clone(),
        );
        r.register(
            "events_published",
            "Events acknowledged by the broker",
            published.clone(),
        );
        r.register(
            "publish_failures",
            "Publication attempts that failed (retried by the relay)",
            publish_failures.clone(),
        );
        r.register("events_applied", "Peer events applied", applied.clone());
        r.register(
            "events_skipped_stale",
            "Peer events older than (or equal to) the stored version",
            skipped_stale.clone(),
        );
        r.register(
            "uncertain_writes_renumbered",
            "Keys whose write got no answer in time, renumbered so the change feed tells of their stored state",
            renumbered.clone(),
        );
        r.register(
            "events_skipped_own",
            "Events from this node, skipped by its consumer",
            skipped_own.clone(),
        );
        r.register(
            "events_rejected",
            "Events that failed decoding or validation, by reason",
            rejected.clone(),
        );
        r.register(
            "replication_lag_seconds",
            "Time from a peer's write (its version's clock) to its apply here",
            replication_lag.clone(),
        );
        r.register(
            "outbox_backlog",
            "Local changes not yet acknowledged by the broker",
            outbox_backlog.clone(),
        );
        r.register(
            "consumer_assigned_partitions",
            "Topic partitions assigned to this node's consumer",
            assigned_partitions.clone(),
        );
        r.register(
            "topic_partitions",
            "Partitions of the topic, as the broker last said",
            topic_partitions.clone(),
        );
        r.register(
            "consumer_lag_events",
            "Events on the topic not yet dealt with by this node",
            consumer_lag.clone(),
        );
        r.register(
            "consumer_recoveries",
            "Times the watchdog rebuilt a consumer that made no progress",
            consumer_recoveries.clone(),
        );
        r.register(
            "publisher_recoveries",
            "Times the relay rebuilt a producer whose publications kept failing while the broker answered",
            publisher_recoveries.clone(),
        );
        r.register(
            "clock_offset_seconds",
            "How far each peer's wall clock is ahead of this node's (negative: behind), from heartbeats",
            clock_offset.clone(),
        );
        r.register(
            "events_held",
            "Peer events held because they are stamped too far ahead of this node's clock",
            events_held.clone(),
        );
        r.register(
            "clock_off",
            "1 if this node's clock is ahead of, -1 if behind, the majority of its peers by more than the skew bound",
            clock_off.clone(),
        );
        r.register(
            "conflicts",
            "Writes that lost to a concurrent write of the same value or list, by kind, as settled here",
            conflicts.clone(),
        );
        r.register(
            "peer_up",
            "1 while a peer is heard from on the control topic, 0 once it is away",
            peer_up.clone(),
        );
        r.register(
            "peer_lag_events",
            "Records of the data topic this node has yet to apply before it holds each peer's last published event",
            peer_lag_events.clone(),
        );
        r.register(
            "peer_lag_seconds",
            "How much older this node's newest applied event of each peer is than that peer's last write (0 when caught up)",
            peer_lag.clone(),
        );
        r.register(
            "heartbeats_sent",
            "Heartbeats this node published on the control topic",
            heartbeats_sent.clone(),
        );
        r.register(
            "repair_rounds",
            "Anti-entropy rounds: summaries of this node's state sent to its peers",
            repair_rounds.clone(),
        );
        r.register(
            "repair_scans",
            "Reads of this node's whole database for the repair's summary (one at start, then one per rescan interval)",
            repair_scans.clone(),
        );
        r.register(
            "repair_buckets",
            "Buckets found to differ between this node's summary and a peer's",
            repair_buckets.clone(),
        );
        r.register(
            "repair_listings",
            "Peers' listings of a bucket's keys that this node compared with its own",
            repair_listings.clone(),
        );
        r.register(
            "repair_keys",
            "Keys this node re-published because a peer's state of them differed (repairs)",
            repair_keys.clone(),
        );
        r.register(
            "snapshots_served",
            "Whole-state snapshots this node published for a joining peer",
            snapshots_served.clone(),
        );
        r.register(
            "tombstones_collected",
            "Tombstones of deleted keys removed past the horizon once every member had applied them",
            tombstones_collected.clone(),
        );
        r.register(
            "events_too_old",
            "Peer events for keys this node does not hold, older than the tombstone horizon: skipped so that a collected delete cannot be undone",
            events_too_old.clone(),
        );
        r.register(
            "oversized_keys",
            "Keys whose state is too large to publish (limit=publish: peers lack their last change) or, merged with a peer's change, to store (limit=store)",
            oversized_keys.clone(),
        );
        r.register(
            "oversized_skips",
            "Publications refused and peer changes skipped because they were too large for the broker or the database",
            oversized_skips.clone(),
        );

        Self {
            registry: Arc::new(r),
            http_requests,
            connections_refused,
            local_writes,
            published,
            publish_failures,
            applied,
            skipped_stale,
            skipped_own,
            renumbered,
            rejected,
            replication_lag,
            outbox_backlog,
            assigned_partitions,
            topic_partitions,
            consumer_lag,
            consumer_recoveries,
            publisher_recoveries,
            clock_offset,
            events_held,
            clock_off,
            conflicts,
            peer_up,
            peer_lag_events,
            peer_lag,
            heartbeats_sent,
            repair_rounds,
            repair_scans,
            repair_buckets,
            repair_listings,
            repair_keys,
            snapshots_served,
            tombstones_collected,
            events_too_old,
            oversized_keys,
            oversized_skips,
        }
    }

    /// A peer's status and how far this node is behind it.
    pub fn peer(&self, peer: &str, up: bool, lag: kvsync_core::cluster::Lag) {
        let labels = PeerLabels {
            peer: peer.to_owned(),
        };
        self.peer_up.get_or_create(&labels).set(i64::from(up));
        self.peer_lag_events
            .get_or_create(&labels)
            .set(lag.events as i64);
        self.peer_lag
            .get_or_create(&labels)
            .set(lag.ms as f64 / 1000.0);
    }

    pub fn conflict(&self, kind: &ConflictKind) {
        self.conflicts
            .get_or_create(&KindLabels {
                kind: kind.as_str().to_owned(),
            })
            .inc();
    }

    pub fn conflicts_total(&self) -> u64 {
        ConflictKind::ALL
            .iter()
            .map(|k| {
                self.conflicts
                    .get_or_create(&KindLabels {
                        kind: k.as_str().to_owned(),
                    })
                    .get()
            })
            .sum()
    }

    pub fn clock_offset(&self, peer: &str, offset_ms: i64) {
        self.clock_offset
            .get_or_create(&PeerLabels {
                peer: peer.to_owned(),
            })
            .set(offset_ms as f64 / 1000.0);
    }

    pub fn held(&self, peer: &str, events: u64) {
        self.events_held
            .get_or_create(&PeerLabels {
                peer: peer.to_owned(),
            })
            .set(events as i64);
    }

    pub fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn rejected_total(&self) -> u64 {
        EventError::KINDS
            .iter()
            .map(|r| {
                self.rejected
                    .get_or_create(&ReasonLabels {
                        reason: (*r).to_owned(),
                    })
                    .get()
            })
            .sum()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
