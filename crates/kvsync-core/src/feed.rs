//! Positions in a node's change feed (the ids of `/api/events`), and whether a client can
//! resume from one. See docs/events.md, "The change feed".

use std::fmt;

/// A position in one node's change feed, written `<node id>.<epoch>.<seq>`: every change
/// the node applied with a sequence number up to `seq` was sent. The epoch names the
/// node's store (a new database, or state dropped to rejoin, gets a new one), so a
/// position from another node or another store is recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPosition {
    pub node: String,
    pub epoch: String,
    pub seq: i64,
}

impl FeedPosition {
    /// `None` if `raw` is not a position. Node ids may contain dots; epochs and
    /// sequence numbers do not, so the text is split from the right.
    pub fn parse(raw: &str) -> Option<Self> {
        let mut parts = raw.rsplitn(3, '.');
        let seq = parts.next()?;
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let seq = seq.parse().ok()?;
        let epoch = parts.next()?;
        let node = parts.next()?;
        if epoch.is_empty() || node.is_empty() {
            return None;
        }
        Some(Self {
            node: node.to_owned(),
            epoch: epoch.to_owned(),
            seq,
        })
    }
}

impl fmt::Display for FeedPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.node, self.epoch, self.seq)
    }
}

/// Why a stream cannot resume from a client's position: it gets `resync` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresumable {
    /// Not a position at all.
    Malformed,
    /// Another node's position.
    OtherNode,
    /// This node's, but of another store (a new database, or state dropped to rejoin).
    OtherStore,
    /// Older than a deleted key this node has since forgotten (tombstone collection):
    /// the client missed that delete for good.
    Collected,
    /// Beyond any change this node numbered: not one of its positions.
    Ahead,
}

impl Unresumable {
    pub fn as_str(self) -> &'static str {
        match self {
            Unresumable::Malformed => "malformed",
            Unresumable::OtherNode => "other_node",
            Unresumable::OtherStore => "other_store",
            Unresumable::Collected => "collected",
            Unresumable::Ahead => "ahead",
        }
    }
}

/// What a node knows of its own feed, to judge a client's position.
#[derive(Debug, Clone, Copy)]
pub struct FeedBounds<'a> {
    pub node: &'a str,
    pub epoch: &'a str,
    /// The greatest sequence number of a collected tombstone.
    pub collected: i64,
    /// The greatest sequence number handed out.
    pub last: i64,
}

/// The sequence number to resume after, if the stream can resume from `raw`.
pub fn resume_after(raw: &str, here: FeedBounds<'_>) -> Result<i64, Unresumable> {
    let p = FeedPosition::parse(raw.trim()).ok_or(Unresumable::Malformed)?;
    if p.node != here.node {
        Err(Unresumable::OtherNode)
    } else if p.epoch != here.epoch {
        Err(Unresumable::OtherStore)
    } else if p.seq > here.last {
        Err(Unresumable::Ahead)
    } else if p.seq < here.collected {
        Err(Unresumable::Collected)
    } else {
        Ok(p.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: FeedBounds<'static> = FeedBounds {
        node: "vm1.example",
        epoch: "3f2a",
        collected: 100,
        last: 500,
    };

    #[test]
    fn positions_round_trip_with_dotted_node_ids() {
        let p = FeedPosition {
            node: "vm1.example".into(),
            epoch: "3f2a".into(),
            seq: 1_764_079_800_123_000,
        };
        assert_eq!(p.to_string(), "vm1.example.3f2a.1764079800123000");
        assert_eq!(FeedPosition::parse(&p.to_string()), Some(p));
    }

    #[test]
    fn malformed_positions_are_rejected() {
        for raw in [
            "",
            "garbage",
            "a.b",
            "a.b.",
            "a..1",
            ".b.1",
            "a.b.-1",
            "a.b.+1",
            "a.b.1x",
            "a.b.99999999999999999999",
        ] {
            assert_eq!(FeedPosition::parse(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn resumes_only_from_own_positions_within_what_is_held() {
        assert_eq!(resume_after("vm1.example.3f2a.100", HERE), Ok(100));
        assert_eq!(resume_after(" vm1.example.3f2a.500 ", HERE), Ok(500));
        assert_eq!(resume_after("x", HERE), Err(Unresumable::Malformed));
        assert_eq!(
            resume_after("vm2.example.3f2a.200", HERE),
            Err(Unresumable::OtherNode)
        );
        assert_eq!(
            resume_after("vm1.example.9999.200", HERE),
            Err(Unresumable::OtherStore)
        );
        assert_eq!(
            resume_after("vm1.example.3f2a.99", HERE),
            Err(Unresumable::Collected)
        );
        assert_eq!(
            resume_after("vm1.example.3f2a.501", HERE),
            Err(Unresumable::Ahead)
        );
    }
}
