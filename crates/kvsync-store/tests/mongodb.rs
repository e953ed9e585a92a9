//! The store against a real MongoDB-protocol server: merges as read-merge-conditional
//! writes, compare-and-swap, recorded conflicts, conversion of the earlier layout, and the
//! outbox life cycle.

use std::time::Duration;

use futures::TryStreamExt;
use kvsync_core::{Event, Key, NodeId, Op, Outcome, PairState, Timestamp, Values, Version};
use kvsync_store::{CasError, Store};
use kvsync_testkit::{Mongo, Tools};
use mongodb::bson::doc;

struct Fixture {
    store: Store,
    _mongo: Mongo,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mongo = Mongo::start(&Tools::locate().unwrap(), dir.path(), 0)
        .await
        .unwrap();
    let store = Store::connect(&mongo.uri(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    store.ensure_indexes().await.unwrap();
    Fixture {
        store,
        _mongo: mongo,
        _dir: dir,
    }
}

fn key(k: &str) -> Key {
    Key::parse(k).unwrap()
}

fn version(ms: u64, node: &str) -> Version {
    Version::new(Timestamp::new(ms, 0), NodeId::parse(node).unwrap())
}

fn put(k: &str, ms: u64, node: &str, values: &[&str]) -> Event {
    let values = Values::new(values.iter().map(|s| s.to_string()).collect(), k.len()).unwrap();
    Event::new(key(k), version(ms, node), Op::Put(values))
}

async fn values(store: &Store, k: &str) -> Option<Vec<String>> {
    let pair = store.get(&key(k)).await.unwrap()?;
    pair.is_live().then(|| pair.state.values())
}

async fn apply(store: &Store, event: &Event) -> Outcome {
    store.apply_remote(event, 0, None).await.unwrap().outcome
}

/// A local write as the node makes it: read, change, conditional write.
async fn write(
    store: &Store,
    k: &str,
    ms: u64,
    change: impl Fn(&mut PairState, &Version),
) -> Event {
    let pair = store.get(&key(k)).await.unwrap();
    let mut state = pair.as_ref().map(|p| p.state.clone()).unwrap_or_default();
    let at = version(ms, "n1");
    change(&mut state, &at);
    let event = Event::of_state(key(k), at, state);
    store
        .write_local(
            &event.key,
            pair.map(|p| p.rev),
            &event.state,
            event.id,
            &event.version,
        )
        .await
        .unwrap();
    event
}

#[tokio::test]
async fn remote_applies_merge_and_duplicates_change_nothing() {
    let f = fixture().await;
    let s = &f.store;
    let newer = put("k", 20, "n2", &["new"]);
    assert_eq!(apply(s, &newer).await, Outcome::Applied);
    assert_eq!(apply(s, &newer).await, Outcome::Stale, "duplicate");
    // An older whole write loses whole: its list is hidden, the state records it.
    assert_eq!(
        apply(s, &put("k", 10, "n1", &["old"])).await,
        Outcome::Applied
    );
    assert_eq!(
        apply(s, &put("k", 10, "n1", &["old"])).await,
        Outcome::Stale
    );
    assert_eq!(values(s, "k").await.unwrap(), ["new"]);

    // A delete that saw the list removes it; an older write it saw cannot revive it.
    let mut state = s.get(&key("k")).await.unwrap().unwrap().state;
    state.delete(&version(30, "n1"));
    let tomb = Event::of_state(key("k"), version(30, "n1"), state);
    assert_eq!(apply(s, &tomb).await, Outcome::Applied);
    assert_eq!(apply(s, &newer).await, Outcome::Stale);
    assert_eq!(values(s, "k").await, None);
    assert_eq!(s.list("", None, 10).await.unwrap().0.len(), 0);
    assert_eq!(
        s.digest().await.unwrap().0,
        1,
        "tombstones count in the digest"
    );
    assert_eq!(
        s.max_timestamp().await.unwrap(),
        Some(Timestamp::new(30, 0))
    );
}

#[tokio::test]
async fn concurrent_edits_record_a_conflict_that_can_be_dismissed() {
    let f = fixture().await;
    let s = &f.store;
    let base = put("k", 10, "n1", &["x"]);
    assert_eq!(apply(s, &base).await, Outcome::Applied);
    let x = base.state.items().next().unwrap().id.clone();
    let edit = |ms, node: &str, v: &str| {
        let mut state = base.state.clone();
        state.edit(&x, v.into(), &version(ms, node), 1).unwrap();
        Event::of_state(key("k"), version(ms, node), state)
    };
    assert_eq!(apply(s, &edit(20, "n1", "mine")).await, Outcome::Applied);
    let applied = s
        .apply_remote(&edit(21, "n2", "theirs"), 1234, None)
        .await
        .unwrap();
    assert_eq!(applied.conflicts.len(), 1);
    assert_eq!(values(s, "k").await.unwrap(), ["theirs"]);
    let recorded = s.conflicts(&key("k")).await.unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].at_ms, 1234);
    assert_eq!(recorded[0].conflict.lost, ["mine"]);
    assert_eq!(s.get(&key("k")).await.unwrap().unwrap().conflicts, recorded);
    // A local write keeps the record; dismissing forgets it.
    write(s, "k", 30, |st, at| {
        drop(st.append("more".into(), at, 1).unwrap())
    })
    .await;
    assert_eq!(s.conflicts(&key("k")).await.unwrap().len(), 1);
    s.dismiss_conflicts(&key("k")).await.unwrap();
    assert!(s.conflicts(&key("k")).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_conflict_is_recorded_once_even_where_the_local_write_won() {
    let f = fixture().await;
    let s = &f.store;
    let base = put("k", 10, "n1", &["x"]);
    apply(s, &base).await;
    let x = base.state.items().next().unwrap().id.clone();
    let edit = |ms, node: &str, v: &str| {
        let mut state = base.state.clone();
        state.edit(&x, v.into(), &version(ms, node), 1).unwrap();
        Event::of_state(key("k"), version(ms, node), state)
    };
    assert_eq!(
        apply(s, &edit(40, "n1", "mine won")).await,
        Outcome::Applied
    );
    // The state does not change (the stored edit wins), yet the loser is recorded.
    let lost = s
        .apply_remote(&edit(35, "n2", "theirs"), 0, None)
        .await
        .unwrap();
    assert_eq!((lost.outcome, lost.conflicts.len()), (Outcome::Stale, 1));
    // A redelivery records nothing new.
    let again = s
        .apply_remote(&edit(35, "n2", "theirs"), 0, None)
        .await
        .unwrap();
    assert_eq!((again.outcome, again.conflicts.len()), (Outcome::Stale, 0));
    let recorded = s.conflicts(&key("k")).await.unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].conflict.lost, ["theirs"]);
    assert_eq!(values(s, "k").await.unwrap(), ["mine won"]);
}

#[tokio::test]
async fn local_writes_are_compare_and_swap_and_leave_an_outbox_mark() {
    let f = fixture().await;
    let s = &f.store;
    let first = write(s, "k", 10, |st, at| {
        st.replace(vec!["a".into()], at, 1).unwrap()
    })
    .await;
    let second = write(s, "k", 11, |st, at| {
        drop(st.append("b".into(), at, 1).unwrap())
    })
    .await;
    assert_eq!(values(s, "k").await.unwrap(), ["a", "b"]);
    let rev = s.get(&key("k")).await.unwrap().unwrap().rev;
    assert_eq!(rev, 2);

    // Only the newest change is pending, with the key's current state.
    assert_eq!(s.pending(10).await.unwrap(), vec![second.clone()]);
    s.clear_outboxes(&[(first.key.clone(), first.id)])
        .await
        .unwrap();
    assert_eq!(s.count_pending().await.unwrap(), 1);
    s.clear_outboxes(&[(second.key.clone(), second.id)])
        .await
        .unwrap();
    assert_eq!(s.count_pending().await.unwrap(), 0);

    // Compare-and-swap: the document must still be at the expected rev.
    let state = PairState::default();
    let v = version(12, "n1");
    let stale = s
        .write_local(&key("k"), Some(rev - 1), &state, first.id, &v)
        .await;
    assert!(matches!(stale, Err(CasError::Conflict)));
    assert!(s
        .write_local(&key("fresh"), None, &state, first.id, &v)
        .await
        .is_ok());
    assert!(matches!(
        s.write_local(&key("fresh"), None, &state, first.id, &v)
            .await,
        Err(CasError::Conflict)
    ));
}

#[tokio::test]
async fn marks_are_cleared_in_batches_by_event_id() {
    let f = fixture().await;
    let s = &f.store;
    let mut events = Vec::new();
    for i in 0..5 {
        events.push(
            write(s, &format!("k{i}"), 10, |st, at| {
                st.replace(vec!["v".into()], at, 1).unwrap()
            })
            .await,
        );
    }
    // k0 changes again before its first publication is acknowledged.
    let newer = write(s, "k0", 11, |st, at| {
        st.replace(vec!["w".into()], at, 1).unwrap()
    })
    .await;
    assert_eq!(s.count_pending().await.unwrap(), 5);
    let acked: Vec<(Key, uuid::Uuid)> = events[..4].iter().map(|e| (e.key.clone(), e.id)).collect();
    s.clear_outboxes(&acked).await.unwrap();
    // k0 keeps the mark of its newer change; k4 was not acknowledged yet.
    let mut left = s.pending(10).await.unwrap();
    left.sort_by(|a, b| a.key.as_str().cmp(b.key.as_str()));
    assert_eq!(left, vec![newer.clone(), events[4].clone()]);
    s.clear_outboxes(&[]).await.unwrap();
    s.clear_outboxes(&[
        (newer.key.clone(), newer.id),
        (events[4].key.clone(), events[4].id),
    ])
    .await
    .unwrap();
    assert_eq!(s.count_pending().await.unwrap(), 0);
}

#[tokio::test]
async fn a_remote_apply_keeps_a_pending_local_change_and_it_publishes_the_merge() {
    let f = fixture().await;
    let s = &f.store;
    let mine = write(s, "k", 10, |st, at| {
        drop(st.append("mine".into(), at, 1).unwrap())
    })
    .await;
    let mut theirs = PairState::default();
    theirs
        .append("theirs".into(), &version(20, "n2"), 1)
        .unwrap();
    let theirs = Event::of_state(key("k"), version(20, "n2"), theirs);
    assert_eq!(apply(s, &theirs).await, Outcome::Applied);
    // Both appends stay; our change is still published, now with the merged state.
    assert_eq!(values(s, "k").await.unwrap(), ["mine", "theirs"]);
    let pending = s.pending(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].id, &pending[0].version),
        (mine.id, &mine.version)
    );
    assert_eq!(pending[0].state.values(), ["mine", "theirs"]);
}

#[tokio::test]
async fn pairs_of_the_earlier_layout_are_converted_alike_everywhere() {
    let f = fixture().await;
    let s = &f.store;
    let client = mongodb::Client::with_uri_str(f._mongo.uri()).await.unwrap();
    let raw = client
        .database("test")
        .collection::<mongodb::bson::Document>("pairs");
    let v = version(10, "n1").to_string();
    raw.insert_many([
        doc! { "_id": "live", "values": ["a", "b"], "deleted": false, "ver": &v,
               "outbox": { "id": uuid::Uuid::now_v7().to_string(), "ver": &v, "values": ["a", "b"], "deleted": false } },
        doc! { "_id": "gone", "values": null, "deleted": true, "ver": &v },
    ])
    .await
    .unwrap();
    // Never misread: until converted, reading such a pair is an error that says why.
    let err = s.get(&key("live")).await.unwrap_err().to_string();
    assert!(err.contains("earlier release"), "{err}");
    assert_eq!(s.convert_legacy().await.unwrap(), 2);
    assert_eq!(s.convert_legacy().await.unwrap(), 0, "idempotent");
    assert_eq!(values(s, "live").await.unwrap(), ["a", "b"]);
    assert_eq!(values(s, "gone").await, None);
    let expected = put("live", 10, "n1", &["a", "b"]).state;
    assert_eq!(s.get(&key("live")).await.unwrap().unwrap().state, expected);
    // The pending publication survives the conversion.
    assert_eq!(s.pending(10).await.unwrap()[0].state, expected);
}

#[tokio::test]
async fn listing_pages_through_a_prefix_in_byte_order() {
    let f = fixture().await;
    let s = &f.store;
    for (i, k) in ["a", "p/1", "p/2", "p/3", "p0", "q", "é"]
        .iter()
        .enumerate()
    {
        apply(s, &put(k, i as u64 + 1, "n1", &["v"])).await;
    }
    let keys = |page: &[kvsync_store::StoredPair]| {
        page.iter()
            .map(|p| p.key.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    let (page, more) = s.list("p/", None, 2).await.unwrap();
    assert_eq!(
        (keys(&page), more),
        (vec!["p/1".into(), "p/2".into()], true)
    );
    let (page, more) = s.list("p/", Some("p/2"), 2).await.unwrap();
    assert_eq!((keys(&page), more), (vec!["p/3".into()], false));
    let (page, _) = s.list("", Some("q"), 10).await.unwrap();
    assert_eq!(keys(&page), vec!["é".to_owned()]);
}

#[tokio::test]
async fn live_keys_page_in_key_order_past_tombstones() {
    let f = fixture().await;
    let s = &f.store;
    for k in ["d", "a", "c", "b", "e"] {
        apply(s, &put(k, 10, "n1", &["v"])).await;
    }
    // A delete made after seeing the pair.
    let mut seen = put("b", 10, "n1", &["v"]).state;
    seen.delete(&version(20, "n1"));
    apply(s, &Event::of_state(key("b"), version(20, "n1"), seen)).await;
    let page = |after: Option<&'static str>| async move {
        s.live_keys(after, 2)
            .await
            .unwrap()
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(page(None).await, ["a", "c"]);
    assert_eq!(page(Some("c")).await, ["d", "e"]);
    assert_eq!(page(Some("e")).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_stale_known_pair_costs_a_retry_not_a_lost_write() {
    let f = fixture().await;
    let s = &f.store;
    let mut first = PairState::default();
    first.append("a".into(), &version(10, "n2"), 1).unwrap();
    apply(s, &Event::of_state(key("k"), version(10, "n2"), first)).await;
    let stale = s.get(&key("k")).await.unwrap();
    let mut second = PairState::default();
    second.append("b".into(), &version(11, "n3"), 1).unwrap();
    apply(s, &Event::of_state(key("k"), version(11, "n3"), second)).await;
    // The caller still believes the first revision: the swap fails, a fresh read follows.
    let mut third = PairState::default();
    third.append("c".into(), &version(12, "n4"), 1).unwrap();
    let applied = s
        .apply_remote(
            &Event::of_state(key("k"), version(12, "n4"), third),
            0,
            stale,
        )
        .await
        .unwrap();
    assert_eq!(applied.outcome, Outcome::Applied);
    assert_eq!(applied.pair.rev, 3);
    assert_eq!(values(s, "k").await.unwrap(), ["a", "b", "c"]);
    assert_eq!(applied.pair, s.get(&key("k")).await.unwrap().unwrap());
}

/// The raw `pairs` collection behind a fixture's store.
async fn raw(f: &Fixture) -> mongodb::Collection<mongodb::bson::Document> {
    mongodb::Client::with_uri_str(f._mongo.uri())
        .await
        .unwrap()
        .database("test")
        .collection("pairs")
}

/// A tombstone as the store keeps it: one value written at `ms`, then the key deleted
/// at `deleted_ms`.
fn tombstone(k: &str, ms: u64, deleted_ms: u64) -> mongodb::bson::Document {
    let mut state = put(k, ms, "n1", &["v"]).state;
    state.delete(&version(deleted_ms, "n1"));
    kvsync_store::stored_document(&key(k), &state, 2)
}

#[tokio::test]
async fn listing_skips_tombstones_and_sees_a_key_written_again() {
    let f = fixture().await;
    let s = &f.store;
    for k in ["a", "b", "c"] {
        write(s, k, 10, |st, at| {
            st.replace(vec!["v".into()], at, 1).unwrap()
        })
        .await;
    }
    raw(&f)
        .await
        .insert_many((0..50).map(|i| tombstone(&format!("a/{i:02}"), 5, 6)))
        .await
        .unwrap();
    write(s, "b", 20, |st, at| st.delete(at)).await;
    let keys = |page: Vec<kvsync_store::StoredPair>| {
        page.into_iter()
            .map(|p| p.key.into_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(s.list("", None, 10).await.unwrap().0), ["a", "c"]);
    assert_eq!(s.list("a/", None, 10).await.unwrap().0.len(), 0);
    assert_eq!(s.count_live().await.unwrap(), 2);
    assert_eq!(s.live_keys(Some("a"), 10).await.unwrap(), [key("c")]);
    // Written again, the key is listed again.
    write(s, "b", 30, |st, at| {
        st.replace(vec!["w".into()], at, 1).unwrap()
    })
    .await;
    let (page, more) = s.list("", None, 2).await.unwrap();
    assert_eq!((keys(page), more), (vec!["a".into(), "b".into()], true));
    assert_eq!(s.count_live().await.unwrap(), 3);
    assert_eq!(
        s.digest().await.unwrap().0,
        53,
        "tombstones stay in the digest"
    );
}

#[tokio::test]
async fn live_pairs_of_an_earlier_release_are_given_their_live_key() {
    let f = fixture().await;
    let s = &f.store;
    let mut earlier =
        kvsync_store::stored_document(&key("old"), &put("old", 10, "n1", &["v"]).state, 1);
    assert!(earlier.remove("live_key").is_some());
    let raw = raw(&f).await;
    raw.insert_many([earlier, tombstone("gone", 10, 11)])
        .await
        .unwrap();
    assert!(s.list("", None, 10).await.unwrap().0.is_empty());
    assert_eq!(s.convert_legacy().await.unwrap(), 1);
    assert_eq!(s.convert_legacy().await.unwrap(), 0, "idempotent");
    let (page, _) = s.list("", None, 10).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].state.values(), ["v"]);
    assert_eq!(s.count_live().await.unwrap(), 1);
}

#[tokio::test]
async fn old_tombstones_are_collected_unless_their_deletion_awaits_publication() {
    let f = fixture().await;
    let s = &f.store;
    // Live pairs, old and young: never collected.
    apply(s, &put("live/old", 10, "n2", &["v"])).await;
    apply(s, &put("live/young", 900, "n2", &["v"])).await;
    // More old tombstones than one batch holds, and a young one.
    let old: Vec<_> = (0..1200)
        .map(|i| tombstone(&format!("old/{i:04}"), 10, 20))
        .collect();
    raw(&f).await.insert_many(old).await.unwrap();
    raw(&f)
        .await
        .insert_one(tombstone("young", 10, 900))
        .await
        .unwrap();
    // An old deletion made here and not yet published.
    write(s, "pending", 10, |st, at| {
        st.replace(vec!["v".into()], at, 1).unwrap()
    })
    .await;
    let deletion = write(s, "pending", 20, |st, at| st.delete(at)).await;
    assert_eq!(s.count_pending().await.unwrap(), 1);

    let cutoff = version(500, "n1").to_string();
    assert_eq!(s.collect_tombstones(&cutoff, 700).await.unwrap(), 700);
    assert_eq!(s.collect_tombstones(&cutoff, 10_000).await.unwrap(), 500);
    assert_eq!(s.collect_tombstones(&cutoff, 10_000).await.unwrap(), 0);
    let left: Vec<String> = s
        .dump()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key.into_string())
        .collect();
    assert_eq!(left, ["live/old", "live/young", "pending", "young"]);
    assert!(s.get(&key("pending")).await.unwrap().is_some());
    assert_eq!(s.pending(10).await.unwrap()[0].id, deletion.id);

    // Once published, it goes too; a cutoff given as a millisecond prefix works alike.
    s.clear_outboxes(&[(deletion.key.clone(), deletion.id)])
        .await
        .unwrap();
    assert_eq!(
        s.collect_tombstones(&format!("{:016x}", 500), 10)
            .await
            .unwrap(),
        1
    );
    assert!(s.get(&key("pending")).await.unwrap().is_none());
    assert_eq!(
        s.collect_tombstones("", 10).await.unwrap(),
        0,
        "nothing is older"
    );
    assert_eq!(s.list("", None, 10).await.unwrap().0.len(), 2);
}

/// Changes are numbered in the write that makes them, read back in number order, and a
/// store opened again (a restart) numbers after everything stored, in the same epoch.
#[tokio::test]
async fn changes_are_numbered_and_numbering_survives_a_reopen() {
    let f = fixture().await;
    let s = &f.store;
    s.init_feed().await.unwrap();
    let (epoch, _) = s.sequencer().epoch_and_collected();
    assert!(!epoch.is_empty());
    apply(s, &put("a", 10, "n2", &["1"])).await;
    let b = put("b", 11, "n2", &["2"]);
    apply(s, &b).await;
    apply(s, &put("a", 12, "n2", &["3"])).await;
    // An event already held writes nothing, and takes no number.
    assert_eq!(apply(s, &b).await, Outcome::Stale);
    let last = s.sequencer().last();
    let changed = s.changed_since(0, last, 10).await.unwrap();
    let keys: Vec<&str> = changed.iter().map(|(_, p)| p.key.as_str()).collect();
    assert_eq!(keys, ["b", "a"], "one per key, in number order");
    assert!(changed[0].0 < changed[1].0);
    assert!(s
        .changed_since(changed[0].0, last, 10)
        .await
        .unwrap()
        .iter()
        .all(|(_, p)| p.key.as_str() == "a"));

    let again = Store::connect(&f._mongo.uri(), "test", Duration::from_secs(5))
        .await
        .unwrap();
    again.init_feed().await.unwrap();
    assert_eq!(again.sequencer().epoch_and_collected().0, epoch);
    assert!(again.sequencer().last() >= changed[1].0);
    assert!(again.sequencer().begin().seq() > changed[1].0);
}

/// The key index's read: every document in feed-number order, page by page, documents
/// stored without a number (by hand, or before the feed) included once the feed starts.
#[tokio::test]
async fn a_numbered_scan_reads_every_document_in_pages() {
    let f = fixture().await;
    let s = &f.store;
    let mut unnumbered =
        kvsync_store::stored_document(&key("hand"), &put("hand", 10, "n1", &["v"]).state, 1);
    unnumbered.remove("seq");
    raw(&f)
        .await
        .insert_many([unnumbered, tombstone("gone", 10, 11)])
        .await
        .unwrap();
    s.init_feed().await.unwrap();
    for i in 0..7 {
        apply(s, &put(&format!("k{i}"), 20 + i, "n2", &["1"])).await;
    }
    // Written again: it moves to a later number and is read once.
    apply(s, &put("k0", 40, "n2", &["2"])).await;
    let scanned: Vec<_> = s.scan_numbered(3).try_collect().await.unwrap();
    let mut keys: Vec<String> = scanned.iter().map(|d| d.id.clone()).collect();
    assert!(
        scanned.windows(2).all(|w| w[0].seq < w[1].seq),
        "in number order"
    );
    assert!(scanned.iter().all(|d| d.seq > 0 && d.pair.is_ok()));
    assert_eq!(keys.last().map(String::as_str), Some("k0"));
    keys.sort();
    assert_eq!(
        keys,
        ["gone", "hand", "k0", "k1", "k2", "k3", "k4", "k5", "k6"]
    );
}

/// Group commit: writes made at the same time share database commands, and each writer
/// still hears its own outcome: a new key inserts, a key written meanwhile conflicts, and
/// of several writers racing on one revision exactly one wins.
#[tokio::test]
async fn concurrent_writes_share_commands_and_each_hears_its_own_outcome() {
    let f = fixture().await;
    let s = &f.store;
    let held = write(s, "held", 10, |st, at| {
        st.replace(vec!["a".into()], at, 1).unwrap()
    })
    .await;
    let rev = s.get(&key("held")).await.unwrap().unwrap().rev;
    let (commands, writes) = (s.write_batches().commands(), s.write_batches().writes());

    let new_keys = (0..48).map(|i| {
        let event = put(&format!("new/{i:02}"), 20, "n1", &[&format!("v{i}")]);
        async move {
            s.write_local(&event.key, None, &event.state, event.id, &event.version)
                .await
        }
    });
    let racers = (0..8).map(|i| {
        let event = put("held", 30 + i, "n1", &[&format!("racer {i}")]);
        async move {
            s.write_local(
                &event.key,
                Some(rev),
                &event.state,
                event.id,
                &event.version,
            )
            .await
        }
    });
    let taken_for_new = async {
        let event = put("held", 40, "n1", &["not new"]);
        s.write_local(&event.key, None, &event.state, event.id, &event.version)
            .await
    };
    let (new_keys, racers, taken_for_new) = tokio::join!(
        futures::future::join_all(new_keys),
        futures::future::join_all(racers),
        taken_for_new
    );

    assert!(new_keys.iter().all(Result::is_ok), "{new_keys:?}");
    for i in 0..48 {
        assert_eq!(
            values(s, &format!("new/{i:02}")).await.unwrap(),
            [format!("v{i}")]
        );
    }
    let won: Vec<usize> = (0..racers.len()).filter(|&i| racers[i].is_ok()).collect();
    assert_eq!(won.len(), 1, "{racers:?}");
    assert!(racers
        .iter()
        .filter(|r| r.is_err())
        .all(|r| matches!(r, Err(CasError::Conflict))));
    assert_eq!(
        values(s, "held").await.unwrap(),
        [format!("racer {}", won[0])]
    );
    assert!(matches!(taken_for_new, Err(CasError::Conflict)));
    let pair = s.get(&key("held")).await.unwrap().unwrap();
    assert_eq!(pair.rev, rev + 1);
    assert_ne!(pair.state, held.state);

    let commands = s.write_batches().commands() - commands;
    let writes = s.write_batches().writes() - writes;
    assert_eq!(writes, 57);
    assert!(
        commands < writes / 2,
        "{writes} concurrent writes took {commands} commands"
    );
}

/// Real MongoDB refuses a document over 16 MiB; the test server does not, so the store
/// refuses it first, with MongoDB's error, and writes nothing.
#[tokio::test]
async fn a_merge_past_the_document_limit_is_refused_and_writes_nothing() {
    let f = fixture().await;
    let s = &f.store;
    // Concurrent appends of a whole pair's worth of values each, from many nodes: the
    // merge keeps them all, twice over in the document (the state and its values).
    let value = "x".repeat(64 * 1024);
    let events: Vec<Event> = (0..10)
        .map(|n| {
            let mut state = PairState::default();
            let mut at = version(1_000, &format!("n{n}"));
            for i in 0..15 {
                at = version(1_000 + i, &format!("n{n}"));
                state.append(value.clone(), &at, 3).unwrap();
            }
            Event::of_state(key("big"), at, state)
        })
        .collect();
    let mut refused = None;
    for (i, event) in events.iter().enumerate() {
        match s.apply_remote(event, 0, None).await {
            Ok(applied) => assert_eq!(applied.outcome, Outcome::Applied),
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (i, e) = refused.expect("a document past 16 MiB was accepted");
    assert!(
        matches!(&e, kvsync_store::StoreError::TooLarge { key, .. } if key == "big"),
        "{e}"
    );
    assert!(i >= 4, "refused too early, at event {i}: {e}");
    let stored = raw(&f)
        .await
        .find_one(doc! { "_id": "big" })
        .await
        .unwrap()
        .unwrap();
    let bytes = mongodb::bson::to_vec(&stored).unwrap().len();
    assert!(bytes <= kvsync_store::MAX_DOCUMENT_BYTES, "{bytes}");
    assert_eq!(
        values(s, "big").await.unwrap().len(),
        15 * i,
        "nothing written"
    );
}

#[tokio::test]
async fn tombstones_are_found_through_an_index_of_their_own() {
    let f = fixture().await;
    let s = &f.store;
    let names: Vec<String> = raw(&f).await.list_index_names().await.unwrap();
    assert!(names.iter().any(|n| n.contains("dead_ver")), "{names:?}");
    // A tombstone knows its version in the indexed field; a live pair does not, and a
    // key written again loses it.
    write(s, "k", 10, |st, at| {
        st.replace(vec!["v".into()], at, 1).unwrap()
    })
    .await;
    write(s, "k", 20, |st, at| st.delete(at)).await;
    let dead = raw(&f)
        .await
        .find_one(doc! { "_id": "k" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        dead.get_str("dead_ver").unwrap(),
        dead.get_str("ver").unwrap()
    );
    write(s, "k", 30, |st, at| {
        st.replace(vec!["w".into()], at, 1).unwrap()
    })
    .await;
    let live = raw(&f)
        .await
        .find_one(doc! { "_id": "k" })
        .await
        .unwrap()
        .unwrap();
    assert!(!live.contains_key("dead_ver"), "{live}");
    // A tombstone of the earlier layout is collected once converted.
    let mut earlier = tombstone("old", 10, 20);
    assert!(earlier.remove("dead_ver").is_some());
    raw(&f).await.insert_one(earlier).await.unwrap();
    let cutoff = version(500, "n1").to_string();
    assert_eq!(s.collect_tombstones(&cutoff, 10).await.unwrap(), 0);
    assert_eq!(s.convert_legacy().await.unwrap(), 1);
    assert_eq!(s.collect_tombstones(&cutoff, 10).await.unwrap(), 1);
}

#[tokio::test]
async fn positions_are_saved_per_topic() {
    let f = fixture().await;
    let s = &f.store;
    assert!(s.positions("t").await.unwrap().is_empty());
    let at: std::collections::BTreeMap<i32, i64> = [(0, 5), (1, 0), (2, 123_456_789_012)].into();
    s.save_positions("t", &at).await.unwrap();
    assert_eq!(s.positions("t").await.unwrap(), at);
    assert!(s.positions("other").await.unwrap().is_empty());
    let later: std::collections::BTreeMap<i32, i64> = [(0, 9)].into();
    s.save_positions("t", &later).await.unwrap();
    assert_eq!(s.positions("t").await.unwrap(), later);
}
