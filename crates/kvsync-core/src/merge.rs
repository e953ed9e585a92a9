//! The merge rule: last writer wins by [`Version`], deletes leave tombstones.
//!
//! Stores implement the same rule as a conditional write; [`Replica`] is the reference
//! model the property tests check it against.

use std::collections::BTreeMap;

use crate::{
    event::{Event, Op},
    key::Key,
    pair::Values,
    version::Version,
};

/// Whether a change at `incoming` replaces what a replica holds at `stored`.
/// Strictly newer only: the same version again (a duplicate) changes nothing.
pub fn supersedes(incoming: &Version, stored: Option<&Version>) -> bool {
    stored.is_none_or(|s| incoming > s)
}

/// What a replica holds for one key. `values: None` is a tombstone: the key was
/// deleted at `version`, and nothing older may bring it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub values: Option<Values>,
    pub version: Version,
}

impl Entry {
    pub fn from_event(event: &Event) -> Self {
        Self {
            values: event.values().cloned(),
            version: event.version.clone(),
        }
    }

    pub fn is_tombstone(&self) -> bool {
        self.values.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// The replica already held this version or a newer one.
    Stale,
}

/// An in-memory replica following the merge rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replica {
    entries: BTreeMap<Key, Entry>,
}

impl Replica {
    pub fn apply(&mut self, event: &Event) -> Outcome {
        let stored = self.entries.get(&event.key).map(|e| &e.version);
        if !supersedes(&event.version, stored) {
            return Outcome::Stale;
        }
        self.entries
            .insert(event.key.clone(), Entry::from_event(event));
        Outcome::Applied
    }

    pub fn get(&self, key: &Key) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Live values only, as a reader sees them.
    pub fn live(&self) -> impl Iterator<Item = (&Key, &Values)> {
        self.entries
            .iter()
            .filter_map(|(k, e)| e.values.as_ref().map(|v| (k, v)))
    }

    pub fn entries(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.entries.iter()
    }
}

/// Convenience for tests and tools: the op an entry would replicate as.
pub fn op_of(entry: &Entry) -> Op {
    match &entry.values {
        Some(v) => Op::Put(v.clone()),
        None => Op::Delete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{clock::Timestamp, digest::Digest, node_id::NodeId};
    use proptest::prelude::*;

    fn ev(key: &str, ms: u64, counter: u32, node: &str, values: Option<&[&str]>) -> Event {
        let key = Key::parse(key).unwrap();
        let version = Version::new(Timestamp::new(ms, counter), NodeId::parse(node).unwrap());
        let op = match values {
            Some(v) => Op::Put(
                Values::new(
                    v.iter().map(|s| s.to_string()).collect(),
                    key.as_str().len(),
                )
                .unwrap(),
            ),
            None => Op::Delete,
        };
        Event::new(key, version, op)
    }

    #[test]
    fn newer_wins_older_is_stale_duplicates_are_noops() {
        let mut r = Replica::default();
        let a = ev("k", 10, 0, "n1", Some(&["a"]));
        let b = ev("k", 11, 0, "n1", Some(&["b"]));
        assert_eq!(r.apply(&b), Outcome::Applied);
        assert_eq!(r.apply(&a), Outcome::Stale);
        assert_eq!(r.apply(&b), Outcome::Stale);
        let key = Key::parse("k").unwrap();
        assert_eq!(
            r.get(&key).unwrap().values.as_ref().unwrap().as_slice(),
            ["b"]
        );
    }

    #[test]
    fn node_id_breaks_ties() {
        let mut r = Replica::default();
        r.apply(&ev("k", 10, 0, "n2", Some(&["from n2"])));
        assert_eq!(
            r.apply(&ev("k", 10, 0, "n1", Some(&["from n1"]))),
            Outcome::Stale
        );
    }

    #[test]
    fn tombstones_block_older_puts() {
        let mut r = Replica::default();
        r.apply(&ev("k", 20, 0, "n1", None));
        assert_eq!(
            r.apply(&ev("k", 19, 5, "n2", Some(&["zombie"]))),
            Outcome::Stale
        );
        assert_eq!(r.live().count(), 0);
        assert!(r.get(&Key::parse("k").unwrap()).unwrap().is_tombstone());
        // A newer put brings the key back.
        assert_eq!(
            r.apply(&ev("k", 21, 0, "n2", Some(&["back"]))),
            Outcome::Applied
        );
        assert_eq!(r.live().count(), 1);
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        (
            prop::sample::select(vec!["a", "b", "c", "d"]),
            0u64..6,
            0u32..2,
            prop::sample::select(vec!["n1", "n2", "n3"]),
            prop::option::of(prop::collection::vec("[a-z]{0,3}", 0..3)),
        )
            .prop_map(|(k, ms, c, n, vals)| {
                let vals: Option<Vec<&str>> = vals
                    .as_ref()
                    .map(|v| v.iter().map(String::as_str).collect());
                ev(k, ms, c, n, vals.as_deref())
            })
    }

    /// Distinct changes have distinct versions: the node that made a change never reuses
    /// a version. Generated events that collide on (key, version) are made consistent.
    fn dedupe_versions(events: Vec<Event>) -> Vec<Event> {
        let mut seen = BTreeMap::new();
        events
            .into_iter()
            .map(|e| {
                seen.entry((e.key.clone(), e.version.clone()))
                    .or_insert(e)
                    .clone()
            })
            .collect()
    }

    fn digest(r: &Replica) -> (u64, String) {
        let mut d = Digest::new();
        for (k, e) in r.entries() {
            d.add(k.as_str(), &e.version, e.is_tombstone());
        }
        d.finish()
    }

    proptest! {
        /// Convergence: every replica that receives the same set of events, in any order
        /// and with any duplicates, ends in the same state.
        #[test]
        fn any_order_with_duplicates_converges(
            events in prop::collection::vec(arb_event(), 1..40),
            orders in prop::collection::vec(
                prop::collection::vec(any::<prop::sample::Index>(), 1..80), 1..5),
        ) {
            let events = dedupe_versions(events);
            let mut reference = Replica::default();
            for e in &events {
                reference.apply(e);
            }
            for picks in orders {
                let mut replica = Replica::default();
                // Every event at least once, then arbitrary duplicates, in shuffled order.
                let mut delivery: Vec<&Event> = events.iter().collect();
                delivery.extend(picks.iter().map(|i| i.get(&events)));
                let n = delivery.len();
                for (j, i) in picks.iter().enumerate() {
                    delivery.swap(j % n, i.index(n));
                }
                for e in delivery {
                    replica.apply(e);
                }
                prop_assert_eq!(&replica, &reference);
                prop_assert_eq!(digest(&replica), digest(&reference));
            }
        }

        /// The state holds, per key, the event with the greatest version.
        #[test]
        fn state_is_the_maximum_version(events in prop::collection::vec(arb_event(), 1..40)) {
            let events = dedupe_versions(events);
            let mut r = Replica::default();
            for e in &events {
                r.apply(e);
            }
            for (key, entry) in r.entries() {
                let max = events.iter().filter(|e| &e.key == key).map(|e| &e.version).max().unwrap();
                prop_assert_eq!(&entry.version, max);
            }
        }
    }
}
