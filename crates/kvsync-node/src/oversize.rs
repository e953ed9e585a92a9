//! Keys whose state has outgrown what Kafka or MongoDB accept.
//!
//! A local write is refused before it could make an event too large to publish, but a
//! key's state can still grow past the limits by merging concurrent writes of several
//! nodes. Such a key is never skipped in silence: it is listed here, which `/readyz`,
//! `/api/node` and the `kvsync_oversized_keys` metric show, while every other key
//! replicates on. An entry goes once the key's next change is published or stored.

use std::{collections::BTreeMap, sync::Mutex};

use kvsync_core::Key;
use serde::Serialize;

/// What the key's state cannot get past.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// Its event is larger than the broker takes: peers do not get its last change.
    Publish,
    /// Merged with a peer's change, its document would be larger than MongoDB stores:
    /// this node does not have the peer's change.
    Store,
}

impl Limit {
    pub const ALL: [Limit; 2] = [Limit::Publish, Limit::Store];

    pub fn label(self) -> &'static str {
        match self {
            Limit::Publish => "publish",
            Limit::Store => "store",
        }
    }
}

/// Most keys listed by name in `/readyz`; the count covers the rest.
const NAMED: usize = 10;

#[derive(Debug, Default)]
pub struct Oversized {
    keys: Mutex<BTreeMap<(Limit, Key), String>>,
}

impl Oversized {
    /// Notes that `key` is past `limit`, and why. True when it was not noted before.
    pub fn note(&self, limit: Limit, key: &Key, why: String) -> bool {
        self.lock().insert((limit, key.clone()), why).is_none()
    }

    /// The key's state got past `limit` again (published, or stored).
    pub fn clear(&self, limit: Limit, key: &Key) {
        let mut keys = self.lock();
        if !keys.is_empty() {
            keys.remove(&(limit, key.clone()));
        }
    }

    pub fn count(&self, limit: Limit) -> usize {
        self.lock().keys().filter(|(l, _)| *l == limit).count()
    }

    /// The readiness problems: one line per limit, naming the first keys.
    pub fn problems(&self) -> Vec<String> {
        let keys = self.lock();
        Limit::ALL
            .iter()
            .filter_map(|&limit| {
                let names: Vec<&Key> = keys
                    .keys()
                    .filter(|(l, _)| *l == limit)
                    .map(|(_, k)| k)
                    .collect();
                let first = names.first()?;
                let why = &keys[&(limit, (*first).clone())];
                let shown: Vec<String> = names
                    .iter()
                    .take(NAMED)
                    .map(|k| format!("{:?}", k.as_str()))
                    .collect();
                let more = names.len().saturating_sub(NAMED);
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                Some(match limit {
                    Limit::Publish => format!(
                        "kafka: {} key(s) too large to publish, peers lack their last change: {}{more} ({why})",
                        names.len(),
                        shown.join(", ")
                    ),
                    Limit::Store => format!(
                        "mongodb: {} key(s) whose merged state is too large to store, this node lacks a peer's change: {}{more} ({why})",
                        names.len(),
                        shown.join(", ")
                    ),
                })
            })
            .collect()
    }

    /// For `/api/node`: every key with its limit and why.
    pub fn report(&self) -> Vec<OversizedKey> {
        self.lock()
            .iter()
            .map(|((limit, key), why)| OversizedKey {
                key: key.as_str().to_owned(),
                limit: *limit,
                why: why.clone(),
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Limit, Key), String>> {
        self.keys.lock().expect("oversized lock")
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OversizedKey {
    key: String,
    /// `publish` (peers lack its last change) or `store` (this node lacks a peer's).
    #[schema(value_type = String)]
    limit: Limit,
    why: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_listed_until_cleared() {
        let o = Oversized::default();
        assert!(o.problems().is_empty());
        let big = Key::parse("big").unwrap();
        assert!(o.note(Limit::Publish, &big, "2000000 bytes".into()));
        assert!(!o.note(Limit::Publish, &big, "2000001 bytes".into()));
        for i in 0..12 {
            o.note(
                Limit::Store,
                &Key::parse(format!("s{i:02}")).unwrap(),
                "17 MiB".into(),
            );
        }
        let problems = o.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("\"big\"") && problems[0].contains("2000001 bytes"));
        assert!(problems[1].contains("12 key(s)") && problems[1].contains("and 2 more"));
        assert!(!problems[1].contains("s11"), "{}", problems[1]);
        assert_eq!(o.count(Limit::Store), 12);
        o.clear(Limit::Publish, &big);
        assert_eq!(o.count(Limit::Publish), 0);
        assert_eq!(o.problems().len(), 1);
        assert_eq!(o.report().len(), 12);
    }
}
