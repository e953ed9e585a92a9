//! Anti-entropy, joins from state, and tombstone collection: the background work that
//! keeps a node equal to its peers whatever happened to its database or its offsets.
//!
//! - **Summaries.** Every repair interval the node sends a summary of its state (a hash
//!   per bucket of keys) on the control topic. A peer whose summary differs in a bucket
//!   gets this node's keys of that bucket with their fingerprints, and the reverse; each
//!   side re-publishes, on the data topic, its keys that the other lacks or holds
//!   differently. Every node merges those as usual, so a repair can never do harm, and
//!   after one exchange both hold the merge of both. The summaries and listings come
//!   from the key index (`key_index.rs`), which the node's writes keep up to date; it is
//!   rebuilt from a read of the database at start and every rescan interval.
//! - **Joins.** A node that starts empty, or whose events are gone from the topic, asks
//!   one live peer for its whole state, which that peer re-publishes; the node is ready
//!   once it has applied it. With no peer to ask, a new node replays the topic instead.
//! - **Tombstones.** A deleted key's tombstone is removed once it is older than the
//!   horizon and every member heard from within the horizon has caught up past it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use kvsync_core::{
    cluster::{listing_current, repairable, BucketList, Control},
    index::{Indexed, KeyIndex},
    Key, NodeId,
};
use kvsync_kafka::Publisher;
use kvsync_store::{wall_ms_of, Scanned, StoredPair};
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    app::{now_ms, App},
    cluster::Join,
    oversize::Limit,
    replicator::ReplicationStatus,
};

/// Re-publications in flight at once during a snapshot.
const SNAPSHOT_IN_FLIGHT: usize = 256;
/// Bucket listings are split into records of at most this size.
const LIST_BYTES: usize = 256 * 1024;
/// Keys changed more recently than this are left to replication, which is likely still
/// carrying them.
const SETTLING: Duration = Duration::from_secs(2);
/// Documents per read when the whole database is read (key index, snapshots).
const READ_PAGE: usize = 500;
/// Tombstones removed per database operation.
const COLLECT_BATCH: usize = 1000;

pub struct RepairSettings {
    pub publisher: Publisher,
    pub control_topic: String,
    pub interval: Duration,
    /// How often the key index is rebuilt from a read of the whole database.
    pub rescan_interval: Duration,
    pub max_keys: u64,
    pub join_timeout: Duration,
    /// How long a new node listens for heartbeats before it picks a peer to join from.
    pub listen_first: Duration,
    pub status: Arc<ReplicationStatus>,
}

/// A peer's listing of a bucket being received.
struct Parts {
    since: Instant,
    received: u32,
    keys: BTreeMap<String, String>,
    /// The earliest point the parts say the peer had applied everything before.
    caught_up_ms: Option<u64>,
}

pub async fn run(
    app: Arc<App>,
    settings: RepairSettings,
    mut control: mpsc::Receiver<Control>,
    shutdown: CancellationToken,
) {
    let mut task = Repair {
        app,
        settings,
        lists_sent: HashMap::new(),
        parts: HashMap::new(),
        budget: 0,
        snapshots: JoinSet::new(),
        started: Instant::now(),
        rebuild_after: None,
    };
    let mut tick = tokio::time::interval(task.settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick comes at once; the peers may not even be known yet, which is fine:
    // a summary is only compared by those that receive it.
    let collect_every = (task.app.tombstone_horizon_ms / 10).clamp(1000, 3_600_000);
    let mut collect = tokio::time::interval(Duration::from_millis(collect_every));
    collect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut join_check = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => task.round().await,
            _ = collect.tick() => task.collect_tombstones().await,
            _ = task.app.cluster.join_wanted.notified() => task.advance_join().await,
            _ = join_check.tick(), if task.app.cluster.join().is_some() => task.advance_join().await,
            Some(record) = control.recv() => task.handle(record).await,
            Some(done) = task.snapshots.join_next(), if !task.snapshots.is_empty() => {
                if let Err(e) = done {
                    tracing::warn!(error = %e, "a snapshot task failed");
                }
            }
        }
    }
    task.snapshots.abort_all();
}

struct Repair {
    app: Arc<App>,
    settings: RepairSettings,
    /// When this node last sent its listing of each bucket.
    lists_sent: HashMap<u32, Instant>,
    /// Parts of peers' bucket listings received so far.
    parts: HashMap<(NodeId, u32), Parts>,
    /// Keys that may still be re-published in this interval.
    budget: u64,
    snapshots: JoinSet<()>,
    started: Instant,
    /// After a failed rebuild of the key index, when to try again.
    rebuild_after: Option<Instant>,
}

impl Repair {
    async fn send_control(&self, record: &Control) {
        if let Err(e) = self
            .settings
            .publisher
            .send(
                &self.settings.control_topic,
                self.app.node.as_str(),
                &record.encode(),
            )
            .await
        {
            tracing::debug!(error = %e, "control record not sent");
        }
    }

    /// Builds the key index anew from a read of every key, tombstones past the horizon
    /// left out (`App::collectable`). Writes meanwhile are noted in it as well.
    async fn rebuild_index(&mut self) -> bool {
        // Not before start-up is done with the database (a node back from a long absence
        // drops its state there).
        if self.app.ensure_ready().await.is_err() {
            return false;
        }
        self.app.metrics.repair_scans.inc();
        let index = &self.app.index;
        index.begin_rebuild();
        let started = Instant::now();
        let mut scan = self.app.store.scan_numbered(READ_PAGE);
        let (mut read, mut busy_since) = (0usize, Instant::now());
        while let Some(next) = scan.next().await {
            read += 1;
            if read % READ_PAGE == 0 {
                // Leaves the database as much time for other work as the read took.
                tokio::time::sleep(busy_since.elapsed().min(Duration::from_secs(1))).await;
                busy_since = Instant::now();
            }
            let (pair, seq) = match next {
                Ok(Scanned {
                    pair: Ok(pair),
                    seq,
                    ..
                }) => (pair, seq),
                Ok(_) => continue, // Unreadable: repairs bring a good one.
                Err(e) => {
                    tracing::debug!(error = %e, "the read for the repair's summary broke off");
                    index.abandon_rebuild();
                    return false;
                }
            };
            if self.app.collectable(&pair) {
                continue;
            }
            index.note_scanned(pair.key.as_str(), Indexed::of(&pair.state, seq));
        }
        index.finish_rebuild();
        tracing::debug!(
            keys = read,
            ms = started.elapsed().as_millis() as u64,
            "key index rebuilt from the database"
        );
        true
    }

    /// `f` on the key index, tombstones past the horizon dropped from it first; the index
    /// is built (or rebuilt, once the rescan interval has passed) before. `None` while it
    /// has never been built (the database could not be read for it).
    async fn with_index<R>(&mut self, f: impl FnOnce(&KeyIndex) -> R) -> Option<R> {
        let due = self
            .app
            .index
            .built()
            .is_none_or(|at| at.elapsed() >= self.settings.rescan_interval);
        let may_try = self.rebuild_after.is_none_or(|at| Instant::now() >= at);
        if due && may_try && !self.rebuild_index().await {
            // A failed read is not tried again at once: each is a burst of load.
            self.rebuild_after = Some(Instant::now() + self.settings.interval);
        }
        let horizon = now_ms().saturating_sub(self.app.tombstone_horizon_ms);
        self.app.index.with(|index| {
            index.forget_tombstones_before(horizon);
            f(index)
        })
    }

    async fn round(&mut self) {
        self.budget = self.settings.max_keys;
        // Alive and replicating: after a long absence this is how the node knows.
        if self.app.ensure_ready().await.is_ok() {
            if let Err(e) = self.app.store.set_alive(now_ms()).await {
                tracing::debug!(error = %e, "could not record being alive");
            }
        }
        self.parts
            .retain(|_, p| p.since.elapsed() < self.settings.interval);
        // No listing older than the window is compared (`listing_current`).
        let margin = SETTLING.as_millis() as u64;
        self.app
            .cluster
            .forget_sent_before(now_ms().saturating_sub(self.window().as_millis() as u64 + margin));
        if self.app.cluster.live_peers().is_empty() {
            return; // Nobody to compare with.
        }
        if self.app.cluster.join().is_some() {
            return; // Its state is on its way: comparing now would only repeat it.
        }
        if !self.caught_up() {
            return; // Still applying the topic: differences now are replication's.
        }
        let Some(summary) = self.with_index(|index| index.summary().clone()).await else {
            return;
        };
        self.app.metrics.repair_rounds.inc();
        self.send_control(&Control::Summary {
            node: self.app.node.clone(),
            summary,
        })
        .await;
    }

    async fn handle(&mut self, record: Control) {
        let joining = self.app.cluster.join().is_some();
        match record {
            // While joining, this node's state is incomplete by design: its differences
            // are the snapshot's to fill.
            Control::Summary { .. } | Control::Bucket { .. } if joining || !self.caught_up() => {}
            Control::Summary { node, summary } => {
                let Some(differing) = self
                    .with_index(|index| index.summary().differing(&summary))
                    .await
                else {
                    return;
                };
                if differing.is_empty() {
                    return;
                }
                self.app
                    .metrics
                    .repair_buckets
                    .inc_by(differing.len() as u64);
                tracing::info!(peer = %node, buckets = differing.len(), "state differs from a peer's; comparing keys");
                for b in differing {
                    self.send_list(b).await;
                }
            }
            Control::Bucket {
                node,
                list,
                part: _,
                parts,
                caught_up_ms,
            } => {
                let entry = self
                    .parts
                    .entry((node.clone(), list.bucket))
                    .or_insert_with(|| Parts {
                        since: Instant::now(),
                        received: 0,
                        keys: BTreeMap::new(),
                        caught_up_ms,
                    });
                entry.received += 1;
                entry.keys.extend(list.entries);
                entry.caught_up_ms = entry.caught_up_ms.min(caught_up_ms);
                if entry.received < parts {
                    return;
                }
                let theirs = self
                    .parts
                    .remove(&(node.clone(), list.bucket))
                    .expect("entry");
                if !listing_current(
                    theirs.caught_up_ms,
                    now_ms(),
                    self.window().as_millis() as u64,
                ) {
                    tracing::debug!(peer = %node, bucket = list.bucket, "a listing that waited too long on its way; the next round brings a current one");
                    return;
                }
                self.compare(&node, list.bucket, theirs.keys, theirs.caught_up_ms)
                    .await;
            }
            Control::Sync {
                node,
                request,
                target,
            } => {
                if target == self.app.node {
                    self.serve_snapshot(node, request);
                }
            }
            Control::Synced {
                node,
                request,
                until,
            } => {
                if let Some(Join::Asked {
                    why,
                    request: ours,
                    earlier,
                    ..
                }) = self.app.cluster.join()
                {
                    // A snapshot may take longer than the join timeout: an answer to a
                    // request given up on is as good as one to the latest.
                    if ours == request || earlier.contains(&request) {
                        tracing::info!(peer = %node, "the peer published its state; applying it");
                        self.app.cluster.set_join(Some(Join::Receiving {
                            why,
                            from: node,
                            until,
                        }));
                    }
                }
            }
        }
    }

    /// Whether this node's consumer held everything the broker held within the last two
    /// intervals (10 s at least): comparing a node still applying the topic would only find the events
    /// on their way, and re-publish them.
    fn caught_up(&self) -> bool {
        let recent = now_ms().saturating_sub(self.window().as_millis() as u64);
        self.settings
            .status
            .caught_up_ms()
            .is_some_and(|at| at >= recent)
    }

    /// How recently a member must have been caught up to compare its state: two intervals,
    /// 10 s at least.
    fn window(&self) -> Duration {
        (2 * self.settings.interval).max(Duration::from_secs(10))
    }

    /// Sends this node's keys of bucket `b`, unless it did within half an interval.
    async fn send_list(&mut self, b: u32) {
        if self
            .lists_sent
            .get(&b)
            .is_some_and(|t| t.elapsed() < self.settings.interval / 2)
        {
            return;
        }
        // Read before the keys: the index holds every event applied by then.
        let caught_up_ms = self.settings.status.caught_up_ms();
        let Some(entries) = self.with_index(|index| index.bucket(b)).await else {
            return;
        };
        self.lists_sent.insert(b, Instant::now());
        let chunks = BucketList { bucket: b, entries }.chunks(LIST_BYTES);
        let parts = chunks.len() as u32;
        for (i, list) in chunks.into_iter().enumerate() {
            self.send_control(&Control::Bucket {
                node: self.app.node.clone(),
                list,
                part: i as u32,
                parts,
                caught_up_ms,
            })
            .await;
        }
    }

    /// Re-publishes this node's keys of bucket `b` that `peer` lacks or holds otherwise,
    /// unless the peer may still be applying them (see [`repairable`]), and sends its own
    /// listing when the peer holds keys this node lacks or holds otherwise, so the peer
    /// repairs those.
    async fn compare(
        &mut self,
        peer: &NodeId,
        b: u32,
        theirs: BTreeMap<String, String>,
        their_caught_up_ms: Option<u64>,
    ) {
        self.app.metrics.repair_listings.inc();
        let now = now_ms();
        let margin = SETTLING.as_millis() as u64;
        // The keys held otherwise, each with when it last changed here.
        let Some((mut differ, they_have_more)) = self
            .with_index(|index| {
                let ours = index.bucket_entries(b);
                let differ: Vec<(String, u64)> = ours
                    .iter()
                    .filter(|(k, e)| theirs.get(*k) != Some(&e.fingerprint))
                    .map(|(k, e)| (k.clone(), wall_ms_of(e.seq)))
                    .collect();
                let they_have_more = theirs
                    .iter()
                    .any(|(k, fp)| ours.get(k).map(|e| &e.fingerprint) != Some(fp));
                (differ, they_have_more)
            })
            .await
        else {
            return;
        };
        // A change published long after it was made (it waited in the outbox) counts from
        // its publication.
        self.app.cluster.count_from_publication(&mut differ);
        let differ: Vec<String> = differ
            .into_iter()
            .filter(|(_, changed)| repairable(*changed, their_caught_up_ms, now, margin))
            .map(|(k, _)| k)
            .collect();
        // A change still in this node's outbox is on its way: the relay's to send. (After
        // a large import the relay drains for minutes while the peers keep up with what it
        // has sent; each such key looked divergent and was sent twice.)
        let differ = match self.app.store.pending_among(&differ).await {
            Ok(pending) if !pending.is_empty() => {
                tracing::debug!(peer = %peer, bucket = b, keys = pending.len(), "keys awaiting publication left to the relay");
                differ
                    .into_iter()
                    .filter(|k| !pending.contains(k))
                    .collect()
            }
            Ok(_) => differ,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read which keys await publication");
                return;
            }
        };
        let mut sent = 0u64;
        for key in differ {
            if self.budget == 0 {
                tracing::warn!(peer = %peer, "repair budget for this interval spent; the rest waits for the next");
                break;
            }
            let Ok(key) = Key::parse(key) else { continue };
            let pair = match self.app.store.get(&key).await {
                Ok(Some(pair)) => pair,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read a key to repair");
                    return;
                }
            };
            if settling(&pair) {
                continue;
            }
            self.budget -= 1;
            let event = self.app.republish(pair);
            if !self.app.fits(&event) {
                continue;
            }
            match self.settings.publisher.publish(&event).await {
                Ok(_) => {
                    self.app.oversized.clear(Limit::Publish, &event.key);
                    self.app.cluster.sent_now(&event.key);
                    sent += 1;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "repair not published; the next round tries again");
                    return;
                }
            }
        }
        if sent > 0 {
            tracing::info!(peer = %peer, bucket = b, keys = sent, "re-published keys a peer holds differently");
            self.app.metrics.repair_keys.inc_by(sent);
            self.app.cluster.repaired(sent);
        }
        if they_have_more {
            self.send_list(b).await;
        }
    }

    /// Publishes this node's whole state for a joining peer, then says so.
    fn serve_snapshot(&mut self, requester: NodeId, request: Uuid) {
        let app = self.app.clone();
        let publisher = self.settings.publisher.clone();
        let topic = self.settings.control_topic.clone();
        self.snapshots.spawn(async move {
            // The joiner starts reading the topic after this snapshot: an event held
            // here (stamped too far ahead) is in neither, and would be lost to the
            // joiner until a repair. So the state goes out once nothing is held, and
            // again if something was held while it went out.
            let started = Instant::now();
            let mut until: BTreeMap<i32, i64> = BTreeMap::new();
            let mut sent = 0u64;
            loop {
                if app.clock.holding() > 0 {
                    tracing::info!(peer = %requester, held = app.clock.holding(), "a joining peer waits: this node holds events stamped ahead, which its state must include");
                    while app.clock.holding() > 0 {
                        tokio::time::sleep(HELD_POLL).await;
                    }
                }
                tracing::info!(peer = %requester, "publishing this node's state for a joining peer");
                if !publish_state(&app, &publisher, &mut until, &mut sent).await {
                    return;
                }
                if app.clock.holding() == 0 {
                    break;
                }
            }
            app.metrics.snapshots_served.inc();
            tracing::info!(peer = %requester, keys = sent, ms = started.elapsed().as_millis() as u64, "state published for a joining peer");
            let done = Control::Synced {
                node: app.node.clone(),
                request,
                until,
            };
            if let Err(e) = publisher.send(&topic, app.node.as_str(), &done.encode()).await {
                tracing::warn!(error = %e, "could not say the snapshot is complete; the peer asks again");
            }
        });
    }
}

/// How often a snapshot waiting for held events looks again.
const HELD_POLL: Duration = Duration::from_millis(200);

/// Publishes every key this node holds (a snapshot's body); false if it had to stop.
async fn publish_state(
    app: &Arc<App>,
    publisher: &Publisher,
    until: &mut BTreeMap<i32, i64>,
    sent: &mut u64,
) -> bool {
    let mut in_flight = JoinSet::new();
    let mut scan = app.store.scan_numbered(READ_PAGE);
    while let Some(next) = scan.next().await {
        let pair = match next {
            Ok(Scanned { pair: Ok(pair), .. }) => pair,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "snapshot for a joining peer stopped: the database failed; the peer asks again");
                return false;
            }
        };
        if app.collectable(&pair) {
            continue;
        }
        let event = app.republish(pair);
        // One key too large to publish must not stop the whole snapshot: it is
        // reported, and the rest goes out.
        if !app.fits(&event) {
            continue;
        }
        let publisher = publisher.clone();
        in_flight.spawn(async move { publisher.publish(&event).await });
        while in_flight.len() >= SNAPSHOT_IN_FLIGHT {
            if !absorb(in_flight.join_next().await, until, sent) {
                return false;
            }
        }
    }
    while let Some(r) = in_flight.join_next().await {
        if !absorb(Some(r), until, sent) {
            return false;
        }
    }
    true
}

impl Repair {
    /// Moves a join along: asks a live peer, falls back to replaying the topic when
    /// alone, asks another peer when one does not answer, and ends it once the state
    /// received is applied.
    async fn advance_join(&mut self) {
        let Some(join) = self.app.cluster.join() else {
            return;
        };
        match join {
            Join::Wanted {
                why,
                replay_if_alone,
            } => {
                if self.started.elapsed() < self.settings.listen_first {
                    return; // Not heard every live peer yet.
                }
                self.ask_peer(why, replay_if_alone, None).await;
            }
            Join::Asked {
                why,
                replay_if_alone,
                target,
                since,
                ..
            } => {
                if since.elapsed() >= self.settings.join_timeout {
                    tracing::warn!(peer = %target, "no answer to the join request; asking again");
                    self.ask_peer(why, replay_if_alone, Some(target)).await;
                }
            }
            Join::Receiving { until, from, .. } => {
                let applied = self.settings.status.applied();
                let done = until
                    .iter()
                    .all(|(p, next)| applied.get(p).is_some_and(|a| a >= next));
                if done {
                    tracing::info!(peer = %from, "joined from the peer's state");
                    self.app.cluster.set_join(None);
                }
            }
        }
    }

    async fn ask_peer(&mut self, why: String, replay_if_alone: bool, not: Option<NodeId>) {
        let earlier = match self.app.cluster.join() {
            Some(Join::Asked {
                request,
                mut earlier,
                ..
            }) => {
                earlier.push(request);
                earlier
            }
            _ => Vec::new(),
        };
        let peers = self.app.cluster.live_peers();
        // Another peer than the one that did not answer, if there is one.
        let target = peers
            .iter()
            .find(|p| Some(*p) != not.as_ref())
            .or(peers.first())
            .cloned();
        let Some(target) = target else {
            if replay_if_alone {
                tracing::info!("no live peer to join from; replaying the topic instead");
                self.settings.status.rewind();
                self.app.cluster.set_join(None);
            } else {
                // Nothing to do but wait: the problem shows in /readyz meanwhile.
                self.app.cluster.set_join(Some(Join::Wanted {
                    why,
                    replay_if_alone,
                }));
            }
            return;
        };
        let request = Uuid::now_v7();
        tracing::info!(peer = %target, "asking a peer for its state");
        self.send_control(&Control::Sync {
            node: self.app.node.clone(),
            request,
            target: target.clone(),
        })
        .await;
        self.app.cluster.set_join(Some(Join::Asked {
            why,
            replay_if_alone,
            request,
            earlier,
            target,
            since: Instant::now(),
        }));
    }

    /// Removes tombstones older than the horizon that every member heard from within
    /// the horizon (and this node) has caught up past.
    async fn collect_tombstones(&mut self) {
        let horizon = self.app.tombstone_horizon_ms;
        let now = now_ms();
        let Some(own) = self.settings.status.caught_up_ms() else {
            return;
        };
        let Some(peers) = self
            .app
            .cluster
            .peers_caught_up_ms(Duration::from_millis(horizon))
        else {
            return; // A member has not said how far it got.
        };
        let cutoff = now.saturating_sub(horizon).min(own).min(peers);
        // Version texts start with the wall time in fixed-width hex, so they sort by it:
        // every version older than `cutoff` sorts below this prefix.
        let older_than = format!("{cutoff:016x}");
        let mut total = 0;
        loop {
            match self
                .app
                .collect_tombstones(&older_than, COLLECT_BATCH)
                .await
            {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => {
                    tracing::debug!(error = %e, "tombstone collection stopped; it runs again later");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(collected = total, "tombstones past the horizon removed");
            self.app.metrics.tombstones_collected.inc_by(total);
        }
    }
}

/// A key written or merged very recently: replication is likely still carrying it.
fn settling(pair: &StoredPair) -> bool {
    pair.version()
        .is_some_and(|v| settling_at(v.ts.wall_ms, now_ms()))
}

/// Whether a version stamped at `stamp_ms` is recent at `now_ms`. A stamp ahead of this
/// clock (a peer's clock was ahead) says nothing of when the key changed: counted as
/// recent, it kept the key from repair until real time reached it (10 minutes for a
/// clock 10 minutes ahead), so a peer that lacked it stayed without it.
fn settling_at(stamp_ms: u64, now_ms: u64) -> bool {
    stamp_ms <= now_ms && now_ms - stamp_ms < SETTLING.as_millis() as u64
}

type Published = Result<Result<(i32, i64), kvsync_kafka::BusError>, tokio::task::JoinError>;

/// Takes one re-publication's result; false if the snapshot must stop.
fn absorb(result: Option<Published>, until: &mut BTreeMap<i32, i64>, sent: &mut u64) -> bool {
    match result {
        Some(Ok(Ok((partition, offset)))) => {
            let next = until.entry(partition).or_insert(0);
            *next = (*next).max(offset + 1);
            *sent += 1;
            true
        }
        Some(Ok(Err(e))) => {
            tracing::warn!(error = %e, "snapshot for a joining peer stopped: publishing failed; the peer asks again");
            false
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "snapshot publication task failed");
            false
        }
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_stamped_ahead_does_not_keep_its_key_from_repair() {
        let now = 1_800_000_000_000;
        assert!(settling_at(now - 100, now), "just written");
        assert!(!settling_at(now - 60_000, now), "a minute ago");
        assert!(!settling_at(now + 600_000, now), "stamped 10 minutes ahead");
    }
}
