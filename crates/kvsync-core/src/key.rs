use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest key, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// A validated pair key: 1 to [`MAX_KEY_BYTES`] bytes of UTF-8 without control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Key(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is empty")]
    Empty,
    #[error("key is {0} bytes long; the limit is {MAX_KEY_BYTES}")]
    TooLong(usize),
    #[error("key contains a control character at byte {0}")]
    ControlCharacter(usize),
}

impl Key {
    pub fn parse(raw: impl Into<String>) -> Result<Self, KeyError> {
        let raw = raw.into();
        if raw.is_empty() {
            return Err(KeyError::Empty);
        }
        if raw.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong(raw.len()));
        }
        if let Some((at, _)) = raw.char_indices().find(|(_, c)| c.is_control()) {
            return Err(KeyError::ControlCharacter(at));
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Key::parse(raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_unicode_and_punctuation() {
        for k in ["a", "user/42/theme", "ключ", "🔑 key", "a b", "%2F"] {
            assert_eq!(Key::parse(k).unwrap().as_str(), k);
        }
        assert!(Key::parse("x".repeat(MAX_KEY_BYTES)).is_ok());
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(Key::parse(""), Err(KeyError::Empty));
        assert_eq!(
            Key::parse("x".repeat(MAX_KEY_BYTES + 1)),
            Err(KeyError::TooLong(MAX_KEY_BYTES + 1))
        );
        // Multi-byte characters count in bytes, not characters.
        assert!(matches!(
            Key::parse("é".repeat(257)),
            Err(KeyError::TooLong(514))
        ));
        assert_eq!(Key::parse("a\nb"), Err(KeyError::ControlCharacter(1)));
        assert_eq!(Key::parse("\u{7f}"), Err(KeyError::ControlCharacter(0)));
        assert_eq!(Key::parse("ab\u{85}"), Err(KeyError::ControlCharacter(2)));
    }
}
