//! The replication event: what travels on the topic for every change.
//!
//! Wire format (JSON, schema 2), documented in `docs/events.md`: the key's whole merged
//! state, so an event merges with any other, in any order, any number of times:
//! `{"schema":2,"id":"<uuid>","origin":"<node>","key":"<key>","version":"<version>",
//!   "state":{..}}`. Schema 1 events (a whole list or a delete, last writer wins) are
//! still read, as the state such a write gives.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    key::{Key, KeyError, MAX_KEY_BYTES},
    node_id::NodeId,
    pair::{Values, ValuesError, MAX_PAIR_BYTES},
    state::{PairState, StateWire, WireError},
    version::Version,
};

pub const SCHEMA: u32 = 2;
/// The last-writer-wins format of earlier releases, still accepted.
pub const LEGACY_SCHEMA: u32 = 1;
/// Largest encoded event accepted: a maximal pair (1 MiB of values, at most 10,000 of
/// them, each with about 150 bytes of element metadata, plus 1,000 tombstones) with room
/// for JSON escaping.
pub const MAX_EVENT_BYTES: usize = 4 * MAX_PAIR_BYTES;
/// Largest encoded event a node publishes by default: Kafka refuses records over
/// 1,000,000 bytes by default (librdkafka's `message.max.bytes`; a broker's is 1,048,588),
/// and a record adds its key and framing to the event. A local write whose event would be
/// larger is refused, so that whatever a node acknowledges can be published.
pub const DEFAULT_PUBLISH_LIMIT: usize = 950_000;
/// What a record adds to its event at most: the key, and the record's and batch's framing.
pub const RECORD_OVERHEAD: usize = MAX_KEY_BYTES + 512;

/// A whole-list write, the way schema 1 described every change.
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
    /// The version of the origin's write this event publishes.
    pub version: Version,
    /// The key's state at the origin when published: that write and all it had merged.
    pub state: PairState,
    /// A re-publication of a state the origin already held (anti-entropy repair, or a
    /// snapshot for a joining member) rather than of a write: `version` is then fresh,
    /// newer than the state.
    pub republished: bool,
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
    #[error("invalid state: {0}")]
    State(String),
}

impl From<WireError> for EventError {
    fn from(e: WireError) -> Self {
        EventError::State(e.to_string())
    }
}

impl EventError {
    /// Every value [`EventError::kind`] can take.
    pub const KINDS: [&'static str; 8] = [
        "too_large",
        "malformed",
        "schema",
        "key",
        "values",
        "op_shape",
        "forged",
        "state",
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
            EventError::State(_) => "state",
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LegacyOp {
    Put,
    Delete,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyWire {
    #[allow(dead_code)]
    schema: u32,
    id: Uuid,
    origin: NodeId,
    op: LegacyOp,
    key: String,
    #[serde(default)]
    values: Option<Vec<String>>,
    version: Version,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    schema: u32,
    id: Uuid,
    origin: NodeId,
    key: String,
    version: Version,
    state: StateWire,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    republished: bool,
}

impl Event {
    /// An event for a whole-list write made on `version.node` (tests and tools).
    pub fn new(key: Key, version: Version, op: Op) -> Self {
        let values = match op {
            Op::Put(v) => Some(v.into_vec()),
            Op::Delete => None,
        };
        let state = PairState::whole(values, &version);
        Self::of_state(key, version, state)
    }

    /// An event publishing `state`, made by the write at `version`.
    pub fn of_state(key: Key, version: Version, state: PairState) -> Self {
        Self {
            id: Uuid::now_v7(),
            origin: version.node.clone(),
            key,
            version,
            state,
            republished: false,
        }
    }

    /// An event re-publishing `state`, held by the origin, under the fresh `version`.
    pub fn republish(key: Key, version: Version, state: PairState) -> Self {
        Self {
            republished: true,
            ..Self::of_state(key, version, state)
        }
    }

    pub fn is_delete(&self) -> bool {
        !self.state.is_live()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&self.wire()).expect("an event always serializes")
    }

    /// The length of [`Event::encode`], without building it.
    pub fn encoded_len(&self) -> usize {
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        serde_json::to_writer(&mut count, &self.wire()).expect("an event always serializes");
        count.0
    }

    fn wire(&self) -> Wire {
        Wire {
            schema: SCHEMA,
            id: self.id,
            origin: self.origin.clone(),
            key: self.key.as_str().to_owned(),
            version: self.version.clone(),
            state: self.state.to_wire(),
            republished: self.republished,
        }
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
        let malformed = |e: serde_json::Error| EventError::Malformed(e.to_string());
        let probe: Probe = serde_json::from_slice(bytes).map_err(malformed)?;
        let (id, origin, key, version, state, republished) = match probe.schema {
            Some(SCHEMA) => {
                let wire: Wire = serde_json::from_slice(bytes).map_err(malformed)?;
                let key = Key::parse(wire.key)?;
                let state = PairState::from_wire(wire.state)?;
                (
                    wire.id,
                    wire.origin,
                    key,
                    wire.version,
                    state,
                    wire.republished,
                )
            }
            Some(LEGACY_SCHEMA) => {
                let wire: LegacyWire = serde_json::from_slice(bytes).map_err(malformed)?;
                let key = Key::parse(wire.key)?;
                let values = match (wire.op, wire.values) {
                    (LegacyOp::Put, Some(values)) => {
                        Some(Values::new(values, key.as_str().len())?.into_vec())
                    }
                    (LegacyOp::Delete, None) => None,
                    _ => return Err(EventError::OpShape),
                };
                let state = PairState::whole(values, &wire.version);
                (wire.id, wire.origin, key, wire.version, state, false)
            }
            Some(other) => return Err(EventError::Schema(other)),
            None => return Err(EventError::Malformed("missing field `schema`".into())),
        };
        if version.node != origin {
            return Err(EventError::Forged {
                version: version.to_string(),
                origin: origin.to_string(),
            });
        }
        // The published write is part of the state it publishes; a re-publication is
        // newer than the state it carries.
        if !republished && state.version() < Some(&version) {
            return Err(EventError::State(format!(
                "the state is older than the event's version {version}"
            )));
        }
        if republished && state.version() >= Some(&version) {
            return Err(EventError::State(format!(
                "a re-publication's version {version} is not newer than its state"
            )));
        }
        Ok(Self {
            id,
            origin,
            key,
            version,
            state,
            republished,
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
        assert!(text.contains(r#""schema":2"#), "{text}");
    }

    #[test]
    fn encoded_len_is_the_length_of_the_encoding() {
        let quotes = "\"\\".repeat(1_000);
        for e in [
            put("k", &["a", "<b>", ""]),
            put("k", &[quotes.as_str(), "é"]),
        ] {
            assert_eq!(e.encoded_len(), e.encode().len());
        }
        // Quotes and backslashes take two bytes each once encoded.
        assert!(put("k", &[quotes.as_str()]).encoded_len() > 4_000);
    }

    #[test]
    fn a_republication_carries_a_fresh_version_and_says_so() {
        let original = put("k", &["a"]);
        let again = Event::republish(
            original.key.clone(),
            version(9_000, "n2"),
            original.state.clone(),
        );
        let text = String::from_utf8(again.encode()).unwrap();
        assert!(text.contains(r#""republished":true"#), "{text}");
        assert_eq!(Event::decode(&again.encode()).unwrap(), again);
        // An ordinary event does not carry the field at all (earlier schema-2 readers
        // refuse unknown fields).
        assert!(!String::from_utf8(original.encode())
            .unwrap()
            .contains("republished"));
        // A re-publication must be newer than its state, and a write's event no newer.
        let stale = Event::republish(
            original.key.clone(),
            version(500, "n2"),
            original.state.clone(),
        );
        assert!(matches!(
            Event::decode(&stale.encode()),
            Err(EventError::State(_))
        ));
        let mut ahead = original.clone();
        ahead.version = version(9_000, "n1");
        assert!(matches!(
            Event::decode(&ahead.encode()),
            Err(EventError::State(_))
        ));
    }

    fn tweak(f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_slice(&put("k", &["a"]).encode()).unwrap();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    /// A schema 1 event as earlier releases wrote it.
    fn legacy(f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v = serde_json::json!({
            "schema": 1, "id": Uuid::now_v7(), "origin": "n1", "op": "put", "key": "k",
            "values": ["a"], "version": version(1_000, "n1"),
        });
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn reads_schema_1_as_a_whole_write() {
        let e = Event::decode(&legacy(|_| {})).unwrap();
        assert_eq!(e.state, put("k", &["a"]).state);
        let d = Event::decode(&legacy(|v| {
            v["op"] = "delete".into();
            v.as_object_mut().unwrap().remove("values");
        }))
        .unwrap();
        assert!(d.is_delete());
    }

    #[test]
    fn rejects_what_a_local_write_would_reject() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "malformed"),
            (b"{}".to_vec(), "malformed"),
            (tweak(|v| v["schema"] = 3.into()), "schema"),
            (tweak(|v| v["key"] = "".into()), "key"),
            (tweak(|v| v["key"] = "a\u{0}".into()), "key"),
            (
                tweak(|v| v["state"]["els"][0]["value"] = "x".repeat(70_000).into()),
                "state",
            ),
            (
                tweak(|v| v["state"]["els"][0]["value"] = 1.into()),
                "malformed",
            ),
            (
                tweak(|v| v["state"]["els"][0]["id"] = "nope".into()),
                "malformed",
            ),
            (
                tweak(|v| {
                    let el = v["state"]["els"][0].clone();
                    v["state"]["els"] = serde_json::json!([el, el]);
                }),
                "state",
            ),
            (
                tweak(|v| v["version"] = version(9_000, "n1").to_string().into()),
                "state",
            ),
            (tweak(|v| v["state"]["extra"] = true.into()), "malformed"),
            (tweak(|v| v["origin"] = "n2".into()), "forged"),
            (tweak(|v| v["version"] = "yesterday".into()), "malformed"),
            (tweak(|v| v["extra"] = true.into()), "malformed"),
            (
                legacy(|v| v["values"] = serde_json::json!(["x".repeat(70_000)])),
                "values",
            ),
            (legacy(|v| v["op"] = "delete".into()), "op_shape"),
            (legacy(|v| v["op"] = "merge".into()), "malformed"),
            (legacy(|v| v["origin"] = "n2".into()), "forged"),
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
