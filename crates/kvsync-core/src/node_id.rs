use std::fmt;

use serde::{Deserialize, Serialize};

pub const MAX_NODE_ID_BYTES: usize = 64;

/// A node's identity: 1 to 64 ASCII letters, digits, `.`, `_` or `-`.
///
/// The restricted alphabet keeps the textual [`crate::Version`] byte-sortable, which the
/// stores rely on for their conditional writes, and keeps consumer group names legal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct NodeId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error("node id must be 1 to {MAX_NODE_ID_BYTES} characters long")]
    Length,
    #[error("node id may only contain ASCII letters, digits, '.', '_' and '-' (found {0:?})")]
    Character(char),
}

impl NodeId {
    pub fn parse(raw: impl Into<String>) -> Result<Self, NodeIdError> {
        let raw = raw.into();
        if raw.is_empty() || raw.len() > MAX_NODE_ID_BYTES {
            return Err(NodeIdError::Length);
        }
        if let Some(c) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(NodeIdError::Character(c));
        }
        Ok(Self(raw))
    }

    /// Turns any host name into a valid node id by replacing what is not allowed.
    pub fn sanitize(raw: &str) -> Self {
        let mut s: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .take(MAX_NODE_ID_BYTES)
            .collect();
        if s.is_empty() {
            s.push_str("node");
        }
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        NodeId::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates() {
        assert!(NodeId::parse("node-1.eu_west").is_ok());
        assert_eq!(NodeId::parse(""), Err(NodeIdError::Length));
        assert_eq!(NodeId::parse("a b"), Err(NodeIdError::Character(' ')));
        assert_eq!(NodeId::parse("x".repeat(65)), Err(NodeIdError::Length));
    }

    #[test]
    fn sanitizes_host_names() {
        assert_eq!(NodeId::sanitize("my host!").as_str(), "my-host-");
        assert_eq!(NodeId::sanitize("").as_str(), "node");
        assert!(NodeId::parse(NodeId::sanitize(&"é".repeat(100)).as_str()).is_ok());
    }
}
