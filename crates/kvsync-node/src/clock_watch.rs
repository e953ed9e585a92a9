//! What this node knows of the cluster's clocks: each peer's offset (from heartbeats),
//! whether its own clock is the odd one out, and the peers' events it holds because
//! they are stamped too far ahead. The rules themselves are in `kvsync_core::skew`.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use kvsync_core::{
    skew::{admit, offset_sample, own_clock},
    Admission, Event, Heartbeat, NodeId, OwnClock,
};
use serde_json::{json, Value};

use crate::{app::now_ms, metrics::Metrics};

/// Offsets are estimated from the heartbeats of this window.
const WINDOW: Duration = Duration::from_secs(10);
/// More peers than this are not tracked (the control topic is not trusted to be small).
const MAX_PEERS: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct ClockSettings {
    pub max_skew_ms: u64,
    pub max_jump_ms: u64,
    /// A peer not heard from for this long is away: its clock no longer counts.
    pub away_after: Duration,
}

struct Peer {
    samples: VecDeque<(Instant, i64)>,
    last_heard: Instant,
    started_ms: u64,
}

impl Peer {
    fn offset(&self) -> Option<i64> {
        self.samples.iter().map(|(_, o)| *o).max()
    }
}

#[derive(Default)]
struct Held {
    events: u64,
    max_ahead_ms: u64,
}

pub struct ClockWatch {
    node: NodeId,
    settings: ClockSettings,
    peers: Mutex<HashMap<NodeId, Peer>>,
    held: Mutex<HashMap<NodeId, Held>>,
    metrics: Metrics,
}

impl ClockWatch {
    pub fn new(node: NodeId, settings: ClockSettings, metrics: Metrics) -> Self {
        Self {
            node,
            settings,
            peers: Mutex::default(),
            held: Mutex::default(),
            metrics,
        }
    }

    pub fn settings(&self) -> ClockSettings {
        self.settings
    }

    /// Records a heartbeat received now.
    pub fn heard(&self, hb: &Heartbeat) {
        if hb.node == self.node {
            return;
        }
        let now = Instant::now();
        let sample = offset_sample(hb.wall_ms, now_ms());
        let mut peers = self.peers.lock().expect("peers lock");
        if !peers.contains_key(&hb.node) && peers.len() >= MAX_PEERS {
            return;
        }
        let peer = peers.entry(hb.node.clone()).or_insert_with(|| Peer {
            samples: VecDeque::new(),
            last_heard: now,
            started_ms: hb.started_ms,
        });
        peer.last_heard = now;
        peer.started_ms = hb.started_ms;
        peer.samples.push_back((now, sample));
        while peer
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW)
        {
            peer.samples.pop_front();
        }
        if let Some(offset) = peer.offset() {
            self.metrics.clock_offset(hb.node.as_str(), offset);
        }
    }

    /// Offsets (peer minus us, ms) of the peers heard within `away_after`.
    fn live_offsets(&self) -> Vec<(NodeId, i64)> {
        let peers = self.peers.lock().expect("peers lock");
        peers
            .iter()
            .filter(|(_, p)| p.last_heard.elapsed() <= self.settings.away_after)
            .filter_map(|(n, p)| Some((n.clone(), p.offset()?)))
            .collect()
    }

    /// Every known peer's clock offset (peer minus us, ms), live or not.
    pub fn offsets(&self) -> HashMap<NodeId, i64> {
        let peers = self.peers.lock().expect("peers lock");
        peers
            .iter()
            .filter_map(|(n, p)| Some((n.clone(), p.offset()?)))
            .collect()
    }

    fn offset_of(&self, peer: &NodeId) -> Option<i64> {
        let peers = self.peers.lock().expect("peers lock");
        peers
            .get(peer)
            .filter(|p| p.last_heard.elapsed() <= self.settings.away_after)
            .and_then(Peer::offset)
    }

    pub fn own(&self) -> OwnClock {
        let offsets: Vec<i64> = self.live_offsets().into_iter().map(|(_, o)| o).collect();
        own_clock(&offsets, self.settings.max_skew_ms)
    }

    /// Whether `event` can be applied now (see `kvsync_core::skew::admit`).
    pub fn admit(&self, event: &Event) -> Admission {
        admit(
            event.version.ts.wall_ms,
            now_ms(),
            self.settings.max_skew_ms,
            self.offset_of(&event.origin),
            self.settings.max_jump_ms,
        )
    }

    pub fn hold(&self, origin: &NodeId, ahead_ms: u64) {
        let mut held = self.held.lock().expect("held lock");
        let h = held.entry(origin.clone()).or_default();
        h.events += 1;
        h.max_ahead_ms = h.max_ahead_ms.max(ahead_ms);
        self.metrics.held(origin.as_str(), h.events);
    }

    pub fn release(&self, origin: &NodeId) {
        let mut held = self.held.lock().expect("held lock");
        if let Some(h) = held.get_mut(origin) {
            h.events = h.events.saturating_sub(1);
            self.metrics.held(origin.as_str(), h.events);
            if h.events == 0 {
                held.remove(origin);
            }
        }
    }

    /// Why this node cannot be trusted to agree with its peers right now, if it cannot.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(own) = self.own().describe() {
            out.push(format!(
                "clock: {own}; local writes are refused until it is set right"
            ));
        }
        // A snapshot, so that the held lock is not kept while the peers one is taken
        // (report() takes them the other way round).
        let mut held: Vec<(NodeId, u64, u64)> = self
            .held
            .lock()
            .expect("held lock")
            .iter()
            .map(|(n, h)| (n.clone(), h.events, h.max_ahead_ms))
            .collect();
        held.sort();
        for (peer, events, max_ahead_ms) in held {
            let offset = self.offset_of(&peer);
            let whose = match offset {
                Some(o) if o.unsigned_abs() > self.settings.max_skew_ms => format!(
                    "{peer}'s clock is {} s {} this node's",
                    o.unsigned_abs() / 1000,
                    if o > 0 { "ahead of" } else { "behind" }
                ),
                _ => format!("{peer}'s clock was ahead, or this node's is behind"),
            };
            out.push(format!(
                "clock: holding {} events from {peer} stamped up to {} s ahead of this \
                 node's clock ({whose}); they are applied once the clocks agree",
                events,
                max_ahead_ms / 1000
            ));
        }
        out
    }

    /// The clock section of `/api/node`.
    pub fn report(&self) -> Value {
        let own = self.own();
        let peers: serde_json::Map<String, Value> = self
            .peers
            .lock()
            .expect("peers lock")
            .iter()
            .map(|(n, p)| {
                let away = p.last_heard.elapsed() > self.settings.away_after;
                (
                    n.to_string(),
                    json!({
                        "offset_ms": p.offset(),
                        "last_heard_ms_ago": p.last_heard.elapsed().as_millis() as u64,
                        "started_at": crate::app::rfc3339(p.started_ms),
                        "status": if away { "away" } else { "live" },
                    }),
                )
            })
            .collect();
        let held: serde_json::Map<String, Value> = self
            .held
            .lock()
            .expect("held lock")
            .iter()
            .map(|(n, h)| {
                (
                    n.to_string(),
                    json!({ "events": h.events, "max_ahead_ms": h.max_ahead_ms }),
                )
            })
            .collect();
        json!({
            "status": own.label(),
            "detail": own.describe(),
            "now": crate::app::rfc3339(now_ms()),
            "max_skew_ms": self.settings.max_skew_ms,
            "peers": peers,
            "held": held,
        })
    }
}
