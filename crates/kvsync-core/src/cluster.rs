//! What members tell each other on the control topic besides their clocks: how far each
//! has applied the data topic (for lag and wait-for-replication), compact summaries of
//! their state (for anti-entropy repair) and the requests of a member that joins from
//! its peers' state instead of the topic's history. Formats in `docs/events.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::node_id::NodeId;

pub const CONTROL_SCHEMA: u32 = 1;
/// Buckets a replica's keys are summarised in: a summary is 256 hashes (4 KiB of hex).
pub const BUCKETS: u32 = 256;
/// Control records larger than this are not ours: a bucket listing that would be larger
/// is split (see [`BucketList::chunks`]).
pub const MAX_CONTROL_BYTES: usize = 512 * 1024;

/// A member's report of its replication, carried by its heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    /// Where people can reach the member's UI, if configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Per partition of the data topic, the next offset the member has yet to deal with:
    /// every event before it is applied (or was its own).
    pub applied: BTreeMap<i32, i64>,
    /// Per partition, one past the offset of the last event the member published.
    pub published: BTreeMap<i32, i64>,
    /// The wall time (ms) of the version of the last event the member published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_write_ms: Option<u64>,
    /// Per origin, the wall time (ms) of the newest version the member applied from it.
    pub applied_ms: BTreeMap<String, u64>,
    /// The last time (its wall clock, ms) its consumer had dealt with everything the
    /// broker held: every event published before then is applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caught_up_ms: Option<u64>,
    /// Keys it re-published to repair a peer, since it started.
    pub repairs: u64,
    /// True while it is joining from its peers' state.
    pub joining: bool,
}

/// How far one member is behind another's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lag {
    /// Records of the data topic the applier has yet to deal with before it has the
    /// origin's last published event (other members' events in between included).
    pub events: u64,
    /// How much older the applier's newest event from the origin is than the origin's
    /// last write; 0 once the applier has everything the origin published.
    pub ms: u64,
}

/// How far `applier` is behind the events `origin` (named `origin_node`) published.
pub fn lag(origin: &Report, origin_node: &str, applier: &Report) -> Lag {
    let events: u64 = origin
        .published
        .iter()
        .map(|(p, next)| (next - applier.applied.get(p).copied().unwrap_or(0)).max(0) as u64)
        .sum();
    let ms = if events == 0 {
        0
    } else {
        let applied = applier.applied_ms.get(origin_node).copied().unwrap_or(0);
        origin.last_write_ms.unwrap_or(0).saturating_sub(applied)
    };
    Lag { events, ms }
}

/// Whether a key that this member and a peer hold differently is the repair's to send
/// again: only when the peer, as its listing says ([`Control::Bucket`]), had applied
/// everything published until well after (`margin_ms`, for the two clocks) the key last
/// changed here and was last published. Otherwise the difference may be replication
/// still on its way, and sending the key again only adds to the peer's backlog (an
/// import or a restore writes states stamped long ago, so the state's own version
/// cannot tell; and a change can wait in the outbox long after it was made).
///
/// `changed_ms` is the later of when the key last changed here and when it was last
/// published ([`PublishLog`]), on this member's clock; 0: not known, long ago. Without
/// the peer's point (a member of an earlier release), keys changed in the last
/// `margin_ms` are left to replication.
pub fn repairable(
    changed_ms: u64,
    peer_caught_up_ms: Option<u64>,
    now_ms: u64,
    margin_ms: u64,
) -> bool {
    let settled_before = peer_caught_up_ms.unwrap_or(now_ms);
    changed_ms.saturating_add(margin_ms) < settled_before
}

/// When this member last published each key, for [`repairable`]: a change can wait in
/// the outbox long after it was made (a broker out of reach, a relay draining a large
/// import), and a peer cannot hold it before it was published. Entries older than any
/// listing still compared are dropped ([`PublishLog::forget_before`]), and past `max`
/// keys the oldest go: a key forgotten too early is at worst sent once more.
#[derive(Debug, Clone)]
pub struct PublishLog {
    last: std::collections::HashMap<String, u64>,
    /// Publications in the order noted, with their time; a key noted again is here twice,
    /// and only its entry that matches `last` counts.
    order: std::collections::VecDeque<(u64, String)>,
    max: usize,
}

impl PublishLog {
    pub fn new(max: usize) -> Self {
        Self {
            last: Default::default(),
            order: Default::default(),
            max: max.max(1),
        }
    }

    /// `key` was published at `at_ms` (this member's clock).
    pub fn note(&mut self, key: &str, at_ms: u64) {
        let at = self.last.entry(key.to_owned()).or_insert(at_ms);
        *at = (*at).max(at_ms);
        self.order.push_back((at_ms, key.to_owned()));
        while self.last.len() > self.max || self.order.len() > 2 * self.max {
            if !self.pop_oldest() {
                break;
            }
        }
    }

    /// When `key` was last published, if that is remembered.
    pub fn last(&self, key: &str) -> Option<u64> {
        self.last.get(key).copied()
    }

    /// Forgets publications made before `ms`.
    pub fn forget_before(&mut self, ms: u64) {
        while self.order.front().is_some_and(|(at, _)| *at < ms) {
            self.pop_oldest();
        }
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    fn pop_oldest(&mut self) -> bool {
        let Some((at, key)) = self.order.pop_front() else {
            return false;
        };
        if self.last.get(&key) == Some(&at) {
            self.last.remove(&key);
        }
        true
    }
}

/// Whether a peer's bucket listing still says how the peer stands. Members send listings
/// only while caught up, so a point (`peer_caught_up_ms`) older than `window_ms` means the
/// listing waited that long on its way (behind a backlog of the control topic, or this
/// member's own): comparing it now would re-publish what the peer has received since.
/// Listings of earlier releases carry no point and are taken as they come.
pub fn listing_current(peer_caught_up_ms: Option<u64>, now_ms: u64, window_ms: u64) -> bool {
    peer_caught_up_ms.is_none_or(|at| now_ms.saturating_sub(at) <= window_ms)
}

/// Whether a member that reported `applied` has dealt with the record at `offset` of
/// `partition`.
pub fn has_applied(applied: &BTreeMap<i32, i64>, partition: i32, offset: i64) -> bool {
    applied.get(&partition).is_some_and(|next| *next > offset)
}

/// The bucket a key is summarised in: the same on every node and every release.
pub fn bucket_of(key: &str) -> u32 {
    let h = Sha256::digest(key.as_bytes());
    u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % BUCKETS
}

/// A replica's state, summarised per bucket: each bucket hashes the fingerprints of its
/// keys. Order-independent, so it is built in one pass in any order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    hashes: Vec<u64>,
    counts: Vec<u32>,
}

impl Default for Summary {
    fn default() -> Self {
        Self {
            hashes: vec![0; BUCKETS as usize],
            counts: vec![0; BUCKETS as usize],
        }
    }
}

fn entry_hash(key: &str, fingerprint: &str) -> u64 {
    let mut h = Sha256::new();
    h.update((key.len() as u64).to_be_bytes());
    h.update(key.as_bytes());
    h.update(fingerprint.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

impl Summary {
    /// Adds a key with the fingerprint of its state ([`crate::PairState::fingerprint`]).
    pub fn add(&mut self, key: &str, fingerprint: &str) {
        let b = bucket_of(key) as usize;
        self.hashes[b] ^= entry_hash(key, fingerprint);
        self.counts[b] += 1;
    }

    /// Takes back an [`Summary::add`] of the same key and fingerprint: the summary is then
    /// as if that key had never been added (XOR undoes itself).
    pub fn remove(&mut self, key: &str, fingerprint: &str) {
        let b = bucket_of(key) as usize;
        self.hashes[b] ^= entry_hash(key, fingerprint);
        self.counts[b] = self.counts[b].saturating_sub(1);
    }

    /// The buckets whose contents differ from `other`'s.
    pub fn differing(&self, other: &Summary) -> Vec<u32> {
        (0..BUCKETS)
            .filter(|b| {
                let b = *b as usize;
                self.hashes[b] != other.hashes[b] || self.counts[b] != other.counts[b]
            })
            .collect()
    }

    /// Keys summarised, over all buckets.
    pub fn keys(&self) -> u64 {
        self.counts.iter().map(|c| u64::from(*c)).sum()
    }

    fn to_wire(&self) -> Vec<String> {
        self.hashes
            .iter()
            .zip(&self.counts)
            .map(|(h, c)| format!("{h:016x}:{c}"))
            .collect()
    }

    fn from_wire(wire: &[String]) -> Option<Self> {
        if wire.len() != BUCKETS as usize {
            return None;
        }
        let mut s = Summary::default();
        for (i, entry) in wire.iter().enumerate() {
            let (h, c) = entry.split_once(':')?;
            s.hashes[i] = u64::from_str_radix(h, 16).ok()?;
            s.counts[i] = c.parse().ok()?;
        }
        Some(s)
    }
}

/// A member's keys in one bucket, each with its state's fingerprint: what a peer
/// compares its own keys against, key by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketList {
    pub bucket: u32,
    pub entries: BTreeMap<String, String>,
}

impl BucketList {
    /// Splits into records that each stay well under [`MAX_CONTROL_BYTES`].
    pub fn chunks(self, max_bytes: usize) -> Vec<BucketList> {
        let mut out = Vec::new();
        let mut current = BTreeMap::new();
        let mut size = 0;
        for (k, fp) in self.entries {
            let entry = k.len() * 2 + fp.len() + 16;
            if size + entry > max_bytes && !current.is_empty() {
                out.push(BucketList {
                    bucket: self.bucket,
                    entries: std::mem::take(&mut current),
                });
                size = 0;
            }
            size += entry;
            current.insert(k, fp);
        }
        out.push(BucketList {
            bucket: self.bucket,
            entries: current,
        });
        out
    }
}

/// Records on the control topic other than heartbeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// A member's summary of its state, sent every repair interval.
    Summary { node: NodeId, summary: Summary },
    /// A member's keys in a bucket where its summary and a peer's differ (`part` of
    /// `parts`: large buckets take several records).
    Bucket {
        node: NodeId,
        list: BucketList,
        part: u32,
        parts: u32,
        /// The time (the member's clock, ms) before which every event published was
        /// applied by the member when it read these keys: a key changed after it may
        /// differ only because replication has not brought it yet (see [`repairable`]).
        /// `None` from members of earlier releases.
        caught_up_ms: Option<u64>,
    },
    /// A member joining from state asks a peer (`target`) for its state.
    Sync {
        node: NodeId,
        request: Uuid,
        target: NodeId,
    },
    /// A peer has published its whole state for `request` on the data topic: once the
    /// requester has applied up to `until` (per partition, the next offset), it holds it.
    Synced {
        node: NodeId,
        request: Uuid,
        until: BTreeMap<i32, i64>,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Wire {
    Summary {
        schema: u32,
        node: NodeId,
        buckets: Vec<String>,
    },
    Bucket {
        schema: u32,
        node: NodeId,
        bucket: u32,
        part: u32,
        parts: u32,
        keys: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caught_up_ms: Option<u64>,
    },
    Sync {
        schema: u32,
        node: NodeId,
        request: Uuid,
        target: NodeId,
    },
    Synced {
        schema: u32,
        node: NodeId,
        request: Uuid,
        /// `[partition, next offset]` pairs: integer map keys do not survive the tag.
        until: Vec<(i32, i64)>,
    },
}

impl Control {
    pub fn node(&self) -> &NodeId {
        match self {
            Control::Summary { node, .. }
            | Control::Bucket { node, .. }
            | Control::Sync { node, .. }
            | Control::Synced { node, .. } => node,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let schema = CONTROL_SCHEMA;
        let wire = match self.clone() {
            Control::Summary { node, summary } => Wire::Summary {
                schema,
                node,
                buckets: summary.to_wire(),
            },
            Control::Bucket {
                node,
                list,
                part,
                parts,
                caught_up_ms,
            } => Wire::Bucket {
                schema,
                node,
                bucket: list.bucket,
                part,
                parts,
                keys: list.entries,
                caught_up_ms,
            },
            Control::Sync {
                node,
                request,
                target,
            } => Wire::Sync {
                schema,
                node,
                request,
                target,
            },
            Control::Synced {
                node,
                request,
                until,
            } => Wire::Synced {
                schema,
                node,
                request,
                until: until.into_iter().collect(),
            },
        };
        serde_json::to_vec(&wire).expect("a control record always serializes")
    }

    /// `None` for anything that is not a control record of a known kind and schema
    /// (heartbeats included: they are read by [`crate::Heartbeat::decode`]).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_CONTROL_BYTES {
            return None;
        }
        let wire: Wire = serde_json::from_slice(bytes).ok()?;
        Some(match wire {
            Wire::Summary {
                schema,
                node,
                buckets,
            } if schema == CONTROL_SCHEMA => Control::Summary {
                node,
                summary: Summary::from_wire(&buckets)?,
            },
            Wire::Bucket {
                schema,
                node,
                bucket,
                part,
                parts,
                keys,
                caught_up_ms,
            } if schema == CONTROL_SCHEMA && bucket < BUCKETS && part < parts => Control::Bucket {
                node,
                list: BucketList {
                    bucket,
                    entries: keys,
                },
                part,
                parts,
                caught_up_ms,
            },
            Wire::Sync {
                schema,
                node,
                request,
                target,
            } if schema == CONTROL_SCHEMA => Control::Sync {
                node,
                request,
                target,
            },
            Wire::Synced {
                schema,
                node,
                request,
                until,
            } if schema == CONTROL_SCHEMA => Control::Synced {
                node,
                request,
                until: until.into_iter().collect(),
            },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(n: &str) -> NodeId {
        NodeId::parse(n).unwrap()
    }

    fn report(published: &[(i32, i64)], applied: &[(i32, i64)]) -> Report {
        Report {
            published: published.iter().copied().collect(),
            applied: applied.iter().copied().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_listing_that_waited_longer_than_the_window_is_not_compared() {
        assert!(listing_current(Some(50_000), 60_000, 10_000));
        assert!(!listing_current(Some(49_999), 60_000, 10_000));
        // Clocks a little apart: a point ahead of this member's clock is current.
        assert!(listing_current(Some(61_000), 60_000, 10_000));
        assert!(listing_current(None, 60_000, 10_000), "earlier releases");
    }

    #[test]
    fn lag_counts_records_up_to_the_origins_last_event() {
        let mut a = report(&[(0, 10), (1, 4)], &[]);
        a.last_write_ms = Some(5_000);
        let mut b = report(&[], &[(0, 7), (1, 4)]);
        b.applied_ms.insert("a".into(), 4_200);
        assert_eq!(lag(&a, "a", &b), Lag { events: 3, ms: 800 });
        // Past the origin's last event: no lag, whatever the other partitions hold.
        let c = report(&[], &[(0, 12), (1, 9)]);
        assert_eq!(lag(&a, "a", &c), Lag { events: 0, ms: 0 });
        // An applier that reported nothing yet is behind by everything.
        assert_eq!(lag(&a, "a", &Report::default()).events, 14);
        assert!(has_applied(&c.applied, 0, 11));
        assert!(!has_applied(&c.applied, 0, 12));
        assert!(!has_applied(&c.applied, 2, 0));
    }

    #[test]
    fn a_heartbeat_of_an_earlier_release_reads_as_an_empty_report() {
        let old = br#"{"schema":1,"kind":"heartbeat","node":"n1","wall_ms":5,"started_ms":1}"#;
        let hb = crate::Heartbeat::decode(old).unwrap();
        assert_eq!(hb.report, Report::default());
        let mut new = crate::Heartbeat::new(node("n1"), 5, 1);
        new.report = report(&[(0, 3)], &[(0, 2)]);
        new.report.applied_ms.insert("n2".into(), 9);
        assert_eq!(crate::Heartbeat::decode(&new.encode()).unwrap(), new);
        // A heartbeat is not a control record, nor the reverse.
        assert!(Control::decode(&new.encode()).is_none());
        let sync = Control::Sync {
            node: node("n1"),
            request: Uuid::nil(),
            target: node("n2"),
        };
        assert!(crate::Heartbeat::decode(&sync.encode()).is_none());
    }

    #[test]
    fn control_records_round_trip_and_junk_is_refused() {
        let mut summary = Summary::default();
        summary.add("k", "fp");
        let list = BucketList {
            bucket: 3,
            entries: [("a".to_owned(), "f1".to_owned())].into(),
        };
        for record in [
            Control::Summary {
                node: node("n1"),
                summary,
            },
            Control::Bucket {
                node: node("n1"),
                list: list.clone(),
                part: 0,
                parts: 1,
                caught_up_ms: Some(1_700_000_000_000),
            },
            Control::Bucket {
                node: node("n1"),
                list,
                part: 0,
                parts: 1,
                caught_up_ms: None,
            },
            Control::Sync {
                node: node("n2"),
                request: Uuid::now_v7(),
                target: node("n1"),
            },
            Control::Synced {
                node: node("n2"),
                request: Uuid::now_v7(),
                until: [(0, 5)].into(),
            },
        ] {
            assert_eq!(Control::decode(&record.encode()), Some(record));
        }
        for junk in [
            &br#"{"kind":"sync","schema":2,"node":"n","target":"m","request":"00000000-0000-0000-0000-000000000000"}"#[..],
            br#"{"kind":"summary","schema":1,"node":"n","buckets":["0:1"]}"#,
            br#"{"kind":"bucket","schema":1,"node":"n","bucket":999,"part":0,"parts":1,"keys":{}}"#,
            br#"{"kind":"bucket","schema":1,"node":"n","bucket":1,"part":1,"parts":1,"keys":{}}"#,
            br#"{"kind":"other"}"#,
            b"not json",
        ] {
            assert_eq!(Control::decode(junk), None, "{}", String::from_utf8_lossy(junk));
        }
    }

    #[test]
    fn keys_a_peer_may_still_be_applying_are_not_repaired() {
        let (now, margin) = (1_000_000, 2_000);
        // The peer had applied everything up to a minute ago: a key changed since is on
        // its way, one changed before that really differs.
        let caught_up = Some(now - 60_000);
        assert!(!repairable(now - 1_000, caught_up, now, margin));
        assert!(!repairable(now - 59_000, caught_up, now, margin));
        assert!(repairable(now - 62_001, caught_up, now, margin));
        // Unknown change time: long ago.
        assert!(repairable(0, caught_up, now, margin));
        // A peer without the point: only the last moments are left to replication.
        assert!(!repairable(now - 1_000, None, now, margin));
        assert!(repairable(now - 3_000, None, now, margin));
        // A peer that never caught up (point 0) gets nothing but what is long known.
        assert!(!repairable(now - 1_000, Some(0), now, margin));
    }

    #[test]
    fn the_publish_log_keeps_each_keys_latest_publication_for_a_while() {
        let mut log = PublishLog::new(3);
        assert_eq!(log.last("a"), None);
        log.note("a", 100);
        log.note("b", 200);
        log.note("a", 300);
        assert_eq!(
            (log.last("a"), log.last("b"), log.len()),
            (Some(300), Some(200), 2)
        );
        // A late note does not move a key back.
        log.note("a", 250);
        assert_eq!(log.last("a"), Some(300));
        // Forgetting what came before 250 keeps a's later publication.
        log.forget_before(250);
        assert_eq!((log.last("a"), log.last("b")), (Some(300), None));
        log.forget_before(301);
        assert!(log.is_empty());
    }

    #[test]
    fn the_publish_log_is_bounded() {
        let mut log = PublishLog::new(3);
        for (i, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
            log.note(key, i as u64);
        }
        assert_eq!(log.len(), 3);
        assert_eq!(log.last("a"), None, "the oldest goes first");
        // A key noted over and over keeps the log bounded too.
        for t in 10..1_000 {
            log.note("d", t);
        }
        assert!(log.len() <= 3 && log.order.len() <= 6);
        assert_eq!(log.last("d"), Some(999));
    }

    #[test]
    fn a_key_published_late_is_not_repaired_before_the_peer_could_apply_it() {
        let (now, margin) = (1_000_000, 2_000);
        let caught_up = Some(now - 5_000);
        // Changed a minute ago, published 6 s ago: the peer's point is before it.
        let changed = now - 60_000;
        let mut log = PublishLog::new(10);
        log.note("k", now - 6_000);
        let when = changed.max(log.last("k").unwrap_or(0));
        assert!(!repairable(when, caught_up, now, margin));
        // Published well before the point: the peer should hold it.
        log.note("j", now - 30_000);
        assert!(repairable(
            changed.max(log.last("j").unwrap_or(0)),
            caught_up,
            now,
            margin
        ));
    }

    #[test]
    fn bucket_lists_split_under_the_size_bound() {
        let entries: BTreeMap<String, String> = (0..1000)
            .map(|i| (format!("key-{i:04}"), "0123456789abcdef".to_owned()))
            .collect();
        let list = BucketList {
            bucket: 1,
            entries: entries.clone(),
        };
        let chunks = list.chunks(4096);
        assert!(chunks.len() > 1);
        let mut joined = BTreeMap::new();
        for c in chunks {
            let record = Control::Bucket {
                node: node("n"),
                list: c.clone(),
                part: 0,
                parts: 1,
                caught_up_ms: Some(u64::MAX),
            };
            assert!(record.encode().len() < 2 * 4096);
            joined.extend(c.entries);
        }
        assert_eq!(joined, entries);
    }

    proptest! {
        /// Summaries are equal exactly where the buckets' contents are, whatever the
        /// order keys are added in.
        #[test]
        fn summaries_find_exactly_the_buckets_that_differ(
            keys in proptest::collection::btree_map("[a-z]{1,6}", "[0-9a-f]{4}", 0..60),
            changed in proptest::collection::btree_set("[a-z]{1,6}", 0..5),
        ) {
            let mut a = Summary::default();
            let mut b = Summary::default();
            for (k, fp) in &keys {
                a.add(k, fp);
            }
            let mut expected = std::collections::BTreeSet::new();
            for (k, fp) in keys.iter().rev() {
                if changed.contains(k) {
                    b.add(k, "changed");
                    expected.insert(bucket_of(k));
                } else {
                    b.add(k, fp);
                }
            }
            // Keys only one side has differ too.
            for k in &changed {
                if !keys.contains_key(k) {
                    b.add(k, "new");
                    expected.insert(bucket_of(k));
                }
            }
            prop_assert_eq!(a.differing(&b), expected.into_iter().collect::<Vec<_>>());
            prop_assert_eq!(Summary::from_wire(&b.to_wire()), Some(b));
        }
    }
}
