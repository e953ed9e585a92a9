//! The consumer loop: applies peers' events under the merge rule and stores each
//! partition's offset only once its events, up to that offset, have been dealt with.
//!
//! - **Every partition, always.** The consumer owns every partition of the topic by
//!   explicit assignment (no group membership, so no rebalance can leave it without
//!   some), and the probe watches the partition count so new partitions are taken too.
//! - **Never skipped for clock reasons.** An event stamped too far ahead of this node's
//!   clock is held (its key's later events wait behind it, other keys go on) and its
//!   partition's offset stays before it until it is applied.
//! - **Watchdog.** If a partition's fetch position does not advance while the broker
//!   holds newer records for it, the consumer is rebuilt from the positions already
//!   settled.
//!
//! Events are applied concurrently on a few lanes, chosen by key, so that a node keeps
//! up with a peer that writes through many connections at once. Events of one key share
//! a lane, so they are applied, and announced to the change feed, in topic order.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kvsync_core::{
    position::{self, JoinReason, PartitionFacts, StartContext},
    Admission, Event, Key, Outcome,
};
use kvsync_kafka::{BusError, KafkaSettings, Probe, Start, Subscriber};
use kvsync_store::StoreError;
use serde_json::{json, Value};
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    app::{now_ms, App},
    panic_message,
};

/// Concurrent applies (lanes).
const LANES: usize = 8;
/// Events received but not yet settled (applied, or held for clock reasons), and their
/// bytes: past either, the consumer stops receiving until some settle.
const MAX_PENDING: usize = 4096;
const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// How often the probe asks the broker for partitions and high watermarks.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// The broker not answering the probe for this long makes the node unready.
const BROKER_SILENCE: Duration = Duration::from_secs(10);
/// Probes remembered for the caught-up time (one a second: ten minutes of them).
const MAX_PROBES_KEPT: usize = 600;
/// How often the consumer's positions are saved in the database.
const SAVE_POSITIONS_EVERY: Duration = Duration::from_secs(5);
/// How often held events are tried again.
const HOLD_RETRY: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum ReplicatorError {
    #[error("a replication lane stopped: {0}")]
    LaneDied(String),
}

/// The replicator's view of the topic, shared with `/readyz`, `/api/node` and metrics.
#[derive(Default)]
pub struct ReplicationStatus {
    status: Mutex<Status>,
    /// Notified whenever a partition's settled offset moves (peers waiting for a write's
    /// replication learn it from the next heartbeat, sent early for that).
    pub progress: tokio::sync::Notify,
}

#[derive(Default)]
struct Status {
    topic_partitions: Option<i32>,
    owned: Vec<i32>,
    /// Per partition: the next offset to deal with (everything before is settled).
    settled: BTreeMap<i32, i64>,
    high: BTreeMap<i32, i64>,
    last_probe_ok: Option<Instant>,
    probe_error: Option<String>,
    stalled: Option<String>,
    recoveries: u64,
    /// The last time (wall clock, ms) the consumer had settled everything the broker
    /// held when a probe asked it.
    caught_up_ms: Option<u64>,
    /// Recent probes' times and high watermarks not yet settled past: once the consumer
    /// has settled past one, it held everything published before that probe asked.
    probes: VecDeque<(u64, Vec<i64>)>,
    /// Asked to replay the topic from its beginning (a join found no peer to ask).
    rewind: bool,
    /// The next partitions taken start at the beginning of the topic.
    from_low: bool,
    /// Partitions whose leader did not answer the last probe.
    unanswered: Vec<i32>,
}

impl ReplicationStatus {
    fn with<T>(&self, f: impl FnOnce(&mut Status) -> T) -> T {
        f(&mut self.status.lock().expect("status lock"))
    }

    /// Per partition, the next offset to deal with: everything before is applied.
    pub fn applied(&self) -> BTreeMap<i32, i64> {
        self.with(|s| s.settled.clone())
    }

    pub fn caught_up_ms(&self) -> Option<u64> {
        self.with(|s| s.caught_up_ms)
    }

    /// Has the consumer start again from the beginning of the topic: a joining node with
    /// no peer to get the state from replays what the topic holds instead.
    pub fn rewind(&self) {
        self.with(|s| s.rewind = true);
    }

    pub fn owned_partitions(&self) -> usize {
        self.with(|s| s.owned.len())
    }

    pub fn topic_partitions(&self) -> Option<i32> {
        self.with(|s| s.topic_partitions)
    }

    /// Why the consumer cannot be trusted to keep this node up to date, if it cannot.
    pub fn problems(&self) -> Vec<String> {
        self.with(|s| {
            let mut out = Vec::new();
            match s.topic_partitions {
                None => out.push(match &s.probe_error {
                    Some(e) => format!("kafka: the topic's partitions are not known yet: {e}"),
                    None => "kafka: the topic's partitions are not known yet".to_owned(),
                }),
                Some(n) if (s.owned.len() as i32) < n => out.push(format!(
                    "kafka: the consumer owns {} of the topic's {n} partitions",
                    s.owned.len()
                )),
                Some(_) => {}
            }
            // Before the first answer the partitions are unknown, which says it already.
            let silent = s.last_probe_ok.map(|at| at.elapsed()).unwrap_or_default();
            if silent > BROKER_SILENCE {
                out.push(format!(
                    "kafka: the broker has not answered for {} s{}",
                    silent.as_secs(),
                    s.probe_error
                        .as_ref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ));
            }
            if let Some(stall) = &s.stalled {
                out.push(format!("kafka: {stall}"));
            }
            out
        })
    }

    /// The consumer section of `/api/node`.
    pub fn report(&self) -> Value {
        self.with(|s| {
            let partitions: Vec<Value> = s
                .owned
                .iter()
                .map(|p| {
                    let settled = s.settled.get(p).copied();
                    let high = s.high.get(p).copied();
                    json!({
                        "partition": p,
                        "settled_offset": settled,
                        "high_watermark": high,
                        "lag": settled.zip(high).map(|(a, h)| (h - a).max(0)),
                    })
                })
                .collect();
            json!({
                // Kept for existing clients: the same as owned_partitions.
                "assigned_partitions": s.owned.len(),
                "owned_partitions": s.owned.len(),
                "topic_partitions": s.topic_partitions,
                "partitions": partitions,
                "broker_last_answered_ms_ago": s.last_probe_ok.map(|t| t.elapsed().as_millis() as u64),
                "stalled": s.stalled,
                // Partitions whose leader did not answer the last probe: left alone, the
                // others replicate on.
                "partitions_without_leader": s.unanswered,
                "recoveries": s.recoveries,
            })
        })
    }

    /// Whether the broker answered the probe within `d`.
    pub fn broker_answered_within(&self, d: Duration) -> bool {
        self.with(|s| s.last_probe_ok.is_some_and(|t| t.elapsed() <= d))
    }

    /// Total lag in events over the partitions whose positions are known.
    pub fn lag(&self) -> i64 {
        self.with(|s| {
            s.settled
                .iter()
                .filter_map(|(p, a)| Some((s.high.get(p)? - a).max(0)))
                .sum()
        })
    }
}

#[derive(Debug, Clone)]
pub struct ReplicatorSettings {
    pub kafka: KafkaSettings,
    pub group: String,
    /// A partition whose fetch position stands still this long while the broker holds
    /// newer records makes the consumer be rebuilt.
    pub stall_timeout: Duration,
    /// An empty node gets its peers' state rather than replaying the topic.
    pub join_from_state: bool,
}

/// Consumes until `shutdown`, rebuilding the consumer whenever the watchdog finds it
/// stuck. Returns an error only if a lane died (a bug): the caller stops the node.
pub async fn run(
    app: Arc<App>,
    settings: ReplicatorSettings,
    status: Arc<ReplicationStatus>,
    shutdown: CancellationToken,
) -> Result<(), ReplicatorError> {
    let mut probe = loop {
        match Probe::new(&settings.kafka, &settings.group) {
            Ok(p) => break Arc::new(p),
            Err(e) => {
                tracing::error!(error = %e, "cannot create the Kafka probe; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    };
    let mut first = true;
    loop {
        let subscriber = match Subscriber::new(
            &settings.kafka,
            &settings.kafka.topic,
            Some(&settings.group),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot create the consumer; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                continue;
            }
        };
        let mut generation =
            Generation::new(&app, &subscriber, &status, probe.clone(), &settings, first);
        let end = generation.run(&shutdown).await?;
        first = false;
        match end {
            End::Shutdown => {
                tracing::info!("replicator stopped");
                return Ok(());
            }
            End::Recover(why) => {
                status.with(|s| s.recoveries += 1);
                app.metrics.consumer_recoveries.inc();
                tracing::warn!(reason = %why, "rebuilding the consumer");
                // The settled positions are where the new consumer starts; the old one's
                // commit is best effort (it may be the part that is stuck). The probe is
                // made anew too, for the same reason.
                drop(subscriber);
                if let Ok(p) = Probe::new(&settings.kafka, &settings.group) {
                    probe = Arc::new(p);
                }
            }
        }
    }
}

enum End {
    Shutdown,
    Recover(String),
}

struct Job {
    event: Event,
    partition: i32,
    offset: i64,
    /// When the consumer received it: a far-ahead stamp is trusted only on a heartbeat
    /// of its sender heard after this (see `ClockWatch::admit`).
    received: Instant,
}

/// A job's end: `(partition, offset, done)`. `done` is false only when shutdown
/// interrupted the apply.
type Settled = (i32, i64, bool);

/// One consumer's life, from creation until shutdown or a recovery.
struct Generation<'a> {
    app: &'a Arc<App>,
    subscriber: &'a Subscriber,
    status: &'a ReplicationStatus,
    probe: Arc<Probe>,
    /// The probe call in flight, and when it started.
    probing: Option<Instant>,
    /// Since when the broker has not answered the probe (in this generation), and when
    /// the probe was last made anew.
    silent_since: Instant,
    probe_built: Instant,
    settings: &'a ReplicatorSettings,
    /// The first generation starts from the committed offsets; later ones from the
    /// positions settled in this process.
    first: bool,
    /// Per partition: offsets sent to lanes and not settled yet, with their sizes, and
    /// the totals over all partitions (checked before every receive).
    pending: HashMap<i32, BTreeMap<i64, usize>>,
    pending_count: usize,
    pending_bytes: usize,
    /// Per partition: one past the last offset received.
    received: HashMap<i32, i64>,
    /// Per partition: the fetch position and since when it has not moved while behind.
    watch: HashMap<i32, (Option<i64>, Instant)>,
    last_error: String,
    /// The database held no pair when this generation started (first one only).
    empty: bool,
    /// The database holds pairs, or cannot tell (first one only).
    has_data: bool,
    /// Positions saved in the database, read at start (first one only).
    saved: BTreeMap<i32, i64>,
    /// When positions were last saved, and what.
    saved_at: Instant,
    last_saved: BTreeMap<i32, i64>,
}

impl<'a> Generation<'a> {
    fn new(
        app: &'a Arc<App>,
        subscriber: &'a Subscriber,
        status: &'a ReplicationStatus,
        probe: Arc<Probe>,
        settings: &'a ReplicatorSettings,
        first: bool,
    ) -> Self {
        Self {
            app,
            subscriber,
            status,
            probe,
            probing: None,
            silent_since: Instant::now(),
            probe_built: Instant::now(),
            settings,
            first,
            pending: HashMap::new(),
            pending_count: 0,
            pending_bytes: 0,
            received: HashMap::new(),
            watch: HashMap::new(),
            last_error: String::new(),
            empty: false,
            has_data: true,
            saved: BTreeMap::new(),
            saved_at: Instant::now(),
            last_saved: BTreeMap::new(),
        }
    }

    fn backpressured(&self) -> bool {
        self.pending_count >= MAX_PENDING || self.pending_bytes >= MAX_PENDING_BYTES
    }

    /// The event at `offset` of `partition` is dealt with: forget it and store what can
    /// be stored.
    fn settle(&mut self, partition: i32, offset: i64) {
        if let Some(bytes) = self
            .pending
            .get_mut(&partition)
            .and_then(|p| p.remove(&offset))
        {
            self.pending_count -= 1;
            self.pending_bytes -= bytes;
        }
        self.store(partition);
    }

    async fn run(&mut self, shutdown: &CancellationToken) -> Result<End, ReplicatorError> {
        if self.first {
            // Unknown (database down) counts as not empty: replaying is always safe.
            let _ = self.app.ensure_ready().await;
            self.has_data = !self.app.store.is_empty().await.unwrap_or(false);
            self.empty =
                self.app.must_rejoin() || (self.settings.join_from_state && !self.has_data);
            // Unknown (database down): the broker's committed offsets alone.
            self.saved = self
                .app
                .store
                .positions(&self.settings.kafka.topic)
                .await
                .unwrap_or_default();
        }
        let stop = shutdown.child_token();
        let (settled_tx, mut settled_rx) = mpsc::unbounded_channel::<Settled>();
        let mut lanes = JoinSet::new();
        let senders: Vec<mpsc::UnboundedSender<Job>> = (0..LANES)
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                lanes.spawn(lane(self.app.clone(), rx, settled_tx.clone(), stop.clone()));
                tx
            })
            .collect();
        drop(settled_tx);
        self.status.with(|s| s.owned.clear());

        let mut probe_tick = tokio::time::interval(PROBE_INTERVAL);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (probed_tx, mut probed_rx) = mpsc::channel::<(u64, Result<Probed, String>)>(4);
        let mut probe_id = 0u64;
        let end = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break End::Shutdown,
                died = lanes.join_next() => {
                    let why = match died {
                        Some(Err(e)) if e.is_panic() => panic_message(e.into_panic()),
                        Some(Err(e)) => e.to_string(),
                        Some(Ok(())) | None => "it returned".to_owned(),
                    };
                    stop.cancel();
                    return Err(ReplicatorError::LaneDied(why));
                }
                Some((partition, offset, done)) = settled_rx.recv() => {
                    if !done {
                        continue; // Shutting down mid-apply: its offset stays unstored.
                    }
                    self.settle(partition, offset);
                }
                _ = probe_tick.tick() => {
                    if self.status.with(|s| std::mem::take(&mut s.rewind)) {
                        self.status.with(|s| {
                            s.settled.clear();
                            s.from_low = true;
                        });
                        break End::Recover("replaying the topic from its beginning".into());
                    }
                    if let Some(why) = self.start_probe(&probed_tx, &mut probe_id) {
                        break End::Recover(why);
                    }
                    self.save_positions();
                }
                Some((id, answer)) = probed_rx.recv() => {
                    if id != probe_id {
                        continue; // From a probe given up on.
                    }
                    self.probing = None;
                    let stalled = match answer {
                        Ok(probed) => self.probed(probed),
                        Err(e) => self.probe_failed(e),
                    };
                    if let Some(why) = stalled {
                        break End::Recover(why);
                    }
                }
                message = self.subscriber.recv(), if !self.backpressured() => {
                    let delivery = match message {
                        Ok(d) => d,
                        Err(e) => {
                            // librdkafka reconnects by itself; report each distinct error once.
                            let text = e.to_string();
                            if text != self.last_error {
                                tracing::warn!(error = %text, "consumer error; retrying");
                                self.last_error = text;
                            }
                            continue;
                        }
                    };
                    self.last_error.clear();
                    let (partition, offset) = (delivery.partition(), delivery.offset());
                    self.received.insert(partition, offset + 1);
                    if let Some(event) = accept(self.app, delivery.payload()) {
                        let bytes = delivery.payload().map_or(0, <[u8]>::len);
                        self.pending.entry(partition).or_default().insert(offset, bytes);
                        self.pending_count += 1;
                        self.pending_bytes += bytes;
                        let job = Job {
                            event,
                            partition,
                            offset,
                            received: Instant::now(),
                        };
                        if senders[lane_of(&job.event.key)].send(job).is_err() {
                            continue; // The lane died: join_next reports it.
                        }
                    }
                    self.store(partition);
                }
            }
        };
        stop.cancel();
        drop(senders);
        while let Some(res) = lanes.join_next().await {
            if let Err(e) = res {
                if e.is_panic() {
                    return Err(ReplicatorError::LaneDied(panic_message(e.into_panic())));
                }
            }
        }
        // Offsets of events applied meanwhile.
        while let Ok((partition, offset, done)) = settled_rx.try_recv() {
            if done {
                self.settle(partition, offset);
            }
        }
        if matches!(end, End::Shutdown) {
            self.subscriber.commit();
        }
        Ok(end)
    }

    /// Saves the settled positions in the database now and then, for when the broker
    /// has forgotten the group's offsets (see `kvsync_core::position`). Best effort, in
    /// the background: a save lost only means replaying a little more.
    fn save_positions(&mut self) {
        if self.saved_at.elapsed() < SAVE_POSITIONS_EVERY {
            return;
        }
        let settled = self.status.with(|s| s.settled.clone());
        if settled.is_empty() || settled == self.last_saved {
            return;
        }
        self.saved_at = Instant::now();
        self.last_saved = settled.clone();
        let (app, topic) = (self.app.clone(), self.settings.kafka.topic.clone());
        tokio::spawn(async move {
            if let Err(e) = app.store.save_positions(&topic, &settled).await {
                tracing::debug!(error = %e, "could not save the consumer's positions");
            }
        });
    }

    /// Stores `partition`'s offset: before its first unsettled event, or past the last
    /// one received.
    fn store(&mut self, partition: i32) {
        let first_unsettled = self
            .pending
            .get(&partition)
            .and_then(|s| s.first_key_value().map(|(o, _)| *o));
        let Some(next) = first_unsettled.or_else(|| self.received.get(&partition).copied()) else {
            return;
        };
        let moved = self.status.with(|s| {
            let known = s.settled.entry(partition).or_insert(-1);
            (next > *known).then(|| *known = next).is_some()
        });
        if moved {
            self.status.progress.notify_one();
            if let Err(e) = self.subscriber.done_before(partition, next) {
                tracing::warn!(error = %e, partition, "could not store offset");
            }
        }
    }

    /// Starts asking the broker, on a blocking thread, for the partitions and
    /// watermarks (and where partitions not owned yet start), unless a call is in
    /// flight. The main loop never waits for the broker: a call that does not come back
    /// in time is given up on and the probe is made anew (its client may be the part
    /// that is stuck). Returns why the consumer must be rebuilt, if it must: the broker
    /// silent for twice the stall bound, so that a consumer stuck along with it is
    /// replaced too once the broker answers again.
    fn start_probe(
        &mut self,
        probed_tx: &mpsc::Sender<(u64, Result<Probed, String>)>,
        probe_id: &mut u64,
    ) -> Option<String> {
        if let Some(started) = self.probing {
            if started.elapsed() < 4 * PROBE_TIMEOUT {
                return None;
            }
            self.probing = None;
            let _ = self.probe_failed(format!(
                "the probe did not come back within {} s",
                started.elapsed().as_secs()
            ));
            self.rebuild_probe();
        }
        let silent = self.silent_since.elapsed();
        if silent >= 2 * self.settings.stall_timeout {
            return Some(format!(
                "the broker has not answered for {} s",
                silent.as_secs()
            ));
        }
        *probe_id += 1;
        let id = *probe_id;
        self.probing = Some(Instant::now());
        let probe = self.probe.clone();
        let owned: BTreeSet<i32> = self.subscriber.owned().into_iter().collect();
        // Where partitions not owned yet start: after a recovery, where this process
        // settled them; otherwise where the group's committed offsets say.
        let (settled, from_low) = self.status.with(|s| (s.settled.clone(), s.from_low));
        let (first, empty) = (self.first, self.empty);
        let mut context = StartContext::new(first, empty, self.has_data);
        if from_low {
            context = context.replaying();
        }
        let saved = self.saved.clone();
        let tx = probed_tx.clone();
        tokio::task::spawn_blocking(move || {
            let answer = (|| -> Result<Probed, BusError> {
                let asked_ms = now_ms();
                let count = probe.partitions(PROBE_TIMEOUT)?;
                let marks = probe.watermarks(count, PROBE_TIMEOUT)?;
                // A partition whose leader does not answer is taken once it does.
                let missing: Vec<i32> = (0..count)
                    .filter(|p| !owned.contains(p) && marks[*p as usize].is_some())
                    .collect();
                let mut starts = Vec::new();
                let mut joins = Vec::new();
                let ask: Vec<i32> = missing
                    .iter()
                    .copied()
                    .filter(|p| first || !settled.contains_key(p))
                    .collect();
                let committed: HashMap<i32, Option<i64>> = if ask.is_empty() || from_low {
                    HashMap::new()
                } else {
                    probe.committed(&ask, PROBE_TIMEOUT)?.into_iter().collect()
                };
                for p in missing {
                    let Some((low, high)) = marks[p as usize] else {
                        continue;
                    };
                    let facts = PartitionFacts {
                        low,
                        high,
                        settled: settled.get(&p).copied(),
                        committed: committed.get(&p).copied().flatten(),
                        saved: saved.get(&p).copied(),
                    };
                    let (at, join) = position::start_of(context, p, facts);
                    joins.extend(join);
                    starts.push((p, at));
                }
                if first
                    && empty
                    && joins.is_empty()
                    && !starts.is_empty()
                    && marks.iter().flatten().any(|(l, h)| h > l)
                {
                    // An emptied database under kept offsets: the offsets say nothing of it.
                    joins.push(JoinReason::EmptyDatabase);
                }
                Ok(Probed {
                    asked_ms,
                    count,
                    marks,
                    starts,
                    joins,
                })
            })();
            let _ = tx.blocking_send((id, answer.map_err(|e| e.to_string())));
        });
        None
    }

    /// Takes any partition not owned yet and checks that every partition with newer
    /// records makes progress. Returns why the consumer must be rebuilt, if it must.
    fn probed(&mut self, probed: Probed) -> Option<String> {
        let known = self.status.topic_partitions();
        self.silent_since = Instant::now();
        let Probed {
            asked_ms,
            count,
            marks,
            starts,
            joins,
        } = probed;
        if known.is_some_and(|k| k != count) {
            tracing::info!(partitions = count, "the topic's partition count changed");
        }
        self.status.with(|s| {
            s.topic_partitions = Some(count);
            s.last_probe_ok = Some(Instant::now());
            s.probe_error = None;
            s.high = marks
                .iter()
                .enumerate()
                .filter_map(|(p, m)| Some((p as i32, m.as_ref()?.1)))
                .collect();
            s.unanswered = (0..count)
                .filter(|p| marks[*p as usize].is_none())
                .collect();
        });
        self.app.metrics.topic_partitions.set(count as i64);

        // Take every partition not owned yet, at an explicit offset.
        if !starts.is_empty() {
            let assignment: Vec<(i32, Start)> =
                starts.iter().map(|(p, at)| (*p, Start::At(*at))).collect();
            match self.subscriber.assign(&assignment) {
                Ok(()) => {
                    tracing::info!(partitions = ?starts, "consumer owns partitions (partition, offset)");
                    self.status.with(|s| {
                        s.from_low = false;
                        for (p, at) in &starts {
                            s.settled.insert(*p, *at);
                        }
                    });
                    if !joins.is_empty() {
                        // A new member may replay instead if no peer can help; one
                        // missing events cannot.
                        let replay = joins.iter().all(JoinReason::can_replay);
                        let why: Vec<String> = joins.iter().map(ToString::to_string).collect();
                        self.app.cluster.want_join(why.join("; "), replay);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not assign partitions"),
            }
        }
        let owned = self.subscriber.owned();
        self.app.metrics.assigned_partitions.set(owned.len() as i64);
        self.status.with(|s| s.owned = owned.clone());

        // Watchdog: a position that stands still while the broker holds more.
        let now = Instant::now();
        let backpressured = self.backpressured();
        let mut stalled = None;
        for p in owned {
            // A partition whose leader does not answer cannot be judged: it is left
            // alone rather than have the consumer of every partition rebuilt.
            let Some(Some((_, high))) = marks.get(p as usize).copied() else {
                continue;
            };
            let position = self
                .received
                .get(&p)
                .copied()
                .or_else(|| self.status.with(|s| s.settled.get(&p).copied()));
            let behind = position.is_none_or(|pos| pos < high);
            let entry = self.watch.entry(p).or_insert((position, now));
            if !behind || backpressured || entry.0 != position {
                *entry = (position, now);
                continue;
            }
            let still = now.duration_since(entry.1);
            if still >= self.settings.stall_timeout {
                stalled = Some(format!(
                    "no progress on partition {p} for {} s while the broker holds newer \
                     records (position {}, high watermark {high}); rebuilding the consumer",
                    still.as_secs(),
                    position.map_or("unknown".to_owned(), |p| p.to_string()),
                ));
                break;
            }
        }
        self.status.with(|s| {
            s.stalled = stalled.clone();
            let highs: Option<Vec<i64>> = marks.iter().map(|m| m.map(|(_, h)| h)).collect();
            if let (true, Some(highs)) = (s.owned.len() as i32 == count, highs) {
                s.probes.push_back((asked_ms, highs));
                if s.probes.len() > MAX_PROBES_KEPT {
                    s.probes.pop_front();
                }
            } else {
                s.probes.clear();
            }
            // Under a steady load the consumer is never level with the latest watermarks,
            // but it passes earlier ones: the latest of those says how far it got.
            while let Some((at, highs)) = s.probes.front() {
                let passed = highs
                    .iter()
                    .enumerate()
                    .all(|(p, high)| s.settled.get(&(p as i32)).is_some_and(|next| next >= high));
                if !passed {
                    break;
                }
                s.caught_up_ms = Some(*at);
                s.probes.pop_front();
            }
        });
        stalled
    }

    /// A client that keeps failing may be the part that is broken (librdkafka times
    /// some waits on the wall clock, so a stepped clock can leave one failing): make
    /// the probe anew, at most once per stall bound.
    fn rebuild_probe(&mut self) {
        if self.probe_built.elapsed() < self.settings.stall_timeout {
            return;
        }
        self.probe_built = Instant::now();
        match Probe::new(&self.settings.kafka, &self.settings.group) {
            Ok(p) => {
                tracing::info!(
                    "the broker has not answered the probe for a while; probing with a new client"
                );
                self.probe = Arc::new(p);
            }
            Err(e) => tracing::warn!(error = %e, "could not rebuild the Kafka probe"),
        }
    }

    /// The broker did not answer: nothing can be judged meanwhile.
    fn probe_failed(&mut self, error: String) -> Option<String> {
        tracing::debug!(%error, "the broker did not answer the probe");
        if self.silent_since.elapsed() >= self.settings.stall_timeout {
            self.rebuild_probe();
        }
        self.status.with(|s| s.probe_error = Some(error));
        self.watch.clear();
        None
    }
}

struct Probed {
    /// When the probe asked (wall clock, ms): every record published before is below
    /// the watermarks it got.
    asked_ms: u64,
    count: i32,
    /// Per partition, its watermarks; `None` where its leader did not answer.
    marks: Vec<Option<(i64, i64)>>,
    /// Partitions to take, each with the offset to start from.
    starts: Vec<(i32, i64)>,
    /// Why this node must get its peers' state: it is new, or events it needs are gone.
    joins: Vec<JoinReason>,
}

fn lane_of(key: &Key) -> usize {
    let mut h = DefaultHasher::new();
    key.as_str().hash(&mut h);
    (h.finish() % LANES as u64) as usize
}

/// The event to apply, or None when the message is to be skipped: invalid (logged and
/// counted) or this node's own.
fn accept(app: &App, payload: Option<&[u8]>) -> Option<Event> {
    let event = match Event::decode(payload.unwrap_or_default()) {
        Ok(e) => e,
        Err(e) => {
            app.metrics.reject(e.kind());
            tracing::warn!(error = %e, "skipping invalid event");
            return None;
        }
    };
    if event.origin == app.node {
        app.metrics.skipped_own.inc();
        return None;
    }
    Some(event)
}

/// Applies its events one after another, reporting each as settled. An event stamped
/// too far ahead is parked with every later event of its key, and tried again.
async fn lane(
    app: Arc<App>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    settled: mpsc::UnboundedSender<Settled>,
    stop: CancellationToken,
) {
    let mut parked: BTreeMap<Key, VecDeque<Job>> = BTreeMap::new();
    let mut retry = tokio::time::interval(HOLD_RETRY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            job = jobs.recv() => {
                let Some(job) = job else { break };
                if let Some(queue) = parked.get_mut(&job.event.key) {
                    queue.push_back(job);
                    continue;
                }
                match app.clock.admit(&job.event, job.received) {
                    Admission::Apply => {
                        if !settle(&app, job, &settled, &stop).await {
                            break;
                        }
                    }
                    Admission::Hold { ahead_ms } => {
                        hold(&app, &job, ahead_ms);
                        parked.entry(job.event.key.clone()).or_default().push_back(job);
                    }
                }
            }
            _ = retry.tick(), if !parked.is_empty() => {
                let keys: Vec<Key> = parked.keys().cloned().collect();
                for key in keys {
                    let queue = parked.get_mut(&key).expect("parked key");
                    while let Some(job) = queue.front() {
                        if let Admission::Hold { .. } = app.clock.admit(&job.event, job.received) {
                            break;
                        }
                        let job = queue.pop_front().expect("front");
                        app.clock.release(&job.event.origin);
                        tracing::info!(origin = %job.event.origin, key = %job.event.key, "applying a held event: the clocks agree");
                        if !settle(&app, job, &settled, &stop).await {
                            return;
                        }
                    }
                    if queue.is_empty() {
                        parked.remove(&key);
                    }
                }
            }
        }
    }
    for job in parked.into_values().flatten() {
        app.clock.release(&job.event.origin);
    }
}

fn hold(app: &App, job: &Job, ahead_ms: u64) {
    app.clock.hold(&job.event.origin, ahead_ms);
    tracing::warn!(
        origin = %job.event.origin,
        key = %job.event.key,
        ahead_ms,
        "holding an event stamped too far ahead of this node's clock; it is applied once the clocks agree"
    );
}

/// Applies `job` and reports it settled. False when shutdown interrupted it.
async fn settle(
    app: &App,
    job: Job,
    settled: &mpsc::UnboundedSender<Settled>,
    stop: &CancellationToken,
) -> bool {
    let done = apply(app, &job.event, stop).await;
    let _ = settled.send((job.partition, job.offset, done));
    done
}

/// Applies one event. Returns false only when shutdown interrupted it before it was
/// applied.
async fn apply(app: &App, event: &Event, stop: &CancellationToken) -> bool {
    crate::fault::point("apply", event.key.as_str());
    // The database may be down: retry the same event until it is back, never skip it
    // (but for a merge too large to store, which no retry can help).
    let mut delay = Duration::from_millis(50);
    loop {
        match app.apply_remote(event).await {
            Ok(outcome) => {
                app.cluster
                    .applied_from(&event.origin, event.version.ts.wall_ms);
                if outcome == Outcome::Stale {
                    app.metrics.skipped_stale.inc();
                    return true;
                }
                app.metrics.applied.inc();
                let lag_ms = now_ms().saturating_sub(event.version.ts.wall_ms);
                app.metrics.replication_lag.observe(lag_ms as f64 / 1000.0);
                return true;
            }
            // Retrying cannot make it fit: skipped, counted and reported (see `oversize`).
            Err(StoreError::TooLarge { .. }) => return true,
            Err(e) => {
                tracing::warn!(error = %e, key = %event.key, "applying event failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}
