//! Deterministic randomness for tests that generate traffic, so a failing run can be
//! repeated with the seed it printed.

/// A seeded [`fastrand::Rng`] for one stream of a test run.
pub struct Rng(fastrand::Rng);

impl Rng {
    /// A generator for one stream of a seeded run: distinct streams of one seed differ.
    pub fn new(seed: u64, stream: u64) -> Self {
        Self(fastrand::Rng::with_seed(
            seed ^ (stream + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ))
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.u64(..n)
    }
}

/// `KVSYNC_TEST_SEED` if set, else a fresh random seed.
pub fn test_seed() -> u64 {
    std::env::var("KVSYNC_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_repeats_its_streams_and_streams_differ() {
        let draw = |seed, stream| {
            let mut rng = Rng::new(seed, stream);
            (0..16).map(|_| rng.below(1000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7, 0), draw(7, 0));
        assert_ne!(draw(7, 0), draw(7, 1));
        assert_ne!(draw(7, 0), draw(8, 0));
        assert!(draw(7, 3).iter().all(|&n| n < 1000));
    }
}
