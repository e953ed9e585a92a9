use sha2::{Digest as _, Sha256};

/// A hash over everything a replica holds, tombstones included, fed in key order.
/// Two replicas with equal digests hold the same keys in the same states: each key adds
/// its state's version and fingerprint ([`crate::PairState::fingerprint`]).
#[derive(Debug, Clone, Default)]
pub struct Digest {
    hasher: Sha256,
    count: u64,
}

impl Digest {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one entry. Callers must add entries in ascending key order.
    pub fn add(&mut self, key: &str, version: &str, deleted: bool, fingerprint: &str) {
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        for field in [key, version, fingerprint] {
            self.hasher.update((field.len() as u64).to_be_bytes());
            self.hasher.update(field.as_bytes());
        }
        self.hasher.update([deleted as u8]);
        self.count += 1;
    }

    /// The number of entries (tombstones included) and the hex digest.
    pub fn finish(self) -> (u64, String) {
        (self.count, hex::encode(self.hasher.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinguishes_tombstones_and_versions() {
        let run = |entries: &[(&str, u64, bool)]| {
            let mut d = Digest::new();
            for (k, ms, del) in entries {
                d.add(k, &ms.to_string(), *del, "fp");
            }
            d.finish()
        };
        let base = run(&[("a", 1, false), ("b", 2, false)]);
        assert_eq!(base, run(&[("a", 1, false), ("b", 2, false)]));
        assert_eq!(base.0, 2);
        assert_ne!(base, run(&[("a", 1, false), ("b", 2, true)]));
        assert_ne!(base, run(&[("a", 1, false), ("b", 3, false)]));
        assert_ne!(run(&[("ab", 1, false)]), run(&[("a", 1, false)]));
        assert_eq!(Digest::new().finish().0, 0);
    }
}
