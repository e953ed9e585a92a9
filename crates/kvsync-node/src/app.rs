//! The application layer: local writes, replicated applies and the change feed, in
//! terms of the domain types. HTTP, Kafka and MongoDB specifics stay in their adapters.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use kvsync_core::{
    Clock, Conflict, ElemId, EntityTag, Event, Key, NodeId, Outcome, PairState, StateError, Values,
    ValuesError, Version,
};
use kvsync_store::{CasError, RecordedConflict, Store, StoreError, StoredPair};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, Notify, OnceCell};
use tokio_util::sync::CancellationToken;

use crate::{
    clock_watch::ClockWatch,
    cluster::ClusterView,
    key_index::StateIndex,
    metrics::Metrics,
    oversize::{Limit, Oversized},
    state_cache::StateCache,
};

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
    #[error("no value with id {0} in this pair")]
    NoSuchValue(String),
    #[error("precondition failed")]
    /// Boxed: a pair is large next to the other variants.
    PreconditionFailed { current: Option<Box<StoredPair>> },
    #[error(transparent)]
    Values(#[from] ValuesError),
    #[error("the pair is being changed too often concurrently; retry")]
    Contended,
    /// The change's event would be larger than the node publishes.
    #[error("the pair's state would take {bytes} bytes as an event; the limit is {limit} (values, ~150 bytes per value, and JSON escaping count)")]
    TooLarge { bytes: usize, limit: usize },
    /// This node's clock is known to be far off: a write would carry a bad version.
    #[error("{0}; writes are refused until it is set right")]
    ClockSkew(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<StateError> for AppError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::NoSuchElement(id) => AppError::NoSuchValue(id),
            StateError::Limits(e) => AppError::Values(e),
        }
    }
}

/// A conditional request's precondition (RFC 9110 If-Match / If-None-Match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Precondition {
    #[default]
    None,
    /// The live pair's entity tag must be one of these.
    IfMatch(Vec<EntityTag>),
    /// A live pair must exist (`If-Match: *`).
    Exists,
    /// No live pair may exist (`If-None-Match: *`).
    Absent,
    /// Every one of these (`If-Match` and `If-None-Match` together).
    All(Vec<Precondition>),
}

impl Precondition {
    fn check(&self, live: Option<&StoredPair>) -> bool {
        match self {
            Precondition::None => true,
            Precondition::IfMatch(tags) => {
                live.is_some_and(|p| EntityTag::of(&p.state).is_some_and(|t| tags.contains(&t)))
            }
            Precondition::Exists => live.is_some(),
            Precondition::Absent => live.is_none(),
            Precondition::All(all) => all.iter().all(|p| p.check(live)),
        }
    }
}

/// One value of a pair, with the id element-level writes name it by.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Element)]
pub struct ValueBody {
    pub id: String,
    pub value: String,
}

/// The values of `elements`, in order.
pub fn values_of(elements: &[ValueBody]) -> Vec<String> {
    elements.iter().map(|e| e.value.clone()).collect()
}

pub fn elements(state: &PairState) -> Vec<ValueBody> {
    state
        .items()
        .map(|i| ValueBody {
            id: i.id.to_string(),
            value: i.value.to_owned(),
        })
        .collect()
}

/// One change applied on this node, local or replicated, as the change feed shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub key: String,
    pub values: Option<Vec<String>>,
    pub elements: Option<Vec<ValueBody>>,
    pub deleted: bool,
    pub version: String,
    /// The pair's entity tag (absent when deleted): it changes whenever the values do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    pub origin: String,
    pub updated_at: String,
}

impl Change {
    /// A stored pair as a change, from the node that wrote its state (`this_node` when
    /// the state names none).
    pub(crate) fn stored(pair: &StoredPair, this_node: &NodeId) -> Self {
        let origin = pair.version().map_or(this_node, |v| &v.node);
        Self::of(&pair.key, &pair.state, origin)
    }

    pub(crate) fn of(key: &Key, state: &PairState, origin: &NodeId) -> Self {
        let live = state.is_live();
        let version = state.version();
        let elements = live.then(|| elements(state));
        Self {
            key: key.as_str().to_owned(),
            values: elements.as_ref().map(|e| values_of(e)),
            elements,
            deleted: !live,
            version: version.map(ToString::to_string).unwrap_or_default(),
            etag: EntityTag::of(state).map(|t| t.to_string()),
            origin: origin.to_string(),
            updated_at: rfc3339(version.map_or(0, |v| v.ts.wall_ms)),
        }
    }
}

/// A conflict this node settled while merging a peer's change.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = ConflictNote)]
pub struct ConflictNote {
    pub key: String,
    #[serde(flatten)]
    pub conflict: Conflict,
    /// Who made the losing and the winning write.
    pub lost_origin: String,
    pub won_origin: String,
    /// When this node settled it (RFC 3339).
    pub at: String,
}

impl ConflictNote {
    /// A conflict as the store recorded it.
    pub fn recorded(key: &Key, recorded: &RecordedConflict) -> Self {
        Self::new(key, recorded.conflict.clone(), recorded.at_ms.max(0) as u64)
    }

    pub fn new(key: &Key, conflict: Conflict, at_ms: u64) -> Self {
        Self {
            key: key.as_str().to_owned(),
            lost_origin: conflict.lost_version.node.to_string(),
            won_origin: conflict.won_version.node.to_string(),
            conflict,
            at: rfc3339(at_ms),
        }
    }
}

/// A feed item with the number of the write that made it (see `kvsync_store::Sequencer`).
#[derive(Debug)]
pub struct Fed {
    pub seq: i64,
    pub item: FeedItem,
}

impl std::ops::Deref for Fed {
    type Target = FeedItem;

    fn deref(&self) -> &FeedItem {
        &self.item
    }
}

/// What the change feed carries.
#[derive(Debug, Clone)]
pub enum FeedItem {
    Change(Change),
    Conflict(ConflictNote),
}

impl FeedItem {
    pub fn key(&self) -> &str {
        match self {
            FeedItem::Change(c) => &c.key,
            FeedItem::Conflict(c) => &c.key,
        }
    }

    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            FeedItem::Change(_) => "change",
            FeedItem::Conflict(_) => "conflict",
        }
    }

    pub fn json(&self) -> String {
        match self {
            FeedItem::Change(c) => serde_json::to_string(c),
            FeedItem::Conflict(c) => serde_json::to_string(c),
        }
        .expect("feed items serialize")
    }
}

pub fn rfc3339(wall_ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(wall_ms);
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
    /// There was no live pair before.
    pub created: bool,
    /// The value an append added.
    pub element: Option<ElemId>,
}

pub struct App {
    pub node: NodeId,
    pub store: Store,
    pub metrics: Metrics,
    /// The cluster's clocks as this node sees them.
    pub clock: ClockWatch,
    /// The cluster's members and how far each has got, as this node sees them.
    pub cluster: ClusterView,
    /// Deleted keys older than this may be forgotten (see the tombstone collector).
    pub tombstone_horizon_ms: u64,
    /// Largest event this node publishes: a write whose event would be larger is refused.
    pub max_event_bytes: usize,
    /// Keys whose state got past what the broker or the database takes.
    pub oversized: Oversized,
    hlc: Mutex<Clock>,
    /// Before the first read or write: pairs of an earlier release converted, and the
    /// clock started after every version already stored (the physical clock may have
    /// gone backwards across a restart); done once, when MongoDB first answers.
    ready: OnceCell<()>,
    /// Set at start-up when this node was away for longer than the tombstone horizon: its
    /// state was dropped (pending changes kept) and it joins from its peers' state.
    rejoin: std::sync::atomic::AtomicBool,
    feed: broadcast::Sender<Arc<Fed>>,
    outbox: mpsc::Sender<Event>,
    /// Recent states with their revisions: a write starts from them instead of a read.
    cache: StateCache,
    /// Asks the relay to scan the outbox: a change did not fit in its queue, or a
    /// publication failed.
    pub rescan: Notify,
    /// Keys whose last write got no answer: it may yet land, unannounced (see
    /// [`App::settle_uncertain`]).
    uncertain: Mutex<HashSet<Key>>,
    uncertain_added: Notify,
    /// Every key's fingerprint, as the repair compares them: each change is noted.
    pub index: StateIndex,
}

impl App {
    pub fn new(
        node: NodeId,
        store: Store,
        metrics: Metrics,
        clock: ClockWatch,
        cluster: ClusterView,
        outbox: mpsc::Sender<Event>,
    ) -> Self {
        Self {
            node,
            store,
            metrics,
            clock,
            cluster,
            tombstone_horizon_ms: kvsync_core::state::TOMBSTONE_HORIZON_MS,
            max_event_bytes: kvsync_core::event::DEFAULT_PUBLISH_LIMIT,
            oversized: Oversized::default(),
            hlc: Mutex::new(Clock::new()),
            ready: OnceCell::new(),
            rejoin: Default::default(),
            feed: broadcast::channel(FEED_CAPACITY).0,
            outbox,
            cache: StateCache::default(),
            rescan: Notify::new(),
            uncertain: Mutex::default(),
            uncertain_added: Notify::new(),
            index: StateIndex::default(),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Fed>> {
        self.feed.subscribe()
    }

    /// Refuses to stamp a write with a clock that the majority of peers disagree with.
    fn check_clock(&self) -> Result<(), AppError> {
        match self.clock.own().describe() {
            Some(why) => Err(AppError::ClockSkew(why)),
            None => Ok(()),
        }
    }

    pub async fn ensure_ready(&self) -> Result<(), StoreError> {
        self.ready
            .get_or_try_init(|| async {
                let converted = self.store.convert_legacy().await?;
                if converted > 0 {
                    tracing::info!(converted, "converted pairs stored by an earlier release");
                }
                if let Some(ts) = self.store.max_timestamp().await? {
                    self.observe(ts);
                }
                self.store.init_feed().await?;
                // Away longer than the horizon: peers may have collected tombstones of
                // keys this state still holds, which its repairs would bring back. Drop
                // what was published (pending changes stay) and join from the peers.
                let now = now_ms();
                if let Some(alive) = self.store.alive_ms().await? {
                    let away = now.saturating_sub(alive);
                    if away > self.tombstone_horizon_ms {
                        let dropped = self.store.discard_published().await?;
                        // Feed clients cannot resume across the state dropped.
                        self.store.new_feed_epoch().await?;
                        tracing::warn!(away_ms = away, horizon_ms = self.tombstone_horizon_ms, dropped, "away longer than the tombstone horizon: dropped this node's published state; joining from the peers' state");
                        self.rejoin.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                self.store.set_alive(now).await?;
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
        self.ensure_ready().await?;
        match self.store.get(key).await? {
            Some(p) if p.is_live() => Ok(p),
            _ => Err(AppError::NotFound),
        }
    }

    /// The common shape of every local write: read, check, apply the operation to the
    /// state, conditional write; again if another change got in between.
    async fn write<F>(&self, key: &Key, pre: &Precondition, op: F) -> Result<Written, AppError>
    where
        F: Fn(&mut PairState, &Version) -> Result<Option<ElemId>, AppError>,
    {
        self.check_clock()?;
        self.ensure_ready().await?;
        // The first attempt starts from the cache, or takes a key not in it for new (an
        // insert, which fails if it is not); a failed guess costs a retry from a read.
        let mut cached = self.cache.get(key);
        let mut guess = true;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let guessed = guess;
            guess = false;
            let stored = match (cached.take(), guessed) {
                (Some(pair), _) => Some(pair),
                (None, true) => None,
                (None, false) => self.store.get(key).await?,
            };
            let live = stored.as_ref().filter(|p| p.is_live());
            if !pre.check(live) {
                if guessed {
                    // The guess may be behind the database: judge on a fresh read.
                    self.cache.forget(key);
                    continue;
                }
                return Err(AppError::PreconditionFailed {
                    current: live.cloned().map(Box::new),
                });
            }
            let mut state = stored.as_ref().map(|p| p.state.clone()).unwrap_or_default();
            let version = self.next_version(state.version());
            let element = op(&mut state, &version)?;
            state.collect(now_ms(), self.tombstone_horizon_ms);
            let mut event = Event::of_state(key.clone(), version, state);
            let bytes = self.fit(&mut event);
            self.publishable(&event, bytes, stored.as_ref().map(|p| &p.state))?;
            let rev = stored.as_ref().map(|p| p.rev);
            match self
                .store
                .write_local(key, rev, &event.state, event.id, &event.version)
                .await
            {
                Ok(ticket) => {
                    let pair = StoredPair {
                        key: key.clone(),
                        state: event.state.clone(),
                        rev: rev.map_or(1, |r| r + 1),
                        conflicts: stored
                            .as_ref()
                            .map(|p| p.conflicts.clone())
                            .unwrap_or_default(),
                    };
                    let created = live.is_none();
                    self.cache.put(pair.clone());
                    self.committed(event, ticket.seq());
                    // The ticket is dropped, done with, only after the feed was told.
                    return Ok(Written {
                        pair,
                        created,
                        element,
                    });
                }
                Err(CasError::Conflict) => self.cache.forget(key),
                Err(CasError::Store(e)) => {
                    self.cache.forget(key);
                    return Err(self.write_failed(key, e));
                }
            }
        }
        Err(AppError::Contended)
    }

    /// Replaces the whole list (PUT).
    pub async fn put(
        &self,
        key: &Key,
        values: Values,
        pre: &Precondition,
    ) -> Result<Written, AppError> {
        let values = values.into_vec();
        let key_len = key.as_str().len();
        self.write(key, pre, |state, at| {
            state.replace(values.clone(), at, key_len)?;
            Ok(None)
        })
        .await
    }

    /// Adds a value at the end of the list, creating the pair if needed.
    pub async fn append(
        &self,
        key: &Key,
        value: String,
        pre: &Precondition,
    ) -> Result<Written, AppError> {
        let key_len = key.as_str().len();
        self.write(key, pre, |state, at| {
            Ok(Some(state.append(value.clone(), at, key_len)?))
        })
        .await
    }

    /// Changes one value in place. 404 if the pair or the value is not there.
    pub async fn edit(
        &self,
        key: &Key,
        id: &ElemId,
        value: String,
        pre: &Precondition,
    ) -> Result<Written, AppError> {
        let key_len = key.as_str().len();
        self.write_existing(key, pre, |state, at| {
            state.edit(id, value.clone(), at, key_len)?;
            Ok(None)
        })
        .await
    }

    /// Removes one value; the pair stays, even with no values left.
    pub async fn remove_value(
        &self,
        key: &Key,
        id: &ElemId,
        pre: &Precondition,
    ) -> Result<Written, AppError> {
        self.write_existing(key, pre, |state, at| {
            state.remove(id, at)?;
            Ok(None)
        })
        .await
    }

    /// A write to a pair that must exist: 404 if it does not, unless the request had a
    /// precondition, which then fails (RFC 9110: If-Match fails on a missing resource).
    async fn write_existing<F>(
        &self,
        key: &Key,
        pre: &Precondition,
        op: F,
    ) -> Result<Written, AppError>
    where
        F: Fn(&mut PairState, &Version) -> Result<Option<ElemId>, AppError>,
    {
        match pre {
            Precondition::None => match self.write(key, &Precondition::Exists, op).await {
                Err(AppError::PreconditionFailed { current: None }) => Err(AppError::NotFound),
                other => other,
            },
            pre => self.write(key, pre, op).await,
        }
    }

    /// Deletes a live pair: 404 if there is none (see [`Self::write_existing`]).
    /// Deletes a live pair; returns its tombstone.
    pub async fn delete(&self, key: &Key, pre: &Precondition) -> Result<StoredPair, AppError> {
        self.write_existing(key, pre, |state, at| {
            state.delete(at);
            Ok(None)
        })
        .await
        .map(|w| w.pair)
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
                Ok(_) => deleted += 1,
                // Deleted concurrently by someone else: just as good.
                Err(AppError::NotFound) => {}
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        (deleted, failure)
    }

    /// Merges a peer's event into the key's state.
    pub async fn apply_remote(&self, event: &Event) -> Result<Outcome, StoreError> {
        self.ensure_ready().await?;
        self.observe(event.version.ts);
        let now = now_ms();
        // A re-publication repairs what may have changed behind this node's back (in
        // its database): the cache may not know of it, so it is not used.
        let mut known = if event.republished {
            None
        } else {
            self.cache.get(&event.key)
        };
        // An event older than the tombstone horizon for a key not held here may be a late
        // duplicate of a write whose delete was since collected: applying it would bring
        // the key back. Repairs and snapshots carry fresh versions, so they still apply.
        if self.past_horizon(&event.version) && known.is_none() {
            match self.store.get(&event.key).await? {
                Some(pair) => known = Some(pair),
                None => {
                    self.metrics.events_too_old.inc();
                    tracing::info!(key = event.key.as_str(), origin = %event.origin, version = %event.version, "skipping an event older than the tombstone horizon for a key not held");
                    return Ok(Outcome::Stale);
                }
            }
        }
        let applied = match self.store.apply_remote(event, now as i64, known).await {
            Ok(applied) => applied,
            Err(e) => {
                self.cache.forget(&event.key);
                self.uncertain(&event.key, &e);
                if let StoreError::TooLarge { bytes, .. } = &e {
                    let why = format!(
                        "the merged document would be over {bytes} bytes; MongoDB stores at most {}",
                        kvsync_store::MAX_DOCUMENT_BYTES
                    );
                    if self.oversized.note(Limit::Store, &event.key, why) {
                        tracing::error!(key = %event.key, origin = %event.origin, bytes, "a peer's change would make the key's document too large to store; skipped, and reported in /readyz");
                    }
                    self.metrics.oversized_skips.inc();
                }
                return Err(e);
            }
        };
        self.oversized.clear(Limit::Store, &event.key);
        // The ticket (in `applied`) lives to the end: done with after the feed was told.
        let seq = applied.ticket.as_ref().map_or(0, |t| t.seq());
        if applied.outcome == Outcome::Applied {
            self.index.note(&event.key, &applied.pair.state, seq);
            self.announce(
                seq,
                FeedItem::Change(Change::of(&event.key, &applied.pair.state, &event.origin)),
            );
        }
        self.cache.put(applied.pair);
        for conflict in applied.conflicts {
            self.metrics.conflict(&conflict.kind);
            tracing::info!(
                key = event.key.as_str(),
                kind = conflict.kind.as_str(),
                lost = %conflict.lost_version,
                won = %conflict.won_version,
                "concurrent writes: one lost"
            );
            self.announce(
                seq,
                FeedItem::Conflict(ConflictNote::new(&event.key, conflict, now)),
            );
        }
        Ok(applied.outcome)
    }

    /// Merges a pair's state from a backup under the normal merge rule: what the node holds
    /// newer stays, and what changed is published (as a re-publication) so the restore
    /// replicates. Returns whether anything changed.
    pub async fn import(&self, key: Key, state: PairState) -> Result<Outcome, AppError> {
        self.ensure_ready().await?;
        self.check_clock()?;
        let version = self.next_version(state.version());
        let event = Event::republish(key, version, state);
        self.publishable(&event, event.encoded_len(), None)?;
        let applied = match self.store.import(&event, now_ms() as i64).await {
            Ok(applied) => applied,
            Err(e) => {
                self.cache.forget(&event.key);
                return Err(self.write_failed(&event.key, e));
            }
        };
        if applied.outcome == Outcome::Applied {
            let published = Event {
                id: event.id,
                ..Event::republish(event.key, event.version, applied.pair.state.clone())
            };
            let seq = applied.ticket.as_ref().map_or(0, |t| t.seq());
            self.committed(published, seq);
        }
        self.cache.put(applied.pair);
        Ok(applied.outcome)
    }

    /// Collects the oldest tombstones of an event too large to publish, as many as it
    /// takes to fit (or all): a key rewritten again and again gathers up to
    /// `MAX_TOMBSTONES` of them, a few hundred bytes each, and whether a write is taken
    /// should depend on the values it leaves, not on the key's history.
    /// Returns the event's encoded size.
    fn fit(&self, event: &mut Event) -> usize {
        // A tombstone takes at least this much of an event.
        const TOMBSTONE_BYTES: usize = 120;
        let mut bytes = event.encoded_len();
        while bytes > self.max_event_bytes {
            let n = (bytes - self.max_event_bytes).div_ceil(TOMBSTONE_BYTES);
            if event.state.collect_oldest(n) == 0 {
                break;
            }
            bytes = event.encoded_len();
        }
        bytes
    }

    /// Refuses a change whose event the node would not publish: whatever it acknowledges
    /// must reach its peers. A state that merges of concurrent writes took past the limit
    /// may still shrink (a removal, a smaller list): such a change is taken, and waits in
    /// the outbox, reported, until the key fits again.
    /// `bytes` is the event's encoded size.
    fn publishable(
        &self,
        event: &Event,
        bytes: usize,
        before: Option<&PairState>,
    ) -> Result<(), AppError> {
        if bytes <= self.max_event_bytes {
            return Ok(());
        }
        let shrinks = before.is_some_and(|state| {
            let before = Event::of_state(event.key.clone(), event.version.clone(), state.clone());
            bytes < before.encoded_len()
        });
        if shrinks {
            return Ok(());
        }
        Err(AppError::TooLarge {
            bytes,
            limit: self.max_event_bytes,
        })
    }

    /// Whether `event` is small enough to publish; if not, the key is reported (see
    /// `oversize`), for re-publications that no client waits on.
    pub fn fits(&self, event: &Event) -> bool {
        self.fits_encoded(&event.key, event.encoded_len())
    }

    /// [`App::fits`] for an event already encoded in `bytes` bytes.
    pub fn fits_encoded(&self, key: &Key, bytes: usize) -> bool {
        if bytes <= self.max_event_bytes {
            return true;
        }
        self.metrics.oversized_skips.inc();
        let why = format!(
            "its event is {bytes} bytes; KVSYNC_MAX_EVENT_BYTES is {}",
            self.max_event_bytes
        );
        if self.oversized.note(Limit::Publish, key, why) {
            tracing::error!(key = %key, bytes, "a key's state is too large to publish; reported in /readyz");
        }
        false
    }

    /// Whether this node dropped its state at start-up, having been away for longer than
    /// the tombstone horizon, and must join from its peers' state.
    pub fn must_rejoin(&self) -> bool {
        self.rejoin.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The key's pair (tombstone included) once it is at `min` or later, waiting up to
    /// `timeout` for replication to bring it; `None` if it did not come in time.
    pub async fn get_at_least(
        &self,
        key: &Key,
        min: &Version,
        timeout: Duration,
    ) -> Result<Option<StoredPair>, AppError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribed before the first read, so a change in between is not missed.
        let mut feed = self.subscribe();
        loop {
            self.ensure_ready().await?;
            if let Some(pair) = self.store.get(key).await? {
                if pair.version().is_some_and(|v| v >= min) {
                    return Ok(Some(pair));
                }
            }
            // Wait for a change of this key (or a lagged feed, which may hide one).
            loop {
                match tokio::time::timeout_at(deadline, feed.recv()).await {
                    Err(_) => return Ok(None),
                    Ok(Ok(item)) if item.key() != key.as_str() => continue,
                    Ok(Err(broadcast::error::RecvError::Closed)) => return Ok(None),
                    Ok(_) => break,
                }
            }
        }
    }

    /// Removes tombstones whose version text sorts below `older_than` (see
    /// `Store::collect_tombstones`), forgetting the cached states that may hold them.
    pub async fn collect_tombstones(
        &self,
        older_than: &str,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let n = self.store.collect_tombstones(older_than, limit).await?;
        if n > 0 {
            self.cache.clear();
        }
        Ok(n)
    }

    /// An event re-publishing `pair`'s state as it is here, for a peer that lacks it
    /// (repair, snapshot). It carries a fresh version of this node, so that peers apply
    /// it even when the state itself is older than the tombstone horizon; merging it
    /// changes nothing where the state is already held.
    pub fn republish(&self, pair: StoredPair) -> Event {
        let version = self.next_version(pair.version());
        Event::republish(pair.key, version, pair.state)
    }

    /// Whether a write at `version` is older than the tombstone horizon.
    pub fn past_horizon(&self, version: &Version) -> bool {
        version.ts.wall_ms.saturating_add(self.tombstone_horizon_ms) < now_ms()
    }

    /// A tombstone older than the horizon: being collected, so left out of summaries and
    /// snapshots (nodes collect at slightly different times).
    pub fn collectable(&self, pair: &StoredPair) -> bool {
        !pair.is_live() && pair.version().is_none_or(|v| self.past_horizon(v))
    }

    /// A pending change older than the tombstone horizon (its node could not publish it
    /// for that long) goes out as a re-publication with a fresh version, under the same
    /// outbox id: peers skip events that old for keys they do not hold.
    pub fn refresh_if_old(&self, event: Event) -> Event {
        if !self.past_horizon(&event.version) {
            return event;
        }
        let version = self.next_version(event.state.version());
        Event {
            id: event.id,
            ..Event::republish(event.key, version, event.state)
        }
    }

    /// Notes a write that failed for want of an answer: the database may still apply
    /// it, numbered, after readers of the feed went past that number.
    fn uncertain(&self, key: &Key, e: &StoreError) {
        if matches!(e, StoreError::Unavailable(_)) {
            self.uncertain.lock().expect("lock").insert(key.clone());
            self.uncertain_added.notify_one();
        }
    }

    /// Until `stop`: gives every key whose write got no answer a new number once the
    /// database answers again, and tells the feed of its stored state. Whether that write
    /// landed or not, the feed then holds what the database holds; every write is a
    /// compare-and-swap, so a write that lands later fails instead of going unannounced.
    pub async fn settle_uncertain(&self, stop: CancellationToken) {
        const MAX_DELAY: Duration = Duration::from_secs(2);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.uncertain_added.notified() => {}
            }
            let mut delay = Duration::from_millis(100);
            loop {
                let keys: Vec<Key> = self.uncertain.lock().expect("lock").drain().collect();
                let Some(failed) = self.renumber_all(keys).await else {
                    break;
                };
                tracing::debug!(error = %failed, "renumbering keys whose write got no answer failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_DELAY);
            }
        }
    }

    /// Renumbers `keys`; on the first failure, puts the rest back and returns it.
    async fn renumber_all(&self, keys: Vec<Key>) -> Option<StoreError> {
        let mut keys = keys.into_iter();
        while let Some(key) = keys.next() {
            if let Err(e) = self.renumber(&key).await {
                let mut uncertain = self.uncertain.lock().expect("lock");
                uncertain.insert(key);
                uncertain.extend(keys);
                return Some(e);
            }
        }
        None
    }

    async fn renumber(&self, key: &Key) -> Result<(), StoreError> {
        self.ensure_ready().await?;
        // A write racing with this one would leave the cache behind: it is read again.
        self.cache.forget(key);
        let Some((pair, ticket)) = self.store.renumber(key).await? else {
            return Ok(());
        };
        self.index.note(key, &pair.state, ticket.seq());
        self.announce(
            ticket.seq(),
            FeedItem::Change(Change::stored(&pair, &self.node)),
        );
        self.metrics.renumbered.inc();
        Ok(())
    }

    /// A local write that failed on its way to or from the database may still be applied,
    /// outbox mark included (a hung server that wakes up): have the relay look for it now
    /// rather than at its next sweep, or the peers would miss it until then; and the feed
    /// hear of it (see [`App::uncertain`]).
    fn write_failed(&self, key: &Key, e: StoreError) -> AppError {
        self.uncertain(key, &e);
        self.rescan.notify_one();
        e.into()
    }

    /// After a local change is durable: tell the feed and hand it to the relay.
    fn committed(&self, event: Event, seq: i64) {
        self.index.note(&event.key, &event.state, seq);
        self.announce(
            seq,
            FeedItem::Change(Change::of(&event.key, &event.state, &self.node)),
        );
        self.metrics.local_writes.inc();
        // The outbox mark is durable; the relay publishes right away. If its queue is
        // full, it finds the change with a scan of the outbox instead.
        if self.outbox.try_send(event).is_err() {
            self.rescan.notify_one();
        }
    }

    fn announce(&self, seq: i64, item: FeedItem) {
        // No subscribers is fine.
        let _ = self.feed.send(Arc::new(Fed { seq, item }));
    }
}
