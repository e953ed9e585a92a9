//! The limits of the real Kafka and MongoDB, reproduced here because the test servers do
//! not enforce them: what a node acknowledges fits in a record, a change the broker
//! refuses for its size is reported rather than retried in silence, and no document
//! passes MongoDB's 16 MiB, however many concurrent writes merge into it.

use std::time::Duration;

use kvsync_core::{Event, Key, NodeId, PairState, Timestamp, Version};
use kvsync_testkit::{wait_until, Client, Cluster, ClusterOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

async fn cluster(nodes: usize) -> Cluster {
    Cluster::start(ClusterOptions::nodes(nodes))
        .await
        .expect("cluster starts")
}

/// PUTs `values` to `key`: the status and the JSON body.
async fn put(client: &Client, key: &str, values: &[String]) -> (StatusCode, Value) {
    let resp = client
        .request(Method::PUT, &client.pair_url(key))
        .json(&json!({ "values": values }))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn readyz(client: &Client) -> (StatusCode, Value) {
    let resp = client
        .request(Method::GET, &client.url("/readyz"))
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap())
}

/// Waits until `/readyz` answers `status` with a reason containing `needle` (or none).
async fn wait_readyz(client: &Client, status: StatusCode, needle: Option<&str>) {
    let waited = wait_until(T, &format!("/readyz {status} {needle:?}"), || async {
        let (s, body) = readyz(client).await;
        s == status
            && match needle {
                Some(n) => body["reasons"].to_string().contains(n),
                None => body["reasons"].as_array().is_some_and(Vec::is_empty),
            }
    })
    .await;
    if let Err(e) = waited {
        panic!("{e}; last: {:?}", readyz(client).await);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn repeat(s: &str, bytes: usize, n: usize) -> Vec<String> {
    vec![s.repeat(bytes / s.len()); n]
}

/// Each of the API's documented limits, reached: refused whole (413, nothing written on
/// any node) or acknowledged and replicated. Before the size rule, the first of these was
/// acknowledged and never reached the peer, while `/readyz` said 200.
#[tokio::test]
async fn a_pair_at_every_api_limit_is_refused_whole_or_replicated() {
    let c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    let cases: Vec<(&str, Vec<String>)> = vec![
        // 1,043,040 bytes of values: within the pair limit, but past Kafka's record limit.
        ("sixteen", repeat("a", 65_190, 16)),
        // 10,000 values: each carries its version and id in the event.
        ("ten-thousand", repeat("v", 1, 10_000)),
        // Quotes and backslashes take twice their size once encoded as JSON.
        ("quotes", repeat("\"", 64 * 1024, 12)),
        ("backslashes", repeat("\\", 64 * 1024, 12)),
        // Within every limit.
        ("fits", repeat("x", 64_000, 14)),
        ("many-small", repeat("w", 1, 2_000)),
        ("quotes-that-fit", repeat("\"", 32 * 1024, 12)),
    ];
    let mut accepted = Vec::new();
    for (key, values) in &cases {
        let (status, body) = put(&a, key, values).await;
        match status {
            StatusCode::CREATED => accepted.push((*key, values)),
            StatusCode::PAYLOAD_TOO_LARGE => {
                assert_eq!(body["error"], "too_large", "{key}: {body}");
                assert!(a.get(key).await.unwrap().is_none(), "{key} was written");
            }
            other => panic!("{key}: {other} {body}"),
        }
    }
    let accepted_keys: Vec<&str> = accepted.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        accepted_keys,
        ["fits", "many-small", "quotes-that-fit"],
        "refused: the rest"
    );
    for (key, values) in &accepted {
        let want: Vec<&str> = values.iter().map(String::as_str).collect();
        b.wait_for_values(key, Some(&want), T).await.unwrap();
    }
    // An append that would take a pair past the limit is refused and changes nothing.
    let before = a.get("fits").await.unwrap().unwrap();
    let resp = a
        .request(Method::POST, &format!("{}/values", a.pair_url("fits")))
        .json(&json!({ "value": "y".repeat(60_000) }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.get("fits").await.unwrap().unwrap(), before);
    c.converged(T).await.unwrap();
    for node in [&a, &b] {
        // Waited for, not asked once: a loaded machine may delay a probe.
        wait_readyz(node, StatusCode::OK, None).await;
        assert_eq!(
            node.keys().await.unwrap(),
            ["fits", "many-small", "quotes-that-fit"]
        );
    }
}

/// A broker whose record limit is lower than the node's (here the producer's own
/// `message.max.bytes`, as an operator would set it to match the broker): the change is
/// acknowledged, refused by Kafka, and then said in `/readyz`, `/api/node` and a metric
/// while every other key replicates; a later change that fits heals it.
#[tokio::test]
async fn a_change_the_broker_refuses_for_its_size_is_reported_and_heals() {
    let mut c = cluster(1).await;
    c.start_node(&[(
        "KVSYNC_KAFKA_OPTIONS".into(),
        "message.max.bytes=200000".into(),
    )])
    .await
    .unwrap();
    c.nodes[1].wait_ready(T).await.unwrap();
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());

    let (status, body) = put(&b, "big", &repeat("x", 60_000, 5)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    wait_readyz(&b, StatusCode::SERVICE_UNAVAILABLE, Some("\\\"big\\\"")).await;
    let info = b.node_info().await.unwrap();
    assert_eq!(info["oversized_keys"][0]["key"], "big", "{info}");
    assert_eq!(info["oversized_keys"][0]["limit"], "publish", "{info}");
    assert_eq!(
        b.metric("kvsync_oversized_keys{limit=\"publish\"}")
            .await
            .unwrap(),
        Some(1.0)
    );
    // Every other key goes on replicating.
    b.put("small", &["s"]).await.unwrap();
    a.wait_for_values("small", Some(&["s"]), T).await.unwrap();
    assert!(a.get("big").await.unwrap().is_none());

    // The next change of the key fits: published, and the node is ready again.
    b.put("big", &["now small"]).await.unwrap();
    a.wait_for_values("big", Some(&["now small"]), T)
        .await
        .unwrap();
    wait_readyz(&b, StatusCode::OK, None).await;
    assert_eq!(
        b.metric("kvsync_oversized_keys{limit=\"publish\"}")
            .await
            .unwrap(),
        Some(0.0)
    );
}

/// The BSON size of every document in node `i`'s database.
async fn document_sizes(c: &Cluster, i: usize) -> Vec<(String, usize)> {
    use futures::TryStreamExt;
    let pairs = mongodb::Client::with_uri_str(c.mongos[i].uri())
        .await
        .unwrap()
        .database(c.mongos[i].database())
        .collection::<mongodb::bson::Document>("pairs");
    let docs: Vec<mongodb::bson::Document> = pairs
        .find(mongodb::bson::doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.iter()
        .map(|d| {
            let id = d.get_str("_id").unwrap_or_default().to_owned();
            (id, mongodb::bson::to_vec(d).unwrap().len())
        })
        .collect()
}

/// Concurrent whole-list PUTs of the largest list a node accepts: each loser is recorded
/// as a conflict with its whole list. Twenty such lists were kept, past MongoDB's 16 MiB,
/// which real MongoDB refuses (and the replication of the key with it).
#[tokio::test]
async fn concurrent_whole_list_puts_keep_every_document_under_16_mib() {
    let c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    for round in 0..25 {
        let list = |node: &str| repeat(&format!("{node}{round:02}-"), 64_000, 14);
        let (la, lb) = (list("a"), list("b"));
        let ((sa, ba), (sb, bb)) =
            tokio::join!(put(&a, "contested", &la), put(&b, "contested", &lb));
        // The bodies hold the whole list: only their error codes are shown.
        assert!(
            sa.is_success() && sb.is_success(),
            "round {round}: {sa} {} / {sb} {}",
            ba["error"],
            bb["error"]
        );
    }
    c.converged(T).await.unwrap();
    assert!(
        !a.conflicts("contested").await.unwrap().is_empty()
            || !b.conflicts("contested").await.unwrap().is_empty(),
        "no concurrent PUT conflicted: the test proves nothing"
    );
    for i in 0..2 {
        for (key, bytes) in document_sizes(&c, i).await {
            assert!(
                bytes <= kvsync_store::MAX_DOCUMENT_BYTES,
                "node{}: {key} is {bytes} bytes",
                i + 1
            );
        }
    }
    for node in [&a, &b] {
        wait_readyz(node, StatusCode::OK, None).await;
    }
}

fn version(ms: u64, node: &str) -> Version {
    Version::new(Timestamp::new(ms, 0), NodeId::parse(node).unwrap())
}

/// Peers' concurrent appends, each a whole pair's worth, merge into a state past what
/// MongoDB stores. The node skips that change (it cannot store it), says so in
/// `/readyz`, replicates every other key, and is ready again once a later change of the
/// key shrinks it.
#[tokio::test]
async fn a_merge_too_large_to_store_is_skipped_reported_and_heals() {
    let c = cluster(1).await;
    let a = c.nodes[0].client();
    let now = now_ms();
    let value = "z".repeat(64 * 1024);
    let mut all = PairState::default();
    for n in 0..10 {
        let origin = format!("peer{n}");
        let mut state = PairState::default();
        let mut at = version(now, &origin);
        for i in 0..15 {
            at = version(now + i, &origin);
            state.append(value.clone(), &at, 3).unwrap();
        }
        all.merge(&state);
        let event = Event::of_state(Key::parse("big").unwrap(), at, state);
        c.broker
            .produce(c.topic(), "big", &event.encode())
            .await
            .unwrap();
    }
    wait_readyz(
        &a,
        StatusCode::SERVICE_UNAVAILABLE,
        Some("too large to store"),
    )
    .await;
    let (_, body) = readyz(&a).await;
    assert!(
        body["reasons"].to_string().contains("\\\"big\\\""),
        "{body}"
    );
    assert!(a.counter("events_applied").await.unwrap() >= 4);
    for (key, bytes) in document_sizes(&c, 0).await {
        assert!(bytes <= kvsync_store::MAX_DOCUMENT_BYTES, "{key}: {bytes}");
    }
    // Other keys replicate meanwhile.
    let other = Event::new(
        Key::parse("other").unwrap(),
        version(now + 100, "peer0"),
        kvsync_core::Op::Put(kvsync_core::Values::new(vec!["o".into()], 5).unwrap()),
    );
    c.broker
        .produce(c.topic(), "other", &other.encode())
        .await
        .unwrap();
    a.wait_for_values("other", Some(&["o"]), T).await.unwrap();
    // A peer that holds every one of those changes replaces the list: the merge is small
    // again, stored, and the node is ready.
    let at = version(now + 1_000, "peer0");
    all.replace(vec!["small".into()], &at, 3).unwrap();
    let shrink = Event::of_state(Key::parse("big").unwrap(), at, all);
    c.broker
        .produce(c.topic(), "big", &shrink.encode())
        .await
        .unwrap();
    a.wait_for_values("big", Some(&["small"]), T).await.unwrap();
    wait_readyz(&a, StatusCode::OK, None).await;
}
