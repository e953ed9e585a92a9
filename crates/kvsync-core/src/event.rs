//! The replication event: what travels on the topic for every change.
//!
//! Wire format (JSON, schema 1), documented in `docs/events.md`:
//! `{"schema":1,"id":"<uuid>","origin":"<node>","op":"put"|"delete","key":"<key>",
//!   "values":[..] (put only),"version":"<version>"}`

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    key::{Key, KeyError},
    node_id::NodeId,
    pair::{Values, ValuesError, MAX_PAIR_BYTES},
    version::Version,
};

pub const SCHEMA: u32 = 1;
/// Largest encoded event accepted: a maximal pair plus room for JSON escaping.
pub const MAX_EVENT_BYTES: usize = 4 * MAX_PAIR_BYTES;

/// What a change does to its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    Put(Values),
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    pub id: Uuid,
    pub origin: NodeId,
    pub key: Key,
    pub version: Version,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event is {0} bytes; the limit is {MAX_EVENT_BYTES}")]
    TooLarge(usize),
    #[error("event is not valid JSON of the expected shape: {0}")]
    Malformed(String),
    #[error("unsupported event schema {0}")]
    Schema(u32),
    #[error("invalid key: {0}")]
    Key(#[from] KeyError),
    #[error("invalid values: {0}")]
    Values(#[from] ValuesError),
    #[error("a put needs values and a delete must have none")]
    OpShape,
    #[error("version {version} was not made by origin {origin}")]
    Forged { version: String, origin: String },
}

impl EventError {
    /// Every value [`EventError::kind`] can take.
    pub const KINDS: [&'static str; 7] = [
        "too_large",
        "malformed",
        "schema",
        "key",
        "values",
        "op_shape",
        "forged",
    ];

    /// A short stable label, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            EventError::TooLarge(_) => "too_large",
            EventError::Malformed(_) => "malformed",
            EventError::Schema(_) => "schema",
            EventError::Key(_) => "key",
            EventError::Values(_) => "values",
            EventError::OpShape => "op_shape",
            EventError::Forged { .. } => "forged",
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WireOp {
    Put,
    Delete,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    schema: u32,
    id: Uuid,
    origin: NodeId,
    op: WireOp,
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    values: Option<Vec<String>>,
    version: Version,
}

impl Event {
    /// A new event for a change made on `version.node`.
    pub fn new(key: Key, version: Version, op: Op) -> Self {
        Self {
            id: Uuid::now_v7(),
            origin: version.node.clone(),
            key,
            version,
            op,
        }
    }

    pub fn is_delete(&self) -> bool {
        matches!(self.op, Op::Delete)
    }

    pub fn values(&self) -> Option<&Values> {
        match &self.op {
            Op::Put(v) => Some(v),
            Op::Delete => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let (op, values) = match &self.op {
            Op::Put(v) => (WireOp::Put, Some(v.as_slice().to_vec())),
            Op::Delete => (WireOp::Delete, None),
        };
        let wire = Wire {
            schema: SCHEMA,
            id: self.id,
            origin: self.origin.clone(),
            op,
            key: self.key.as_str().to_owned(),
            values,
            version: self.version.clone(),
        };
        serde_json::to_vec(&wire).expect("an event always serializes")
    }

    /// Parses and validates an event from the topic. Every rule a local write obeys is
    /// checked again here: a peer (or anything else writing to the topic) is not trusted.
    pub fn decode(bytes: &[u8]) -> Result<Self, EventError> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(EventError::TooLarge(bytes.len()));
        }
        // Read the schema first so a future schema is reported as such, not as malformed.
        #[derive(Deserialize)]
        struct Probe {
            schema: Option<u32>,
        }
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|e| EventError::Malformed(e.to_string()))?;
        match probe.schema {
            Some(SCHEMA) => {}
            Some(other) => return Err(EventError::Schema(other)),
            None => return Err(EventError::Malformed("missing field `schema`".into())),
        }
        let wire: Wire =
            serde_json::from_slice(bytes).map_err(|e| EventError::Malformed(e.to_string()))?;
        let key = Key::parse(wire.key)?;
        let op = match (wire.op, wire.values) {
            (WireOp::Put, Some(values)) => Op::Put(Values::new(values, key.as_str().len())?),
            (WireOp::Delete, None) => Op::Delete,
            _ => return Err(EventError::OpShape),
        };
        if wire.version.node != wire.origin {
            return Err(EventError::Forged {
                version: wire.version.to_string(),
                origin: wire.origin.to_string(),
            });
        }
        Ok(Self {
            id: wire.id,
            origin: wire.origin,
            key,
            version: wire.version,
            op,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use proptest::prelude::*;

    fn version(ms: u64, node: &str) -> Version {
        Version::new(Timestamp::new(ms, 0), NodeId::parse(node).unwrap())
    }

    fn put(key: &str, values: &[&str]) -> Event {
        let values = values.iter().map(|s| s.to_string()).collect();
        Event::new(
            Key::parse(key).unwrap(),
            version(1_000, "n1"),
            Op::Put(Values::new(values, key.len()).unwrap()),
        )
    }

    #[test]
    fn round_trips() {
        let e = put("k", &["a", "<b>", ""]);
        assert_eq!(Event::decode(&e.encode()).unwrap(), e);
        let d = Event::new(Key::parse("k").unwrap(), version(5, "n2"), Op::Delete);
        assert_eq!(Event::decode(&d.encode()).unwrap(), d);
        let text = String::from_utf8(d.encode()).unwrap();
        assert!(!text.contains("values"), "{text}");
    }

    fn tweak(f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_slice(&put("k", &["a"]).encode()).unwrap();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn rejects_what_a_local_write_would_reject() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "malformed"),
            (b"{}".to_vec(), "malformed"),
            (tweak(|v| v["schema"] = 2.into()), "schema"),
            (tweak(|v| v["key"] = "".into()), "key"),
            (tweak(|v| v["key"] = "a\u{0}".into()), "key"),
            (
                tweak(|v| v["values"] = serde_json::json!(["x".repeat(70_000)])),
                "values",
            ),
            (tweak(|v| v["values"] = serde_json::json!([1])), "malformed"),
            (tweak(|v| v["op"] = "delete".into()), "op_shape"),
            (tweak(|v| v["op"] = "merge".into()), "malformed"),
            (
                tweak(|v| {
                    v.as_object_mut().unwrap().remove("values");
                }),
                "op_shape",
            ),
            (tweak(|v| v["origin"] = "n2".into()), "forged"),
            (tweak(|v| v["version"] = "yesterday".into()), "malformed"),
            (tweak(|v| v["extra"] = true.into()), "malformed"),
            (vec![b' '; MAX_EVENT_BYTES + 1], "too_large"),
        ];
        for (bytes, kind) in cases {
            let err = Event::decode(&bytes).unwrap_err();
            assert_eq!(err.kind(), kind, "{err}");
            assert!(EventError::KINDS.contains(&kind));
        }
    }

    proptest! {
        /// Decoding arbitrary bytes never panics.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Event::decode(&bytes);
        }

        #[test]
        fn any_valid_event_round_trips(
            key in "\\PC{1,40}",
            values in proptest::collection::vec("\\PC{0,20}", 0..5),
            ms in any::<u64>(),
            delete in any::<bool>(),
        ) {
            let key = Key::parse(key).unwrap();
            let op = if delete { Op::Delete } else { Op::Put(Values::new(values, key.as_str().len()).unwrap()) };
            let e = Event::new(key, version(ms, "node-a"), op);
            prop_assert_eq!(Event::decode(&e.encode()).unwrap(), e);
        }
    }
}
