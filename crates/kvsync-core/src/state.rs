//! The replicated state of one key: an ordered list of elements that merges.
//!
//! The model is a state-based CRDT (a join-semilattice), chosen because every event
//! carries a key's whole state: a node's outbox keeps only the latest change of a key, so
//! intermediate changes may never be published on their own, and a state that merges
//! with any other state, in any order and any number of times, needs nothing else.
//!
//! - **Elements.** Each value is an element with an identity ([`ElemId`]: the version of
//!   the write that created it and its index in that write), a position (`seq`, then the
//!   id) fixed at creation, and its value as a last-writer-wins register (the version of
//!   the write that set it, and the one it replaced).
//! - **Removal is observed-remove.** A removal records the value version it saw; an
//!   element stays removed only while no newer value exists. An edit the remover did not
//!   see brings the element back: nothing typed is lost.
//! - **Replacement (PUT).** A replacement removes every element it saw, adds its own, and
//!   raises the key's `base`. Elements of a lower replacement that were never edited are
//!   hidden by a higher base: of two concurrent replacements one list wins, whole.
//!   Appends made concurrently are not part of any replacement and stay, after it.
//! - **The key** is live while any element is visible or its last write is newer than
//!   its last delete: a delete removes what it saw, so a concurrent append keeps the key.
//! - **Tombstones** of elements carry no text. [`PairState::collect`] drops them past a
//!   horizon or a count; `floor` then records that any element at or below it that is
//!   absent was collected, so a late duplicate cannot bring it back.
//!
//! [`PairState::merge`] also reports the [`Conflict`]s it settles: writes that lost to a
//! concurrent write of the same element, so they can be shown.

use std::{cmp::Ordering, collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::{
    pair::{ValuesError, MAX_PAIR_BYTES, MAX_VALUES, MAX_VALUE_BYTES},
    version::Version,
};

/// Most elements (visible or not) a state may hold: what concurrent appends on a few
/// nodes can add beyond the local limit, plus the tombstones kept.
pub const MAX_ELEMENTS: usize = 4 * MAX_VALUES;
/// Tombstones a local write keeps at most; older ones are collected first.
pub const MAX_TOMBSTONES: usize = 1_000;
/// Tombstones older than this are collected at the next local write of their key.
pub const TOMBSTONE_HORIZON_MS: u64 = 7 * 24 * 3600 * 1000;

/// The identity of an element: the version of the write that created it and its index
/// within that write. Text form `<version>.<index>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ElemId {
    pub ver: Version,
    pub n: u32,
}

impl fmt::Display for ElemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.ver, self.n)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed element id {0:?}: expected <version>.<index>")]
pub struct ElemIdError(String);

impl FromStr for ElemId {
    type Err = ElemIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ElemIdError(s.chars().take(100).collect());
        let (ver, n) = s.rsplit_once('.').ok_or_else(bad)?;
        if n.is_empty() || n.len() > 10 || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        if n.len() > 1 && n.starts_with('0') {
            return Err(bad());
        }
        Ok(Self {
            ver: ver.parse().map_err(|_| bad())?,
            n: n.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for ElemId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ElemId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A removal: the value version it saw, and the version of the write that removed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Removal {
    pub seen: Version,
    pub at: Version,
}

/// One element of a key's list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Element {
    pub id: ElemId,
    /// Position: elements are ordered by `seq`, then by id.
    pub seq: u64,
    /// The replacement (PUT) that created it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gen: Option<Version>,
    /// The version of the write that set the current value.
    pub ver: Version,
    /// The value version the last edit replaced; `None` while the value is the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<Version>,
    /// The value, present exactly while the element is visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rm: Option<Removal>,
}

impl Element {
    fn edited(&self) -> bool {
        self.ver != self.id.ver
    }

    fn visible_under(&self, base: Option<&Version>) -> bool {
        let removed = self.rm.as_ref().is_some_and(|r| r.seen >= self.ver);
        let replaced = !self.edited() && matches!((&self.gen, base), (Some(g), Some(b)) if b > g);
        !removed && !replaced
    }

    /// When it stopped being visible: its removal, or the replacement that hid it.
    fn hidden_at<'a>(&'a self, base: Option<&'a Version>) -> Option<&'a Version> {
        match (&self.rm, base) {
            (Some(r), Some(b)) => Some((&r.at).min(b)),
            (Some(r), None) => Some(&r.at),
            (None, b) => b,
        }
    }

    /// The join of two states of the same element.
    fn join(&self, other: &Element) -> Element {
        let (hi, lo) = if (&other.ver, &other.value) > (&self.ver, &self.value) {
            (other, self)
        } else {
            (self, other)
        };
        Element {
            id: hi.id.clone(),
            // Immutable after creation; max keeps the join total for forged input.
            seq: hi.seq.max(lo.seq),
            gen: hi.gen.clone().max(lo.gen.clone()),
            ver: hi.ver.clone(),
            prev: if hi.ver == lo.ver {
                hi.prev.clone().max(lo.prev.clone())
            } else {
                hi.prev.clone()
            },
            value: hi.value.clone().or_else(|| lo.value.clone()),
            rm: hi.rm.clone().max(lo.rm.clone()),
        }
    }

    fn approx_bytes(&self) -> usize {
        96 + self.value.as_ref().map_or(0, String::len)
    }
}

/// What a merge settled against a write: who lost, to what.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// Two concurrent edits of one value: the lower version's value lost.
    Edit,
    /// A removal (of a value, or by a delete or replacement of the key) was undone by a
    /// concurrent edit of the value: the edited value stays.
    Remove,
    /// Two concurrent replacements (PUT) of the list: the lower one's list lost.
    Replace,
    /// A delete of the key was undone by a concurrent replacement: the key stays.
    Delete,
}

impl ConflictKind {
    pub const ALL: [ConflictKind; 4] = [
        ConflictKind::Edit,
        ConflictKind::Remove,
        ConflictKind::Replace,
        ConflictKind::Delete,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            ConflictKind::Edit => "edit",
            ConflictKind::Remove => "remove",
            ConflictKind::Replace => "replace",
            ConflictKind::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Conflict {
    pub kind: ConflictKind,
    /// The element concerned (edit, remove).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, required = false))]
    pub element: Option<ElemId>,
    /// The values that lost (empty when nothing typed was lost: remove, delete).
    pub lost: Vec<String>,
    /// The losing write; its node is who made it.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub lost_version: Version,
    /// The winning value (edit) and write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub won: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub won_version: Version,
}

/// The replicated state of one key. Always normalized: element texts are present exactly
/// for visible elements, so equal histories give equal states.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PairState {
    elements: BTreeMap<ElemId, Element>,
    /// The greatest replacement (PUT) of the list.
    base: Option<Version>,
    /// The greatest write that says the key exists (any write but a delete).
    written: Option<Version>,
    /// The greatest delete of the key.
    deleted: Option<Version>,
    /// Elements at or below this id that are absent were collected.
    floor: Option<ElemId>,
}

/// Why a local operation cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("no value with id {0} in this pair")]
    NoSuchElement(String),
    /// The pair would break the limits of [`crate::pair`].
    #[error(transparent)]
    Limits(#[from] ValuesError),
}

/// The state as it travels (events) and is stored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateWire {
    pub els: Vec<Element>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Version>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<Version>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Version>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<ElemId>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{0} elements; at most {MAX_ELEMENTS}")]
    TooManyElements(usize),
    #[error("element {0} appears twice or out of order")]
    Order(String),
    #[error("element {0} must carry its value exactly while visible")]
    Text(String),
    #[error("value of element {0} is over {MAX_VALUE_BYTES} bytes")]
    ValueTooLarge(String),
    #[error("element {0} has a version older than its creation or removal")]
    Versions(String),
}

/// One visible value, in list order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item<'a> {
    pub id: &'a ElemId,
    pub value: &'a str,
    /// The version of the write that set it.
    pub ver: &'a Version,
}

impl PairState {
    /// A key written as a whole list at `version` (or deleted, `values: None`), the way
    /// every write was before lists merged. Deterministic, so nodes converting the same
    /// old pair get the same state.
    pub fn whole(values: Option<Vec<String>>, version: &Version) -> Self {
        let mut state = PairState::default();
        match values {
            Some(values) => {
                state.base = Some(version.clone());
                state.written = Some(version.clone());
                for (i, v) in values.into_iter().enumerate() {
                    let id = ElemId {
                        ver: version.clone(),
                        n: i as u32,
                    };
                    state.elements.insert(
                        id.clone(),
                        Element {
                            id,
                            seq: 1,
                            gen: Some(version.clone()),
                            ver: version.clone(),
                            prev: None,
                            value: Some(v),
                            rm: None,
                        },
                    );
                }
            }
            None => state.deleted = Some(version.clone()),
        }
        state
    }

    /// The greatest version in the state: that of the last write it holds. Every local
    /// write is stamped above it.
    pub fn version(&self) -> Option<&Version> {
        let mut max = self.base.as_ref();
        for v in [self.written.as_ref(), self.deleted.as_ref()]
            .into_iter()
            .flatten()
        {
            max = max.max(Some(v));
        }
        for e in self.elements.values() {
            max = max.max(Some(&e.ver));
            if let Some(r) = &e.rm {
                max = max.max(Some(&r.at));
            }
        }
        max
    }

    pub fn is_empty(&self) -> bool {
        *self == PairState::default()
    }

    /// Whether the key exists for readers.
    pub fn is_live(&self) -> bool {
        let base = self.base.as_ref();
        // Any visible element will do: no need to put them in order.
        self.elements.values().any(|e| e.visible_under(base))
            || match (&self.written, &self.deleted) {
                (Some(w), Some(d)) => w > d,
                (w, _) => w.is_some(),
            }
    }

    /// The visible values in list order.
    pub fn items(&self) -> impl Iterator<Item = Item<'_>> {
        let mut visible: Vec<&Element> = self
            .elements
            .values()
            .filter(|e| e.visible_under(self.base.as_ref()))
            .collect();
        visible.sort_by(|a, b| a.seq.cmp(&b.seq).then_with(|| a.id.cmp(&b.id)));
        visible.into_iter().map(|e| Item {
            id: &e.id,
            value: e.value.as_deref().unwrap_or_default(),
            ver: &e.ver,
        })
    }

    pub fn values(&self) -> Vec<String> {
        self.items().map(|i| i.value.to_owned()).collect()
    }

    pub fn element_count(&self) -> usize {
        self.elements.len()
    }

    pub fn tombstone_count(&self) -> usize {
        let base = self.base.as_ref();
        self.elements
            .values()
            .filter(|e| !e.visible_under(base))
            .count()
    }

    fn max_seq(&self) -> u64 {
        self.elements.values().map(|e| e.seq).max().unwrap_or(0)
    }

    /// The limits of a local write, for a key `key_len` bytes long.
    fn check_limits(&self, key_len: usize) -> Result<(), StateError> {
        let mut count = 0;
        let mut total = key_len;
        for (index, item) in self.items().enumerate() {
            if item.value.len() > MAX_VALUE_BYTES {
                return Err(ValuesError::ValueTooLarge {
                    index,
                    len: item.value.len(),
                }
                .into());
            }
            count += 1;
            total += item.value.len();
        }
        if count > MAX_VALUES {
            return Err(ValuesError::TooMany(count).into());
        }
        if total > MAX_PAIR_BYTES {
            return Err(ValuesError::PairTooLarge(total).into());
        }
        Ok(())
    }

    fn new_element(&self, id: ElemId, seq: u64, gen: Option<Version>, value: String) -> Element {
        Element {
            ver: id.ver.clone(),
            id,
            seq,
            gen,
            prev: None,
            value: Some(value),
            rm: None,
        }
    }

    /// Marks every visible element removed by the write at `at`.
    fn remove_visible(&mut self, at: &Version) {
        let base = self.base.clone();
        for e in self.elements.values_mut() {
            if e.visible_under(base.as_ref()) {
                e.rm = Some(Removal {
                    seen: e.ver.clone(),
                    at: at.clone(),
                });
                e.value = None;
            }
        }
    }

    /// Local write: adds `value` at the end. `at` must be above [`Self::version`]. The
    /// limits are checked with the key's length, `key_len`; a refused write changes
    /// nothing.
    pub fn append(
        &mut self,
        value: String,
        at: &Version,
        key_len: usize,
    ) -> Result<ElemId, StateError> {
        let mut next = self.clone();
        let id = ElemId {
            ver: at.clone(),
            n: 0,
        };
        // Two past the end: a concurrent replacement lands one past it, so this value
        // follows the replacement's list (see `replace`).
        let element = next.new_element(id.clone(), next.max_seq() + 2, None, value);
        next.elements.insert(id.clone(), element);
        next.written = Some(at.clone());
        next.check_limits(key_len)?;
        *self = next;
        Ok(id)
    }

    /// Local write: the list becomes `values` (a PUT).
    pub fn replace(
        &mut self,
        values: Vec<String>,
        at: &Version,
        key_len: usize,
    ) -> Result<(), StateError> {
        let mut next = self.clone();
        next.remove_visible(at);
        let seq = next.max_seq() + 1;
        for (i, v) in values.into_iter().enumerate() {
            let id = ElemId {
                ver: at.clone(),
                n: i as u32,
            };
            let element = next.new_element(id.clone(), seq, Some(at.clone()), v);
            next.elements.insert(id, element);
        }
        next.base = Some(at.clone());
        next.written = Some(at.clone());
        next.normalize();
        next.check_limits(key_len)?;
        *self = next;
        Ok(())
    }

    fn visible_mut(&mut self, id: &ElemId) -> Result<&mut Element, StateError> {
        let base = self.base.clone();
        self.elements
            .get_mut(id)
            .filter(|e| e.visible_under(base.as_ref()))
            .ok_or_else(|| StateError::NoSuchElement(id.to_string()))
    }

    /// Local write: one value changes, keeping its place.
    pub fn edit(
        &mut self,
        id: &ElemId,
        value: String,
        at: &Version,
        key_len: usize,
    ) -> Result<(), StateError> {
        let mut next = self.clone();
        let e = next.visible_mut(id)?;
        e.prev = Some(std::mem::replace(&mut e.ver, at.clone()));
        e.value = Some(value);
        next.written = Some(at.clone());
        next.check_limits(key_len)?;
        *self = next;
        Ok(())
    }

    /// Local write: one value goes.
    pub fn remove(&mut self, id: &ElemId, at: &Version) -> Result<(), StateError> {
        let e = self.visible_mut(id)?;
        e.rm = Some(Removal {
            seen: e.ver.clone(),
            at: at.clone(),
        });
        e.value = None;
        self.written = Some(at.clone());
        Ok(())
    }

    /// Local write: the key goes, with every value seen.
    pub fn delete(&mut self, at: &Version) {
        self.remove_visible(at);
        self.deleted = Some(at.clone());
    }

    /// Collects tombstones hidden before `now_ms - horizon_ms`, and the oldest beyond
    /// [`MAX_TOMBSTONES`]. Run on local writes only; peers follow through `floor`.
    pub fn collect(&mut self, now_ms: u64, horizon_ms: u64) {
        let base = self.base.clone();
        let cutoff = now_ms.saturating_sub(horizon_ms);
        let mut hidden: Vec<(ElemId, bool)> = self
            .elements
            .values()
            .filter(|e| !e.visible_under(base.as_ref()))
            .map(|e| {
                let old = e
                    .hidden_at(base.as_ref())
                    .is_some_and(|v| v.ts.wall_ms < cutoff);
                (e.id.clone(), old)
            })
            .collect();
        let excess = hidden.len().saturating_sub(MAX_TOMBSTONES);
        // Oldest first: ids order by creation.
        for (i, (id, old)) in hidden.drain(..).enumerate() {
            if old || i < excess {
                self.elements.remove(&id);
                self.floor = self.floor.take().max(Some(id));
            }
        }
    }

    /// Collects the `n` oldest tombstones, as [`PairState::collect`] does beyond
    /// [`MAX_TOMBSTONES`]: for a state whose event would be too large to publish. Run on
    /// local writes only. Returns how many went.
    pub fn collect_oldest(&mut self, n: usize) -> usize {
        let base = self.base.clone();
        let oldest: Vec<ElemId> = self
            .elements
            .values()
            .filter(|e| !e.visible_under(base.as_ref()))
            .take(n)
            .map(|e| e.id.clone())
            .collect();
        for id in &oldest {
            self.elements.remove(id);
            self.floor = self.floor.take().max(Some(id.clone()));
        }
        oldest.len()
    }

    /// Moves the element texts to where they belong: present exactly while visible.
    fn normalize(&mut self) {
        let base = self.base.clone();
        for e in self.elements.values_mut() {
            if !e.visible_under(base.as_ref()) {
                e.value = None;
            }
        }
    }

    /// Joins `incoming` into `self`. Returns whether `self` changed and the conflicts the
    /// join settled. Commutative, associative and idempotent on the state.
    pub fn merge(&mut self, incoming: &PairState) -> (bool, Vec<Conflict>) {
        let joined = join(self, incoming);
        let conflicts = conflicts(self, incoming, &joined);
        let changed = joined != *self;
        *self = joined;
        (changed, conflicts)
    }

    pub fn to_wire(&self) -> StateWire {
        StateWire {
            els: self.elements.values().cloned().collect(),
            base: self.base.clone(),
            written: self.written.clone(),
            deleted: self.deleted.clone(),
            floor: self.floor.clone(),
        }
    }

    /// Validates a state from a peer or the store.
    pub fn from_wire(wire: StateWire) -> Result<Self, WireError> {
        if wire.els.len() > MAX_ELEMENTS {
            return Err(WireError::TooManyElements(wire.els.len()));
        }
        let mut state = PairState {
            elements: BTreeMap::new(),
            base: wire.base,
            written: wire.written,
            deleted: wire.deleted,
            floor: wire.floor,
        };
        let mut last: Option<ElemId> = None;
        for e in wire.els {
            let name = || e.id.to_string();
            if last.as_ref().is_some_and(|l| l >= &e.id) {
                return Err(WireError::Order(name()));
            }
            if e.ver < e.id.ver || e.prev.as_ref().is_some_and(|p| p >= &e.ver) {
                return Err(WireError::Versions(name()));
            }
            if e.value.as_ref().is_some_and(|v| v.len() > MAX_VALUE_BYTES) {
                return Err(WireError::ValueTooLarge(name()));
            }
            if e.value.is_some() != e.visible_under(state.base.as_ref()) {
                return Err(WireError::Text(name()));
            }
            last = Some(e.id.clone());
            state.elements.insert(e.id.clone(), e);
        }
        Ok(state)
    }

    /// A short hash of the whole state: equal states, equal fingerprints.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let bytes = serde_json::to_vec(&self.to_wire()).expect("a state always serializes");
        hex::encode(&Sha256::digest(&bytes)[..8])
    }

    /// A rough size in bytes, for bounding memory.
    pub fn approx_bytes(&self) -> usize {
        64 + self
            .elements
            .values()
            .map(Element::approx_bytes)
            .sum::<usize>()
    }
}

fn join(a: &PairState, b: &PairState) -> PairState {
    let mut elements = BTreeMap::new();
    let mut ia = a.elements.iter().peekable();
    let mut ib = b.elements.iter().peekable();
    // A merge walk over both sorted maps.
    loop {
        let next = match (ia.peek(), ib.peek()) {
            (None, None) => break,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
        };
        let (id, e) = match next {
            Ordering::Equal => {
                let (id, ea) = ia.next().expect("peeked");
                let (_, eb) = ib.next().expect("peeked");
                (id, ea.join(eb))
            }
            // Present on one side only: kept unless the other side collected it.
            Ordering::Less => {
                let (id, e) = ia.next().expect("peeked");
                if b.floor.as_ref().is_some_and(|f| id <= f) {
                    continue;
                }
                (id, e.clone())
            }
            Ordering::Greater => {
                let (id, e) = ib.next().expect("peeked");
                if a.floor.as_ref().is_some_and(|f| id <= f) {
                    continue;
                }
                (id, e.clone())
            }
        };
        elements.insert(id.clone(), e);
    }
    let mut joined = PairState {
        elements,
        base: a.base.clone().max(b.base.clone()),
        written: a.written.clone().max(b.written.clone()),
        deleted: a.deleted.clone().max(b.deleted.clone()),
        floor: a.floor.clone().max(b.floor.clone()),
    };
    joined.normalize();
    joined
}

/// The conflicts settled by joining `a` and `b` into `joined`. Both sides see the same
/// ones, whichever is local.
fn conflicts(a: &PairState, b: &PairState, joined: &PairState) -> Vec<Conflict> {
    let mut out = Vec::new();
    let base = joined.base.as_ref();
    for (id, e) in &joined.elements {
        let (ea, eb) = (a.elements.get(id), b.elements.get(id));
        if let (Some(x), Some(y)) = (ea, eb) {
            // Edit ∥ edit: the winner's writer had not seen the loser's value.
            if x.ver != y.ver {
                let (w, l) = if x.ver > y.ver { (x, y) } else { (y, x) };
                let unseen = w.prev.as_ref().is_none_or(|p| p < &l.ver);
                if unseen {
                    if let Some(lost) = &l.value {
                        out.push(Conflict {
                            kind: ConflictKind::Edit,
                            element: Some(id.clone()),
                            lost: vec![lost.clone()],
                            lost_version: l.ver.clone(),
                            won: e.value.clone(),
                            won_version: w.ver.clone(),
                        });
                    }
                }
            }
        }
        // Removal ∥ edit: a side had it removed, the other edited it past that removal.
        if e.visible_under(base) {
            if let Some(r) = &e.rm {
                let removed_on = |side: Option<&Element>| {
                    side.is_some_and(|s| s.rm.as_ref() == Some(r) && s.ver <= r.seen)
                };
                if removed_on(ea) || removed_on(eb) {
                    out.push(Conflict {
                        kind: ConflictKind::Remove,
                        element: Some(id.clone()),
                        lost: Vec::new(),
                        lost_version: r.at.clone(),
                        won: e.value.clone(),
                        won_version: e.ver.clone(),
                    });
                }
            }
        }
    }
    // Replace ∥ replace: a side's visible list, unknown to the other, hidden by its base.
    for (side, other) in [(a, b), (b, a)] {
        let mut lost: BTreeMap<&Version, Vec<&Element>> = BTreeMap::new();
        for (id, e) in &side.elements {
            let hidden_now = joined
                .elements
                .get(id)
                .is_some_and(|j| !j.visible_under(base) && j.rm.is_none());
            if e.visible_under(side.base.as_ref()) && hidden_now && !other.elements.contains_key(id)
            {
                if let Some(g) = &e.gen {
                    lost.entry(g).or_default().push(e);
                }
            }
        }
        for (gen, mut elements) in lost {
            elements.sort_by(|x, y| x.seq.cmp(&y.seq).then_with(|| x.id.cmp(&y.id)));
            out.push(Conflict {
                kind: ConflictKind::Replace,
                element: None,
                lost: elements.iter().filter_map(|e| e.value.clone()).collect(),
                lost_version: gen.clone(),
                won: None,
                won_version: base.expect("a hidden element implies a base").clone(),
            });
        }
    }
    // Delete ∥ replace: the delete's side never saw a list that stays.
    for (side, other) in [(a, b), (b, a)] {
        let Some(d) = &other.deleted else { continue };
        if side.deleted.as_ref() >= Some(d) || other.is_live() {
            continue;
        }
        let survivor = side.elements.values().find(|e| {
            e.gen.is_some()
                && !other.elements.contains_key(&e.id)
                && joined
                    .elements
                    .get(&e.id)
                    .is_some_and(|j| j.visible_under(base))
        });
        if let Some(e) = survivor {
            out.push(Conflict {
                kind: ConflictKind::Delete,
                element: None,
                lost: Vec::new(),
                lost_version: d.clone(),
                won: None,
                won_version: e.gen.clone().expect("filtered on gen"),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
