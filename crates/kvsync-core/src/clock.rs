use std::fmt;

/// A hybrid logical clock reading: physical milliseconds since the Unix epoch plus a
/// logical counter that orders events within (or behind) the same millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    pub wall_ms: u64,
    pub counter: u32,
}

impl Timestamp {
    pub const fn new(wall_ms: u64, counter: u32) -> Self {
        Self { wall_ms, counter }
    }

    /// The smallest timestamp strictly greater than `self`.
    fn successor(self) -> Self {
        match self.counter.checked_add(1) {
            Some(counter) => Self::new(self.wall_ms, counter),
            None => Self::new(self.wall_ms + 1, 0),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms, self.counter)
    }
}

/// A hybrid logical clock (Kulkarni et al.), reduced to what last-writer-wins needs:
/// every reading is greater than every earlier reading and every timestamp observed,
/// and stays close to physical time when physical clocks are roughly in sync.
///
/// The physical time is an argument so the clock itself does no IO.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    last: Timestamp,
}

impl Clock {
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock that will never issue a timestamp at or below `last` (e.g. the greatest
    /// version found in the store at start-up, so a restart with a clock that jumped
    /// backwards cannot issue versions older than the node's own earlier writes).
    pub fn starting_after(last: Timestamp) -> Self {
        Self { last }
    }

    /// A fresh timestamp for a local change, given the physical time now.
    pub fn tick(&mut self, physical_ms: u64) -> Timestamp {
        self.last = if physical_ms > self.last.wall_ms {
            Timestamp::new(physical_ms, 0)
        } else {
            self.last.successor()
        };
        self.last
    }

    /// Records a timestamp seen in a peer's change, so later local changes order after it.
    pub fn observe(&mut self, seen: Timestamp) {
        if seen > self.last {
            self.last = seen;
        }
    }

    pub fn last(&self) -> Timestamp {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn follows_physical_time() {
        let mut c = Clock::new();
        assert_eq!(c.tick(100), Timestamp::new(100, 0));
        assert_eq!(c.tick(100), Timestamp::new(100, 1));
        assert_eq!(c.tick(105), Timestamp::new(105, 0));
    }

    #[test]
    fn never_goes_backwards_when_physical_time_does() {
        let mut c = Clock::new();
        c.tick(1_000);
        assert_eq!(c.tick(10), Timestamp::new(1_000, 1));
    }

    #[test]
    fn orders_after_observed_peer_writes() {
        let mut c = Clock::new();
        c.tick(100);
        c.observe(Timestamp::new(5_000, 7));
        assert_eq!(c.tick(200), Timestamp::new(5_000, 8));
        // An older observation changes nothing.
        c.observe(Timestamp::new(1, 0));
        assert_eq!(c.tick(200), Timestamp::new(5_000, 9));
    }

    #[test]
    fn counter_overflow_carries_into_the_millisecond() {
        let mut c = Clock::starting_after(Timestamp::new(9, u32::MAX));
        assert_eq!(c.tick(0), Timestamp::new(10, 0));
    }

    proptest! {
        /// Whatever the interleaving of physical readings and observations, readings
        /// strictly increase and exceed everything observed before them.
        #[test]
        fn strictly_monotonic(steps in proptest::collection::vec(
            (any::<bool>(), 0u64..1_000, 0u32..3), 1..200)) {
            let mut c = Clock::new();
            let mut floor = Timestamp::default();
            for (is_tick, ms, counter) in steps {
                if is_tick {
                    let t = c.tick(ms);
                    prop_assert!(t > floor);
                    prop_assert!(t.wall_ms >= ms);
                    floor = t;
                } else {
                    let seen = Timestamp::new(ms, counter);
                    c.observe(seen);
                    floor = floor.max(seen);
                }
            }
        }
    }
}
