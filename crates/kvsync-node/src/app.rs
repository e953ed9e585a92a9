//! The application layer: local writes, replicated applies and the change feed, in
//! terms of the domain types. HTTP, Kafka and MongoDB specifics stay in their adapters.

use std::{
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use kvsync_core::{Clock, Entry, Event, Key, NodeId, Op, Outcome, Values, ValuesError, Version};
use kvsync_store::{CasError, LocalWrite, Store, StoreError, StoredPair};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, Notify, OnceCell};

use crate::{clock_watch::ClockWatch, metrics::Metrics};

/// How often a local write re-reads and retries when a concurrent change slipped in
/// between its read and its conditional write.
const MAX_CAS_ATTEMPTS: usize = 32;
const FEED_CAPACITY: usize = 4096;
/// How many keys "clear all" reads, then deletes, at a time: its memory does not grow
/// with the database.
pub const CLEAR_BATCH: usize = 500;
/// Deletes of one batch in flight at once.
const CLEAR_CONCURRENCY: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("no pair with this key")]
    NotFound,
    #[error("precondition failed")]
    PreconditionFailed { current: Option<StoredPair> },
    #[error(transparent)]
    Values(#[from] ValuesError),
    #[error("the pair is being changed too often concurrently; retry")]
    Contended,
    /// This node's clock is known to be far off: a write would carry a bad version.
    #[error("{0}; writes are refused until it is set right")]
    ClockSkew(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A conditional request's precondition (RFC 9110 If-Match / If-None-Match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Precondition {
    #[default]
    None,
    /// The live pair's version must be one of these.
    IfMatch(Vec<Version>),
    /// A live pair must exist (`If-Match: *`).
    Exists,
    /// No live pair may exist (`If-None-Match: *`).
    Absent,
}

impl Precondition {
    fn check(&self, live: Option<&StoredPair>) -> bool {
        match self {
            Precondition::None => true,
            Precondition::IfMatch(versions) => {
                live.is_some_and(|p| versions.contains(&p.entry.version))
            }
            Precondition::Exists => live.is_some(),
            Precondition::Absent => live.is_none(),
        }
    }
}

/// One change applied on this node, local or replicated, as the change feed shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub key: String,
    pub values: Option<Vec<String>>,
    pub deleted: bool,
    pub version: String,
    pub origin: String,
    pub updated_at: String,
}

impl Change {
    fn of(event: &Event) -> Self {
        Self {
            key: event.key.as_str().to_owned(),
            values: event.values().map(|v| v.as_slice().to_vec()),
            deleted: event.is_delete(),
            version: event.version.to_string(),
            origin: event.origin.to_string(),
            updated_at: rfc3339(event.version.ts.wall_ms),
        }
    }
}

pub fn rfc3339(wall_ms: u64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(wall_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a successful write did.
#[derive(Debug)]
pub struct Written {
    pub pair: StoredPair,
    pub created: bool,
}

pub struct App {
    pub node: NodeId,
    pub store: Store,
    pub metrics: Metrics,
    /// The cluster's clocks as this node sees them.
    pub clock: ClockWatch,
    hlc: Mutex<Clock>,
    /// The clock must start after every version already stored (the physical clock may
    /// have gone backwards across a restart); done once, when MongoDB first answers.
    clock_ready: OnceCell<()>,
    feed: broadcast::Sender<Arc<Change>>,
    outbox: mpsc::Sender<Event>,
    /// Asks the relay to scan the outbox: a change did not fit in its queue, or a
    /// publication failed.
    pub rescan: Notify,
}

impl App {
    pub fn new(
        node: NodeId,
        store: Store,
        metrics: Metrics,
        clock: ClockWatch,
        outbox: mpsc::Sender<Event>,
    ) -> Self {
        Self {
            node,
            store,
            metrics,
            clock,
            hlc: Mutex::new(Clock::new()),
            clock_ready: OnceCell::new(),
            feed: broadcast::channel(FEED_CAPACITY).0,
            outbox,
            rescan: Notify::new(),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.feed.subscribe()
    }

    /// Refuses to stamp a write with a clock that the majority of peers disagree with.
    fn check_clock(&self) -> Result<(), AppError> {
        match self.clock.own().describe() {
            Some(why) => Err(AppError::ClockSkew(why)),
            None => Ok(()),
        }
    }

    pub async fn ensure_clock(&self) -> Result<(), StoreError> {
        self.clock_ready
            .get_or_try_init(|| async {
                if let Some(ts) = self.store.max_timestamp().await? {
                    self.observe(ts);
                }
                Ok::<_, StoreError>(())
            })
            .await
            .map(|_| ())
    }

    fn observe(&self, ts: kvsync_core::Timestamp) {
        self.hlc.lock().expect("clock lock").observe(ts);
    }

    fn next_version(&self, after: Option<&Version>) -> Version {
        let mut clock = self.hlc.lock().expect("clock lock");
        if let Some(v) = after {
            clock.observe(v.ts);
        }
        Version::new(clock.tick(now_ms()), self.node.clone())
    }

    pub async fn get(&self, key: &Key) -> Result<StoredPair, AppError> {
        match self.store.get(key).await? {
            Some(p) if !p.entry.is_tombstone() => Ok(p),
            _ => Err(AppError::NotFound),
        }
    }

    /// The common shape of every local write: read, check, compute, conditional write;
    /// again if another change got in between.
    async fn write<F>(&self, key: &Key, pre: &Precondition, next: F) -> Result<Written, AppError>
    where
        F: Fn(Option<&StoredPair>) -> Result<Option<Values>, AppError>,
    {
        self.check_clock()?;
        self.ensure_clock().await?;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let stored = self.store.get(key).await?;
            let live = stored.as_ref().filter(|p| !p.entry.is_tombstone());
            if !pre.check(live) {
                return Err(AppError::PreconditionFailed {
                    current: live.cloned(),
                });
            }
            let values = next(live)?;
            let stored_version = stored.as_ref().map(|p| &p.entry.version);
            let version = self.next_version(stored_version);
            let op = match values {
                Some(v) => Op::Put(v),
                None => Op::Delete,
            };
            let event = Event::new(key.clone(), version, op);
            let entry = Entry::from_event(&event);
            match self
                .store
                .write_local(key, stored_version, &entry, event.id)
                .await
            {
                Ok(()) => return Ok(self.committed(event, live.is_none())),
                Err(CasError::Conflict) => continue,
                Err(CasError::Store(e)) => return Err(self.write_failed(e)),
            }
        }
        Err(AppError::Contended)
    }

    pub async fn put(
        &self,
        key: &Key,
        values: Values,
        pre: &Precondition,
    ) -> Result<Written, AppError> {
        if *pre != Precondition::None {
            return self.write(key, pre, |_| Ok(Some(values.clone()))).await;
        }
        // No precondition: the clock is ahead of every stored version, so "write if
        // newer" succeeds in one round trip; only a racing newer write makes it retry.
        self.check_clock()?;
        self.ensure_clock().await?;
        let mut seen = None;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let event = Event::new(
                key.clone(),
                self.next_version(seen.as_ref()),
                Op::Put(values.clone()),
            );
            let entry = Entry::from_event(&event);
            let created = match self
                .store
                .write_local_if_newer(key, &entry, event.id)
                .await
                .map_err(|e| self.write_failed(e))?
            {
                LocalWrite::Created => true,
                LocalWrite::Replaced => false,
                LocalWrite::Stale => {
                    seen = self.store.get(key).await?.map(|p| p.entry.version);
                    continue;
                }
            };
            return Ok(self.committed(event, created));
        }
        Err(AppError::Contended)
    }

    pub async fn append(
        &self,
        key: &Key,
        value: String,
        pre: &Precondition,
    ) -> Result<Written, AppError> {
        let key_len = key.as_str().len();
        self.write(key, pre, |live| {
            let next = match live.and_then(|p| p.entry.values.as_ref()) {
                Some(values) => values.appended(value.clone(), key_len)?,
                None => Values::new(vec![value.clone()], key_len)?,
            };
            Ok(Some(next))
        })
        .await
    }

    /// Deletes a live pair: 404 if there is none, unless the request had a
    /// precondition, which then fails (RFC 9110: If-Match fails on a missing resource).
    pub async fn delete(&self, key: &Key, pre: &Precondition) -> Result<(), AppError> {
        match pre {
            Precondition::None => {
                match self.write(key, &Precondition::Exists, |_| Ok(None)).await {
                    Ok(_) => Ok(()),
                    Err(AppError::PreconditionFailed { current: None }) => Err(AppError::NotFound),
                    Err(e) => Err(e),
                }
            }
            pre => self.write(key, pre, |_| Ok(None)).await.map(|_| ()),
        }
    }

    /// The next batch of "clear all": up to [`CLEAR_BATCH`] live keys after `after`, in
    /// key order.
    pub async fn clear_batch(&self, after: Option<&Key>) -> Result<Vec<Key>, AppError> {
        Ok(self
            .store
            .live_keys(after.map(Key::as_str), CLEAR_BATCH)
            .await?)
    }

    /// Deletes `keys`, each as an ordinary replicated delete, a few at a time. Returns
    /// how many were still live (and so deleted here), and the first error if any. After
    /// an error no further delete starts, but those under way run to their end: one cut
    /// off could be applied without the relay hearing of it.
    pub async fn delete_keys(&self, keys: Vec<Key>) -> (u64, Option<AppError>) {
        use futures::StreamExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        let failed = AtomicBool::new(false);
        let results: Vec<_> = futures::stream::iter(keys)
            .map(|key| {
                let failed = &failed;
                async move {
                    if failed.load(Ordering::Relaxed) {
                        return None;
                    }
                    let result = self.delete(&key, &Precondition::None).await;
                    if matches!(&result, Err(e) if !matches!(e, AppError::NotFound)) {
                        failed.store(true, Ordering::Relaxed);
                    }
                    Some(result)
                }
            })
            .buffer_unordered(CLEAR_CONCURRENCY)
            .collect()
            .await;
        let (mut deleted, mut failure) = (0, None);
        for result in results.into_iter().flatten() {
            match result {
                Ok(()) => deleted += 1,
                // Deleted concurrently by someone else: just as good.
                Err(AppError::NotFound) => {}
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        (deleted, failure)
    }

    /// Applies a peer's event under the merge rule.
    pub async fn apply_remote(&self, event: &Event) -> Result<Outcome, StoreError> {
        self.observe(event.version.ts);
        let outcome = self.store.apply_remote(event).await?;
        if outcome == Outcome::Applied {
            self.announce(event);
        }
        Ok(outcome)
    }

    /// A write that failed on its way to or from the database may still be applied, outbox
    /// mark included (a hung server that wakes up): have the relay look for it now rather
    /// than at its next sweep, or the peers would miss it until then.
    fn write_failed(&self, e: StoreError) -> AppError {
        self.rescan.notify_one();
        e.into()
    }

    /// After a local change is durable: tell the feed and hand it to the relay.
    fn committed(&self, event: Event, created: bool) -> Written {
        self.announce(&event);
        self.metrics.local_writes.inc();
        let pair = StoredPair {
            key: event.key.clone(),
            entry: Entry::from_event(&event),
        };
        // The outbox mark is durable; the relay publishes right away. If its queue is
        // full, it finds the change with a scan of the outbox instead.
        if self.outbox.try_send(event).is_err() {
            self.rescan.notify_one();
        }
        Written { pair, created }
    }

    fn announce(&self, event: &Event) {
        // No subscribers is fine.
        let _ = self.feed.send(Arc::new(Change::of(event)));
    }
}
