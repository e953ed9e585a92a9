//! This node's [`KeyIndex`]: noted by every write that changes a pair, read and rebuilt
//! by the repair (see `repair.rs`).
//!
//! Until the repair first reads the database the index is cold and notes are dropped
//! (that read includes them). During a rebuild, notes go to both the index in use and
//! the one being built, so a write the rebuild's read missed is still in it.

use std::{sync::Mutex, time::Instant};

use kvsync_core::{
    index::{Indexed, KeyIndex},
    Key, PairState,
};

#[derive(Default)]
pub struct StateIndex {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    current: Option<KeyIndex>,
    next: Option<KeyIndex>,
    built: Option<Instant>,
}

impl Inner {
    fn active(&self) -> bool {
        self.current.is_some() || self.next.is_some()
    }
}

impl StateIndex {
    /// A write numbered `seq` stored `state` for `key`.
    pub fn note(&self, key: &Key, state: &PairState, seq: i64) {
        if !self.lock().active() {
            return; // Cold: the first read of the database will see this write.
        }
        // Hashed outside the lock: writers of other keys do not wait for it.
        let entry = Indexed::of(state, seq);
        let mut inner = self.lock();
        if let Some(next) = inner.next.as_mut() {
            next.note(key.as_str(), entry.clone());
        }
        if let Some(current) = inner.current.as_mut() {
            current.note(key.as_str(), entry);
        }
    }

    /// Starts building a new index from a read of the whole database.
    pub fn begin_rebuild(&self) {
        self.lock().next = Some(KeyIndex::default());
    }

    /// A key as the rebuild's read found it.
    pub fn note_scanned(&self, key: &str, entry: Indexed) {
        if let Some(next) = self.lock().next.as_mut() {
            next.note(key, entry);
        }
    }

    /// The read is complete: the new index replaces the one in use.
    pub fn finish_rebuild(&self) {
        let mut inner = self.lock();
        if let Some(next) = inner.next.take() {
            inner.current = Some(next);
            inner.built = Some(Instant::now());
        }
    }

    /// The read broke off: the index in use stays.
    pub fn abandon_rebuild(&self) {
        self.lock().next = None;
    }

    /// When the index in use was built; `None` while cold.
    pub fn built(&self) -> Option<Instant> {
        self.lock().built
    }

    /// `f` on the index in use; `None` while cold.
    pub fn with<R>(&self, f: impl FnOnce(&mut KeyIndex) -> R) -> Option<R> {
        self.lock().current.as_mut().map(f)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update leaves the index whole, so one made before a panic is usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvsync_core::{NodeId, Timestamp, Version};

    fn state(value: &str, ms: u64) -> PairState {
        let v = Version::new(
            Timestamp {
                wall_ms: ms,
                counter: 0,
            },
            NodeId::parse("n1").unwrap(),
        );
        PairState::whole(Some(vec![value.to_owned()]), &v)
    }

    fn key(k: &str) -> Key {
        Key::parse(k.to_owned()).unwrap()
    }

    #[test]
    fn cold_until_built_and_writes_during_the_build_are_kept() {
        let index = StateIndex::default();
        index.note(&key("a"), &state("1", 1), 10);
        assert!(index.with(|i| i.len()).is_none(), "cold");
        index.begin_rebuild();
        // The read finds `a` as it was before a write that lands meanwhile.
        index.note(&key("a"), &state("2", 2), 20);
        index.note_scanned("a", Indexed::of(&state("1", 1), 10));
        index.note_scanned("b", Indexed::of(&state("x", 1), 11));
        assert!(index.with(|i| i.len()).is_none(), "still cold mid-build");
        index.finish_rebuild();
        assert!(index.built().is_some());
        let a = index.with(|i| i.get("a").cloned()).flatten().unwrap();
        assert_eq!(a, Indexed::of(&state("2", 2), 20));
        assert_eq!(index.with(|i| i.len()), Some(2));
    }

    #[test]
    fn an_abandoned_rebuild_leaves_the_index_in_use() {
        let index = StateIndex::default();
        index.begin_rebuild();
        index.note_scanned("a", Indexed::of(&state("1", 1), 10));
        index.finish_rebuild();
        index.begin_rebuild();
        index.note(&key("b"), &state("1", 1), 12);
        index.abandon_rebuild();
        assert_eq!(index.with(|i| i.len()), Some(2));
    }
}
