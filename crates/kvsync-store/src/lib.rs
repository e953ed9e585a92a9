//! MongoDB adapter: one document per key in the `pairs` collection.
//!
//! ```text
//! { _id: <key>, state: { els: [..], base, written, deleted, floor },  // the replicated state
//!   rev: <int>,                      // bumped by every write: the compare-and-swap token
//!   ver: <version text>, deleted: bool, values: [..], fp: <hex>,   // derived, for queries
//!   live_key: <key>,                 // derived too, present only while the pair is live
//!   seq: <int>,                      // when this node last changed the state: see `seq`
//!   outbox: { id, ver, rep? },       // present while a local change awaits publication
//!                                    // (rep: an import, published as a re-publication)
//!   conflicts: [..] }                // the last conflicts this node settled for the key
//! ```
//!
//! Listing reads `live_key` through a sparse index, which holds live pairs only: deleted
//! keys (tombstones) cost a listing nothing, however many there are. (The obvious
//! alternative, a compound index on `deleted` and `_id`, is what MongoDB would use, but
//! the MongoDB-protocol server the tests run, nx-27017, cannot index `_id` beside
//! another field, and evaluates range conditions on `_id` outside SQLite, over every
//! document; a range on an ordinary field it indexes and answers in SQLite.)
//!
//! Every write is "read, merge, conditional write on `rev`", retried when another write
//! got in between. The outbox mark is written in the same single-document write as the
//! change it describes, so an acknowledged change can never exist without its pending
//! publication, and no multi-document transaction is needed. The relay publishes the
//! key's state as it is then: a newer state includes every change before it.

mod batch;
mod seq;

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, TryStreamExt};
use kvsync_core::{
    state::StateWire, Conflict, Digest, Event, Key, Outcome, PairState, Timestamp, Version,
};
use mongodb::{
    bson::{doc, Bson, Document},
    error::ErrorKind,
    options::{ClientOptions, IndexOptions},
    Client, Collection, Database, IndexModel,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use batch::BatchStats;
pub use seq::{wall_ms_of, Sequencer, Ticket};

const COLLECTION: &str = "pairs";
/// Facts about this node's database itself (when it was last alive).
const META: &str = "meta";
/// The `meta` document of the change feed: `{ epoch, collected }` (see [`Store::init_feed`]).
const FEED: &str = "feed";
/// The field holding the key of a live pair, absent from tombstones.
const LIVE_KEY: &str = "live_key";
/// The version of a tombstone, absent from live pairs: through a sparse index, tombstone
/// collection reads the old tombstones and nothing else, however many live pairs there are.
const DEAD_VER: &str = "dead_ver";
/// Documents a batch of the start-up conversion, or of tombstone collection, handles.
const BATCH: usize = 500;
const DUPLICATE_KEY: i32 = 11000;
/// Conflicts kept per key, newest last.
pub const CONFLICTS_KEPT: usize = 20;
/// Bytes (BSON) of the conflicts kept per key: older ones go first, the newest always
/// stays. Each holds a losing list of up to a pair's size, and twenty such lists would
/// not fit in a document.
pub const CONFLICT_BYTES: usize = 1 << 20;
/// What the conflicts a write leaves untouched may hold: the budget, plus the newest
/// conflict kept whatever its size (a whole pair, within the pair limits, with its BSON
/// framing).
const RETAINED_CONFLICT_BYTES: usize = CONFLICT_BYTES + 2 * kvsync_core::pair::MAX_PAIR_BYTES;
/// The largest document MongoDB stores (its BSON size).
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;
/// MongoDB's error codes for a document over [`MAX_DOCUMENT_BYTES`]: BSONObjectTooLarge,
/// and an update whose result would be too large.
const TOO_LARGE_CODES: [i32; 3] = [10334, 17419, 17420];
/// Error codes after which a write may or may not have been applied, and a later try
/// may succeed: a replica set electing a primary or stepping one down, a server shutting
/// down, the network, and write concerns not satisfied in time.
const TRANSIENT_CODES: [i32; 16] = [
    6, 7, 50, 64, 89, 91, 134, 189, 262, 9001, 10058, 10107, 11600, 11602, 13435, 13436,
];

/// The error a MongoDB error code stands for, where it is not an ordinary backend error:
/// a document too large for `key`, or an uncertain write (see [`StoreError::Unavailable`]).
fn error_of_code(code: i32, key: &str, message: &str) -> Option<StoreError> {
    if TOO_LARGE_CODES.contains(&code) {
        Some(StoreError::TooLarge {
            key: key.to_owned(),
            bytes: MAX_DOCUMENT_BYTES,
        })
    } else if TRANSIENT_CODES.contains(&code) {
        Some(StoreError::Unavailable(format!("{message} (code {code})")))
    } else {
        None
    }
}
/// Attempts of a read-merge-write before giving up on a key changed that often.
const MAX_ATTEMPTS: usize = 64;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be used: down, unreachable, not answering in time, or
    /// refusing our credentials.
    #[error("MongoDB is unavailable: {0}")]
    Unavailable(String),
    /// The database answered, but with an error we do not expect.
    #[error("MongoDB error: {0}")]
    Backend(String),
    /// The document would be larger than MongoDB stores (BSONObjectTooLarge, code 10334):
    /// the write was not made, and trying again cannot help.
    #[error("the document of key {key:?} would be {bytes} bytes or more; MongoDB stores at most {MAX_DOCUMENT_BYTES} (BSONObjectTooLarge)")]
    TooLarge { key: String, bytes: usize },
    /// A stored document does not have the shape this program writes.
    #[error("corrupt document for key {key:?}: {reason}")]
    Corrupt { key: String, reason: String },
}

impl From<mongodb::error::Error> for StoreError {
    fn from(e: mongodb::error::Error) -> Self {
        use mongodb::error::WriteFailure;
        let code = match &*e.kind {
            ErrorKind::Command(c) => Some(c.code),
            // Applied on the primary, maybe not beyond it: an uncertain write.
            ErrorKind::Write(WriteFailure::WriteConcernError(_)) => {
                return StoreError::Unavailable(e.to_string())
            }
            ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
            _ => None,
        };
        if let Some(known) = code.and_then(|c| error_of_code(c, "", &e.to_string())) {
            return known;
        }
        if e.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR)
            || e.contains_label(mongodb::error::RETRYABLE_ERROR)
        {
            return StoreError::Unavailable(e.to_string());
        }
        match &*e.kind {
            ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
            // Wrong credentials make the database as unusable as a network failure does,
            // and fixing them needs no restart of ours.
            | ErrorKind::Authentication { .. }
            | ErrorKind::Shutdown => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

/// A MongoDB user and password given apart from the connection string.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// The database that holds the user.
    pub source: String,
}

/// What is wrong with a connection string, without repeating it: it may hold a password.
fn uri_error_kind(e: &mongodb::error::Error) -> &'static str {
    match &*e.kind {
        ErrorKind::InvalidArgument { .. } => "an invalid argument",
        _ => "not a valid connection string",
    }
}

/// One document of a scan.
#[derive(Debug)]
pub struct Scanned {
    pub id: String,
    /// The pair it holds, or why it cannot be read.
    pub pair: Result<StoredPair, StoreError>,
    /// The number of the write that last changed the pair here, in this node's change
    /// feed (see [`Sequencer`]; [`wall_ms_of`] tells when); 0 when not known.
    pub seq: i64,
}

/// A pair as stored, tombstones included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPair {
    pub key: Key,
    pub state: PairState,
    /// The compare-and-swap token of the document.
    pub rev: i64,
    /// Conflicts this node settled for the key (empty where not read).
    pub conflicts: Vec<RecordedConflict>,
}

impl StoredPair {
    pub fn is_live(&self) -> bool {
        self.state.is_live()
    }

    /// The version of the last write the pair holds.
    pub fn version(&self) -> Option<&Version> {
        self.state.version()
    }
}

/// A conflict as this node recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedConflict {
    /// When this node settled it, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    #[serde(flatten)]
    pub conflict: Conflict,
}

/// Why a compare-and-swap write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    #[error("the pair changed since it was read")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`Store::apply_remote`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    /// The pair after the merge, as stored.
    pub pair: StoredPair,
    /// Conflicts settled by this merge and not recorded for the key before.
    pub conflicts: Vec<Conflict>,
    /// The number of the write, if one was made: done with when dropped (see [`Sequencer`]).
    pub ticket: Option<Ticket>,
}

#[derive(Clone)]
pub struct Store {
    client: Client,
    db: Database,
    pairs: Collection<Document>,
    timeout: Duration,
    seqs: Arc<Sequencer>,
    batcher: batch::Batcher,
}

impl Store {
    /// Prepares a client. This does not need the server to be up: operations fail with
    /// [`StoreError::Unavailable`] after `timeout` until it is.
    pub async fn connect(uri: &str, database: &str, timeout: Duration) -> Result<Self, StoreError> {
        Self::connect_with(uri, database, timeout, None).await
    }

    /// [`Store::connect`] with credentials given apart from the URI, taken as they are.
    pub async fn connect_with(
        uri: &str,
        database: &str,
        timeout: Duration,
        credentials: Option<Credentials>,
    ) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(uri).await.map_err(|e| {
            StoreError::Backend(format!(
                "invalid MongoDB URI ({}): a user name or password in the URI must have \
                 '@', ':', '/', '?', '#' and '%' percent-encoded; or give them apart from it \
                 (KVSYNC_MONGODB_USERNAME and KVSYNC_MONGODB_PASSWORD)",
                uri_error_kind(&e)
            ))
        })?;
        if let Some(c) = credentials {
            options.credential = Some(
                mongodb::options::Credential::builder()
                    .username(c.username)
                    .password(c.password)
                    .source(c.source)
                    .build(),
            );
        }
        options.app_name = Some("kvsync".into());
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        let client = Client::with_options(options)?;
        let db = client.database(database);
        let pairs = db.collection(COLLECTION);
        let batcher = batch::Batcher::start(db.clone(), timeout);
        Ok(Self {
            client,
            db,
            pairs,
            timeout,
            seqs: Arc::default(),
            batcher,
        })
    }

    /// Bounds one operation by the configured timeout. The driver has no socket timeout,
    /// so a server that hangs with its connections open would hold the caller until the
    /// driver's monitor gives up on it, ten seconds or more later. Scans (digest, dump,
    /// the relay's outbox scan) are left unbounded: they may take long on a healthy server.
    async fn bounded<T, E: From<StoreError>>(
        &self,
        op: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        tokio::time::timeout(self.timeout, op)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "no answer within {} ms",
                    self.timeout.as_millis()
                ))
                .into())
            })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async {
            self.db.run_command(doc! { "ping": 1 }).await?;
            Ok(())
        })
        .await
    }

    /// Indexes for the relay's scan, the clock's start-up read (and tombstone
    /// collection), and listing. Idempotent.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let sparse = || IndexOptions::builder().sparse(true).build();
        self.pairs
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "outbox.id": 1 })
                    .options(sparse())
                    .build(),
            )
            .await?;
        self.pairs
            .create_index(IndexModel::builder().keys(doc! { "ver": 1 }).build())
            .await?;
        // The change feed's replay, and the numbering's start-up read.
        self.pairs
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "seq": 1 })
                    .options(sparse())
                    .build(),
            )
            .await?;
        // Tombstones only, by version: what tombstone collection looks for.
        self.pairs
            .create_index(
                IndexModel::builder()
                    .keys(doc! { DEAD_VER: 1 })
                    .options(sparse())
                    .build(),
            )
            .await?;
        // Live pairs only, in key order: see the module's documentation.
        self.pairs
            .create_index(
                IndexModel::builder()
                    .keys(doc! { LIVE_KEY: 1 })
                    .options(sparse())
                    .build(),
            )
            .await?;
        Ok(())
    }

    /// Converts pairs stored by an earlier release, the same way on every node: pairs
    /// stored before lists merged (a whole list or a tombstone under one version) become
    /// states, and live pairs stored before listing read `live_key` get it. Returns how
    /// many were converted. Idempotent; run before anything reads the pairs.
    pub async fn convert_legacy(&self) -> Result<u64, StoreError> {
        let converted = self.convert_whole_lists().await?;
        Ok(converted + self.add_live_keys().await? + self.add_dead_versions().await?)
    }

    async fn convert_whole_lists(&self) -> Result<u64, StoreError> {
        let mut converted = 0;
        loop {
            let mut cursor = self
                .pairs
                .find(doc! { "state": { "$exists": false } })
                .limit(BATCH as i64)
                .await?;
            let mut batch = Vec::new();
            while let Some(d) = cursor.try_next().await? {
                batch.push(d);
            }
            if batch.is_empty() {
                return Ok(converted);
            }
            for d in batch {
                let key = decode_key(&d)?;
                let version = decode_version(&d, "ver")?;
                let values = if decode_bool(&d, "deleted")? {
                    None
                } else {
                    Some(decode_strings(&d, "values")?)
                };
                let state = PairState::whole(values, &version);
                let mut set = state_fields(&key, &state);
                set.insert("rev", 1_i64);
                if let Ok(outbox) = d.get_document("outbox") {
                    let id = outbox.get_str("id").unwrap_or_default().to_owned();
                    let ver = outbox.get_str("ver").unwrap_or_default().to_owned();
                    set.insert("outbox", doc! { "id": id, "ver": ver });
                }
                self.pairs
                    .update_one(
                        doc! { "_id": key.as_str(), "state": { "$exists": false } },
                        update_of(set),
                    )
                    .await?;
                converted += 1;
            }
        }
    }

    /// Gives `live_key` to the live pairs written before it existed: one pass over a
    /// cursor of their keys (so memory stays flat), one update each. Once done, the
    /// pass costs one query that finds nothing.
    async fn add_live_keys(&self) -> Result<u64, StoreError> {
        let missing = doc! { "deleted": false, LIVE_KEY: { "$exists": false } };
        self.fill_missing(missing, |key, _| doc! { LIVE_KEY: key.as_str() })
            .await
    }

    /// Gives `dead_ver` to the tombstones written before it existed, as
    /// [`Store::add_live_keys`] does for live pairs.
    async fn add_dead_versions(&self) -> Result<u64, StoreError> {
        let missing = doc! { "deleted": true, DEAD_VER: { "$exists": false } };
        self.fill_missing(missing, |_, d| {
            doc! { DEAD_VER: d.get_str("ver").unwrap_or_default() }
        })
        .await
    }

    /// Sets the fields `set` gives for each document matching `missing`: one pass over a
    /// cursor of their keys, one update each, on the condition that it still matches.
    /// Returns how many were updated.
    async fn fill_missing(
        &self,
        missing: Document,
        set: impl Fn(&Key, &Document) -> Document,
    ) -> Result<u64, StoreError> {
        let mut cursor = self
            .pairs
            .find(missing.clone())
            .projection(doc! { "_id": 1, "ver": 1 })
            .batch_size(BATCH as u32)
            .await?;
        let mut updated = 0;
        while let Some(d) = cursor.try_next().await? {
            let key = decode_key(&d)?;
            let mut filter = missing.clone();
            filter.insert("_id", key.as_str());
            updated += self
                .pairs
                .update_one(filter, doc! { "$set": set(&key, &d) })
                .await?
                .modified_count;
        }
        Ok(updated)
    }

    pub async fn get(&self, key: &Key) -> Result<Option<StoredPair>, StoreError> {
        self.bounded(async {
            let found = self.pairs.find_one(doc! { "_id": key.as_str() }).await?;
            found.map(|d| decode_pair(&d)).transpose()
        })
        .await
    }

    /// Forgets the conflicts recorded for `key`.
    pub async fn dismiss_conflicts(&self, key: &Key) -> Result<(), StoreError> {
        self.bounded(async {
            self.pairs
                .update_one(
                    doc! { "_id": key.as_str() },
                    doc! { "$unset": { "conflicts": "" } },
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// The conflicts this node recorded for `key`, oldest first.
    pub async fn conflicts(&self, key: &Key) -> Result<Vec<RecordedConflict>, StoreError> {
        self.bounded(async {
            let found = self
                .pairs
                .find_one(doc! { "_id": key.as_str() })
                .projection(doc! { "conflicts": 1 })
                .await?;
            Ok(match found {
                Some(d) => decode_conflicts(&d)?,
                None => Vec::new(),
            })
        })
        .await
    }

    /// Writes a local change if the document is still at `expected` (`None`: no document
    /// at all), together with the outbox mark of the change's event and its number,
    /// whose ticket it returns.
    pub async fn write_local(
        &self,
        key: &Key,
        expected: Option<i64>,
        state: &PairState,
        event_id: Uuid,
        version: &Version,
    ) -> Result<Ticket, CasError> {
        self.bounded(async {
            let mut set = state_fields(key, state);
            set.insert(
                "outbox",
                doc! { "id": event_id.to_string(), "ver": version.to_string() },
            );
            // Taken after the caller read the pair: see the `seq` module.
            let ticket = self.seqs.begin();
            set.insert("seq", ticket.seq());
            self.swap(key, expected, set).await.map(|()| ticket)
        })
        .await
    }

    /// One compare-and-swap: insert when `expected` is `None`, else update at that rev.
    /// Concurrent ones share a database command (see the `batch` module).
    async fn swap(
        &self,
        key: &Key,
        expected: Option<i64>,
        mut set: Document,
    ) -> Result<(), CasError> {
        set.insert("rev", expected.map_or(1, |rev| rev + 1));
        // Every field but the conflicts is set by each write; conflicts left untouched
        // stay within their budget.
        let retained = if set.contains_key("conflicts") {
            0
        } else {
            RETAINED_CONFLICT_BYTES
        };
        self.batcher
            .swap(key.as_str(), expected, update_of(set), retained)
            .await
    }

    /// Sets how many conditional writes one command may hold (1: each alone).
    pub fn set_write_batch(&self, statements: usize) {
        self.batcher.set_limit(statements);
    }

    /// Write commands sent for conditional writes, and the writes they held.
    pub fn write_batches(&self) -> &Arc<BatchStats> {
        self.batcher.stats()
    }

    /// Merges a peer's state into the key's: read, merge, conditional write, again if
    /// another write got in between. `known` is the pair as the caller last saw it, which
    /// saves the first read (a stale one only costs a retry); without it, the first
    /// attempt takes the key for new. A stale or duplicate event
    /// writes nothing. A pending outbox mark of our own is kept: the relay publishes the
    /// merged state.
    pub async fn apply_remote(
        &self,
        event: &Event,
        now_ms: i64,
        known: Option<StoredPair>,
    ) -> Result<Applied, StoreError> {
        self.merge_in(event, now_ms, known, false).await
    }

    /// Merges `event`'s state (from a backup) into the key's like a peer's, and if that
    /// changes anything, marks the merged state for publication as a re-publication
    /// under the event's id and version, so the restore replicates.
    pub async fn import(&self, event: &Event, now_ms: i64) -> Result<Applied, StoreError> {
        self.merge_in(event, now_ms, None, true).await
    }

    async fn merge_in(
        &self,
        event: &Event,
        now_ms: i64,
        mut known: Option<StoredPair>,
        publish: bool,
    ) -> Result<Applied, StoreError> {
        // Without a known pair, the first attempt guesses the key is new: one insert, which
        // fails on a duplicate key if it is not, and the next attempt reads.
        let mut guess = true;
        for _ in 0..MAX_ATTEMPTS {
            let pair = match (known.take(), guess) {
                (Some(pair), _) => Some(pair),
                (None, true) => None,
                (None, false) => self.get(&event.key).await?,
            };
            guess = false;
            let (mut state, rev, mut recorded) = match pair {
                Some(p) => (p.state, Some(p.rev), p.conflicts),
                None => (PairState::default(), None, Vec::new()),
            };
            let (changed, mut conflicts) = state.merge(&event.state);
            // A conflict can be settled without the state changing (the local write won),
            // and the same event may come again: keep only conflicts not recorded yet.
            conflicts.retain(|c| !recorded.iter().any(|r| &r.conflict == c));
            if !changed && conflicts.is_empty() {
                return Ok(Applied {
                    outcome: Outcome::Stale,
                    pair: StoredPair {
                        key: event.key.clone(),
                        state,
                        rev: rev.unwrap_or(0),
                        conflicts: recorded,
                    },
                    conflicts,
                    ticket: None,
                });
            }
            let mut set = state_fields(&event.key, &state);
            // Taken after the pair was read, for each attempt: see the `seq` module. A
            // write that only records conflicts keeps the pair's number.
            let ticket = self.seqs.begin();
            if changed {
                set.insert("seq", ticket.seq());
            }
            if publish && changed {
                set.insert(
                    "outbox",
                    doc! { "id": event.id.to_string(), "ver": event.version.to_string(), "rep": true },
                );
            }
            if !conflicts.is_empty() {
                recorded.extend(conflicts.iter().map(|c| RecordedConflict {
                    at_ms: now_ms,
                    conflict: c.clone(),
                }));
                keep_recent(&mut recorded);
                set.insert("conflicts", conflicts_bson(&recorded)?);
            }
            let outcome = if changed {
                Outcome::Applied
            } else {
                Outcome::Stale
            };
            match self.bounded(self.swap(&event.key, rev, set)).await {
                Ok(()) => {
                    return Ok(Applied {
                        outcome,
                        pair: StoredPair {
                            key: event.key.clone(),
                            state,
                            rev: rev.map_or(1, |r| r + 1),
                            conflicts: recorded,
                        },
                        conflicts,
                        ticket: Some(ticket),
                    })
                }
                Err(CasError::Conflict) => continue,
                Err(CasError::Store(e)) => return Err(e),
            }
        }
        Err(StoreError::Backend(format!(
            "key {:?} changed {MAX_ATTEMPTS} times while a peer's change was merged into it",
            event.key.as_str()
        )))
    }

    /// Gives the key's stored state a new number, for a write whose outcome is unknown
    /// (its answer did not come in time): it may have landed, numbered, without the feed
    /// hearing of it, and a number already passed by readers is never read again. Returns
    /// the pair and the ticket of its new number; `None` when there is no document.
    pub async fn renumber(&self, key: &Key) -> Result<Option<(StoredPair, Ticket)>, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(pair) = self.get(key).await? else {
                return Ok(None);
            };
            let ticket = self.seqs.begin();
            // The state is written as read: the update leaves no derived field behind.
            let mut set = state_fields(key, &pair.state);
            set.insert("seq", ticket.seq());
            match self.bounded(self.swap(key, Some(pair.rev), set)).await {
                Ok(()) => {
                    let rev = pair.rev + 1;
                    return Ok(Some((StoredPair { rev, ..pair }, ticket)));
                }
                Err(CasError::Conflict) => continue,
                Err(CasError::Store(e)) => return Err(e),
            }
        }
        Err(StoreError::Backend(format!(
            "key {:?} changed {MAX_ATTEMPTS} times while it was renumbered",
            key.as_str()
        )))
    }

    /// Clears the outbox marks of events the broker has acknowledged, in one operation.
    /// A key whose mark no longer has the event's id keeps it: a newer local change has
    /// replaced it in the meantime.
    pub async fn clear_outboxes(&self, acked: &[(Key, Uuid)]) -> Result<(), StoreError> {
        // Anchored on `_id`: a filter on `outbox.id` alone scans the whole collection
        // on some servers (nx-27017: 16 ms a call at 10,000 documents, against 1 ms).
        // Ids are unique to one change of one key, so matching keys and ids as two sets
        // clears exactly the acknowledged marks, in one clause instead of an `$or`.
        let (keys, ids): (Vec<&str>, Vec<String>) = acked
            .iter()
            .map(|(key, id)| (key.as_str(), id.to_string()))
            .unzip();
        let filter = match acked.len() {
            0 => return Ok(()),
            1 => doc! { "_id": keys[0], "outbox.id": &ids[0] },
            _ => doc! { "_id": { "$in": keys }, "outbox.id": { "$in": ids } },
        };
        self.bounded(async {
            self.pairs
                .update_many(filter, doc! { "$unset": { "outbox": "" } })
                .await?;
            Ok(())
        })
        .await
    }

    /// Up to `limit` changes awaiting publication, each with its key's current state.
    pub async fn pending(&self, limit: i64) -> Result<Vec<Event>, StoreError> {
        let mut cursor = self
            .pairs
            .find(doc! { "outbox.id": { "$exists": true } })
            .projection(doc! { "conflicts": 0 })
            .limit(limit)
            .await?;
        let mut events = Vec::new();
        while let Some(d) = cursor.try_next().await? {
            events.push(decode_outbox(&d)?);
        }
        Ok(events)
    }

    /// How many changes await publication. A range rather than `$exists`, which the
    /// index answers on nx-27017 too (outbox ids are strings).
    pub async fn count_pending(&self) -> Result<u64, StoreError> {
        self.bounded(self.count(doc! { "outbox.id": { "$gte": "" } }))
            .await
    }

    /// Live pairs whose key starts with `prefix`, in key order, after `after`.
    /// Returns the page and whether more follow.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<StoredPair>, bool), StoreError> {
        self.bounded(async {
            // Keys sharing a prefix are contiguous in byte order: start at the prefix (or
            // after the cursor) and stop at the first key without it.
            let range = match after {
                Some(after) if after >= prefix => doc! { "$gt": after },
                _ => doc! { "$gte": prefix },
            };
            let mut cursor = self
                .pairs
                .find(doc! { LIVE_KEY: range })
                .sort(doc! { LIVE_KEY: 1 })
                .limit(limit as i64 + 1)
                .await?;
            let mut page = Vec::with_capacity(limit.min(1024));
            let mut more = false;
            while let Some(d) = cursor.try_next().await? {
                let pair = decode_pair(&d)?;
                if !pair.key.as_str().starts_with(prefix) {
                    break;
                }
                if page.len() == limit {
                    more = true;
                    break;
                }
                page.push(pair);
            }
            Ok((page, more))
        })
        .await
    }

    /// Up to `limit` live keys in key order, after `after` if given: one batch of "clear
    /// all", which pages through the keys this way rather than holding them all.
    pub async fn live_keys(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Key>, StoreError> {
        match after {
            Some(after) => self.live_keys_between(after, false, None, limit).await,
            None => self.live_keys_between("", true, None, limit).await,
        }
    }

    /// Number of live pairs: a count of the live keys' index.
    pub async fn count_live(&self) -> Result<u64, StoreError> {
        self.count(doc! { LIVE_KEY: { "$gte": "" } }).await
    }

    /// Up to `limit` live keys in key order from `from` (inclusive: `$gte`, else `$gt`) and
    /// before `end` if given: one step of a bounded search, which reads keys only (the
    /// index), then the pairs that match with [`Self::get_many`].
    pub async fn live_keys_between(
        &self,
        from: &str,
        inclusive: bool,
        end: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Key>, StoreError> {
        self.bounded(async {
            let mut range = if inclusive {
                doc! { "$gte": from }
            } else {
                doc! { "$gt": from }
            };
            if let Some(end) = end {
                range.insert("$lt", end);
            }
            let mut cursor = self
                .pairs
                .find(doc! { LIVE_KEY: range })
                .sort(doc! { LIVE_KEY: 1 })
                .projection(doc! { "_id": 1 })
                .limit(limit as i64)
                .await?;
            let mut keys = Vec::with_capacity(limit.min(1024));
            while let Some(d) = cursor.try_next().await? {
                keys.push(decode_key(&d)?);
            }
            Ok(keys)
        })
        .await
    }

    /// Those of `keys` with a change waiting for publication (an outbox mark).
    pub async fn pending_among(
        &self,
        keys: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        if keys.is_empty() {
            return Ok(Default::default());
        }
        self.bounded(async {
            // Anchored on `_id`: nx-27017 answers that from its index.
            let mut cursor = self
                .pairs
                .find(doc! { "_id": { "$in": keys }, "outbox.id": { "$exists": true } })
                .projection(doc! { "_id": 1 })
                .await?;
            let mut pending = std::collections::HashSet::new();
            while let Some(d) = cursor.try_next().await? {
                pending.insert(decode_key(&d)?.into_string());
            }
            Ok(pending)
        })
        .await
    }

    /// The live pairs among `keys`, in key order.
    pub async fn get_many(&self, keys: &[Key]) -> Result<Vec<StoredPair>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.bounded(async {
            let ids: Vec<&str> = keys.iter().map(Key::as_str).collect();
            let mut cursor = self
                .pairs
                .find(doc! { "_id": { "$in": ids }, "deleted": false })
                .sort(doc! { "_id": 1 })
                .await?;
            let mut pairs = Vec::with_capacity(keys.len());
            while let Some(d) = cursor.try_next().await? {
                pairs.push(decode_pair(&d)?);
            }
            Ok(pairs)
        })
        .await
    }

    /// Number of live pairs whose key starts with `prefix`: a count of a range of the
    /// live keys' index (keys sharing a prefix are contiguous in byte order).
    pub async fn count_live_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let mut range = doc! { "$gte": prefix };
        if let Some(end) = prefix_end(prefix) {
            range.insert("$lt", end);
        }
        self.bounded(self.count(doc! { LIVE_KEY: range })).await
    }

    /// Documents matching `query`, with the `count` command rather than
    /// `count_documents`, whose aggregation nx-27017 runs over every document in Python
    /// (seconds for 100 000 documents, where the command over an index takes
    /// milliseconds).
    async fn count(&self, query: Document) -> Result<u64, StoreError> {
        let answer = self
            .db
            .run_command(doc! { "count": COLLECTION, "query": query })
            .await?;
        let n = decode_int(&answer, "n")?;
        u64::try_from(n).map_err(|_| corrupt(&answer, "a negative count"))
    }

    /// Deletes up to `limit` tombstones whose version is older than `older_than` (version
    /// text, compared as text: a whole version, or a prefix such as the 16 hex digits of
    /// a wall-clock millisecond), except those with a pending publication (an outbox
    /// mark), which must reach the peers first. Returns how many were deleted. Works in
    /// batches of a few hundred keys, so memory does not grow with `limit`; each delete
    /// checks the conditions again, so a key written meanwhile is kept.
    ///
    /// A collected key is forgotten: a peer's change to it older than the tombstone,
    /// arriving later, brings it back. Choose `older_than` beyond the time any event
    /// can take to arrive.
    pub async fn collect_tombstones(
        &self,
        older_than: &str,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let collectable = doc! {
            DEAD_VER: { "$lt": older_than },
            "outbox": { "$exists": false },
        };
        let mut collected: u64 = 0;
        loop {
            let left = limit.saturating_sub(collected as usize);
            if left == 0 {
                return Ok(collected);
            }
            let batch = left.min(BATCH);
            let (keys, max_seq): (Vec<Bson>, i64) = self
                .bounded(async {
                    let mut cursor = self
                        .pairs
                        .find(collectable.clone())
                        .projection(doc! { "_id": 1, "seq": 1 })
                        .limit(batch as i64)
                        .await?;
                    let mut keys = Vec::with_capacity(batch);
                    let mut max_seq = 0;
                    while let Some(mut d) = cursor.try_next().await? {
                        max_seq = max_seq.max(decode_int(&d, "seq").unwrap_or(0));
                        if let Some(id) = d.remove("_id") {
                            keys.push(id);
                        }
                    }
                    Ok::<_, StoreError>((keys, max_seq))
                })
                .await?;
            let found = keys.len();
            if found == 0 {
                return Ok(collected);
            }
            // Recorded first: a feed client from before these deletes must be told it
            // missed them, even if this node stops right after deleting.
            self.raise_collected(max_seq).await?;
            let mut filter = collectable.clone();
            filter.insert("_id", doc! { "$in": keys });
            let deleted = self
                .bounded(async { Ok::<_, StoreError>(self.pairs.delete_many(filter).await?) })
                .await?
                .deleted_count;
            collected += deleted;
            // Fewer than asked: none are left. None deleted: every one changed meanwhile,
            // and the next call will see what is left.
            if found < batch || deleted == 0 {
                return Ok(collected);
            }
        }
    }

    /// Digest over every key's state fingerprint, tombstones included. Streams the cursor
    /// and hashes as it goes, so memory stays flat whatever the size; the HTTP request
    /// timeout bounds its time.
    pub async fn digest(&self) -> Result<(u64, String), StoreError> {
        let mut cursor = self
            .pairs
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .projection(doc! { "_id": 1, "ver": 1, "deleted": 1, "fp": 1 })
            .await?;
        let mut digest = Digest::new();
        while let Some(d) = cursor.try_next().await? {
            let key = decode_key(&d)?;
            let version = d.get_str("ver").unwrap_or_default();
            let fp = d.get_str("fp").unwrap_or_default();
            digest.add(key.as_str(), version, decode_bool(&d, "deleted")?, fp);
        }
        Ok(digest.finish())
    }

    /// Every stored pair in key order, tombstones included (for tests and tools).
    pub async fn dump(&self) -> Result<Vec<StoredPair>, StoreError> {
        let mut cursor = self
            .pairs
            .find(doc! {})
            .projection(doc! { "conflicts": 0 })
            .sort(doc! { "_id": 1 })
            .await?;
        let mut out = Vec::new();
        while let Some(d) = cursor.try_next().await? {
            out.push(decode_pair(&d)?);
        }
        Ok(out)
    }

    /// Every stored pair in key order from `from` (inclusive; all if `None`), tombstones
    /// included and conflicts not read, through one cursor: the scan of summaries,
    /// snapshots and exports. One query for the whole scan, whose cost on some servers
    /// does not grow with the database per page as paging does. Not bounded by the
    /// operation timeout: a large database takes long.
    pub async fn scan(
        &self,
        from: Option<&str>,
    ) -> Result<futures::stream::BoxStream<'static, Result<Scanned, StoreError>>, StoreError> {
        let filter = match from {
            Some(from) => doc! { "_id": { "$gte": from } },
            None => doc! {},
        };
        let cursor = self
            .pairs
            .find(filter)
            .sort(doc! { "_id": 1 })
            .projection(doc! { "conflicts": 0, "values": 0 })
            .batch_size(1000)
            .await?;
        Ok(Box::pin(cursor.map(|d| {
            let d = d?;
            Ok(Scanned {
                id: doc_id(&d),
                pair: decode_pair(&d),
                seq: decode_int(&d, "seq").unwrap_or(0),
            })
        })))
    }

    /// When this node last said it was alive (its wall clock, ms): see [`Self::set_alive`].
    pub async fn alive_ms(&self) -> Result<Option<u64>, StoreError> {
        self.bounded(async {
            let found = self
                .db
                .collection::<Document>(META)
                .find_one(doc! { "_id": "alive" })
                .await?;
            Ok(found
                .and_then(|d| decode_int(&d, "ms").ok())
                .map(|ms| ms.max(0) as u64))
        })
        .await
    }

    /// Records that this node is alive and replicating at `ms`, so that after a long
    /// absence it knows it was away.
    pub async fn set_alive(&self, ms: u64) -> Result<(), StoreError> {
        self.set_meta("alive", doc! { "ms": ms as i64 }).await
    }

    /// Sets `fields` on the `meta` document `id`, creating it if need be.
    async fn set_meta(&self, id: &str, fields: Document) -> Result<(), StoreError> {
        self.bounded(async {
            self.db
                .collection::<Document>(META)
                .update_one(doc! { "_id": id }, doc! { "$set": fields })
                .upsert(true)
                .await?;
            Ok(())
        })
        .await
    }

    /// Saves how far this node has applied each partition of `topic`: Kafka forgets a
    /// group's committed offsets after a while without commits, the database does not.
    pub async fn save_positions(
        &self,
        topic: &str,
        positions: &std::collections::BTreeMap<i32, i64>,
    ) -> Result<(), StoreError> {
        let at: Document = positions
            .iter()
            .map(|(p, o)| (p.to_string(), Bson::Int64(*o)))
            .collect();
        self.set_meta("positions", doc! { "topic": topic, "at": at })
            .await
    }

    /// The positions last saved for `topic` (none for another topic).
    pub async fn positions(
        &self,
        topic: &str,
    ) -> Result<std::collections::BTreeMap<i32, i64>, StoreError> {
        self.bounded(async {
            let found = self
                .db
                .collection::<Document>(META)
                .find_one(doc! { "_id": "positions", "topic": topic })
                .await?;
            let Some(at) = found.as_ref().and_then(|d| d.get_document("at").ok()) else {
                return Ok(Default::default());
            };
            Ok(at
                .keys()
                .filter_map(|p| Some((p.parse().ok()?, decode_int(at, p).ok()?)))
                .collect())
        })
        .await
    }

    /// Removes every pair whose changes were all published (no outbox mark): what a node
    /// away for longer than the tombstone horizon drops before it gets its peers' state.
    /// Pending local changes stay, to be published. Returns how many went.
    pub async fn discard_published(&self) -> Result<u64, StoreError> {
        Ok(self
            .pairs
            .delete_many(doc! { "outbox.id": { "$exists": false } })
            .await?
            .deleted_count)
    }

    /// Whether no pair at all is stored (tombstones count).
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        self.bounded(async {
            Ok(self
                .pairs
                .find_one(doc! {})
                .projection(doc! { "_id": 1 })
                .await?
                .is_none())
        })
        .await
    }

    /// The numbering of this store's changes (see [`Sequencer`]).
    pub fn sequencer(&self) -> &Arc<Sequencer> {
        &self.seqs
    }

    /// Reads the change feed's epoch and collected point (drawing an epoch for a new
    /// database), and starts the numbering after every number stored or collected.
    /// Run before the first write.
    pub async fn init_feed(&self) -> Result<(), StoreError> {
        let meta = self.db.collection::<Document>(META);
        let found = self
            .bounded(async { Ok::<_, StoreError>(meta.find_one(doc! { "_id": FEED }).await?) })
            .await?;
        let (epoch, collected) = match found {
            Some(d) => (
                d.get_str("epoch")
                    .map_err(|_| corrupt(&d, "epoch is not a string"))?
                    .to_owned(),
                decode_int(&d, "collected").unwrap_or(0),
            ),
            None => (self.new_feed_epoch().await?, 0),
        };
        let max = self
            .bounded(async {
                let found = self
                    .pairs
                    .find_one(doc! { "seq": { "$gte": 0_i64 } })
                    .sort(doc! { "seq": -1 })
                    .projection(doc! { "_id": 1, "seq": 1 })
                    .await?;
                found.map(|d| decode_int(&d, "seq")).transpose()
            })
            .await?
            .unwrap_or(0);
        self.seqs.start(epoch, collected, max.max(collected));
        self.number_unnumbered().await?;
        Ok(())
    }

    /// Gives a feed number to documents without one (stored by a release before the
    /// change feed, or by hand), so that reads in number order ([`Self::scan_numbered`],
    /// the feed's replay) see every document. One query that finds nothing once done.
    async fn number_unnumbered(&self) -> Result<u64, StoreError> {
        // Run before anything reads the feed, so a number is done with once handed out.
        self.fill_missing(doc! { "seq": { "$exists": false } }, |_, _| {
            doc! { "seq": self.seqs.begin().seq() }
        })
        .await
    }

    /// Every document in the order of its feed number, read `page` documents at a time.
    /// Each read is a short query over the `seq` index, so the server serves other
    /// operations in between: one query over a whole large collection can hold a server
    /// that runs one at a time (nx-27017) for seconds. A document rewritten during the
    /// read moves to a later number and may come twice; the pages are bounded by the
    /// store's timeout, the whole read is not.
    pub fn scan_numbered(
        &self,
        page: usize,
    ) -> futures::stream::BoxStream<'static, Result<Scanned, StoreError>> {
        let store = self.clone();
        let page = page.max(1);
        let pages = futures::stream::try_unfold(Some(0_i64), move |after| {
            let store = store.clone();
            async move {
                let Some(after) = after else {
                    return Ok::<_, StoreError>(None);
                };
                let docs = store.numbered_after(after, page).await?;
                let next = match docs.last() {
                    Some(last) if docs.len() == page => Some(last.seq),
                    _ => None,
                };
                Ok(Some((
                    futures::stream::iter(docs.into_iter().map(Ok)),
                    next,
                )))
            }
        });
        Box::pin(pages.try_flatten())
    }

    async fn numbered_after(&self, after: i64, limit: usize) -> Result<Vec<Scanned>, StoreError> {
        let docs = self.numbered(doc! { "$gt": after }, limit).await?;
        docs.into_iter()
            .map(|d| {
                Ok(Scanned {
                    id: doc_id(&d),
                    pair: decode_pair(&d),
                    seq: decode_int(&d, "seq")?,
                })
            })
            .collect()
    }

    /// Up to `limit` documents (conflicts and derived values not read) whose feed number is
    /// in `range`, in number order: a short query over the `seq` index.
    async fn numbered(&self, range: Document, limit: usize) -> Result<Vec<Document>, StoreError> {
        self.bounded(async {
            let cursor = self
                .pairs
                .find(doc! { "seq": range })
                .sort(doc! { "seq": 1 })
                .projection(doc! { "conflicts": 0, "values": 0 })
                .limit(limit as i64)
                .await?;
            Ok(cursor.try_collect::<Vec<Document>>().await?)
        })
        .await
    }

    /// Draws a new epoch for the change feed, so no client resumes from a position of
    /// the state before: for a new database, or state dropped to rejoin.
    pub async fn new_feed_epoch(&self) -> Result<String, StoreError> {
        let epoch = Uuid::new_v4().simple().to_string()[..12].to_owned();
        self.bounded(async {
            self.db
                .collection::<Document>(META)
                .update_one(
                    doc! { "_id": FEED },
                    doc! { "$set": { "epoch": &epoch, "collected": 0_i64 } },
                )
                .upsert(true)
                .await?;
            Ok::<_, StoreError>(())
        })
        .await?;
        self.seqs.set_epoch(epoch.clone());
        Ok(epoch)
    }

    /// Records that tombstones numbered up to `seq` are being collected.
    async fn raise_collected(&self, seq: i64) -> Result<(), StoreError> {
        if seq <= self.seqs.epoch_and_collected().1 {
            return Ok(());
        }
        self.bounded(async {
            self.db
                .collection::<Document>(META)
                .update_one(doc! { "_id": FEED }, doc! { "$set": { "collected": seq } })
                .await?;
            Ok::<_, StoreError>(())
        })
        .await?;
        self.seqs.set_collected(seq);
        Ok(())
    }

    /// Up to `limit` pairs (tombstones included, conflicts not read) whose number is
    /// after `after` and at most `upto`, in number order, with their numbers.
    pub async fn changed_since(
        &self,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<(i64, StoredPair)>, StoreError> {
        let docs = self
            .numbered(doc! { "$gt": after, "$lte": upto }, limit)
            .await?;
        docs.iter()
            .map(|d| Ok((decode_int(d, "seq")?, decode_pair(d)?)))
            .collect()
    }

    /// The greatest timestamp stored, so a restarted node's clock starts after it.
    pub async fn max_timestamp(&self) -> Result<Option<Timestamp>, StoreError> {
        let found = self
            .pairs
            .find_one(doc! {})
            .sort(doc! { "ver": -1 })
            .projection(doc! { "_id": 1, "ver": 1 })
            .await?;
        found
            .map(|d| decode_version(&d, "ver").map(|v| v.ts))
            .transpose()
    }

    pub async fn shutdown(self) {
        self.client.shutdown().await;
    }
}

/// The least string greater than every string starting with `prefix` (its last character
/// that can be, plus one: code point order is UTF-8 byte order); `None` for no bound.
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The document this store keeps for `key` in `state` at revision `rev`, without outbox
/// mark or conflicts: for tools and benchmarks that write pairs straight into the
/// database as a node would have stored them.
pub fn stored_document(key: &Key, state: &PairState, rev: i64) -> Document {
    let mut d = doc! { "_id": key.as_str() };
    d.extend(state_fields(key, state));
    d.insert("rev", rev);
    d
}

/// The update that sets `set` (fields of [`state_fields`] and others) and removes
/// whichever of `live_key` and `dead_ver` it leaves out.
fn update_of(set: Document) -> Document {
    if set.contains_key(LIVE_KEY) {
        doc! { "$set": set, "$unset": { DEAD_VER: "" } }
    } else {
        doc! { "$set": set, "$unset": { LIVE_KEY: "" } }
    }
}

/// The fields a write sets: the state, and what queries need of it.
fn state_fields(key: &Key, state: &PairState) -> Document {
    let state_doc =
        mongodb::bson::to_document(&state.to_wire()).expect("a state always converts to BSON");
    let values: Vec<Bson> = state
        .items()
        .map(|i| Bson::String(i.value.to_owned()))
        .collect();
    let live = state.is_live();
    let mut fields = doc! {
        "state": state_doc,
        "ver": state.version().map(ToString::to_string).unwrap_or_default(),
        "deleted": !live,
        "values": values,
        "fp": state.fingerprint(),
    };
    if live {
        fields.insert(LIVE_KEY, key.as_str());
    } else {
        fields.insert(
            DEAD_VER,
            state.version().map(ToString::to_string).unwrap_or_default(),
        );
    }
    fields
}

/// Drops the oldest conflicts until at most [`CONFLICTS_KEPT`] remain within
/// [`CONFLICT_BYTES`]; the newest stays whatever its size.
fn keep_recent(recorded: &mut Vec<RecordedConflict>) {
    let mut bytes = 0;
    let mut kept = 0;
    for c in recorded.iter().rev() {
        let size = mongodb::bson::to_vec(c).map_or(usize::MAX, |b| b.len());
        if kept == CONFLICTS_KEPT || (kept > 0 && bytes + size > CONFLICT_BYTES) {
            break;
        }
        bytes = bytes.saturating_add(size);
        kept += 1;
    }
    let excess = recorded.len() - kept;
    recorded.drain(..excess);
}

fn conflicts_bson(recorded: &[RecordedConflict]) -> Result<Bson, StoreError> {
    mongodb::bson::to_bson(recorded).map_err(|e| StoreError::Backend(e.to_string()))
}

fn corrupt(d: &Document, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: format!("{:?}", d.get("_id")),
        reason: reason.into(),
    }
}

fn decode_key(d: &Document) -> Result<Key, StoreError> {
    let raw = d
        .get_str("_id")
        .map_err(|_| corrupt(d, "_id is not a string"))?;
    Key::parse(raw).map_err(|e| corrupt(d, e.to_string()))
}

fn decode_version(d: &Document, field: &str) -> Result<Version, StoreError> {
    d.get_str(field)
        .map_err(|_| corrupt(d, format!("{field} is not a string")))?
        .parse()
        .map_err(|e: kvsync_core::VersionError| corrupt(d, e.to_string()))
}

/// Lenient: some servers hand back booleans written by other tools as numbers.
fn decode_bool(d: &Document, field: &str) -> Result<bool, StoreError> {
    match d.get(field) {
        Some(Bson::Boolean(b)) => Ok(*b),
        Some(Bson::Int32(i)) => Ok(*i != 0),
        Some(Bson::Int64(i)) => Ok(*i != 0),
        None | Some(Bson::Null) => Ok(false),
        Some(_) => Err(corrupt(d, format!("{field} is not a boolean"))),
    }
}

/// A document's `_id` as text, whatever its type (for naming a document that cannot be read).
fn doc_id(d: &Document) -> String {
    match d.get("_id") {
        Some(Bson::String(s)) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// Lenient too: small Int64 values may come back as Int32.
fn decode_int(d: &Document, field: &str) -> Result<i64, StoreError> {
    match d.get(field) {
        Some(Bson::Int32(i)) => Ok(i64::from(*i)),
        Some(Bson::Int64(i)) => Ok(*i),
        Some(Bson::Double(f)) if f.fract() == 0.0 => Ok(*f as i64),
        _ => Err(corrupt(d, format!("{field} is not an integer"))),
    }
}

fn decode_strings(d: &Document, field: &str) -> Result<Vec<String>, StoreError> {
    d.get_array(field)
        .map_err(|_| corrupt(d, format!("{field} is not an array")))?
        .iter()
        .map(|b| b.as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| corrupt(d, format!("{field} holds a non-string")))
}

fn decode_state(d: &Document) -> Result<PairState, StoreError> {
    let state = match d.get("state") {
        Some(Bson::Document(s)) => s,
        None => {
            return Err(corrupt(
                d,
                "stored in the layout of an earlier release; the node converts such pairs when it starts",
            ))
        }
        Some(_) => return Err(corrupt(d, "state is not a document")),
    };
    let wire: StateWire = mongodb::bson::from_document(state.clone())
        .map_err(|e| corrupt(d, format!("state: {e}")))?;
    PairState::from_wire(wire).map_err(|e| corrupt(d, format!("state: {e}")))
}

fn decode_pair(d: &Document) -> Result<StoredPair, StoreError> {
    Ok(StoredPair {
        key: decode_key(d)?,
        state: decode_state(d)?,
        rev: decode_int(d, "rev")?,
        conflicts: decode_conflicts(d)?,
    })
}

fn decode_conflicts(d: &Document) -> Result<Vec<RecordedConflict>, StoreError> {
    match d.get("conflicts") {
        None | Some(Bson::Null) => Ok(Vec::new()),
        Some(b) => {
            mongodb::bson::from_bson(b.clone()).map_err(|e| corrupt(d, format!("conflicts: {e}")))
        }
    }
}

fn decode_outbox(d: &Document) -> Result<Event, StoreError> {
    let pair = decode_pair(d)?;
    let outbox = d
        .get_document("outbox")
        .map_err(|_| corrupt(d, "outbox is not a document"))?;
    let id = outbox
        .get_str("id")
        .ok()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| corrupt(d, "outbox.id is not a UUID"))?;
    let version = decode_version(outbox, "ver")?;
    Ok(Event {
        id,
        origin: version.node.clone(),
        key: pair.key,
        version,
        state: pair.state,
        // An import's mark: its version is fresh, newer than the state.
        republished: outbox.get_bool("rep").unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvsync_core::{ConflictKind, NodeId};

    fn conflict(ms: u64, lost: Vec<String>) -> RecordedConflict {
        let v = |ms| Version::new(Timestamp::new(ms, 0), NodeId::parse("n1").unwrap());
        RecordedConflict {
            at_ms: ms as i64,
            conflict: Conflict {
                kind: ConflictKind::Replace,
                element: None,
                lost,
                lost_version: v(ms),
                won: None,
                won_version: v(ms + 1),
            },
        }
    }

    #[test]
    fn conflicts_kept_are_bounded_by_count_and_bytes() {
        let mut small: Vec<_> = (0..30).map(|i| conflict(i, vec!["x".into()])).collect();
        keep_recent(&mut small);
        assert_eq!(small.len(), CONFLICTS_KEPT);
        assert_eq!(small.last().unwrap().at_ms, 29, "the newest stay");
        // Lists of a whole pair each: only what fits in the budget, and the newest even
        // when it alone is larger.
        let list = vec!["y".repeat(64 * 1024); 16];
        let mut large: Vec<_> = (0..25).map(|i| conflict(i, list.clone())).collect();
        keep_recent(&mut large);
        assert_eq!(large.len(), 1);
        assert_eq!(large[0].at_ms, 24);
        let bytes = mongodb::bson::to_vec(&large[0]).unwrap().len();
        assert!(bytes <= RETAINED_CONFLICT_BYTES, "{bytes}");
        let half = vec!["z".repeat(200 * 1024)];
        let mut mixed: Vec<_> = (0..6).map(|i| conflict(i, half.clone())).collect();
        keep_recent(&mut mixed);
        assert_eq!(
            mixed.iter().map(|c| c.at_ms).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
    }

    #[test]
    fn error_codes_of_failover_and_size_are_mapped() {
        for code in [10107, 13435, 11602, 189, 91, 64] {
            assert!(
                matches!(
                    error_of_code(code, "k", "m"),
                    Some(StoreError::Unavailable(_))
                ),
                "{code}"
            );
        }
        assert!(matches!(
            error_of_code(10334, "k", "m"),
            Some(StoreError::TooLarge { key, .. }) if key == "k"
        ));
        assert!(error_of_code(2, "k", "m").is_none());
    }

    #[test]
    fn prefix_end_bounds_every_key_with_the_prefix() {
        assert_eq!(prefix_end("b/").as_deref(), Some("b0"));
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
        assert_eq!(prefix_end(""), None);
        let end = prefix_end("ключ").unwrap();
        assert!("ключ\u{10FFFF}zz" < end.as_str() && "ключ" < end.as_str());
    }
}
