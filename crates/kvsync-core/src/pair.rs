use serde::{Deserialize, Serialize};

/// Largest single value, in UTF-8 bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Largest pair: the key plus all its values, in UTF-8 bytes.
pub const MAX_PAIR_BYTES: usize = 1024 * 1024;
/// Most values one key may hold (bounds per-value overhead that byte counts miss).
pub const MAX_VALUES: usize = 10_000;

/// The ordered list of string values a key holds, validated against the size limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(transparent)]
pub struct Values(Vec<String>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValuesError {
    #[error("value {index} is {len} bytes long; the limit is {MAX_VALUE_BYTES}")]
    ValueTooLarge { index: usize, len: usize },
    #[error("the pair would be {0} bytes; the limit is {MAX_PAIR_BYTES}")]
    PairTooLarge(usize),
    #[error("the pair would hold {0} values; the limit is {MAX_VALUES}")]
    TooMany(usize),
}

impl Values {
    /// Validates `values` for a pair whose key is `key_len` bytes long.
    pub fn new(values: Vec<String>, key_len: usize) -> Result<Self, ValuesError> {
        if values.len() > MAX_VALUES {
            return Err(ValuesError::TooMany(values.len()));
        }
        let mut total = key_len;
        for (index, v) in values.iter().enumerate() {
            if v.len() > MAX_VALUE_BYTES {
                return Err(ValuesError::ValueTooLarge {
                    index,
                    len: v.len(),
                });
            }
            total += v.len();
        }
        if total > MAX_PAIR_BYTES {
            return Err(ValuesError::PairTooLarge(total));
        }
        Ok(Self(values))
    }

    /// The values with `value` appended, validated as a whole.
    pub fn appended(&self, value: String, key_len: usize) -> Result<Self, ValuesError> {
        let mut next = self.0.clone();
        next.push(value);
        Self::new(next, key_len)
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<String> {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The key length is not known here; the event layer re-checks the whole pair.
        Values::new(Vec::<String>::deserialize(d)?, 0).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert!(Values::new(vec!["x".repeat(MAX_VALUE_BYTES)], 1).is_ok());
        assert_eq!(
            Values::new(vec![String::new(), "x".repeat(MAX_VALUE_BYTES + 1)], 1),
            Err(ValuesError::ValueTooLarge {
                index: 1,
                len: MAX_VALUE_BYTES + 1
            })
        );
        let many = vec!["x".repeat(MAX_VALUE_BYTES); 16];
        assert_eq!(
            Values::new(many, 1),
            Err(ValuesError::PairTooLarge(16 * MAX_VALUE_BYTES + 1))
        );
        assert_eq!(
            Values::new(vec![String::new(); MAX_VALUES + 1], 1),
            Err(ValuesError::TooMany(MAX_VALUES + 1))
        );
        let v = Values::new(vec!["a".into()], 1).unwrap();
        assert_eq!(v.appended("b".into(), 1).unwrap().as_slice(), ["a", "b"]);
    }
}
