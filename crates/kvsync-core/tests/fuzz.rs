//! Property-based fuzzing of the two parsers that see untrusted input: event decoding
//! (anything on the topic) and key validation (anything in a URL). Neither may panic,
//! and whatever they accept must satisfy the documented rules.

use kvsync_core::{Event, Key, NodeId, Op, Timestamp, Values, Version};
use proptest::prelude::*;

fn valid_event() -> Event {
    let key = Key::parse("user/42/theme").unwrap();
    let values = Values::new(vec!["dark".into(), "compact".into()], key.as_str().len()).unwrap();
    let version = Version::new(
        Timestamp::new(1_700_000_000_000, 3),
        NodeId::parse("node1").unwrap(),
    );
    Event::new(key, version, Op::Put(values))
}

fn check_key_rules(raw: &str) {
    if let Ok(key) = Key::parse(raw.to_owned()) {
        let k = key.as_str();
        assert!(
            !k.is_empty() && k.len() <= 512,
            "accepted length {}",
            k.len()
        );
        assert!(
            !k.chars().any(char::is_control),
            "accepted a control character: {k:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Event::decode(&bytes);
    }

    #[test]
    fn decoding_json_like_text_never_panics(text in r#"\{("[a-z]{1,8}":("[^"]{0,20}"|[0-9]{1,20}|\[("[^"]{0,8}",?){0,4}\]|null|true),?){0,8}\}"#) {
        let _ = Event::decode(text.as_bytes());
    }

    #[test]
    fn mutated_valid_events_never_panic_and_accepted_ones_round_trip(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
    ) {
        let mut bytes = valid_event().encode();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if let Ok(event) = Event::decode(&bytes) {
            check_key_rules(event.key.as_str());
            prop_assert_eq!(Event::decode(&event.encode()).unwrap(), event);
        }
    }

    #[test]
    fn valid_events_round_trip(values in proptest::collection::vec(".{0,40}", 0..10), key in "[a-zA-Z0-9/ _.-]{1,64}") {
        let key = Key::parse(key).unwrap();
        let values = Values::new(values, key.as_str().len()).unwrap();
        let version = Version::new(Timestamp::new(1_700_000_000_000, 0), NodeId::parse("n1").unwrap());
        let event = Event::new(key, version, Op::Put(values));
        prop_assert_eq!(Event::decode(&event.encode()).unwrap(), event);
    }

    #[test]
    fn key_validation_never_panics_and_enforces_the_rules(raw in "(?s).{0,600}") {
        check_key_rules(&raw);
    }

    #[test]
    fn long_keys_are_rejected(raw in "[a-z]{513,700}") {
        prop_assert!(Key::parse(raw).is_err());
    }
}
