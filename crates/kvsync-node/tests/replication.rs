//! Replication between real nodes, over a real Kafka-protocol broker and real
//! MongoDB-protocol servers.

use std::time::Duration;

use futures::StreamExt;
use kvsync_testkit::{wait_until, Client, Cluster, ClusterOptions, Cut};
use reqwest::{Method, StatusCode};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

async fn cluster(nodes: usize) -> Cluster {
    Cluster::start(ClusterOptions {
        nodes,
        ..Default::default()
    })
    .await
    .expect("cluster starts")
}

/// Waits until `client` holds `key` with exactly `values` (None: absent).
async fn wait_for(client: &Client, key: &str, values: Option<&[&str]>) {
    client.wait_for_values(key, values, T).await.unwrap();
}

/// Identical live pairs (keys, values, versions, origins) and identical digests
/// (which also cover tombstones) on every node.
async fn assert_identical(c: &Cluster) {
    c.converged(T).await.unwrap();
    let clients = c.clients();
    let first = clients[0].list_all().await.unwrap();
    for other in &clients[1..] {
        assert_eq!(
            other.list_all().await.unwrap(),
            first,
            "{} differs",
            other.base()
        );
    }
}

#[tokio::test]
async fn every_kind_of_change_reaches_the_peer() {
    let c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());

    let created = a.put("colour", &["red"]).await.unwrap();
    assert_eq!(created.origin, "node1");
    wait_for(&b, "colour", Some(&["red"])).await;
    assert_eq!(
        b.get("colour").await.unwrap().unwrap(),
        created,
        "same version everywhere"
    );

    a.put("colour", &["green", "blue"]).await.unwrap();
    wait_for(&b, "colour", Some(&["green", "blue"])).await;

    // Changes flow both ways; an append builds on the replicated state.
    b.append("colour", "violet").await.unwrap();
    wait_for(&a, "colour", Some(&["green", "blue", "violet"])).await;

    a.append("new-by-append", "first").await.unwrap();
    wait_for(&b, "new-by-append", Some(&["first"])).await;

    assert!(b.delete("colour").await.unwrap());
    wait_for(&a, "colour", None).await;

    for k in ["x1", "x2", "x3"] {
        a.put(k, &[k]).await.unwrap();
    }
    wait_for(&b, "x3", Some(&["x3"])).await;
    assert_eq!(b.clear().await.unwrap(), 4);
    wait_until(T, "clear to replicate", || async {
        a.list_all().await.map(|l| l.is_empty()).unwrap_or(false)
    })
    .await
    .unwrap();
    assert_identical(&c).await;
}

#[tokio::test]
async fn the_origin_applies_nothing_twice_and_peers_apply_each_change_once() {
    let c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    for i in 0..20 {
        a.put(&format!("k{i}"), &["v"]).await.unwrap();
    }
    wait_until(T, "node1 to see its own 20 events come back", || async {
        a.counter("events_skipped_own").await.unwrap_or(0) == 20
    })
    .await
    .unwrap();
    wait_until(T, "node2 to apply 20 events", || async {
        b.counter("events_applied").await.unwrap_or(0) == 20
    })
    .await
    .unwrap();
    assert_eq!(a.counter("events_applied").await.unwrap(), 0);
    assert_eq!(a.counter("events_published").await.unwrap(), 20);
    assert_eq!(b.counter("events_skipped_own").await.unwrap(), 0);
    assert_identical(&c).await;
}

#[tokio::test]
async fn concurrent_conflicting_writes_converge() {
    let c = cluster(2).await;
    let clients = c.clients();
    let keys: Vec<String> = (0..10).map(|i| format!("contested-{i}")).collect();
    let writers = clients.iter().enumerate().map(|(n, client)| {
        let keys = keys.clone();
        let client = client.clone();
        async move {
            for round in 0..15 {
                for (i, k) in keys.iter().enumerate() {
                    let v = format!("node{n}-round{round}");
                    match (round + i + n) % 4 {
                        0 => client.delete(k).await.map(|_| ()),
                        1 => client.append(k, &v).await.map(|_| ()),
                        _ => client.put(k, &[&v]).await.map(|_| ()),
                    }
                    .unwrap();
                }
            }
        }
    });
    futures::future::join_all(writers).await;
    assert_identical(&c).await;
}

#[tokio::test]
async fn a_node_that_joins_later_catches_up_from_the_topic() {
    let mut c = cluster(2).await;
    let a = c.nodes[0].client();
    for i in 0..30 {
        a.put(&format!("early-{i:02}"), &["v", &i.to_string()])
            .await
            .unwrap();
    }
    // Tombstones must reach the newcomer too.
    a.delete("early-07").await.unwrap();
    c.nodes[1]
        .client()
        .put("from-node2", &["hi"])
        .await
        .unwrap();

    c.add_node().await.unwrap();
    let newcomer = c.nodes[2].client();
    wait_for(&newcomer, "from-node2", Some(&["hi"])).await;
    assert_identical(&c).await;
    let keys = newcomer.keys().await.unwrap();
    assert_eq!(keys.len(), 30, "live keys on every node: {keys:?}");
    assert_eq!(
        newcomer.digest().await.unwrap().0,
        31,
        "30 keys + 1 from node2, tombstone included"
    );
}

#[tokio::test]
async fn writes_made_while_the_broker_is_down_arrive_once_it_is_back() {
    let mut c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    a.put("before", &["outage"]).await.unwrap();
    wait_for(&b, "before", Some(&["outage"])).await;

    c.broker.kill();
    for i in 0..25 {
        // Acknowledged by node1 although nothing can be published right now.
        a.put(&format!("during-{i}"), &["outage"]).await.unwrap();
    }
    let backlog = a.node_info().await.unwrap()["outbox_backlog"]
        .as_u64()
        .unwrap();
    assert!(
        backlog > 0,
        "changes wait in the outbox while the broker is down"
    );

    c.broker.resume_service().await.unwrap();
    wait_for(&b, "during-24", Some(&["outage"])).await;
    assert_identical(&c).await;
    wait_until(T, "the outbox to drain", || async {
        a.node_info()
            .await
            .map(|i| i["outbox_backlog"] == 0)
            .unwrap_or(false)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn conditional_requests_and_status_codes() {
    let c = cluster(2).await;
    let a = c.nodes[0].client();
    let url = a.pair_url("cfg");

    let put = |body: serde_json::Value, header: Option<(&'static str, String)>| {
        let mut r = a.request(Method::PUT, &url).json(&body);
        if let Some((k, v)) = header {
            r = r.header(k, v);
        }
        r.send()
    };
    let r = put(
        json!({"values": ["1"]}),
        Some(("if-none-match", "*".into())),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let v1 = r.json::<serde_json::Value>().await.unwrap()["etag"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(etag, format!("\"{v1}\""));

    let r = put(
        json!({"values": ["x"]}),
        Some(("if-none-match", "*".into())),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);

    let r = put(json!({"values": ["2"]}), Some(("if-match", etag.clone())))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // The version we loaded is stale now: 412, and the body offers the current pair.
    let r = put(json!({"values": ["3"]}), Some(("if-match", etag.clone())))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "precondition_failed");
    assert_eq!(body["current"]["values"], json!(["2"]));

    let r = a
        .request(Method::DELETE, &url)
        .header("if-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(a.get("cfg").await.unwrap().unwrap().values, ["2"]);

    assert!(a.delete("cfg").await.unwrap());
    assert!(!a.delete("cfg").await.unwrap(), "second delete is a 404");
    let r = a.request(Method::GET, &url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "not_found"
    );
}

/// An ETag names the state, not only the version. Merging an older concurrent append
/// changes the values and keeps the version: a client that read before the merge must
/// get 412, not overwrite a value it never saw.
#[tokio::test]
async fn an_etag_read_before_a_concurrent_append_merged_in_no_longer_matches() {
    let c = Cluster::start(ClusterOptions {
        nodes: 2,
        broker_proxy: true,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    let proxy = c.broker.proxy().expect("broker behind a proxy");
    // node2 appends first, cut off from the broker: its change waits in its outbox.
    proxy.cut(c.nodes[1].pid().unwrap(), Cut::Blackhole);
    b.append("doc", "b").await.unwrap();
    // node1 writes the key later, not knowing of the append.
    a.put("doc", &["a"]).await.unwrap();
    let read = a
        .request(Method::GET, &a.pair_url("doc"))
        .send()
        .await
        .unwrap();
    let etag = read.headers()["etag"].to_str().unwrap().to_owned();
    let seen: serde_json::Value = read.json().await.unwrap();
    assert_eq!(seen["values"], json!(["a"]));
    assert_eq!(etag, format!("\"{}\"", seen["etag"].as_str().unwrap()));

    proxy.heal();
    wait_until(T, "node1 to merge node2's append", || async {
        a.get("doc")
            .await
            .ok()
            .flatten()
            .is_some_and(|p| p.values.iter().any(|v| v == "b"))
    })
    .await
    .unwrap();
    let merged = a.get("doc").await.unwrap().unwrap();
    // The case this test is about: same version, other values.
    assert_eq!(merged.version, seen["version"].as_str().unwrap());
    assert_ne!(format!("\"{}\"", merged.etag), etag);

    let put = |tag: String| {
        a.request(Method::PUT, &a.pair_url("doc"))
            .header("if-match", tag)
            .json(&json!({"values": ["a", "c"]}))
            .send()
    };
    let stale = put(etag).await.unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let body: serde_json::Value = stale.json().await.unwrap();
    assert!(
        body["current"]["values"].to_string().contains("\"b\""),
        "{body}"
    );
    // Nothing was written; with the tag of what it now shows, the write goes through.
    assert!(a
        .get("doc")
        .await
        .unwrap()
        .unwrap()
        .values
        .contains(&"b".to_owned()));
    let fresh = put(format!("\"{}\"", merged.etag)).await.unwrap();
    assert_eq!(fresh.status(), StatusCode::OK);
    wait_for(&b, "doc", Some(&["a", "c"])).await;
}

#[tokio::test]
async fn listing_is_sorted_filtered_and_paginated() {
    let c = cluster(1).await;
    let a = c.nodes[0].client();
    for k in ["b/2", "a/1", "b/1", "c", "b/3", "ä"] {
        a.put(k, &[k]).await.unwrap();
    }
    a.delete("b/3").await.unwrap();
    let page = |q: &'static str| {
        let a = a.clone();
        async move {
            let v = a.get_json(&format!("/api/pairs?{q}")).await.unwrap();
            let keys: Vec<String> = v["pairs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["key"].as_str().unwrap().to_owned())
                .collect();
            (keys, v["next"].clone())
        }
    };
    assert_eq!(
        page("").await,
        (
            vec![
                "a/1".into(),
                "b/1".into(),
                "b/2".into(),
                "c".into(),
                "ä".into()
            ],
            json!(null)
        )
    );
    assert_eq!(
        page("prefix=b%2F").await,
        (vec!["b/1".into(), "b/2".into()], json!(null))
    );
    assert_eq!(
        page("prefix=b%2F&limit=1").await,
        (vec!["b/1".into()], json!("b/1"))
    );
    assert_eq!(
        page("prefix=b%2F&limit=1&after=b%2F1").await,
        (vec!["b/2".into()], json!(null))
    );
    assert_eq!(
        page("limit=2&after=b%2F2").await,
        (vec!["c".into(), "ä".into()], json!(null))
    );

    // `count=true` adds the number of live pairs the prefix matches (whatever the page).
    let total = |q: &'static str| {
        let a = a.clone();
        async move { a.get_json(&format!("/api/pairs?{q}")).await.unwrap()["total"].clone() }
    };
    assert_eq!(total("count=true&limit=1").await, json!(5));
    assert_eq!(total("count=true&prefix=b%2F&limit=1").await, json!(2));
    assert_eq!(total("count=true&prefix=b").await, json!(2));
    assert_eq!(total("count=true&prefix=%C3%A4").await, json!(1));
    assert_eq!(total("count=true&prefix=zz").await, json!(0));
    assert_eq!(total("prefix=b").await, json!(null), "only when asked");
}

#[tokio::test]
async fn listing_searches_keys_and_shows_folders() {
    let c = cluster(1).await;
    let a = c.nodes[0].client();
    for k in [
        "app/User/1",
        "app/user/2",
        "app/cfg",
        "app/db/host",
        "app/db/port",
        "app/z/x/y",
        "logs:1",
        "other",
    ] {
        a.put(k, &[k]).await.unwrap();
    }
    a.delete("app/user/2").await.unwrap();
    a.put("app/user/3", &["x"]).await.unwrap();
    let get = |q: String| {
        let a = a.clone();
        async move { a.get_json(&format!("/api/pairs?{q}")).await.unwrap() }
    };
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["key"].as_str().unwrap().to_owned())
            .collect()
    };
    // Substring, with and without case; deleted keys are not found.
    let v = get("contains=user".into()).await;
    assert_eq!(keys(&v), ["app/user/3"]);
    assert_eq!(v["next"], json!(null));
    let v = get("contains=USER&ignore_case=true".into()).await;
    assert_eq!(keys(&v), ["app/User/1", "app/user/3"]);
    assert_eq!(v["pairs"][0]["values"], json!(["app/User/1"]));
    // Glob over the whole key, within a prefix.
    let v = get("glob=app%2F*%2F*&prefix=app%2F".into()).await;
    assert_eq!(
        keys(&v),
        [
            "app/User/1",
            "app/db/host",
            "app/db/port",
            "app/user/3",
            "app/z/x/y"
        ]
    );
    assert_eq!(keys(&get("glob=logs%3A%3F".into()).await), ["logs:1"]);
    // Parameters combine rather than refuse each other (the API document can state
    // each parameter's rules, not rules between them): both searches must match, a
    // count still counts the prefix, ignore_case alone changes nothing, and with a
    // delimiter the search narrows the keys outside folders.
    let v = get("contains=db&glob=*port&count=true".into()).await;
    assert_eq!(keys(&v), ["app/db/port"]);
    assert_eq!(v["total"], json!(8));
    assert_eq!(
        keys(&get("ignore_case=true&prefix=app%2Fd".into()).await),
        ["app/db/host", "app/db/port"]
    );
    let v = get("delimiter=%2F&prefix=app%2F&contains=zzz".into()).await;
    assert_eq!(keys(&v), Vec::<String>::new());
    assert_eq!(
        v["folders"],
        json!(["app/User/", "app/db/", "app/user/", "app/z/"])
    );
    // Paging a search: limit, then on from `next`.
    let v = get("contains=app&limit=2".into()).await;
    assert_eq!(keys(&v), ["app/User/1", "app/cfg"]);
    let next = v["next"].as_str().unwrap().to_owned();
    let v = get(format!("contains=app&limit=10&after={}", urlencode(&next))).await;
    assert_eq!(
        keys(&v),
        ["app/db/host", "app/db/port", "app/user/3", "app/z/x/y"]
    );
    assert_eq!(v["next"], json!(null));

    // Folders: the keys directly below the prefix, and one entry per folder.
    let v = get("delimiter=%2F&prefix=app%2F&count=true".into()).await;
    assert_eq!(keys(&v), ["app/cfg"]);
    assert_eq!(
        v["folders"],
        json!(["app/User/", "app/db/", "app/user/", "app/z/"])
    );
    assert_eq!(v["total"], json!(6));
    let v = get("delimiter=%2F".into()).await;
    assert_eq!(keys(&v), ["logs:1", "other"]);
    assert_eq!(v["folders"], json!(["app/"]));
    let v = get("delimiter=%3A".into()).await;
    assert_eq!(v["folders"], json!(["logs:"]));
    // A page that ends on a folder goes on past it.
    let v = get("delimiter=%2F&prefix=app%2F&limit=2".into()).await;
    assert_eq!(v["folders"], json!(["app/User/"]));
    assert_eq!(keys(&v), ["app/cfg"]);
    assert_eq!(v["next"], json!("app/cfg"));
    let v = get("delimiter=%2F&prefix=app%2F&limit=1&after=app%2FUser%2F".into()).await;
    assert_eq!(keys(&v), ["app/cfg"]);
    let v = get("delimiter=%2F&prefix=app%2F&limit=2&after=app%2Fcfg".into()).await;
    assert_eq!(v["folders"], json!(["app/db/", "app/user/"]));
    assert_eq!(v["next"], json!("app/user/"));
    let v = get("delimiter=%2F&prefix=app%2F&after=app%2Fuser%2F".into()).await;
    assert_eq!(v["folders"], json!(["app/z/"]));
    assert_eq!(v["next"], json!(null));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn the_event_stream_shows_local_and_replicated_changes() {
    let c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    let stream = b
        .request(Method::GET, &b.url("/api/events?prefix=watched"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut body = stream.bytes_stream();

    a.put("ignored", &["x"]).await.unwrap();
    a.put("watched-1", &["from a"]).await.unwrap();
    wait_for(&b, "watched-1", Some(&["from a"])).await;
    assert!(b.delete("watched-1").await.unwrap());

    let mut text = String::new();
    let complete = |t: &str| {
        t.contains("event: hello")
            && t.contains(r#""values":["from a"]"#)
            && t.contains(r#""deleted":true"#)
    };
    let deadline = tokio::time::Instant::now() + T;
    while !complete(&text) {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("timed out; stream so far: {text}"))
            .expect("stream open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!text.contains("ignored"), "prefix filter: {text}");
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully_and_a_restart_resumes() {
    let mut c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    a.put("k", &["1"]).await.unwrap();
    wait_for(&b, "k", Some(&["1"])).await;

    let code = c.nodes[1].terminate(Duration::from_secs(20)).await.unwrap();
    assert_eq!(code, Some(0), "{}", c.nodes[1].log_tail(20));
    a.put("k", &["2"]).await.unwrap();
    c.nodes[1].restart().await.unwrap();
    wait_for(&b, "k", Some(&["2"])).await;
    assert_identical(&c).await;
}
