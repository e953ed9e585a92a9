//! What this node knows of its cluster: every member heard from on the control topic,
//! with its last report (how far it has applied the data topic, what it published), and
//! this node's own report. From these: who is live or away, the replication lag between
//! every pair of members, and whether a given event has reached the peers (for writes
//! that wait for their replication).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use kvsync_core::{
    cluster::{has_applied, lag, PublishLog, Report},
    Heartbeat, Key, NodeId, Version,
};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use crate::{
    app::{now_ms, rfc3339},
    replicator::ReplicationStatus,
};

/// More members than this are not tracked (the control topic is not trusted to be small).
const MAX_MEMBERS: usize = 64;
/// Keys whose last publication is remembered, for writes that wait for their
/// replication and ask after their publication once it may have happened.
const RECENT_PUBLICATIONS: usize = 10_000;
/// Keys whose time of publication repair remembers (a 100,000-pair import stays within).
const PUBLISH_LOG_KEYS: usize = 200_000;

/// A write waiting to learn where it was published: its version, and where to say.
type Waiter = (Version, oneshot::Sender<(i32, i64)>);

/// Where this node's events were published, for writes that wait for replication.
#[derive(Default)]
struct Publications {
    recent: HashMap<Key, (Version, i32, i64)>,
    order: std::collections::VecDeque<Key>,
    waiters: HashMap<Key, Vec<Waiter>>,
}

/// A join from state under way: why, and how far it got.
#[derive(Debug, Clone)]
pub enum Join {
    /// Needed; the repair task asks a peer once it knows the live ones. `replay_if_alone`:
    /// with no peer to ask, replaying the topic's history is the next best thing (it is
    /// all there); otherwise the history needed is gone and only a peer can help.
    Wanted { why: String, replay_if_alone: bool },
    /// Asked `target` for its state (and, before it, the peers of `earlier` requests,
    /// whose answers are as good if they come).
    Asked {
        why: String,
        replay_if_alone: bool,
        request: uuid::Uuid,
        earlier: Vec<uuid::Uuid>,
        target: NodeId,
        since: Instant,
    },
    /// `from` published its state; it is held once the consumer is past `until`.
    Receiving {
        why: String,
        from: NodeId,
        until: BTreeMap<i32, i64>,
    },
}

struct Member {
    heartbeat: Heartbeat,
    heard: Instant,
    /// When it was first heard from.
    since: Instant,
}

#[derive(Default)]
struct Local {
    published: BTreeMap<i32, i64>,
    last_write_ms: Option<u64>,
    applied_ms: BTreeMap<String, u64>,
    repairs: u64,
    joining: bool,
}

pub struct ClusterView {
    node: NodeId,
    addr: Option<String>,
    started_ms: u64,
    away_after: Duration,
    members: Mutex<HashMap<NodeId, Member>>,
    local: Mutex<Local>,
    /// Bumped whenever a peer's report arrives: waiters for replication look again.
    heard: watch::Sender<u64>,
    publications: Mutex<Publications>,
    /// When each key was last published, for repair ([`kvsync_core::cluster::repairable`]).
    sent: Mutex<PublishLog>,
    join: Mutex<Option<Join>>,
    /// Notified when a join is wanted.
    pub join_wanted: tokio::sync::Notify,
    /// Writes of this node waiting for their replication.
    waiting: std::sync::atomic::AtomicUsize,
    /// Until when a peer's last heartbeat said it waits for replication.
    peer_waits_until: Mutex<Option<Instant>>,
    /// Notified when a heartbeat should go out now: a wait began here, or a peer began
    /// waiting.
    pub report_now: tokio::sync::Notify,
}

/// How long after a peer's heartbeat said it waits this node keeps reporting progress
/// as it happens: a few of the peer's heartbeats, which say it again while it waits.
const PEER_WAIT_GRACE: Duration = Duration::from_secs(3);

/// Which peers a write waits for, and how many of them must confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    All,
    AtLeast(usize),
}

/// The outcome of waiting for a write's replication.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Replication {
    /// How many peers had to confirm.
    pub required: usize,
    /// Peers that applied the write, and those that had not when the wait ended.
    pub confirmed: Vec<String>,
    pub pending: Vec<String>,
    /// Whether the wait ended at its timeout rather than on enough confirmations.
    pub timed_out: bool,
    pub waited_ms: u64,
}

impl ClusterView {
    pub fn new(node: NodeId, addr: Option<String>, away_after: Duration) -> Self {
        Self {
            node,
            addr,
            started_ms: now_ms(),
            away_after,
            members: Mutex::default(),
            local: Mutex::default(),
            heard: watch::channel(0).0,
            publications: Mutex::default(),
            sent: Mutex::new(PublishLog::new(PUBLISH_LOG_KEYS)),
            join: Mutex::default(),
            join_wanted: tokio::sync::Notify::new(),
            waiting: Default::default(),
            peer_waits_until: Mutex::default(),
            report_now: tokio::sync::Notify::new(),
        }
    }

    /// Whether this node has writes waiting for their replication (said in its heartbeats).
    pub fn waiting(&self) -> bool {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// Whether progress should be reported as it happens: a peer waits for replication.
    /// Otherwise the periodic heartbeat reports it, which spares the broker a heartbeat
    /// per applied event.
    pub fn progress_wanted(&self) -> bool {
        self.peer_waits_until
            .lock()
            .expect("peer waits lock")
            .is_some_and(|until| Instant::now() < until)
    }

    /// Asks for a join from the peers' state (unless one is under way).
    pub fn want_join(&self, why: String, replay_if_alone: bool) {
        let mut join = self.join.lock().expect("join lock");
        if join.is_none() {
            tracing::info!(reason = %why, "joining from the peers' state");
            *join = Some(Join::Wanted {
                why,
                replay_if_alone,
            });
            self.local.lock().expect("local lock").joining = true;
            self.join_wanted.notify_one();
        }
    }

    pub fn join(&self) -> Option<Join> {
        self.join.lock().expect("join lock").clone()
    }

    pub fn set_join(&self, join: Option<Join>) {
        self.local.lock().expect("local lock").joining = join.is_some();
        *self.join.lock().expect("join lock") = join;
    }

    /// Why this node does not hold its peers' state yet, while it joins.
    pub fn join_problem(&self) -> Option<String> {
        Some(match self.join()? {
            Join::Wanted { why, .. } => {
                format!("joining from the peers' state ({why}): looking for a live peer")
            }
            Join::Asked {
                why, target, since, ..
            } => format!(
                "joining from the peers' state ({why}): asked {target} {} s ago",
                since.elapsed().as_secs()
            ),
            Join::Receiving { why, from, .. } => {
                format!("joining from the peers' state ({why}): applying {from}'s state")
            }
        })
    }

    /// The relay published `key`'s state at `version` to `(partition, offset)`: it holds
    /// every local write of the key up to `version`.
    pub fn published_event(&self, key: &Key, version: &Version, partition: i32, offset: i64) {
        self.published(partition, offset, version.ts.wall_ms);
        self.sent_now(key);
        let mut p = self.publications.lock().expect("publications lock");
        if let Some(waiting) = p.waiters.remove(key) {
            let mut still = Vec::new();
            for (v, tx) in waiting {
                if v <= *version {
                    let _ = tx.send((partition, offset));
                } else if !tx.is_closed() {
                    still.push((v, tx));
                }
            }
            if !still.is_empty() {
                p.waiters.insert(key.clone(), still);
            }
        }
        let newer = p.recent.get(key).is_none_or(|(v, _, _)| v < version);
        if newer {
            if p.recent
                .insert(key.clone(), (version.clone(), partition, offset))
                .is_none()
            {
                p.order.push_back(key.clone());
            }
            while p.recent.len() > RECENT_PUBLICATIONS {
                let Some(old) = p.order.pop_front() else {
                    break;
                };
                p.recent.remove(&old);
            }
        }
    }

    /// `key`'s state went out to the peers just now (by the relay, or again by repair).
    pub fn sent_now(&self, key: &Key) {
        self.sent
            .lock()
            .expect("sent lock")
            .note(key.as_str(), now_ms());
    }

    /// Moves each key's change time (ms) up to its last publication where that came
    /// later and is remembered: a peer cannot hold a change before it was published.
    pub fn count_from_publication(&self, keys: &mut [(String, u64)]) {
        let sent = self.sent.lock().expect("sent lock");
        for (key, changed) in keys {
            *changed = (*changed).max(sent.last(key).unwrap_or(0));
        }
    }

    /// Forgets publications made before `ms` (no listing compared now is that old).
    pub fn forget_sent_before(&self, ms: u64) {
        self.sent.lock().expect("sent lock").forget_before(ms);
    }

    /// Where the write of `key` at `version` (or a later one of the key, which holds it)
    /// was published, waiting up to `timeout` for the relay to publish it.
    pub async fn publication_of(
        &self,
        key: &Key,
        version: &Version,
        timeout: Duration,
    ) -> Option<(i32, i64)> {
        let rx = {
            let mut p = self.publications.lock().expect("publications lock");
            if let Some((v, partition, offset)) = p.recent.get(key) {
                if v >= version {
                    return Some((*partition, *offset));
                }
            }
            let (tx, rx) = oneshot::channel();
            let waiting = p.waiters.entry(key.clone()).or_default();
            waiting.retain(|(_, tx)| !tx.is_closed());
            waiting.push((version.clone(), tx));
            rx
        };
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }

    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// Records a peer's heartbeat, received now.
    pub fn heard(&self, hb: &Heartbeat) {
        if hb.node == self.node {
            return;
        }
        let now = Instant::now();
        if hb.waiting {
            let mut until = self.peer_waits_until.lock().expect("peer waits lock");
            // A wait just began: report at once, in case what it waits for is applied
            // already (its progress was made before anyone asked).
            if until.is_none_or(|u| now >= u) {
                self.report_now.notify_one();
            }
            *until = Some(now + PEER_WAIT_GRACE);
        }
        let mut members = self.members.lock().expect("members lock");
        if !members.contains_key(&hb.node) && members.len() >= MAX_MEMBERS {
            return;
        }
        // A restarted member starts anew.
        let since = match members.get(&hb.node) {
            Some(m) if m.heartbeat.started_ms == hb.started_ms => m.since,
            _ => now,
        };
        members.insert(
            hb.node.clone(),
            Member {
                heartbeat: hb.clone(),
                heard: now,
                since,
            },
        );
        drop(members);
        self.heard.send_modify(|n| *n += 1);
    }

    /// This node published an event at `offset` of `partition`, made at `wall_ms`.
    pub fn published(&self, partition: i32, offset: i64, wall_ms: u64) {
        let mut local = self.local.lock().expect("local lock");
        let next = local.published.entry(partition).or_insert(0);
        *next = (*next).max(offset + 1);
        local.last_write_ms = Some(local.last_write_ms.unwrap_or(0).max(wall_ms));
    }

    /// This node applied an event of `origin` made at `wall_ms`.
    pub fn applied_from(&self, origin: &NodeId, wall_ms: u64) {
        let mut local = self.local.lock().expect("local lock");
        if local.applied_ms.len() >= MAX_MEMBERS && !local.applied_ms.contains_key(origin.as_str())
        {
            return;
        }
        let at = local.applied_ms.entry(origin.to_string()).or_insert(0);
        *at = (*at).max(wall_ms);
    }

    pub fn repaired(&self, keys: u64) {
        self.local.lock().expect("local lock").repairs += keys;
    }

    /// This node's report, with how far its consumer has got.
    pub fn report(&self, consumer: &ReplicationStatus) -> Report {
        let (applied, caught_up_ms) = (consumer.applied(), consumer.caught_up_ms());
        let local = self.local.lock().expect("local lock");
        Report {
            addr: self.addr.clone(),
            applied,
            published: local.published.clone(),
            last_write_ms: local.last_write_ms,
            applied_ms: local.applied_ms.clone(),
            caught_up_ms,
            repairs: local.repairs,
            joining: local.joining,
        }
    }

    fn is_live(&self, m: &Member) -> bool {
        m.heard.elapsed() <= self.away_after
    }

    /// Peers heard from within the away bound.
    pub fn live_peers(&self) -> Vec<NodeId> {
        let members = self.members.lock().expect("members lock");
        let mut out: Vec<NodeId> = members
            .iter()
            .filter(|(_, m)| self.is_live(m))
            .map(|(n, _)| n.clone())
            .collect();
        out.sort();
        out
    }

    /// The earliest time every peer heard from within `within` reported having caught up
    /// to, or `None` if one has not reported it (or no such peer exists: then the
    /// caller's own view is all there is, and it returns `Some(u64::MAX)`).
    pub fn peers_caught_up_ms(&self, within: Duration) -> Option<u64> {
        let members = self.members.lock().expect("members lock");
        members
            .values()
            .filter(|m| m.heard.elapsed() <= within)
            .map(|m| m.heartbeat.report.caught_up_ms)
            .try_fold(u64::MAX, |acc, c| c.map(|c| acc.min(c)))
    }

    /// Waits until `wait` of the live peers (those live when the wait starts) have
    /// applied the record at `offset` of `partition`, or until `timeout`.
    pub async fn wait_applied(
        &self,
        partition: i32,
        offset: i64,
        wait: WaitFor,
        timeout: Duration,
    ) -> Replication {
        let started = Instant::now();
        let peers = self.live_peers();
        // Said in this node's heartbeats until the wait ends; the first goes out now.
        let _waiting = Waiting::begin(self);
        let required = match wait {
            WaitFor::All => peers.len(),
            WaitFor::AtLeast(n) => n,
        };
        let mut heard = self.heard.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (confirmed, pending): (Vec<NodeId>, Vec<NodeId>) = {
                let members = self.members.lock().expect("members lock");
                peers.iter().cloned().partition(|p| {
                    members.get(p).is_some_and(|m| {
                        has_applied(&m.heartbeat.report.applied, partition, offset)
                    })
                })
            };
            let enough = confirmed.len() >= required;
            let timed_out = !enough && tokio::time::Instant::now() >= deadline;
            if enough || timed_out {
                return Replication {
                    required,
                    confirmed: confirmed.iter().map(ToString::to_string).collect(),
                    pending: pending.iter().map(ToString::to_string).collect(),
                    timed_out,
                    waited_ms: started.elapsed().as_millis() as u64,
                };
            }
            if tokio::time::timeout_at(deadline, heard.changed())
                .await
                .is_ok_and(|r| r.is_err())
            {
                // The view is gone (shutdown): report what is known.
                tokio::time::sleep_until(deadline).await;
            }
        }
    }

    /// `/api/cluster`: every member (this node first) with its status, clock offset and
    /// the lag between every pair of members.
    pub fn describe(&self, own: Report, clock_offsets: &HashMap<NodeId, i64>) -> Value {
        let now = now_ms();
        let members = self.members.lock().expect("members lock");
        let mut reports: Vec<(String, &Report)> = vec![(self.node.to_string(), &own)];
        let mut list = vec![json!({
            "node": self.node.to_string(),
            "self": true,
            "status": "live",
            "addr": own.addr,
            "started_at": rfc3339(self.started_ms),
            "last_heard_ms_ago": 0,
            "clock_offset_ms": 0,
            "caught_up_at": own.caught_up_ms.map(rfc3339),
            "repairs": own.repairs,
            "joining": own.joining,
        })];
        let mut sorted: Vec<(&NodeId, &Member)> = members.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        for (node, m) in &sorted {
            let r = &m.heartbeat.report;
            list.push(json!({
                "node": node.to_string(),
                "self": false,
                "status": if self.is_live(m) { "live" } else { "away" },
                "addr": r.addr,
                "started_at": rfc3339(m.heartbeat.started_ms),
                "last_heard_ms_ago": m.heard.elapsed().as_millis() as u64,
                "clock_offset_ms": clock_offsets.get(*node),
                "caught_up_at": r.caught_up_ms.map(rfc3339),
                "repairs": r.repairs,
                "joining": r.joining,
            }));
            reports.push((node.to_string(), r));
        }
        let mut lags = Vec::new();
        for (origin, o) in &reports {
            for (applier, a) in &reports {
                if origin == applier {
                    continue;
                }
                let l = lag(o, origin, a);
                lags.push(json!({
                    "origin": origin,
                    "applier": applier,
                    "events": l.events,
                    "ms": l.ms,
                }));
            }
        }
        json!({
            "node": self.node.to_string(),
            "at": rfc3339(now),
            "away_after_ms": self.away_after.as_millis() as u64,
            "members": list,
            "lag": lags,
        })
    }

    /// Per peer: `(peer, live, lag of this node behind it)`, for the metrics.
    pub fn peer_lags(&self, own: &Report) -> Vec<(String, bool, kvsync_core::cluster::Lag)> {
        let members = self.members.lock().expect("members lock");
        let mut out: Vec<_> = members
            .iter()
            .map(|(n, m)| {
                (
                    n.to_string(),
                    self.is_live(m),
                    lag(&m.heartbeat.report, n.as_str(), own),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// One write waiting for its replication, counted while it lives.
struct Waiting<'a>(&'a ClusterView);

impl<'a> Waiting<'a> {
    fn begin(view: &'a ClusterView) -> Self {
        view.waiting
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        view.report_now.notify_one();
        Self(view)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0
            .waiting
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
