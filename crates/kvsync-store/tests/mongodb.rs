//! The store against a real MongoDB-protocol server: the merge rule as conditional
//! writes, compare-and-swap, and the outbox life cycle.

use std::time::Duration;

use kvsync_core::{Entry, Event, Key, NodeId, Op, Outcome, Timestamp, Values, Version};
use kvsync_store::{CasError, LocalWrite, Store};
use kvsync_testkit::{Mongo, Tools};

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

fn delete(k: &str, ms: u64, node: &str) -> Event {
    Event::new(key(k), version(ms, node), Op::Delete)
}

async fn stored(store: &Store, k: &str) -> Option<Entry> {
    store.get(&key(k)).await.unwrap().map(|p| p.entry)
}

#[tokio::test]
async fn remote_applies_follow_the_merge_rule() {
    let f = fixture().await;
    let s = &f.store;
    let newer = put("k", 20, "n2", &["new"]);
    assert_eq!(s.apply_remote(&newer).await.unwrap(), Outcome::Applied);
    assert_eq!(
        s.apply_remote(&newer).await.unwrap(),
        Outcome::Stale,
        "duplicate"
    );
    assert_eq!(
        s.apply_remote(&put("k", 10, "n1", &["old"])).await.unwrap(),
        Outcome::Stale
    );
    assert_eq!(stored(s, "k").await, Some(Entry::from_event(&newer)));

    // A tombstone blocks older puts and is itself replaced by newer ones.
    let tomb = delete("k", 30, "n1");
    assert_eq!(s.apply_remote(&tomb).await.unwrap(), Outcome::Applied);
    assert_eq!(
        s.apply_remote(&put("k", 25, "n2", &["zombie"]))
            .await
            .unwrap(),
        Outcome::Stale
    );
    assert!(stored(s, "k").await.unwrap().is_tombstone());
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
async fn local_writes_are_conditional_and_leave_an_outbox_mark() {
    let f = fixture().await;
    let s = &f.store;
    let first = put("k", 10, "n1", &["a"]);
    let w = s
        .write_local_if_newer(&first.key, &Entry::from_event(&first), first.id)
        .await
        .unwrap();
    assert_eq!(w, LocalWrite::Created);
    let second = put("k", 11, "n1", &["b"]);
    let w = s
        .write_local_if_newer(&second.key, &Entry::from_event(&second), second.id)
        .await
        .unwrap();
    assert_eq!(w, LocalWrite::Replaced);
    // An older version writes nothing.
    let late = put("k", 5, "n1", &["late"]);
    let w = s
        .write_local_if_newer(&late.key, &Entry::from_event(&late), late.id)
        .await
        .unwrap();
    assert_eq!(w, LocalWrite::Stale);
    assert_eq!(stored(s, "k").await, Some(Entry::from_event(&second)));

    // Only the newest change is pending; clearing a superseded id clears nothing.
    assert_eq!(s.pending(10).await.unwrap(), vec![second.clone()]);
    s.clear_outboxes(&[(first.key.clone(), first.id)])
        .await
        .unwrap();
    assert_eq!(s.count_pending().await.unwrap(), 1);
    s.clear_outboxes(&[(second.key.clone(), second.id)])
        .await
        .unwrap();
    assert_eq!(s.count_pending().await.unwrap(), 0);

    // Compare-and-swap: the expected version must still be the stored one.
    let third = delete("k", 12, "n1");
    let stale_expectation = Some(&first.version);
    let r = s
        .write_local(
            &third.key,
            stale_expectation,
            &Entry::from_event(&third),
            third.id,
        )
        .await;
    assert!(matches!(r, Err(CasError::Conflict)));
    s.write_local(
        &third.key,
        Some(&second.version),
        &Entry::from_event(&third),
        third.id,
    )
    .await
    .unwrap();
    assert!(matches!(
        s.write_local(
            &key("fresh"),
            None,
            &Entry::from_event(&put("fresh", 1, "n1", &[])),
            third.id
        )
        .await,
        Ok(())
    ));
    assert!(matches!(
        s.write_local(
            &key("fresh"),
            None,
            &Entry::from_event(&put("fresh", 2, "n1", &[])),
            third.id
        )
        .await,
        Err(CasError::Conflict)
    ));

    // A tombstone over a live pair counts as created again.
    let back = put("k", 13, "n1", &["back"]);
    let w = s
        .write_local_if_newer(&back.key, &Entry::from_event(&back), back.id)
        .await
        .unwrap();
    assert_eq!(w, LocalWrite::Created);
}

#[tokio::test]
async fn marks_are_cleared_in_batches_by_event_id() {
    let f = fixture().await;
    let s = &f.store;
    let events: Vec<Event> = (0..5)
        .map(|i| put(&format!("k{i}"), 10, "n1", &["v"]))
        .collect();
    for e in &events {
        s.write_local_if_newer(&e.key, &Entry::from_event(e), e.id)
            .await
            .unwrap();
    }
    // k0 changes again before its first publication is acknowledged.
    let newer = put("k0", 11, "n1", &["w"]);
    s.write_local_if_newer(&newer.key, &Entry::from_event(&newer), newer.id)
        .await
        .unwrap();
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
async fn a_remote_apply_keeps_a_pending_local_change() {
    let f = fixture().await;
    let s = &f.store;
    let mine = put("k", 10, "n1", &["mine"]);
    s.write_local_if_newer(&mine.key, &Entry::from_event(&mine), mine.id)
        .await
        .unwrap();
    let theirs = put("k", 20, "n2", &["theirs"]);
    assert_eq!(s.apply_remote(&theirs).await.unwrap(), Outcome::Applied);
    // Our change was acknowledged, so it is still published (peers will find it stale).
    assert_eq!(s.pending(10).await.unwrap(), vec![mine]);
    assert_eq!(stored(s, "k").await, Some(Entry::from_event(&theirs)));
}

#[tokio::test]
async fn listing_pages_through_a_prefix_in_byte_order() {
    let f = fixture().await;
    let s = &f.store;
    for (i, k) in ["a", "p/1", "p/2", "p/3", "p0", "q", "é"]
        .iter()
        .enumerate()
    {
        s.apply_remote(&put(k, i as u64 + 1, "n1", &["v"]))
            .await
            .unwrap();
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
        s.apply_remote(&put(k, 10, "n1", &["v"])).await.unwrap();
    }
    s.apply_remote(&delete("b", 20, "n1")).await.unwrap();
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
