//! Concurrent writes on different nodes, through the API, over a real broker and real
//! MongoDB-protocol servers: no value is lost, every node ends with the same list, and
//! what a concurrent write did beat is recorded as a conflict (API, feed, metrics).
//!
//! Races come two ways: writes fired at the same moment on every node (what users do),
//! and writes made while the broker is paused (SIGSTOP), so that neither node can have
//! seen the other's write, whatever the timing.

use std::{future::Future, time::Duration};

use futures::StreamExt;
use kvsync_testkit::{wait_until, Client, Cluster, ClusterOptions, Pair};
use reqwest::Method;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

async fn cluster(nodes: usize) -> Cluster {
    Cluster::start(ClusterOptions {
        nodes,
        ..Default::default()
    })
    .await
    .expect("cluster starts")
}

/// The pair `key` as every node holds it once they agree.
async fn agreed(c: &Cluster, key: &str) -> Option<Pair> {
    let pairs = c.identical(T).await.expect("nodes converge");
    pairs.into_iter().find(|p| p.key == key)
}

/// Writes `key = values` on node 0 and waits until every node has it.
async fn seed(c: &Cluster, key: &str, values: &[&str]) -> Pair {
    c.nodes[0].client().put(key, values).await.unwrap();
    agreed(c, key).await.expect("seeded")
}

/// Runs `on_a` on node 0 and `on_b` on node 1 while neither can hear the other.
async fn partitioned<A, B>(c: &Cluster, on_a: A, on_b: B)
where
    A: Future<Output = ()>,
    B: Future<Output = ()>,
{
    c.broker.pause();
    on_a.await;
    on_b.await;
    c.broker.unpause();
}

async fn conflict_kinds(client: &Client, key: &str) -> Vec<String> {
    let conflicts = client.conflicts(key).await.unwrap();
    conflicts
        .iter()
        .map(|c| c["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The test the issue describes: both (or all three) nodes append to one key at the same
/// moment, round after round. Under last-writer-wins of whole lists, all but one append
/// of a round vanished.
async fn appends_racing(nodes: usize, rounds: usize) {
    let c = cluster(nodes).await;
    let clients = c.clients();
    for round in 0..rounds {
        let key = format!("race-{round}");
        let writes = clients.iter().enumerate().map(|(n, client)| {
            let value = format!("node{n}-round{round}");
            let key = key.clone();
            async move { client.append(&key, &value).await.unwrap() }
        });
        // Every append was acknowledged.
        futures::future::join_all(writes).await;
    }
    let pairs = c.identical(T).await.unwrap();
    let mut lost = Vec::new();
    for round in 0..rounds {
        let key = format!("race-{round}");
        let pair = pairs.iter().find(|p| p.key == key).expect("the key exists");
        for n in 0..nodes {
            let value = format!("node{n}-round{round}");
            if !pair.values.contains(&value) {
                lost.push(value);
            }
        }
        assert_eq!(pair.values.len(), nodes, "{key}: {:?}", pair.values);
    }
    assert!(lost.is_empty(), "values lost: {lost:?}");
}

#[tokio::test]
async fn appends_racing_on_two_nodes_lose_nothing() {
    appends_racing(2, 30).await;
}

#[tokio::test]
async fn appends_racing_on_three_nodes_lose_nothing() {
    appends_racing(3, 20).await;
}

#[tokio::test]
async fn an_append_racing_an_edit_or_removal_of_another_value_keeps_both() {
    let c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    let seeded = seed(&c, "k", &["x", "y", "z"]).await;
    let (y, z) = (seeded.id_of("y").unwrap(), seeded.id_of("z").unwrap());
    partitioned(
        &c,
        async { drop(a.append("k", "new").await.unwrap()) },
        async {
            b.edit("k", y, "y2").await.unwrap();
            b.remove_value("k", z).await.unwrap();
        },
    )
    .await;
    assert_eq!(agreed(&c, "k").await.unwrap().values, ["x", "y2", "new"]);
    assert!(conflict_kinds(&a, "k").await.is_empty());
}

#[tokio::test]
async fn edits_of_one_value_racing_pick_one_winner_and_record_the_other() {
    let c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    // node1 follows the feed: the conflict shows there too.
    let stream = a
        .request(Method::GET, &a.url("/api/events?prefix=k"))
        .send()
        .await
        .unwrap();
    let mut feed = stream.bytes_stream();
    let seeded = seed(&c, "k", &["x"]).await;
    let x = seeded.id_of("x").unwrap();
    partitioned(
        &c,
        async { drop(a.edit("k", x, "from node1").await.unwrap()) },
        async { drop(b.edit("k", x, "from node2").await.unwrap()) },
    )
    .await;
    let winner = agreed(&c, "k").await.unwrap();
    assert_eq!(winner.values.len(), 1);
    let won = winner.values[0].clone();
    let lost = if won == "from node1" {
        "from node2"
    } else {
        "from node1"
    };
    for client in [&a, &b] {
        wait_until(T, "the conflict to be recorded", || async {
            conflict_kinds(client, "k").await == ["edit"]
        })
        .await
        .unwrap();
        let conflict = &client.conflicts("k").await.unwrap()[0];
        assert_eq!(conflict["lost"], serde_json::json!([lost]));
        assert_eq!(conflict["won"], won.as_str());
        assert_eq!(conflict["element"], x);
        assert_eq!(
            client
                .metric("kvsync_conflicts_total{kind=\"edit\"}")
                .await
                .unwrap(),
            Some(1.0)
        );
    }
    // The loser is one click away: put it back in place; that replicates as usual.
    a.edit("k", x, lost).await.unwrap();
    assert_eq!(agreed(&c, "k").await.unwrap().values, [lost]);
    // The feed said so, with both values.
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + T;
    while !(text.contains("event: conflict") && text.contains(lost) && text.contains(&won)) {
        let chunk = tokio::time::timeout_at(deadline, feed.next())
            .await
            .expect("a conflict event on the feed")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Dismissed conflicts are gone from this node's record only.
    let dismissed = a
        .request(Method::DELETE, &format!("{}/conflicts", a.pair_url("k")))
        .send()
        .await
        .unwrap();
    assert_eq!(dismissed.status(), 204);
    assert!(a.conflicts("k").await.unwrap().is_empty());
    assert_eq!(b.conflicts("k").await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_edit_racing_a_removal_keeps_the_edited_value() {
    let c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    let seeded = seed(&c, "k", &["x", "y"]).await;
    let x = seeded.id_of("x").unwrap();
    partitioned(
        &c,
        async { drop(a.edit("k", x, "typed").await.unwrap()) },
        async { drop(b.remove_value("k", x).await.unwrap()) },
    )
    .await;
    assert_eq!(agreed(&c, "k").await.unwrap().values, ["typed", "y"]);
    for client in [&a, &b] {
        wait_until(T, "the conflict to be recorded", || async {
            conflict_kinds(client, "k").await == ["remove"]
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn puts_racing_keep_one_list_whole_and_record_the_other() {
    let c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    seed(&c, "k", &["old"]).await;
    partitioned(
        &c,
        async { drop(a.put("k", &["a1", "a2"]).await.unwrap()) },
        async { drop(b.put("k", &["b1", "b2", "b3"]).await.unwrap()) },
    )
    .await;
    let values = agreed(&c, "k").await.unwrap().values;
    assert!(
        values == ["a1", "a2"] || values == ["b1", "b2", "b3"],
        "one list, whole: {values:?}"
    );
    let lost: Vec<&str> = if values[0] == "a1" {
        vec!["b1", "b2", "b3"]
    } else {
        vec!["a1", "a2"]
    };
    for client in [&a, &b] {
        wait_until(T, "the conflict to be recorded", || async {
            conflict_kinds(client, "k").await == ["replace"]
        })
        .await
        .unwrap();
        assert_eq!(
            client.conflicts("k").await.unwrap()[0]["lost"],
            serde_json::json!(lost)
        );
    }
}

#[tokio::test]
async fn a_put_racing_an_append_keeps_the_append_after_the_list() {
    let c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    seed(&c, "k", &["old"]).await;
    partitioned(
        &c,
        async { drop(a.put("k", &["p1", "p2"]).await.unwrap()) },
        async { drop(b.append("k", "tail").await.unwrap()) },
    )
    .await;
    assert_eq!(agreed(&c, "k").await.unwrap().values, ["p1", "p2", "tail"]);
}

#[tokio::test]
async fn a_delete_racing_writes_keeps_what_was_written() {
    let c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    let seeded = seed(&c, "appended", &["x", "y"]).await;
    seed(&c, "replaced", &["x"]).await;
    seed(&c, "edited", &["x", "y"]).await;
    let edited = c.nodes[0].client().get("edited").await.unwrap().unwrap();
    let y = edited.id_of("y").unwrap().to_owned();
    drop(seeded);
    partitioned(
        &c,
        async {
            for k in ["appended", "replaced", "edited"] {
                assert!(a.delete(k).await.unwrap());
            }
        },
        async {
            b.append("appended", "z").await.unwrap();
            b.put("replaced", &["p"]).await.unwrap();
            b.edit("edited", &y, "y!").await.unwrap();
        },
    )
    .await;
    c.identical(T).await.unwrap();
    for (key, values, conflict) in [
        ("appended", vec!["z"], None),
        ("replaced", vec!["p"], Some("delete")),
        ("edited", vec!["y!"], Some("remove")),
    ] {
        let pair = agreed(&c, key).await.expect("the key stays");
        assert_eq!(pair.values, values, "{key}");
        if let Some(kind) = conflict {
            wait_until(T, "the conflict to be recorded", || async {
                conflict_kinds(&a, key).await == [kind]
            })
            .await
            .unwrap();
        }
    }
}

#[tokio::test]
async fn clear_racing_appends_keeps_the_appended_values_only() {
    let c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    for i in 0..20 {
        a.put(&format!("k{i:02}"), &["old"]).await.unwrap();
    }
    c.identical(T).await.unwrap();
    partitioned(
        &c,
        async { assert_eq!(a.clear().await.unwrap(), 20) },
        async {
            for i in (0..20).step_by(4) {
                b.append(&format!("k{i:02}"), "kept").await.unwrap();
            }
        },
    )
    .await;
    let pairs = c.identical(T).await.unwrap();
    let keys: Vec<&str> = pairs.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["k00", "k04", "k08", "k12", "k16"]);
    assert!(pairs.iter().all(|p| p.values == ["kept"]), "{pairs:?}");
}

#[tokio::test]
async fn value_level_writes_check_their_input_and_preconditions() {
    let c = cluster(1).await;
    let a = c.nodes[0].client();
    let pair = a.put("k", &["x", "y"]).await.unwrap();
    let x = pair.id_of("x").unwrap().to_owned();
    let send = |method: Method, url: String, body: Option<Value>, if_match: Option<String>| {
        let a = a.clone();
        async move {
            let mut req = a.request(method, &url);
            if let Some(b) = body {
                req = req.json(&b);
            }
            if let Some(m) = if_match {
                req = req.header("If-Match", m);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (
                status,
                body["error"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    let body = Some(serde_json::json!({ "value": "x2" }));
    let stale = Some(format!("\"{}\"", pair.etag));
    // A stale tag: 412, nothing written.
    a.append("k", "z").await.unwrap();
    assert_eq!(
        send(
            Method::PUT,
            a.value_url("k", &x),
            body.clone(),
            stale.clone()
        )
        .await,
        (412, "precondition_failed".into())
    );
    assert_eq!(
        send(Method::DELETE, a.value_url("k", &x), None, stale).await,
        (412, "precondition_failed".into())
    );
    for (method, url, body, want) in [
        (
            Method::PUT,
            a.value_url("k", "nonsense"),
            body.clone(),
            (400, "invalid_value_id"),
        ),
        (
            Method::DELETE,
            a.value_url("k", "0000019361a2b3c4-00000003-node1.0"),
            None,
            (404, "no_such_value"),
        ),
        (
            Method::PUT,
            a.value_url("missing", &x),
            body.clone(),
            (404, "not_found"),
        ),
        (
            Method::PUT,
            a.value_url("k", &x),
            Some(serde_json::json!({ "value": 1 })),
            (422, "invalid_body"),
        ),
        (
            Method::PUT,
            a.value_url("k", &x),
            Some(serde_json::json!({ "value": "x".repeat(70_000) })),
            (413, "too_large"),
        ),
    ] {
        assert_eq!(
            send(method, url, body, None).await,
            (want.0, want.1.to_owned())
        );
    }
    assert_eq!(a.get("k").await.unwrap().unwrap().values, ["x", "y", "z"]);
    // Edits keep the value's place; removing the last value keeps the key.
    let now = a.edit("k", &x, "x2").await.unwrap();
    assert_eq!(now.values, ["x2", "y", "z"]);
    for value in ["x2", "y", "z"] {
        let id = a
            .get("k")
            .await
            .unwrap()
            .unwrap()
            .id_of(value)
            .unwrap()
            .to_owned();
        a.remove_value("k", &id).await.unwrap();
    }
    let empty = a.get("k").await.unwrap().expect("the key stays");
    assert!(empty.values.is_empty() && empty.elements.is_empty());
}
