//! A cluster that knows and heals itself, against real nodes, broker and MongoDB-protocol
//! servers: members and lag in `/api/cluster` and the metrics, writes that wait for their
//! replication, reads that wait for a version, anti-entropy repair of divergence made
//! behind the nodes' backs (in their databases and in their committed offsets), joins
//! from the peers' state, and tombstone collection that lets no delete be undone.

use std::time::{Duration, Instant};

use kvsync_core::{Event, Key, NodeId, Op, Timestamp, Values, Version};
use kvsync_testkit::{wait_until, Client, Cluster, ClusterOptions, Cut};
use mongodb::bson::{doc, Document};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

const T: Duration = Duration::from_secs(60);
/// The repair interval these tests run with.
const REPAIR_MS: u64 = 1000;

/// Three-node clusters on a small machine: one test at a time.
static SLOTS: Semaphore = Semaphore::const_new(1);

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn cluster(nodes: usize, extra: &[(&str, &str)]) -> Cluster {
    let mut settings = env(&[
        ("KVSYNC_HEARTBEAT_INTERVAL_MS", "200"),
        ("KVSYNC_PEER_AWAY_AFTER_MS", "3000"),
        ("KVSYNC_REPAIR_INTERVAL_MS", &REPAIR_MS.to_string()),
    ]);
    settings.extend(env(extra));
    Cluster::start(ClusterOptions {
        nodes,
        env: settings,
        ..Default::default()
    })
    .await
    .expect("cluster starts")
}

async fn pairs_of(c: &Cluster, i: usize) -> mongodb::Collection<Document> {
    mongodb::Client::with_uri_str(c.mongos[i].uri())
        .await
        .unwrap()
        .database("kvsync")
        .collection("pairs")
}

/// Waits until the document of `key` is gone from the databases of nodes `nodes`.
async fn wait_collected(c: &Cluster, nodes: &[usize], key: &str) {
    for &i in nodes {
        let pairs = pairs_of(c, i).await;
        wait_until(T, &format!("{key}'s tombstone to be collected"), || async {
            pairs.find_one(doc! { "_id": key }).await.unwrap().is_none()
        })
        .await
        .unwrap();
    }
}

async fn cluster_view(client: &Client) -> Value {
    client.get_json("/api/cluster").await.unwrap()
}

fn member<'a>(view: &'a Value, node: &str) -> Option<&'a Value> {
    view["members"]
        .as_array()?
        .iter()
        .find(|m| m["node"] == node)
}

async fn wait_member_status(client: &Client, node: &str, status: &str) {
    wait_until(T, &format!("{node} to be {status}"), || async {
        let view = cluster_view(client).await;
        member(&view, node).is_some_and(|m| m["status"] == status)
    })
    .await
    .unwrap();
}

async fn metric(client: &Client, series: &str) -> f64 {
    client.metric(series).await.unwrap().unwrap_or(0.0)
}

#[tokio::test]
async fn members_status_and_lag_show_in_api_cluster_and_metrics() {
    let _slot = SLOTS.acquire().await.unwrap();
    let c = cluster(3, &[]).await;
    let clients = c.clients();
    for client in &clients {
        for node in ["node1", "node2", "node3"] {
            wait_member_status(client, node, "live").await;
        }
    }
    clients[0].put("lag/a", &["1"]).await.unwrap();
    c.identical(T).await.unwrap();

    // Every pair of members has a lag entry, and it drains to zero once all applied.
    wait_until(T, "every lag to be zero", || async {
        let view = cluster_view(&clients[1]).await;
        let lags = view["lag"].as_array().cloned().unwrap_or_default();
        lags.len() == 6 && lags.iter().all(|l| l["events"] == 0 && l["ms"] == 0)
    })
    .await
    .unwrap();
    let view = cluster_view(&clients[1]).await;
    let me = member(&view, "node2").unwrap();
    assert_eq!(me["self"], true, "{view}");
    assert!(
        member(&view, "node1").unwrap()["clock_offset_ms"].is_i64(),
        "{view}"
    );
    assert_eq!(
        metric(&clients[0], "kvsync_peer_up{peer=\"node2\"}").await,
        1.0
    );
    assert_eq!(
        metric(&clients[0], "kvsync_peer_lag_events{peer=\"node3\"}").await,
        0.0
    );

    // A member that stops is shown away (never forgotten), and lagging behind the
    // writes made meanwhile; back, it is live and catches up.
    c.nodes[2].pause();
    wait_member_status(&clients[0], "node3", "away").await;
    assert_eq!(
        metric(&clients[0], "kvsync_peer_up{peer=\"node3\"}").await,
        0.0
    );
    for i in 0..5 {
        clients[0].put(&format!("lag/b{i}"), &["x"]).await.unwrap();
    }
    wait_until(T, "node1 to see node3 behind its writes", || async {
        let view = cluster_view(&clients[0]).await;
        view["lag"].as_array().unwrap().iter().any(|l| {
            l["origin"] == "node1" && l["applier"] == "node3" && l["events"].as_u64() >= Some(1)
        })
    })
    .await
    .unwrap();
    c.nodes[2].unpause();
    wait_member_status(&clients[0], "node3", "live").await;
    c.identical(T).await.unwrap();
}

#[tokio::test]
async fn a_write_can_wait_for_its_replication_and_a_read_for_a_version() {
    let _slot = SLOTS.acquire().await.unwrap();
    let c = cluster(3, &[]).await;
    let clients = c.clients();
    for node in ["node2", "node3"] {
        wait_member_status(&clients[0], node, "live").await;
    }

    // wait=all: answered once both peers applied it, so both already serve it.
    let resp = clients[0]
        .request(Method::PUT, &clients[0].pair_url("ryw/k"))
        .query(&[("wait", "all"), ("timeout_ms", "5000")])
        .json(&json!({ "values": ["v1"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["kvsync-replicated"], "all");
    let body: Value = resp.json().await.unwrap();
    let r = &body["replication"];
    assert_eq!(r["timed_out"], false, "{body}");
    let mut confirmed: Vec<&str> = r["confirmed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    confirmed.sort();
    assert_eq!(confirmed, ["node2", "node3"], "{body}");
    for peer in &clients[1..] {
        let got = peer
            .get("ryw/k")
            .await
            .unwrap()
            .expect("replicated before the answer");
        assert_eq!(got.values, ["v1"]);
    }

    // A read at another node for the version the write returned: held there already.
    let version = body["version"].as_str().unwrap().to_owned();
    let resp = clients[1]
        .request(Method::GET, &clients[1].pair_url("ryw/k"))
        .query(&[("min_version", version.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // A read for a version no node has made yet waits, then says so.
    let future = Version::new(
        Timestamp::new(u64::MAX / 4, 0),
        NodeId::parse("node1").unwrap(),
    )
    .to_string();
    let started = Instant::now();
    let resp = clients[1]
        .request(Method::GET, &clients[1].pair_url("ryw/k"))
        .query(&[("min_version", future.as_str()), ("timeout_ms", "300")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"], "version_not_here_yet", "{err}");

    // A read that waits is answered as soon as the write arrives.
    let reader = {
        let (peer, url) = (clients[2].clone(), clients[2].pair_url("ryw/later"));
        tokio::spawn(async move {
            // Any version of node1 later than the cluster's start will do.
            let min = Version::new(Timestamp::new(1, 0), NodeId::parse("node1").unwrap());
            peer.request(Method::GET, &url)
                .query(&[
                    ("min_version", min.to_string()),
                    ("timeout_ms", "8000".into()),
                ])
                .send()
                .await
                .unwrap()
        })
    };
    clients[0].put("ryw/later", &["soon"]).await.unwrap();
    let resp = reader.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // A stopped peer: wait=all ends at its timeout with the write done here and the
    // peer named as pending; wait=1 is satisfied by the peer still up.
    c.nodes[2].pause();
    let started = Instant::now();
    let resp = clients[0]
        .request(Method::PUT, &clients[0].pair_url("ryw/k2"))
        .query(&[("wait", "all"), ("timeout_ms", "1000")])
        .json(&json!({ "values": ["v2"] }))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["kvsync-replicated"], "partial");
    let body: Value = resp.json().await.unwrap();
    assert!(waited >= Duration::from_millis(1000), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(body["replication"]["timed_out"], true, "{body}");
    assert_eq!(body["replication"]["pending"], json!(["node3"]), "{body}");
    assert_eq!(body["replication"]["confirmed"], json!(["node2"]), "{body}");
    assert_eq!(
        clients[0].get("ryw/k2").await.unwrap().unwrap().values,
        ["v2"]
    );

    let resp = clients[0]
        .request(Method::DELETE, &clients[0].pair_url("ryw/k2"))
        .query(&[("wait", "1"), ("timeout_ms", "5000")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["kvsync-replicated"], "all");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["deleted"], true, "{body}");
    assert_eq!(body["replication"]["confirmed"], json!(["node2"]), "{body}");

    // Bad waits are refused before anything is written.
    // (`timeout_ms` alone is not one: with nothing to wait for, it is ignored.)
    for query in [
        "wait=none",
        "wait=0",
        "wait=all&timeout_ms=soon",
        "wait=all&timeout_ms=4294967296",
        "wiat=all",
    ] {
        let url = format!("{}?{query}", clients[0].pair_url("ryw/bad"));
        let resp = clients[0]
            .request(Method::PUT, &url)
            .json(&json!({ "values": ["x"] }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    assert!(clients[0].get("ryw/bad").await.unwrap().is_none());
    c.nodes[2].unpause();
    c.identical(T).await.unwrap();
}

/// Waits until every node holds the same pairs, and checks that repairs were counted.
async fn assert_repaired(c: &Cluster, what: &str) {
    let started = Instant::now();
    c.identical(T)
        .await
        .unwrap_or_else(|e| panic!("{what} was not repaired: {e}"));
    let mut repaired = 0.0;
    for client in c.clients() {
        repaired += metric(&client, "kvsync_repair_keys_total").await;
    }
    assert!(repaired >= 1.0, "{what}: no repair counted");
    eprintln!(
        "{what}: repaired in {} ms (repair interval {REPAIR_MS} ms)",
        started.elapsed().as_millis()
    );
}

/// A repair round compares summaries the node keeps up to date as it writes, not a read of
/// its whole database: on a database that serves one query at a time, that read held up
/// every write for seconds at 100,000 pairs, every round. The summaries must still agree
/// once writes are quiet, or the rounds would re-publish keys.
#[tokio::test]
async fn repair_rounds_do_not_read_the_whole_database_each_time() {
    let _slot = SLOTS.acquire().await.unwrap();
    let c = cluster(2, &[]).await;
    let clients = c.clients();
    for i in 0..40 {
        clients[i % 2]
            .put(&format!("idx/{i:02}"), &["v"])
            .await
            .unwrap();
    }
    clients[0].delete("idx/00").await.unwrap();
    c.identical(T).await.unwrap();
    let mut i = 0;
    wait_until(T, "eight repair rounds on each node", || {
        i += 1;
        let clients = clients.clone();
        async move {
            // Writes, appends and deletes between rounds.
            let client = &clients[i % 2];
            client
                .put(&format!("idx/w{}", i % 7), &[&format!("{i}")])
                .await
                .unwrap();
            if i % 3 == 0 {
                client.delete(&format!("idx/{:02}", i % 40)).await.unwrap();
            }
            let mut rounds = f64::MAX;
            for client in &clients {
                rounds = rounds.min(metric(client, "kvsync_repair_rounds_total").await);
            }
            rounds >= 8.0
        }
    })
    .await
    .unwrap();
    c.identical(T).await.unwrap();
    // Writes quiet, the summaries must agree: a key the index got wrong would be
    // re-published every round. (While writes go on, a key written on one node after its
    // caught-up point can be compared and sent once, harmlessly.)
    let mut repaired = Vec::new();
    let mut rounds = Vec::new();
    for client in &clients {
        repaired.push(metric(client, "kvsync_repair_keys_total").await);
        rounds.push(metric(client, "kvsync_repair_rounds_total").await);
    }
    wait_until(T, "four more repair rounds on each node", || async {
        let mut done = true;
        for (client, before) in clients.iter().zip(&rounds) {
            done &= metric(client, "kvsync_repair_rounds_total").await >= before + 4.0;
        }
        done
    })
    .await
    .unwrap();
    for (n, client) in clients.iter().enumerate() {
        let scans = metric(client, "kvsync_repair_scans_total").await;
        let rounds = metric(client, "kvsync_repair_rounds_total").await;
        assert!(
            scans <= 2.0,
            "node{}: {scans} reads of the whole database in {rounds} repair rounds",
            n + 1
        );
        assert_eq!(
            metric(client, "kvsync_repair_keys_total").await,
            repaired[n],
            "node{}: keys re-published once writes were quiet",
            n + 1
        );
    }
}

#[tokio::test]
async fn divergence_made_in_a_nodes_database_is_repaired() {
    let _slot = SLOTS.acquire().await.unwrap();
    // Changes made behind the nodes' backs are found by reading the database again.
    let c = cluster(3, &[("KVSYNC_REPAIR_RESCAN_INTERVAL_MS", "1000")]).await;
    let clients = c.clients();
    for i in 0..20 {
        clients[0]
            .put(&format!("ae/{i:02}"), &["a", "b"])
            .await
            .unwrap();
    }
    clients[0].put("ae/old", &["first"]).await.unwrap();
    c.identical(T).await.unwrap();
    let pairs = pairs_of(&c, 2).await;
    let old = pairs
        .find_one(doc! { "_id": "ae/old" })
        .await
        .unwrap()
        .unwrap();
    clients[0].put("ae/old", &["second"]).await.unwrap();
    clients[0].put("ae/gone", &["x"]).await.unwrap();
    clients[0].delete("ae/gone").await.unwrap();
    c.identical(T).await.unwrap();

    // A pair deleted by hand.
    pairs.delete_one(doc! { "_id": "ae/05" }).await.unwrap();
    assert!(clients[2].get("ae/05").await.unwrap().is_none());
    assert_repaired(&c, "a pair deleted in MongoDB").await;
    assert_eq!(
        clients[2].get("ae/05").await.unwrap().unwrap().values,
        ["a", "b"]
    );

    // A pair set back to an older version.
    pairs
        .replace_one(doc! { "_id": "ae/old" }, old)
        .await
        .unwrap();
    assert_eq!(
        clients[2].get("ae/old").await.unwrap().unwrap().values,
        ["first"]
    );
    assert_repaired(&c, "a pair set back to an older version").await;
    assert_eq!(
        clients[2].get("ae/old").await.unwrap().unwrap().values,
        ["second"]
    );

    // A pair altered: its values changed by hand (state and derived fields alike).
    let mut altered = pairs
        .find_one(doc! { "_id": "ae/07" })
        .await
        .unwrap()
        .unwrap();
    altered.insert("values", vec!["hacked"]);
    let state = altered.get_document_mut("state").unwrap();
    let els = state.get_array_mut("els").unwrap();
    els.truncate(1);
    altered.insert("fp", "0000000000000000");
    pairs
        .replace_one(doc! { "_id": "ae/07" }, altered)
        .await
        .unwrap();
    assert_repaired(&c, "a pair altered in MongoDB").await;

    // A tombstone removed by hand.
    pairs.delete_one(doc! { "_id": "ae/gone" }).await.unwrap();
    assert_repaired(&c, "a tombstone removed in MongoDB").await;
    let tomb = pairs
        .find_one(doc! { "_id": "ae/gone" })
        .await
        .unwrap()
        .expect("the tombstone is back");
    assert_eq!(tomb.get_bool("deleted").ok(), Some(true), "{tomb}");

    let view = cluster_view(&clients[0]).await;
    assert!(view["repair"]["rounds"].as_u64() >= Some(1), "{view}");
}

#[tokio::test]
async fn a_node_whose_offsets_were_moved_past_unapplied_events_is_repaired() {
    let _slot = SLOTS.acquire().await.unwrap();
    let mut c = cluster(3, &[]).await;
    let clients = c.clients();
    clients[0].put("off/before", &["1"]).await.unwrap();
    c.identical(T).await.unwrap();

    c.nodes[2].terminate(T).await.unwrap();
    for i in 0..30 {
        clients[i % 2]
            .put(&format!("off/{i:02}"), &["while away"])
            .await
            .unwrap();
    }
    clients[0].delete("off/before").await.unwrap();
    // Its group's offsets moved to the end: it will never read those events.
    let ends = c
        .broker
        .commit_end("kvsync-node3", c.topic())
        .await
        .unwrap();
    assert!(ends.iter().any(|(_, high)| *high > 0), "{ends:?}");
    c.nodes[2].restart().await.unwrap();
    c.nodes[2].wait_ready(T).await.unwrap();
    assert_repaired(&c, "events skipped by moved offsets").await;
    assert!(clients[2].get("off/before").await.unwrap().is_none());
    assert_eq!(
        clients[2].get("off/29").await.unwrap().unwrap().values,
        ["while away"]
    );
}

#[tokio::test]
async fn a_new_node_joins_from_its_peers_state_while_writes_go_on() {
    let _slot = SLOTS.acquire().await.unwrap();
    let mut c = cluster(2, &[]).await;
    let clients = c.clients();
    // History much longer than the state: 50 keys, each written 8 times.
    for round in 0..8 {
        for i in 0..50 {
            clients[round % 2]
                .put(&format!("join/{i:02}"), &[&format!("r{round}")])
                .await
                .unwrap();
        }
    }
    c.identical(T).await.unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, stop) = (clients[0].clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client.put(&format!("join/live{i}"), &["w"]).await.unwrap();
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            i
        })
    };
    let started = Instant::now();
    c.add_node().await.unwrap();
    let joined_in = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    let pairs = c.identical(T).await.unwrap();
    assert_eq!(pairs.len(), 50 + written, "every pair on every node");

    // It got the state, not the history: fewer applies than the topic holds.
    let newcomer = c.nodes[2].client();
    let applied = newcomer.counter("events_applied").await.unwrap();
    assert!(
        applied < 400,
        "applied {applied} events: the history (400+ events) was replayed"
    );
    let served = metric(&clients[0], "kvsync_snapshots_served_total").await
        + metric(&clients[1], "kvsync_snapshots_served_total").await;
    // One peer asked (another only if the first did not answer in time).
    assert!(served >= 1.0, "no peer served its state");
    eprintln!("joined from state in {} ms", joined_in.as_millis());
}

#[tokio::test]
async fn a_lone_new_node_with_no_peer_to_ask_replays_the_topic() {
    let _slot = SLOTS.acquire().await.unwrap();
    let mut c = cluster(1, &[]).await;
    let first = c.nodes[0].client();
    for i in 0..10 {
        first.put(&format!("lone/{i}"), &["v"]).await.unwrap();
    }
    c.nodes[0].terminate(T).await.unwrap();
    // The only member is gone: the newcomer has nobody to ask and replays.
    c.add_node().await.unwrap();
    let newcomer = c.nodes[1].client();
    wait_until(T, "the newcomer to replay every pair", || async {
        newcomer.keys().await.is_ok_and(|k| k.len() == 10)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn collected_tombstones_do_not_let_a_late_duplicate_bring_a_key_back() {
    let _slot = SLOTS.acquire().await.unwrap();
    let c = cluster(2, &[("KVSYNC_TOMBSTONE_HORIZON_MS", "3000")]).await;
    let clients = c.clients();
    let put = clients[0].put("gc/k", &["v"]).await.unwrap();
    clients[0].delete("gc/k").await.unwrap();
    c.identical(T).await.unwrap();

    // Past the horizon, with both members caught up, the tombstone goes everywhere.
    wait_collected(&c, &[0, 1], "gc/k").await;
    assert!(metric(&clients[1], "kvsync_tombstones_collected_total").await >= 1.0);

    // A late duplicate of the original write arrives: it must not resurrect the key.
    let version: Version = put.version.parse().unwrap();
    let key = Key::parse("gc/k").unwrap();
    let values = Values::new(vec!["v".into()], key.as_str().len()).unwrap();
    let stale = Event::new(key, version, Op::Put(values));
    c.broker
        .produce(c.topic(), "gc/k", &stale.encode())
        .await
        .unwrap();
    wait_until(T, "node2 to skip the stale duplicate", || async {
        metric(&clients[1], "kvsync_events_too_old_total").await >= 1.0
    })
    .await
    .unwrap();
    for client in &clients {
        assert!(client.get("gc/k").await.unwrap().is_none());
    }
    // And anti-entropy, still running, does not bring it back either.
    let rounds = metric(&clients[0], "kvsync_repair_rounds_total").await;
    wait_until(T, "two more repair rounds", || async {
        metric(&clients[0], "kvsync_repair_rounds_total").await >= rounds + 2.0
    })
    .await
    .unwrap();
    c.converged(T).await.unwrap();
    for client in &clients {
        assert!(client.get("gc/k").await.unwrap().is_none());
    }
}

#[tokio::test]
async fn a_member_away_longer_than_the_horizon_rejoins_from_state_and_brings_nothing_back() {
    let _slot = SLOTS.acquire().await.unwrap();
    const HORIZON: Duration = Duration::from_secs(4);
    let mut c = cluster(
        3,
        &[(
            "KVSYNC_TOMBSTONE_HORIZON_MS",
            &HORIZON.as_millis().to_string(),
        )],
    )
    .await;
    let clients = c.clients();
    clients[0].put("away/k", &["v"]).await.unwrap();
    clients[0].put("away/kept", &["v"]).await.unwrap();
    c.identical(T).await.unwrap();

    c.nodes[2].terminate(T).await.unwrap();
    let left = Instant::now();
    clients[0].delete("away/k").await.unwrap();
    // Once node3 has been away past the horizon, the others collect the tombstone.
    wait_collected(&c, &[0, 1], "away/k").await;
    assert!(left.elapsed() > HORIZON);
    // As if retention had removed the delete from the topic too: node3 will not read it.
    c.broker
        .commit_end("kvsync-node3", c.topic())
        .await
        .unwrap();

    // node3 still holds the key live. Back, it must not repair it back into its peers.
    c.nodes[2].restart().await.unwrap();
    c.nodes[2].wait_ready(T).await.unwrap();
    assert!(c.nodes[2]
        .log()
        .contains("away longer than the tombstone horizon"));
    let rounds = metric(&clients[2], "kvsync_repair_rounds_total").await;
    wait_until(T, "two repair rounds on node3", || async {
        metric(&clients[2], "kvsync_repair_rounds_total").await >= rounds + 2.0
    })
    .await
    .unwrap();
    let pairs = c.identical(T).await.unwrap();
    let keys: Vec<&str> = pairs.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["away/kept"]);
}

/// Heartbeats report progress as it happens only while a peer waits for a write's
/// replication. Replicating ordinary writes costs the broker no heartbeat per event
/// (each node used to send one for nearly every event it applied, doubling the broker's
/// requests), and a write that waits is still answered once its peer applied it, long
/// before the next periodic heartbeat.
#[tokio::test]
async fn heartbeats_follow_progress_only_while_a_peer_waits() {
    use futures::StreamExt;
    let _slot = SLOTS.acquire().await.unwrap();
    let c = cluster(
        2,
        &[
            ("KVSYNC_HEARTBEAT_INTERVAL_MS", "5000"),
            ("KVSYNC_PEER_AWAY_AFTER_MS", "20000"),
        ],
    )
    .await;
    let clients = c.clients();
    wait_member_status(&clients[0], "node2", "live").await;

    let before = metric(&clients[1], "kvsync_heartbeats_sent_total").await;
    let started = Instant::now();
    let written: Vec<_> = futures::stream::iter(0..300)
        .map(|i| {
            let client = clients[0].clone();
            async move { client.put(&format!("hb/{i:03}"), &["v"]).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(written.iter().all(Result::is_ok));
    c.converged(T).await.unwrap();
    let sent = metric(&clients[1], "kvsync_heartbeats_sent_total").await - before;
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        sent <= (seconds / 5.0).ceil() + 2.0,
        "node2 sent {sent} heartbeats while it applied 300 events in {seconds:.1} s"
    );

    for i in 0..3 {
        let started = Instant::now();
        let resp = clients[0]
            .request(Method::PUT, &clients[0].pair_url(&format!("hb/wait{i}")))
            .query(&[("wait", "all"), ("timeout_ms", "10000")])
            .json(&json!({ "values": ["w"] }))
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["replication"]["timed_out"], false, "{body}");
        assert!(
            took < Duration::from_millis(2500),
            "a waiting write took {took:?}, as long as the periodic heartbeat: {body}"
        );
    }
}

/// Keys a peer has not applied yet are replication's to carry, not repair's, however old
/// their states' versions: an import (or a restore) writes states stamped long ago, and
/// a peer catching up on them must not be sent every one of them a second time.
/// A change that waits in a node's outbox is on its way to the peers: repair leaves it to
/// the relay. After a 100,000-pair import, node 1 re-published thousands of keys its relay
/// had yet to send, to a peer that had applied all that was published, each key once more.
/// Here the key's mark is set by hand, so the relay will not send it before its next sweep
/// (10 minutes): node 2, which lacks the key, must not get it from a repair meanwhile.
#[tokio::test]
async fn changes_still_in_the_outbox_are_left_to_the_relay() {
    let _slot = SLOTS.acquire().await.unwrap();
    let c = cluster(2, &[("KVSYNC_REPAIR_RESCAN_INTERVAL_MS", "1000")]).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    a.put("box/held", &["v"]).await.unwrap();
    a.put("box/lost", &["v"]).await.unwrap();
    c.identical(T).await.unwrap();
    // Node 2 loses both; on node 1, one of them waits for publication.
    let theirs = pairs_of(&c, 1).await;
    theirs
        .delete_many(doc! { "_id": { "$in": ["box/held", "box/lost"] } })
        .await
        .unwrap();
    let ours = pairs_of(&c, 0).await;
    let held = ours
        .find_one(doc! { "_id": "box/held" })
        .await
        .unwrap()
        .unwrap();
    let ver = held.get_str("ver").unwrap().to_owned();
    ours.update_one(
        doc! { "_id": "box/held" },
        doc! { "$set": { "outbox": { "id": uuid::Uuid::new_v4().to_string(), "ver": ver } } },
    )
    .await
    .unwrap();
    // The other is repaired; meanwhile the held one was compared as well.
    b.wait_for_values("box/lost", Some(&["v"]), T)
        .await
        .unwrap();
    let rounds = metric(&a, "kvsync_repair_rounds_total").await;
    wait_until(T, "three more repair rounds", || async {
        metric(&a, "kvsync_repair_rounds_total").await >= rounds + 3.0
    })
    .await
    .unwrap();
    assert!(
        b.get("box/held").await.unwrap().is_none(),
        "a change waiting in node 1's outbox was sent by repair"
    );
}

#[tokio::test]
async fn a_peer_catching_up_on_an_import_is_left_to_replication() {
    let _slot = SLOTS.acquire().await.unwrap();
    let c = cluster(2, &[]).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    a.put("imp/first", &["x"]).await.unwrap();
    c.identical(T).await.unwrap();

    // A state last written a minute ago, as a backup holds it.
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 60_000;
    let ver = format!("{wall_ms:016x}-00000000-node1");
    let state = json!({
        "els": [{ "id": format!("{ver}.0"), "seq": 1, "gen": ver, "ver": ver, "value": "v" }],
        "base": ver,
        "written": ver,
    });
    // Node 2 falls behind: its database stops while node 1 takes the import.
    c.mongos[1].pause();
    for batch in 0..2 {
        let body: Vec<String> = (0..1000)
            .map(|i| json!({ "key": format!("imp/{batch}{i:03}"), "state": state }).to_string())
            .collect();
        let r = a
            .request(Method::POST, &a.url("/api/import"))
            .body(body.join("\n"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }
    c.mongos[1].unpause();
    let state = c.identical(T).await.unwrap();
    assert_eq!(state.len(), 2001);
    for client in [&a, &b] {
        assert_eq!(
            metric(client, "kvsync_repair_keys_total").await,
            0.0,
            "{} re-published keys its peer was still applying",
            client.base()
        );
    }
}

/// A change that waited in the outbox (the broker out of reach, or a relay draining a
/// large import) is published long after it was made. A peer's listing made before it
/// could apply it lacks it, though the peer had applied everything published until then:
/// repair must leave it to replication rather than send it a second time. (After a
/// 100,000-pair import, 1,355 keys were sent twice this way.)
#[tokio::test]
async fn a_change_published_late_is_left_to_replication() {
    let _slot = SLOTS.acquire().await.unwrap();
    let c = Cluster::start(ClusterOptions {
        nodes: 2,
        env: env(&[
            ("KVSYNC_HEARTBEAT_INTERVAL_MS", "200"),
            // Node 1 stays a live member while it is cut off.
            ("KVSYNC_PEER_AWAY_AFTER_MS", "20000"),
            ("KVSYNC_REPAIR_INTERVAL_MS", &REPAIR_MS.to_string()),
            // Node 2 goes on with its repair rounds while its database is stopped.
            ("KVSYNC_MONGODB_TIMEOUT_MS", "500"),
            ("KVSYNC_LOG", "info,kvsync_node::repair=debug"),
        ]),
        broker_proxy: true,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    a.put("late/warm", &["x"]).await.unwrap();
    c.identical(T).await.unwrap();
    // Both compare already (their key index is built).
    for client in [&a, &b] {
        wait_until(T, "a repair round", || async {
            metric(client, "kvsync_repair_rounds_total").await >= 1.0
        })
        .await
        .unwrap();
    }

    let proxy = c.broker.proxy().expect("broker behind a proxy");
    proxy.cut(c.nodes[0].pid().unwrap(), Cut::Blackhole);
    // Acknowledged; it waits in node 1's outbox.
    a.put("late/key", &["v"]).await.unwrap();
    // It ages past repair's allowance for the relay (2 s) before it is published.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Node 2 receives it but cannot store it: its listings lack it, while it had applied
    // everything published until just before.
    c.mongos[1].pause();
    proxy.heal();
    wait_until(T, "node 1 to publish the change", || async {
        metric(&a, "kvsync_outbox_backlog").await == 0.0
    })
    .await
    .unwrap();
    let listings = metric(&a, "kvsync_repair_listings_total").await;
    wait_until(
        T,
        "node 1 to compare three of node 2's listings",
        || async { metric(&a, "kvsync_repair_listings_total").await >= listings + 3.0 },
    )
    .await
    .unwrap();
    let repaired = metric(&a, "kvsync_repair_keys_total").await;
    c.mongos[1].unpause();
    b.wait_for_values("late/key", Some(&["v"]), T)
        .await
        .unwrap();
    c.identical(T).await.unwrap();
    assert_eq!(
        repaired, 0.0,
        "node 1 re-published a change that node 2 had received but not yet stored"
    );
}
