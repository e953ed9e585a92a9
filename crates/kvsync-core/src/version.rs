use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::{clock::Timestamp, node_id::NodeId};

/// The version of a change: its hybrid logical clock timestamp, then the id of the
/// node that made it as a tie-breaker, so any two distinct changes are totally ordered
/// the same way on every replica.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub ts: Timestamp,
    pub node: NodeId,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("malformed version {0:?}: expected <16 hex digits>-<8 hex digits>-<node id>")]
    Malformed(String),
}

impl Version {
    pub fn new(ts: Timestamp, node: NodeId) -> Self {
        Self { ts, node }
    }
}

/// Fixed-width hex for the timestamp makes the text sort exactly like the value
/// (byte-wise), so a store can compare versions as plain strings.
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:016x}-{:08x}-{}",
            self.ts.wall_ms, self.ts.counter, self.node
        )
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || VersionError::Malformed(s.chars().take(100).collect());
        let hex_field = |field: &str, width: usize| -> Result<u64, VersionError> {
            if field.len() != width || !field.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u64::from_str_radix(field, 16).map_err(|_| bad())
        };
        let mut parts = s.splitn(3, '-');
        let (wall, counter, node) = match (parts.next(), parts.next(), parts.next()) {
            (Some(w), Some(c), Some(n)) => (w, c, n),
            _ => return Err(bad()),
        };
        let wall_ms = hex_field(wall, 16)?;
        // Eight hex digits always fit in a u32.
        let counter = hex_field(counter, 8)? as u32;
        let node = NodeId::parse(node).map_err(|_| bad())?;
        Ok(Self::new(Timestamp::new(wall_ms, counter), node))
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(ms: u64, c: u32, n: &str) -> Version {
        Version::new(Timestamp::new(ms, c), NodeId::parse(n).unwrap())
    }

    #[test]
    fn text_round_trip() {
        let x = v(0x0193_61a2_b3c4, 3, "node1");
        assert_eq!(x.to_string(), "0000019361a2b3c4-00000003-node1");
        assert_eq!(x.to_string().parse::<Version>().unwrap(), x);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "1-2-n",
            "0000019361a2b3c4-00000003",
            "0000019361a2b3c4-00000003-",
            "0000019361a2b3cg-00000003-n",
            "0000019361a2b3c4-00000003-bad node",
            "+000019361a2b3c4-00000003-n",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn text_order_matches_value_order(
            a in (any::<u64>(), any::<u32>(), "[a-zA-Z0-9._-]{1,12}"),
            b in (any::<u64>(), any::<u32>(), "[a-zA-Z0-9._-]{1,12}"),
        ) {
            let (a, b) = (v(a.0, a.1, &a.2), v(b.0, b.1, &b.2));
            prop_assert_eq!(a.cmp(&b), a.to_string().cmp(&b.to_string()));
            prop_assert_eq!(a.to_string().parse::<Version>().unwrap(), a);
        }
    }
}
