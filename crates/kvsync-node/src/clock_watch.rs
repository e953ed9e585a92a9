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
        self.heard_at(hb, Instant::now(), now_ms());
    }

    /// Records a heartbeat received at `now`, when this node's wall clock read `local_ms`.
    fn heard_at(&self, hb: &Heartbeat, now: Instant, local_ms: u64) {
        if hb.node == self.node {
            return;
        }
        let sample = offset_sample(hb.wall_ms, local_ms);
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
        self.offset_heard_since(peer, None)
    }

    /// A live peer's offset; with `since`, only if it was last heard at or after it.
    fn offset_heard_since(&self, peer: &NodeId, since: Option<Instant>) -> Option<i64> {
        let peers = self.peers.lock().expect("peers lock");
        peers
            .get(peer)
            .filter(|p| p.last_heard.elapsed() <= self.settings.away_after)
            .filter(|p| since.is_none_or(|s| p.last_heard >= s))
            .and_then(Peer::offset)
    }

    pub fn own(&self) -> OwnClock {
        let offsets: Vec<i64> = self.live_offsets().into_iter().map(|(_, o)| o).collect();
        own_clock(&offsets, self.settings.max_skew_ms)
    }

    /// Whether `event`, received at `received`, can be applied now (see
    /// `kvsync_core::skew::admit`).
    pub fn admit(&self, event: &Event, received: Instant) -> Admission {
        self.admit_at(event, received, now_ms())
    }

    /// The sender's clock counts as agreeing only on a heartbeat heard after the event
    /// arrived: a clock that has just jumped ahead stamps events before its next
    /// heartbeat tells the peers, and those events must be held, not trusted on the
    /// strength of an older heartbeat.
    fn admit_at(&self, event: &Event, received: Instant, local_ms: u64) -> Admission {
        admit(
            event.version.ts.wall_ms,
            local_ms,
            self.settings.max_skew_ms,
            self.offset_heard_since(&event.origin, Some(received)),
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

    /// How many peer events this node holds for clock reasons.
    pub fn holding(&self) -> u64 {
        self.held
            .lock()
            .expect("held lock")
            .values()
            .map(|h| h.events)
            .sum()
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

#[cfg(test)]
mod tests {
    use super::*;
    use kvsync_core::{Key, Op, Timestamp, Version};

    const T0: u64 = 1_800_000_000_000;
    const AHEAD: u64 = 600_000;

    fn watch() -> ClockWatch {
        let settings = ClockSettings {
            max_skew_ms: 300_000,
            max_jump_ms: 3_600_000,
            away_after: Duration::from_secs(30),
        };
        ClockWatch::new(NodeId::parse("node1").unwrap(), settings, Metrics::new())
    }

    fn beat(w: &ClockWatch, at: Instant, peer_offset_ms: i64) {
        let hb = Heartbeat::new(
            NodeId::parse("node3").unwrap(),
            T0.saturating_add_signed(peer_offset_ms),
            T0,
        );
        w.heard_at(&hb, at, T0);
    }

    /// node3's event stamped `ahead_ms` past this node's clock.
    fn stamped(ahead_ms: u64) -> Event {
        let version = Version::new(
            Timestamp::new(T0 + ahead_ms, 0),
            NodeId::parse("node3").unwrap(),
        );
        Event::new(Key::parse("k").unwrap(), version, Op::Delete)
    }

    fn stamped_ahead() -> Event {
        stamped(AHEAD)
    }

    #[test]
    fn a_far_ahead_stamp_is_held_until_a_later_heartbeat_vouches_for_its_sender() {
        let w = watch();
        let start = Instant::now();
        beat(&w, start, 0);
        // The sender's clock agreed a moment ago, but that says nothing of an event
        // stamped since: its clock may have jumped after that heartbeat.
        let received = start + Duration::from_millis(500);
        let held = w.admit_at(&stamped_ahead(), received, T0);
        assert_eq!(held, Admission::Hold { ahead_ms: AHEAD });
        // A heartbeat heard after the event arrived, still agreeing: the stamp is a
        // leftover of a clock error already fixed, and within the jump bound.
        beat(&w, received + Duration::from_millis(500), 0);
        assert_eq!(w.admit_at(&stamped_ahead(), received, T0), Admission::Apply);
    }

    #[test]
    fn a_far_ahead_stamp_stays_held_when_the_next_heartbeat_shows_the_jump() {
        let w = watch();
        let start = Instant::now();
        beat(&w, start, 0);
        let received = start + Duration::from_millis(500);
        beat(&w, received + Duration::from_millis(500), AHEAD as i64);
        assert_eq!(
            w.admit_at(&stamped_ahead(), received, T0),
            Admission::Hold { ahead_ms: AHEAD }
        );
    }

    #[test]
    fn a_stamp_within_the_bound_needs_no_heartbeat() {
        let w = watch();
        assert_eq!(
            w.admit_at(&stamped(1_000), Instant::now(), T0),
            Admission::Apply
        );
    }
}
