//! Clock agreement between members, from heartbeats.
//!
//! Every node announces its physical wall clock on the broker every second or so. A
//! receiver compares the announced time with its own at receipt:
//! `sent - received = offset - transit`, where `offset` is how far the sender's clock is
//! ahead of the receiver's. Transit only lowers a sample, so the largest recent sample is
//! the best estimate of the offset (old heartbeats read late only give smaller samples).
//!
//! From these offsets a node decides two things:
//! - whether **its own** clock is the odd one out: a strict majority of its peers, at
//!   least two, disagree with it by more than the skew bound in the same direction
//!   (with a single peer nobody can tell which of the two clocks is wrong);
//! - whether an event stamped ahead of its clock may be applied now ([`admit`]): never
//!   skipped, it is *held* while the stamp is too far ahead, and applied once the clocks
//!   agree again.

use serde::{Deserialize, Serialize};

use crate::node_id::NodeId;

/// `sent_ms - received_ms`: one sample of how far the sender's clock is ahead.
pub fn offset_sample(sent_ms: u64, received_ms: u64) -> i64 {
    sent_ms as i64 - received_ms as i64
}

/// What this node can tell about its own clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnClock {
    /// Agrees with the peers heard (or too few peers to tell).
    Agrees,
    /// Ahead of `peers` of the `of` peers heard, by about `by_ms` (their median).
    Ahead { by_ms: u64, peers: usize, of: usize },
    /// Behind `peers` of the `of` peers heard, by about `by_ms`.
    Behind { by_ms: u64, peers: usize, of: usize },
}

impl OwnClock {
    pub fn is_off(&self) -> bool {
        !matches!(self, OwnClock::Agrees)
    }

    /// `ok`, `ahead` or `behind`.
    pub fn label(&self) -> &'static str {
        match self {
            OwnClock::Agrees => "ok",
            OwnClock::Ahead { .. } => "ahead",
            OwnClock::Behind { .. } => "behind",
        }
    }

    pub fn describe(&self) -> Option<String> {
        let (dir, by_ms, peers, of) = match self {
            OwnClock::Agrees => return None,
            OwnClock::Ahead { by_ms, peers, of } => ("ahead of", by_ms, peers, of),
            OwnClock::Behind { by_ms, peers, of } => ("behind", by_ms, peers, of),
        };
        Some(format!(
            "this node's clock is {} s {dir} {peers} of its {of} peers",
            by_ms / 1000
        ))
    }
}

/// Judges this node's clock from the offsets of the peers heard recently (each peer's
/// clock minus ours, in ms).
pub fn own_clock(peer_offsets: &[i64], max_skew_ms: u64) -> OwnClock {
    let of = peer_offsets.len();
    let limit = max_skew_ms as i64;
    let mut ahead_of: Vec<i64> = peer_offsets
        .iter()
        .copied()
        .filter(|o| *o < -limit)
        .collect();
    let mut behind: Vec<i64> = peer_offsets
        .iter()
        .copied()
        .filter(|o| *o > limit)
        .collect();
    let majority = |n: usize| n >= 2 && n * 2 > of;
    if majority(ahead_of.len()) {
        ahead_of.sort_unstable();
        let by_ms = ahead_of[ahead_of.len() / 2].unsigned_abs();
        return OwnClock::Ahead {
            by_ms,
            peers: ahead_of.len(),
            of,
        };
    }
    if majority(behind.len()) {
        behind.sort_unstable();
        let by_ms = behind[behind.len() / 2].unsigned_abs();
        return OwnClock::Behind {
            by_ms,
            peers: behind.len(),
            of,
        };
    }
    OwnClock::Agrees
}

/// Whether a peer's event can be applied now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Apply,
    /// Held: stamped `ahead_ms` ahead of this node's clock. Its offset is not stored, it
    /// is tried again, and it is never skipped.
    Hold {
        ahead_ms: u64,
    },
}

/// The rule for an event stamped `stamp_ms` (its version's wall clock) arriving when this
/// node's clock reads `now_ms`:
/// - at most `max_skew_ms` ahead: applied;
/// - further ahead: held, unless the sender's physical clock is known to agree with ours
///   again (`sender_offset_ms` within the bound) and the stamp is at most `max_jump_ms`
///   ahead: then the stamp is a leftover of a clock error that has been fixed (hybrid
///   logical clocks carry the largest time seen), and it is applied, moving this node's
///   logical clock forward by at most `max_jump_ms`;
/// - an event stamped further ahead than that waits until physical time reaches it
///   within the bound.
pub fn admit(
    stamp_ms: u64,
    now_ms: u64,
    max_skew_ms: u64,
    sender_offset_ms: Option<i64>,
    max_jump_ms: u64,
) -> Admission {
    let ahead_ms = stamp_ms.saturating_sub(now_ms);
    if ahead_ms <= max_skew_ms {
        return Admission::Apply;
    }
    let sender_agrees = sender_offset_ms.is_some_and(|o| o.unsigned_abs() <= max_skew_ms);
    if sender_agrees && ahead_ms <= max_jump_ms {
        return Admission::Apply;
    }
    Admission::Hold { ahead_ms }
}

pub const HEARTBEAT_SCHEMA: u32 = 1;

/// A member's periodic announcement on the control topic (see `docs/events.md`).
/// Unknown fields are ignored, so later versions can add to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub schema: u32,
    pub kind: HeartbeatKind,
    pub node: NodeId,
    /// The sender's physical wall clock when it sent this (ms since the Unix epoch).
    pub wall_ms: u64,
    /// When the sender started (its wall clock).
    pub started_ms: u64,
    /// What the sender reports of its replication (absent from earlier releases'
    /// heartbeats, which read as an empty report).
    #[serde(default)]
    pub report: crate::cluster::Report,
    /// The sender has writes waiting for their replication: its peers report their
    /// progress as it happens, not only every interval. Absent (false) from earlier
    /// releases, which reported progress always.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waiting: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeartbeatKind {
    Heartbeat,
}

/// Heartbeats are small (a report names each partition and each origin once); anything
/// bigger is not one.
pub const MAX_HEARTBEAT_BYTES: usize = 64 * 1024;

impl Heartbeat {
    pub fn new(node: NodeId, wall_ms: u64, started_ms: u64) -> Self {
        Self {
            schema: HEARTBEAT_SCHEMA,
            kind: HeartbeatKind::Heartbeat,
            node,
            wall_ms,
            started_ms,
            report: Default::default(),
            waiting: false,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a heartbeat always serializes")
    }

    /// `None` for anything that is not a heartbeat of a known schema.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_HEARTBEAT_BYTES {
            return None;
        }
        serde_json::from_slice::<Self>(bytes)
            .ok()
            .filter(|h| h.schema == HEARTBEAT_SCHEMA)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SKEW: u64 = 300_000;
    const MIN: i64 = 60_000;

    #[test]
    fn a_lone_outlier_among_three_knows_it() {
        // node3 is 10 min ahead: both peers are 10 min behind it.
        assert_eq!(
            own_clock(&[-10 * MIN, -10 * MIN], SKEW),
            OwnClock::Ahead {
                by_ms: 600_000,
                peers: 2,
                of: 2
            }
        );
        assert!(matches!(
            own_clock(&[10 * MIN, 10 * MIN + 50], SKEW),
            OwnClock::Behind { peers: 2, .. }
        ));
        // Its peers each see one peer off and one in agreement: they are fine.
        assert_eq!(own_clock(&[10 * MIN, 0], SKEW), OwnClock::Agrees);
    }

    #[test]
    fn one_peer_cannot_tell_who_is_wrong() {
        assert_eq!(own_clock(&[10 * MIN], SKEW), OwnClock::Agrees);
        assert_eq!(own_clock(&[], SKEW), OwnClock::Agrees);
    }

    #[test]
    fn within_the_bound_is_agreement() {
        assert_eq!(own_clock(&[2 * MIN, 2 * MIN, -MIN], SKEW), OwnClock::Agrees);
    }

    #[test]
    fn a_split_cluster_has_no_majority() {
        // Two peers ahead, two in agreement: not a strict majority.
        assert_eq!(
            own_clock(&[10 * MIN, 10 * MIN, 0, 0], SKEW),
            OwnClock::Agrees
        );
    }

    #[test]
    fn events_far_ahead_are_held_until_clocks_agree() {
        let now = 1_000_000_000;
        let far = now + 600_000;
        assert_eq!(
            admit(now + 1_000, now, SKEW, None, 3_600_000),
            Admission::Apply
        );
        assert_eq!(
            admit(far, now, SKEW, None, 3_600_000),
            Admission::Hold { ahead_ms: 600_000 }
        );
        // The sender is still 10 min ahead: held.
        assert!(matches!(
            admit(far, now, SKEW, Some(600_000), 3_600_000),
            Admission::Hold { .. }
        ));
        // The sender's clock was set right: its leftover stamp is applied...
        assert_eq!(admit(far, now, SKEW, Some(30), 3_600_000), Admission::Apply);
        // ...unless it would drag the clock further than allowed.
        assert!(matches!(
            admit(far, now, SKEW, Some(30), 500_000),
            Admission::Hold { .. }
        ));
        // Our own clock caught up: applied whatever the sender.
        assert_eq!(admit(far, far - SKEW, SKEW, None, 0), Admission::Apply);
    }

    #[test]
    fn heartbeats_round_trip_and_tolerate_new_fields() {
        let h = Heartbeat::new(NodeId::parse("n1").unwrap(), 5, 1);
        assert_eq!(Heartbeat::decode(&h.encode()), Some(h.clone()));
        let mut v: serde_json::Value = serde_json::from_slice(&h.encode()).unwrap();
        v["applied"] = serde_json::json!({"n2": 7});
        assert_eq!(Heartbeat::decode(&serde_json::to_vec(&v).unwrap()), Some(h));
        assert_eq!(Heartbeat::decode(b"{\"schema\":2}"), None);
        assert_eq!(Heartbeat::decode(b"garbage"), None);
    }

    proptest! {
        /// Whatever the offsets, a node never concludes that its clock is off unless a
        /// strict majority of at least two peers disagree with it in one direction.
        #[test]
        fn off_only_on_a_majority(offsets in proptest::collection::vec(-20 * MIN..20 * MIN, 0..7)) {
            let verdict = own_clock(&offsets, SKEW);
            let far_ahead = offsets.iter().filter(|o| **o > SKEW as i64).count();
            let far_behind = offsets.iter().filter(|o| **o < -(SKEW as i64)).count();
            match verdict {
                OwnClock::Agrees => {}
                OwnClock::Behind { peers, .. } => {
                    prop_assert_eq!(peers, far_ahead);
                    prop_assert!(peers >= 2 && peers * 2 > offsets.len());
                }
                OwnClock::Ahead { peers, .. } => {
                    prop_assert_eq!(peers, far_behind);
                    prop_assert!(peers >= 2 && peers * 2 > offsets.len());
                }
            }
        }

        /// An event is held only while it is too far ahead; within the bound it is
        /// always applied, whatever is known of the sender.
        #[test]
        fn never_held_within_the_bound(now in 0u64..1u64 << 50, ahead in 0u64..SKEW, offset in proptest::option::of(-20 * MIN..20 * MIN)) {
            prop_assert_eq!(admit(now + ahead, now, SKEW, offset, 0), Admission::Apply);
        }
    }
}
