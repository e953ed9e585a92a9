//! What a replica holds, key by key, as the anti-entropy repair compares it: each key's
//! state fingerprint, bucket by bucket, with the bucket summary ([`Summary`]) kept up to
//! date as keys change.
//!
//! A replica builds the index once from a read of its whole database, then notes every
//! write it makes, so a repair round costs no read of the database (on a database that
//! serves one query at a time, a full read of 100,000 documents held every write up for
//! seconds). Notes may arrive out of order, and a rebuild's read races with the writes:
//! each entry carries the change's number in the replica's change feed, which grows with
//! every write of a key, and the higher number wins.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    cluster::{bucket_of, Summary, BUCKETS},
    PairState,
};

/// One key as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    /// The fingerprint of the key's state ([`crate::PairState::fingerprint`]).
    pub fingerprint: String,
    /// The number of the write that stored this state, in the replica's change feed.
    pub seq: i64,
    /// For a tombstone, the wall time (ms) of its version (0 when it has none): a
    /// tombstone past the horizon is being collected and leaves the summaries.
    pub tombstone_ms: Option<u64>,
}

impl Indexed {
    /// `state`, stored by the write numbered `seq`, as the index holds it.
    pub fn of(state: &PairState, seq: i64) -> Self {
        Self {
            fingerprint: state.fingerprint(),
            seq,
            tombstone_ms: (!state.is_live()).then(|| state.version().map_or(0, |v| v.ts.wall_ms)),
        }
    }
}

/// A replica's keys and fingerprints per bucket, with their summary.
#[derive(Debug, Clone)]
pub struct KeyIndex {
    buckets: Vec<BTreeMap<String, Indexed>>,
    summary: Summary,
    /// Tombstones by the time of their version, for [`KeyIndex::forget_tombstones_before`].
    tombstones: BTreeSet<(u64, String)>,
}

impl Default for KeyIndex {
    fn default() -> Self {
        Self {
            buckets: vec![BTreeMap::new(); BUCKETS as usize],
            summary: Summary::default(),
            tombstones: BTreeSet::new(),
        }
    }
}

impl KeyIndex {
    /// Records `key`'s state, unless the index already holds a later write of it.
    /// Returns whether the entry changed.
    pub fn note(&mut self, key: &str, entry: Indexed) -> bool {
        let bucket = &mut self.buckets[bucket_of(key) as usize];
        if let Some(old) = bucket.get(key) {
            if old.seq > entry.seq || *old == entry {
                return false;
            }
            self.summary.remove(key, &old.fingerprint);
            if let Some(ms) = old.tombstone_ms {
                self.tombstones.remove(&(ms, key.to_owned()));
            }
        }
        self.summary.add(key, &entry.fingerprint);
        if let Some(ms) = entry.tombstone_ms {
            self.tombstones.insert((ms, key.to_owned()));
        }
        bucket.insert(key.to_owned(), entry);
        true
    }

    /// Drops the tombstones whose version is older than `ms` (the tombstone horizon ago):
    /// summaries leave them out, as replicas collect them at slightly different times.
    /// Returns how many were dropped.
    pub fn forget_tombstones_before(&mut self, ms: u64) -> usize {
        let keep = self.tombstones.split_off(&(ms, String::new()));
        let gone = std::mem::replace(&mut self.tombstones, keep);
        for (_, key) in &gone {
            let bucket = &mut self.buckets[bucket_of(key) as usize];
            if let Some(old) = bucket.remove(key) {
                self.summary.remove(key, &old.fingerprint);
            }
        }
        gone.len()
    }

    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    pub fn get(&self, key: &str) -> Option<&Indexed> {
        self.buckets[bucket_of(key) as usize].get(key)
    }

    /// The keys of bucket `b` with their fingerprints, as a bucket listing carries them.
    pub fn bucket(&self, b: u32) -> BTreeMap<String, String> {
        self.buckets
            .get(b as usize)
            .map(|keys| {
                keys.iter()
                    .map(|(k, e)| (k.clone(), e.fingerprint.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The keys of bucket `b` as the index holds them (empty for no such bucket).
    pub fn bucket_entries(&self, b: u32) -> &BTreeMap<String, Indexed> {
        static NONE: BTreeMap<String, Indexed> = BTreeMap::new();
        self.buckets.get(b as usize).unwrap_or(&NONE)
    }

    /// Keys held, tombstones included.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(BTreeMap::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn live(fp: &str, seq: i64) -> Indexed {
        Indexed {
            fingerprint: fp.into(),
            seq,
            tombstone_ms: None,
        }
    }

    fn tomb(fp: &str, seq: i64, ms: u64) -> Indexed {
        Indexed {
            tombstone_ms: Some(ms),
            ..live(fp, seq)
        }
    }

    /// The summary of exactly these entries, built from nothing.
    fn summary_of<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> Summary {
        let mut s = Summary::default();
        for (k, fp) in entries {
            s.add(k, fp);
        }
        s
    }

    #[test]
    fn a_later_write_replaces_an_earlier_one_and_not_the_reverse() {
        let mut index = KeyIndex::default();
        assert!(index.note("a", live("f1", 10)));
        assert!(index.note("a", live("f2", 12)));
        assert!(
            !index.note("a", live("f1", 10)),
            "an older note arriving late"
        );
        assert_eq!(index.get("a").unwrap().fingerprint, "f2");
        assert_eq!(index.summary(), &summary_of([("a", "f2")]));
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn the_same_note_twice_changes_nothing() {
        let mut index = KeyIndex::default();
        index.note("a", live("f1", 10));
        let before = index.summary().clone();
        assert!(!index.note("a", live("f1", 10)));
        assert_eq!(index.summary(), &before);
        assert_eq!(index.summary().keys(), 1);
    }

    #[test]
    fn tombstones_past_the_horizon_leave_the_summary_and_live_keys_stay() {
        let mut index = KeyIndex::default();
        index.note("old", tomb("t1", 1, 1_000));
        index.note("new", tomb("t2", 2, 5_000));
        index.note("live", live("l", 3));
        // A tombstone brought back to life is no longer one.
        index.note("back", tomb("t3", 4, 1_000));
        index.note("back", live("b", 5));
        assert_eq!(index.forget_tombstones_before(2_000), 1);
        assert!(index.get("old").is_none());
        assert_eq!(
            index.summary(),
            &summary_of([("new", "t2"), ("live", "l"), ("back", "b")])
        );
        assert_eq!(index.forget_tombstones_before(2_000), 0);
    }

    #[test]
    fn a_bucket_lists_its_keys_with_their_fingerprints() {
        let mut index = KeyIndex::default();
        for i in 0..50 {
            index.note(&format!("k{i}"), live(&format!("f{i}"), i));
        }
        let b = bucket_of("k7");
        let list = index.bucket(b);
        assert_eq!(list.get("k7").map(String::as_str), Some("f7"));
        assert!(list.keys().all(|k| bucket_of(k) == b));
        let total: usize = (0..BUCKETS).map(|b| index.bucket(b).len()).sum();
        assert_eq!(total, 50);
        assert!(index.bucket(BUCKETS).is_empty(), "no such bucket");
    }

    proptest! {
        /// Whatever order the notes of a set of writes arrive in, and however often, the
        /// index holds each key's latest write, and its summary is the one built from
        /// those alone: what a rebuild racing with writes relies on.
        #[test]
        fn notes_in_any_order_leave_the_latest_write_of_each_key(
            writes in proptest::collection::vec(("[a-e]", "[0-9a-f]{2}", proptest::option::of(0u64..100)), 1..40),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 0..80),
            horizon in 0u64..120,
        ) {
            // Write i has number i: later writes have higher numbers.
            let notes: Vec<(String, Indexed)> = writes
                .iter()
                .enumerate()
                .map(|(i, (k, fp, tomb))| (k.clone(), Indexed { fingerprint: fp.clone(), seq: i as i64, tombstone_ms: *tomb }))
                .collect();
            let mut index = KeyIndex::default();
            // Some notes twice, in a shuffled order, then every note once (the last
            // write of each key must arrive at least once).
            for i in &order {
                let (k, e) = i.get(&notes);
                index.note(k, e.clone());
            }
            for (k, e) in notes.iter().rev() {
                index.note(k, e.clone());
            }
            index.forget_tombstones_before(horizon);

            let mut latest: BTreeMap<&str, &Indexed> = BTreeMap::new();
            for (k, e) in &notes {
                latest.insert(k, e);
            }
            latest.retain(|_, e| e.tombstone_ms.is_none_or(|ms| ms >= horizon));
            prop_assert_eq!(index.len(), latest.len());
            for (k, e) in &latest {
                prop_assert_eq!(index.get(k), Some(*e));
            }
            prop_assert_eq!(
                index.summary(),
                &summary_of(latest.iter().map(|(k, e)| (*k, e.fingerprint.as_str())))
            );
        }
    }
}
