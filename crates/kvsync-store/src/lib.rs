//! MongoDB adapter: one document per key in the `pairs` collection.
//!
//! ```text
//! { _id: <key>, values: [..] | null, deleted: bool, ver: <version text>,
//!   outbox: { id, ver, values, deleted } }   // present while a local change awaits publication
//! ```
//!
//! Version text sorts like the version itself (see `kvsync_core::Version`), so the merge
//! rule becomes a plain conditional write on `ver`. The outbox mark is written in the same
//! single-document write as the change it describes, so an acknowledged change can never
//! exist without its pending publication, and no multi-document transaction is needed.

use std::time::Duration;

use futures::TryStreamExt;
use kvsync_core::{Digest, Entry, Event, Key, NodeId, Op, Outcome, Timestamp, Values, Version};
use mongodb::{
    bson::{doc, Bson, Document},
    error::{ErrorKind, WriteFailure},
    options::{ClientOptions, IndexOptions, ReturnDocument},
    Client, Collection, Database, IndexModel,
};
use uuid::Uuid;

const COLLECTION: &str = "pairs";
const DUPLICATE_KEY: i32 = 11000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be used: down, unreachable, not answering in time, or
    /// refusing our credentials.
    #[error("MongoDB is unavailable: {0}")]
    Unavailable(String),
    /// The database answered, but with an error we do not expect.
    #[error("MongoDB error: {0}")]
    Backend(String),
    /// A stored document does not have the shape this program writes.
    #[error("corrupt document for key {key:?}: {reason}")]
    Corrupt { key: String, reason: String },
}

impl From<mongodb::error::Error> for StoreError {
    fn from(e: mongodb::error::Error) -> Self {
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

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// A pair as stored, tombstones included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPair {
    pub key: Key,
    pub entry: Entry,
}

impl StoredPair {
    pub fn origin(&self) -> &NodeId {
        &self.entry.version.node
    }
}

/// What [`Store::write_local_if_newer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalWrite {
    /// There was no live pair (absent, or a tombstone).
    Created,
    Replaced,
    /// A version at least as new was stored: nothing written.
    Stale,
}

/// Why a compare-and-swap write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    #[error("the pair changed since it was read")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct Store {
    client: Client,
    db: Database,
    pairs: Collection<Document>,
    timeout: Duration,
}

impl Store {
    /// Prepares a client. This does not need the server to be up: operations fail with
    /// [`StoreError::Unavailable`] after `timeout` until it is.
    pub async fn connect(uri: &str, database: &str, timeout: Duration) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(uri)
            .await
            .map_err(|e| StoreError::Backend(format!("invalid MongoDB URI: {e}")))?;
        options.app_name = Some("kvsync".into());
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        let client = Client::with_options(options)?;
        let db = client.database(database);
        let pairs = db.collection(COLLECTION);
        Ok(Self {
            client,
            db,
            pairs,
            timeout,
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

    /// Indexes for the relay's scan and the clock's start-up read. Idempotent.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let sparse = IndexOptions::builder().sparse(true).build();
        self.pairs
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "outbox.id": 1 })
                    .options(sparse)
                    .build(),
            )
            .await?;
        self.pairs
            .create_index(IndexModel::builder().keys(doc! { "ver": 1 }).build())
            .await?;
        Ok(())
    }

    pub async fn get(&self, key: &Key) -> Result<Option<StoredPair>, StoreError> {
        self.bounded(async {
            let found = self.pairs.find_one(doc! { "_id": key.as_str() }).await?;
            found.map(|d| decode_pair(&d)).transpose()
        })
        .await
    }

    /// Writes a local change if the stored version is still `expected` (`None`: no
    /// document at all), together with the outbox mark for `event_id`.
    pub async fn write_local(
        &self,
        key: &Key,
        expected: Option<&Version>,
        entry: &Entry,
        event_id: Uuid,
    ) -> Result<(), CasError> {
        self.bounded(async {
            let mut document = entry_doc(entry);
            document.insert("outbox", outbox_doc(entry, event_id));
            match expected {
                None => {
                    document.insert("_id", key.as_str());
                    match self.pairs.insert_one(document).await {
                        Ok(_) => Ok(()),
                        Err(e) if is_duplicate_key(&e) => Err(CasError::Conflict),
                        Err(e) => Err(StoreError::from(e).into()),
                    }
                }
                Some(expected) => {
                    let filter = doc! { "_id": key.as_str(), "ver": expected.to_string() };
                    let result = self
                        .pairs
                        .replace_one(filter, document)
                        .await
                        .map_err(StoreError::from)?;
                    if result.matched_count == 1 {
                        Ok(())
                    } else {
                        Err(CasError::Conflict)
                    }
                }
            }
        })
        .await
    }

    /// Writes a local change (with its outbox mark) if `entry.version` is newer than
    /// whatever is stored, for writes with no precondition. Creating a key and replacing
    /// a live pair take one round trip; reviving a tombstone, or finding a newer
    /// version, two or three.
    pub async fn write_local_if_newer(
        &self,
        key: &Key,
        entry: &Entry,
        event_id: Uuid,
    ) -> Result<LocalWrite, StoreError> {
        self.bounded(async {
            let mut document = entry_doc(entry);
            document.insert("outbox", outbox_doc(entry, event_id));
            let version = entry.version.to_string();
            // One conditional upsert covers the common cases. Its insert collides when
            // the key holds a tombstone (which answers "created", so it must be told
            // apart), a version at least as new, or a racing insert: the steps below
            // sort those out.
            let live_and_older =
                doc! { "_id": key.as_str(), "ver": { "$lt": &version }, "deleted": false };
            match self
                .pairs
                .update_one(live_and_older, doc! { "$set": document.clone() })
                .upsert(true)
                .await
            {
                Ok(r) if r.upserted_id.is_some() => return Ok(LocalWrite::Created),
                Ok(r) if r.matched_count == 1 => return Ok(LocalWrite::Replaced),
                Ok(_) => {}
                Err(e) if is_duplicate_key(&e) => {}
                Err(e) => return Err(e.into()),
            }
            let filter = doc! { "_id": key.as_str(), "ver": { "$lt": &version } };
            let before = self
                .pairs
                .find_one_and_update(filter, doc! { "$set": document.clone() })
                .return_document(ReturnDocument::Before)
                .projection(doc! { "deleted": 1 })
                .await?;
            if let Some(before) = before {
                return Ok(if decode_deleted(&before)? {
                    LocalWrite::Created
                } else {
                    LocalWrite::Replaced
                });
            }
            // No pair, or a newer one: the insert's duplicate-key error tells which. (Not an
            // upsert: servers disagree on how a findAndModify upsert reports a collision.)
            document.insert("_id", key.as_str());
            match self.pairs.insert_one(document).await {
                Ok(_) => Ok(LocalWrite::Created),
                Err(e) if is_duplicate_key(&e) => Ok(LocalWrite::Stale),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Applies a peer's change if it is newer than what is stored: one conditional
    /// upsert, so a stale or duplicate event changes nothing. A pending outbox mark of
    /// our own is kept: that change is still published (and is stale for the peers).
    pub async fn apply_remote(&self, event: &Event) -> Result<Outcome, StoreError> {
        self.bounded(async {
            let version = event.version.to_string();
            let filter = doc! { "_id": event.key.as_str(), "ver": { "$lt": &version } };
            let update = doc! { "$set": entry_doc(&Entry::from_event(event)) };
            match self
                .pairs
                .update_one(filter.clone(), update.clone())
                .upsert(true)
                .await
            {
                Ok(_) => Ok(Outcome::Applied),
                // The upsert's insert collided: the key exists, either with a version at
                // least as new, or because another write created it in the meantime. Pairs
                // are never removed (deletes are tombstones), so the same update without
                // upsert now tells which.
                Err(e) if is_duplicate_key(&e) => {
                    let result = self.pairs.update_one(filter, update).await?;
                    Ok(if result.matched_count == 1 {
                        Outcome::Applied
                    } else {
                        Outcome::Stale
                    })
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Clears the outbox marks of events the broker has acknowledged, in one operation.
    /// A key whose mark no longer has the event's id keeps it: a newer local change has
    /// replaced it in the meantime.
    pub async fn clear_outboxes(&self, acked: &[(Key, Uuid)]) -> Result<(), StoreError> {
        let marks: Vec<Document> = acked
            .iter()
            .map(|(key, id)| doc! { "_id": key.as_str(), "outbox.id": id.to_string() })
            .collect();
        let filter = match marks.len() {
            0 => return Ok(()),
            1 => marks.into_iter().next().expect("one mark"),
            _ => doc! { "$or": marks },
        };
        self.bounded(async {
            self.pairs
                .update_many(filter, doc! { "$unset": { "outbox": "" } })
                .await?;
            Ok(())
        })
        .await
    }

    /// Up to `limit` changes awaiting publication.
    pub async fn pending(&self, limit: i64) -> Result<Vec<Event>, StoreError> {
        let mut cursor = self
            .pairs
            .find(doc! { "outbox.id": { "$exists": true } })
            .limit(limit)
            .await?;
        let mut events = Vec::new();
        while let Some(d) = cursor.try_next().await? {
            events.push(decode_outbox(&d)?);
        }
        Ok(events)
    }

    pub async fn count_pending(&self) -> Result<u64, StoreError> {
        self.bounded(async {
            Ok(self
                .pairs
                .count_documents(doc! { "outbox.id": { "$exists": true } })
                .await?)
        })
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
                .find(doc! { "_id": range, "deleted": false })
                .sort(doc! { "_id": 1 })
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
        self.bounded(async {
            let filter = match after {
                Some(after) => doc! { "_id": { "$gt": after }, "deleted": false },
                None => doc! { "deleted": false },
            };
            let mut cursor = self
                .pairs
                .find(filter)
                .sort(doc! { "_id": 1 })
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

    /// Number of live pairs.
    pub async fn count_live(&self) -> Result<u64, StoreError> {
        Ok(self
            .pairs
            .count_documents(doc! { "deleted": false })
            .await?)
    }

    /// Digest over every (key, version, deleted), tombstones included. Streams the
    /// cursor and hashes as it goes, so memory stays flat whatever the size; the HTTP
    /// request timeout bounds its time.
    pub async fn digest(&self) -> Result<(u64, String), StoreError> {
        let mut cursor = self
            .pairs
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .projection(doc! { "_id": 1, "ver": 1, "deleted": 1 })
            .await?;
        let mut digest = Digest::new();
        while let Some(d) = cursor.try_next().await? {
            let key = decode_key(&d)?;
            let version = decode_version(&d, "ver")?;
            digest.add(key.as_str(), &version, decode_deleted(&d)?);
        }
        Ok(digest.finish())
    }

    /// Every stored entry in key order, tombstones included (for tests and tools).
    pub async fn dump(&self) -> Result<Vec<StoredPair>, StoreError> {
        let mut cursor = self.pairs.find(doc! {}).sort(doc! { "_id": 1 }).await?;
        let mut out = Vec::new();
        while let Some(d) = cursor.try_next().await? {
            out.push(decode_pair(&d)?);
        }
        Ok(out)
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

fn values_bson(values: Option<&Values>) -> Bson {
    match values {
        Some(v) => Bson::Array(
            v.as_slice()
                .iter()
                .map(|s| Bson::String(s.clone()))
                .collect(),
        ),
        None => Bson::Null,
    }
}

fn entry_doc(entry: &Entry) -> Document {
    doc! {
        "values": values_bson(entry.values.as_ref()),
        "deleted": entry.is_tombstone(),
        "ver": entry.version.to_string(),
    }
}

fn outbox_doc(entry: &Entry, event_id: Uuid) -> Document {
    doc! {
        "id": event_id.to_string(),
        "ver": entry.version.to_string(),
        "values": values_bson(entry.values.as_ref()),
        "deleted": entry.is_tombstone(),
    }
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

fn decode_deleted(d: &Document) -> Result<bool, StoreError> {
    // Lenient: some servers hand back booleans written by other tools as numbers.
    match d.get("deleted") {
        Some(Bson::Boolean(b)) => Ok(*b),
        Some(Bson::Int32(i)) => Ok(*i != 0),
        Some(Bson::Int64(i)) => Ok(*i != 0),
        None | Some(Bson::Null) => Ok(false),
        Some(_) => Err(corrupt(d, "deleted is not a boolean")),
    }
}

fn decode_values(
    d: &Document,
    key: &Key,
    field: &str,
    deleted: bool,
) -> Result<Option<Values>, StoreError> {
    if deleted {
        return Ok(None);
    }
    let array = d
        .get_array(field)
        .map_err(|_| corrupt(d, format!("{field} is not an array")))?;
    let values = array
        .iter()
        .map(|b| b.as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| corrupt(d, format!("{field} holds a non-string")))?;
    Values::new(values, key.as_str().len())
        .map(Some)
        .map_err(|e| corrupt(d, e.to_string()))
}

fn decode_pair(d: &Document) -> Result<StoredPair, StoreError> {
    let key = decode_key(d)?;
    let version = decode_version(d, "ver")?;
    let deleted = decode_deleted(d)?;
    let values = decode_values(d, &key, "values", deleted)?;
    Ok(StoredPair {
        key,
        entry: Entry { values, version },
    })
}

fn decode_outbox(d: &Document) -> Result<Event, StoreError> {
    let key = decode_key(d)?;
    let outbox = d
        .get_document("outbox")
        .map_err(|_| corrupt(d, "outbox is not a document"))?;
    let id = outbox
        .get_str("id")
        .ok()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| corrupt(d, "outbox.id is not a UUID"))?;
    let version = decode_version(outbox, "ver")?;
    let deleted = decode_deleted(outbox)?;
    let op = match decode_values(outbox, &key, "values", deleted)? {
        Some(values) => Op::Put(values),
        None => Op::Delete,
    };
    Ok(Event {
        id,
        origin: version.node.clone(),
        key,
        version,
        op,
    })
}
