//! Deterministic randomness for tests that generate traffic, so a failing run can be
//! repeated with the seed it printed.

/// A small generator (xorshift64*): fast, dependency-free, good enough for traffic.
pub struct Rng(u64);

impl Rng {
    /// A generator for one stream of a seeded run: distinct streams of one seed differ.
    pub fn new(seed: u64, stream: u64) -> Self {
        Self((seed ^ (stream + 1)).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` for the small `n` tests use.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// `KVSYNC_TEST_SEED` if set, else a fresh seed from the clock.
pub fn test_seed() -> u64 {
    std::env::var("KVSYNC_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}
