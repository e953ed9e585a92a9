//! The last state this node wrote or read for recently changed keys, with its document
//! revision. A write starts from it and saves the read of read-merge-write: the write is a
//! compare-and-swap on the revision, so a stale entry only costs a retry from a fresh read.

use std::{collections::HashMap, sync::Mutex};

use kvsync_core::Key;
use kvsync_store::StoredPair;

/// Bounds of the cache: a hot set of keys, not the database.
const MAX_ENTRIES: usize = 10_000;
const MAX_BYTES: usize = 64 * 1024 * 1024;

#[derive(Default)]
pub struct StateCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    pairs: HashMap<Key, (StoredPair, usize)>,
    bytes: usize,
}

impl StateCache {
    pub fn get(&self, key: &Key) -> Option<StoredPair> {
        let inner = self.inner.lock().expect("cache lock");
        inner.pairs.get(key).map(|(p, _)| p.clone())
    }

    /// Remembers `pair` unless a newer revision of it is known already.
    pub fn put(&self, pair: StoredPair) {
        let size = pair.state.approx_bytes() + pair.key.as_str().len();
        if size > MAX_BYTES / 16 {
            self.forget(&pair.key);
            return;
        }
        let mut inner = self.inner.lock().expect("cache lock");
        if inner
            .pairs
            .get(&pair.key)
            .is_some_and(|(known, _)| known.rev > pair.rev)
        {
            return;
        }
        // Past a bound, drop entries in no particular order: a miss costs one read.
        while inner.pairs.len() >= MAX_ENTRIES || inner.bytes + size > MAX_BYTES {
            let Some(victim) = inner.pairs.keys().next().cloned() else {
                break;
            };
            if let Some((_, n)) = inner.pairs.remove(&victim) {
                inner.bytes -= n;
            }
        }
        if let Some((_, n)) = inner.pairs.insert(pair.key.clone(), (pair, size)) {
            inner.bytes -= n;
        }
        inner.bytes += size;
    }

    /// Forgets everything (after tombstones were removed from the database behind it).
    pub fn clear(&self) {
        let mut inner = self.inner.lock().expect("cache lock");
        inner.pairs.clear();
        inner.bytes = 0;
    }

    pub fn forget(&self, key: &Key) {
        let mut inner = self.inner.lock().expect("cache lock");
        if let Some((_, n)) = inner.pairs.remove(key) {
            inner.bytes -= n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvsync_core::PairState;

    fn pair(key: &str, rev: i64) -> StoredPair {
        StoredPair {
            key: Key::parse(key).unwrap(),
            state: PairState::default(),
            rev,
            conflicts: Vec::new(),
        }
    }

    #[test]
    fn keeps_the_newest_revision_and_stays_bounded() {
        let cache = StateCache::default();
        let k = Key::parse("k").unwrap();
        cache.put(pair("k", 2));
        cache.put(pair("k", 1));
        assert_eq!(cache.get(&k).unwrap().rev, 2);
        cache.forget(&k);
        assert!(cache.get(&k).is_none());
        for i in 0..(MAX_ENTRIES + 10) {
            cache.put(pair(&format!("k{i}"), 1));
        }
        assert!(cache.inner.lock().unwrap().pairs.len() <= MAX_ENTRIES);
    }
}
