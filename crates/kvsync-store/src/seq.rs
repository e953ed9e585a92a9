//! Numbering of the changes this store applies, for the resumable change feed.
//!
//! Every write that changes a pair's state stamps the document, in that same write,
//! with a sequence number from [`Sequencer`]: no extra round trip. Numbers come from a
//! node-local counter that follows the wall clock in microseconds and never goes back:
//! it starts after the greatest number stored (and the greatest collected), so a
//! restart with a clock set back still numbers later changes higher.
//!
//! Numbers are handed out before the write and writes run concurrently, so a change
//! can commit after one numbered higher. A reader must therefore only go as far as
//! [`Sequencer::stable`]: the point below which every number handed out is done with
//! (written or given up). A number is done with when its [`Ticket`] is dropped, which
//! the node does after telling the live feed of the change.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::sync::watch;

#[derive(Debug)]
pub struct Sequencer {
    inner: Mutex<Inner>,
    stable: watch::Sender<i64>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The store's epoch: names it in feed positions.
    epoch: String,
    /// The greatest number of a collected tombstone.
    collected: i64,
    /// The greatest number handed out.
    last: i64,
    /// Numbers handed out whose writes are not done with yet.
    in_flight: BTreeSet<i64>,
}

impl Inner {
    fn stable(&self) -> i64 {
        self.in_flight.first().map_or(self.last, |first| first - 1)
    }
}

impl Default for Sequencer {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            stable: watch::channel(0).0,
        }
    }
}

impl Sequencer {
    /// Sets the epoch and collected point read from the store, and makes every later
    /// number greater than `floor`.
    pub fn start(&self, epoch: String, collected: i64, floor: i64) {
        {
            let mut inner = self.lock();
            inner.epoch = epoch;
            inner.collected = inner.collected.max(collected);
        }
        self.start_after(floor);
    }

    pub fn set_epoch(&self, epoch: String) {
        let mut inner = self.lock();
        inner.epoch = epoch;
        inner.collected = 0;
    }

    pub fn set_collected(&self, seq: i64) {
        let mut inner = self.lock();
        inner.collected = inner.collected.max(seq);
    }

    /// The store's epoch, and the greatest number of a collected tombstone.
    pub fn epoch_and_collected(&self) -> (String, i64) {
        let inner = self.lock();
        (inner.epoch.clone(), inner.collected)
    }

    /// Makes every later number greater than `floor`.
    pub fn start_after(&self, floor: i64) {
        let mut inner = self.lock();
        inner.last = inner.last.max(floor);
        let stable = inner.stable();
        self.stable.send_replace(stable);
    }

    /// A number for a write about to be made: greater than any before.
    pub fn begin(self: &Arc<Self>) -> Ticket {
        let mut inner = self.lock();
        let seq = (inner.last + 1).max(now_us());
        inner.last = seq;
        inner.in_flight.insert(seq);
        Ticket(Arc::new(Held {
            seq,
            from: Arc::clone(self),
        }))
    }

    /// The greatest number handed out.
    pub fn last(&self) -> i64 {
        self.lock().last
    }

    /// Follows the stable point: every number at or below it is done with.
    pub fn stable(&self) -> watch::Receiver<i64> {
        self.stable.subscribe()
    }

    fn end(&self, seq: i64) {
        let mut inner = self.lock();
        inner.in_flight.remove(&seq);
        let stable = inner.stable();
        self.stable.send_if_modified(|s| {
            let moved = *s != stable;
            *s = stable;
            moved
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state stays consistent whatever panicked while holding the lock.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A number handed out for one write; done with when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Ticket(Arc<Held>);

#[derive(Debug)]
struct Held {
    seq: i64,
    from: Arc<Sequencer>,
}

impl Ticket {
    pub fn seq(&self) -> i64 {
        self.0.seq
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.from.end(self.seq);
    }
}

impl PartialEq for Ticket {
    fn eq(&self, other: &Self) -> bool {
        self.seq() == other.seq()
    }
}

impl Eq for Ticket {}

/// The wall time (ms, this node's clock) a change numbered `seq` was made at, near
/// enough: numbers follow the clock in microseconds. 0 for no number.
pub fn wall_ms_of(seq: i64) -> u64 {
    seq.max(0) as u64 / 1000
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_increase_and_never_go_back_after_a_floor() {
        let s = Arc::new(Sequencer::default());
        let far = now_us() + 3_600_000_000;
        s.start_after(far);
        let a = s.begin();
        let b = s.begin();
        assert_eq!(a.seq(), far + 1);
        assert_eq!(b.seq(), far + 2);
    }

    #[test]
    fn the_stable_point_waits_for_the_lowest_write_in_flight() {
        let s = Arc::new(Sequencer::default());
        s.start_after(now_us() + 1_000_000_000);
        let stable = s.stable();
        let start = *stable.borrow();
        let a = s.begin();
        let b = s.begin();
        let c = s.begin();
        assert_eq!(*stable.borrow(), start);
        drop(b);
        assert_eq!(*stable.borrow(), start, "a is still in flight");
        let a_seq = a.seq();
        let held = a.clone();
        drop(a);
        assert_eq!(*stable.borrow(), start, "a clone still holds it");
        drop(held);
        assert_eq!(
            *stable.borrow(),
            a_seq + 1,
            "b done too: up to c, exclusive"
        );
        let c_seq = c.seq();
        drop(c);
        assert_eq!(*stable.borrow(), c_seq);
        assert_eq!(s.last(), c_seq);
    }
}
