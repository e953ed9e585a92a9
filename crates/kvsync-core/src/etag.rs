//! Entity tags: what a client sends back in `If-Match` to write only over the state it
//! has seen.
//!
//! A pair's version alone cannot be its tag: merging an older concurrent write (an
//! append made elsewhere) changes the values and keeps the version, and a client holding
//! the old tag would then overwrite a value it never saw. The tag is the version plus a
//! digest of the visible values in order, with their ids: equal on every replica holding
//! the same values, and different whenever what a reader sees changes.

use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::{PairState, Version};

/// Separates the version from the digest (never part of a version or a node id).
const SEP: char = '~';
const DIGEST_HEX: usize = 16;

/// A parsed entity tag (without its quotes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntityTag {
    pub version: Version,
    digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an entity tag of this service: {0:?}")]
pub struct EntityTagError(String);

impl EntityTag {
    /// The tag of a live state (None for an absent or deleted pair).
    pub fn of(state: &PairState) -> Option<Self> {
        if !state.is_live() {
            return None;
        }
        let version = state.version()?.clone();
        let mut h = Sha256::new();
        for item in state.items() {
            // Length prefixes keep ("ab","c") and ("a","bc") apart.
            for field in [item.id.to_string().as_str(), item.value] {
                h.update((field.len() as u64).to_be_bytes());
                h.update(field.as_bytes());
            }
        }
        let digest = hex::encode(&h.finalize()[..DIGEST_HEX / 2]);
        Some(Self { version, digest })
    }
}

impl fmt::Display for EntityTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{SEP}{}", self.version, self.digest)
    }
}

impl std::str::FromStr for EntityTag {
    type Err = EntityTagError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || EntityTagError(s.chars().take(100).collect());
        let (version, digest) = s.rsplit_once(SEP).ok_or_else(bad)?;
        let digest_ok = digest.len() == DIGEST_HEX
            && digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !digest_ok {
            return Err(bad());
        }
        Ok(Self {
            version: version.parse().map_err(|_| bad())?,
            digest: digest.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeId, Timestamp};

    fn v(ms: u64, node: &str) -> Version {
        Version::new(Timestamp::new(ms, 0), NodeId::parse(node).unwrap())
    }

    fn whole(values: &[&str], at: &Version) -> PairState {
        PairState::whole(Some(values.iter().map(|s| s.to_string()).collect()), at)
    }

    #[test]
    fn a_merged_in_value_changes_the_tag_but_not_the_version() {
        let base = whole(&["a"], &v(10, "node1"));
        let before = EntityTag::of(&base).unwrap();

        // node2 appended "b" concurrently, with an older version than node1's last write.
        let mut theirs = base.clone();
        theirs.append("b".to_owned(), &v(5, "node2"), 1).unwrap();
        let mut merged = base.clone();
        merged.merge(&theirs);
        assert_eq!(merged.values(), ["a", "b"]);
        let after = EntityTag::of(&merged).unwrap();

        assert_eq!(before.version, after.version, "the version stays");
        assert_ne!(before, after, "the tag changes with the values");
    }

    #[test]
    fn equal_states_have_equal_tags_and_tags_round_trip() {
        let a = whole(&["x", "y"], &v(10, "node1"));
        let tag = EntityTag::of(&a).unwrap();
        assert_eq!(Some(&tag), EntityTag::of(&a.clone()).as_ref());
        assert_eq!(tag.to_string().parse::<EntityTag>().unwrap(), tag);
        assert_ne!(
            Some(tag),
            EntityTag::of(&whole(&["y", "x"], &v(10, "node1")))
        );
    }

    #[test]
    fn deleted_pairs_have_no_tag_and_junk_does_not_parse() {
        let gone = PairState::whole(None, &v(10, "node1"));
        assert_eq!(EntityTag::of(&gone), None);
        let good = EntityTag::of(&whole(&["x"], &v(10, "node1")))
            .unwrap()
            .to_string();
        let version_only = good.rsplit_once('~').unwrap().0.to_owned();
        for junk in [
            "",
            "~",
            version_only.as_str(),
            "0000000000000001-00000000-n~zz",
            &format!("{version_only}~ABCDEF0123456789"),
            &format!("{good}0"),
        ] {
            assert!(junk.parse::<EntityTag>().is_err(), "{junk:?}");
        }
    }
}
