//! Replication that never stalls or drifts silently: a node killed twice in quick
//! succession owns every partition again, a node cut off from the broker (blackhole or
//! reset) recovers without a restart, events from a peer with a far-off clock are held
//! (never dropped) and applied once the clocks agree, and a background task that dies
//! takes the node down instead of leaving it serving with replication dead.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use kvsync_testkit::{wait_until, Client, Cluster, ClusterOptions, Cut, Pair};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::{sync::Semaphore, task::JoinHandle};

const T: Duration = Duration::from_secs(60);

/// These tests start whole clusters and inject timing-sensitive faults: two at a time
/// on a small machine.
static SLOTS: Semaphore = Semaphore::const_new(2);

async fn start(options: ClusterOptions) -> Cluster {
    Cluster::start(options).await.expect("cluster starts")
}

/// Writes distinct keys on `client`, one at a time and about 20 per second, until
/// `stop`. A 503 (a refusal: `clock_skew`, or a database that is slow on a loaded
/// machine) is counted, not acknowledged, so not expected anywhere; `clock_skew` is
/// allowed only with `skew_allowed`, any other error fails the test. Returns the
/// acknowledged pairs and the number of refusals.
fn writer(
    client: Client,
    prefix: &str,
    stop: Arc<AtomicBool>,
    skew_allowed: bool,
) -> JoinHandle<(Vec<Pair>, usize)> {
    let prefix = prefix.to_owned();
    tokio::spawn(async move {
        let mut written = Vec::new();
        let mut refused = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let key = format!("{prefix}/{i:05}");
            i += 1;
            match client.put(&key, &[&key]).await {
                Ok(p) => written.push(p),
                Err(e) if e.to_string().contains("HTTP 503") => {
                    let skew = e.to_string().contains("clock_skew");
                    assert!(!skew || skew_allowed, "PUT {key} on {}: {e}", client.base());
                    refused += 1;
                }
                Err(e) => panic!("PUT {key} on {}: {e}", client.base()),
            }
        }
        (written, refused)
    })
}

/// Stops the writers; every pair they had acknowledged, and how many writes were refused.
async fn stop_writers(
    stop: &AtomicBool,
    writers: impl IntoIterator<Item = JoinHandle<(Vec<Pair>, usize)>>,
) -> (Vec<Pair>, usize) {
    stop.store(true, Ordering::Relaxed);
    let (mut written, mut refused) = (Vec::new(), 0);
    for w in writers {
        let (w, r) = w.await.unwrap();
        written.extend(w);
        refused += r;
    }
    (written, refused)
}

/// The acknowledged pairs that `client` does not hold as acknowledged or newer.
async fn missing(client: &Client, written: &[Pair]) -> Vec<String> {
    let held: HashMap<String, Pair> = client
        .list_all()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.key.clone(), p))
        .collect();
    written
        .iter()
        .filter(|p| held.get(&p.key).is_none_or(|h| h.version < p.version))
        .map(|p| p.key.clone())
        .collect()
}

/// Every node holds every acknowledged write, and all nodes are identical.
async fn assert_converged(c: &Cluster, written: &[Pair], timeout: Duration) {
    let clients = c.clients();
    let what = format!("every node to hold {} acknowledged writes", written.len());
    let held = wait_until(timeout, &what, || async {
        for client in &clients {
            if !missing(client, written).await.is_empty() {
                return false;
            }
        }
        true
    })
    .await;
    if let Err(e) = held {
        let mut report = String::new();
        for client in &clients {
            let m = missing(client, written).await;
            let info = client.node_info().await.ok();
            report += &format!(
                "\n{}: {} missing (e.g. {:?}); consumer: {}",
                client.base(),
                m.len(),
                m.first(),
                info.map(|i| i["consumer"].to_string()).unwrap_or_default()
            );
        }
        panic!("{e}{report}");
    }
    c.identical(timeout).await.expect("identical replicas");
}

async fn readyz(client: &Client) -> (StatusCode, Value) {
    let resp = reqwest::get(client.url("/readyz")).await.expect("readyz");
    (resp.status(), resp.json().await.unwrap_or_default())
}

/// Waits until `/readyz` of `client` answers 503 with a reason containing every word.
async fn wait_unready_because(client: &Client, words: &[&str], timeout: Duration) {
    let what = format!("{} to report {words:?} in /readyz", client.base());
    let r = wait_until(timeout, &what, || async {
        let (status, body) = readyz(client).await;
        let reasons = body["reasons"].to_string().to_lowercase();
        status == StatusCode::SERVICE_UNAVAILABLE && words.iter().all(|w| reasons.contains(w))
    })
    .await;
    if let Err(e) = r {
        panic!("{e}; last answer: {:?}", readyz(client).await);
    }
}

fn partitions(info: &Value) -> (u64, u64) {
    (
        info["consumer"]["owned_partitions"].as_u64().unwrap_or(0),
        info["consumer"]["topic_partitions"].as_u64().unwrap_or(0),
    )
}

/// Symptom 1: killed (-9) twice within seconds, a node used to come back with only
/// some of the topic's partitions, for good, while `/readyz` said 200.
#[tokio::test]
async fn a_node_killed_twice_in_quick_succession_owns_every_partition_and_converges() {
    let _slot = SLOTS.acquire().await.unwrap();
    let mut c = start(ClusterOptions {
        nodes: 3,
        ..Default::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = [
        writer(c.nodes[0].client(), "n1", stop.clone(), false),
        writer(c.nodes[2].client(), "n3", stop.clone(), false),
    ];

    tokio::time::sleep(Duration::from_secs(2)).await;
    c.nodes[1].kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.nodes[1].restart().await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    c.nodes[1].kill();
    c.nodes[1].restart().await.unwrap();
    let restarted = Instant::now();
    c.nodes[1].wait_ready(T).await.unwrap();
    let ready_after = restarted.elapsed();
    let b = c.nodes[1].client();
    let (owned, topic) = partitions(&b.node_info().await.unwrap());

    tokio::time::sleep(Duration::from_secs(3)).await;
    let (written, _) = stop_writers(&stop, writers).await;
    eprintln!(
        "node2 ready {ready_after:?} after its second restart, owning {owned} of {topic} \
         partitions; {} writes on its peers",
        written.len()
    );
    assert_eq!(
        (owned, topic),
        (3, 3),
        "node2 owns every partition when ready"
    );
    assert!(
        ready_after <= Duration::from_secs(3),
        "node2 was ready {ready_after:?} after a restart following kill -9 (at most 3 s)"
    );
    assert_converged(&c, &written, Duration::from_secs(30)).await;
    let (owned, topic) = partitions(&b.node_info().await.unwrap());
    assert_eq!((owned, topic), (3, 3));
}

/// Symptom 3: a node cut off from the broker for 20 s, with packets silently dropped
/// (blackhole) or connections reset, converges within 30 s of the network healing,
/// without a restart. Its own writes are acknowledged throughout, and `/readyz` says
/// that it cannot reach the broker while the cut lasts.
async fn cut_off_from_the_broker(how: Cut) {
    let _slot = SLOTS.acquire().await.unwrap();
    let c = start(ClusterOptions {
        nodes: 2,
        broker_proxy: true,
        ..Default::default()
    })
    .await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = [
        writer(a.clone(), "n1", stop.clone(), false),
        writer(b.clone(), "n2", stop.clone(), false),
    ];
    tokio::time::sleep(Duration::from_secs(1)).await;

    let proxy = c.broker.proxy().expect("broker behind a proxy");
    let pid = c.nodes[1].pid().expect("node2 runs");
    let cut_at = Instant::now();
    proxy.cut(pid, how);
    wait_unready_because(&b, &["kafka"], Duration::from_secs(20)).await;
    eprintln!("node2 reported the cut after {:?}", cut_at.elapsed());
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(cut_at.elapsed())).await;
    proxy.heal();
    let healed = Instant::now();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let (written, _) = stop_writers(&stop, writers).await;
    assert_converged(&c, &written, Duration::from_secs(30)).await;
    c.nodes[1]
        .wait_ready(Duration::from_secs(30))
        .await
        .unwrap();
    eprintln!(
        "{how:?}: {} writes, converged {:?} after healing",
        written.len(),
        healed.elapsed()
    );
    assert!(
        healed.elapsed() <= Duration::from_secs(32),
        "converged within 30 s of healing"
    );
}

#[tokio::test]
async fn a_node_blackholed_from_the_broker_recovers_without_a_restart() {
    cut_off_from_the_broker(Cut::Blackhole).await;
}

#[tokio::test]
async fn a_node_whose_broker_connections_are_reset_recovers() {
    cut_off_from_the_broker(Cut::Reset).await;
}

fn clock_of<'a>(info: &'a Value, peer: &str) -> &'a Value {
    &info["clock"]["peers"][peer]
}

/// Waits until `client` sees `peer`'s clock about `offset_ms` from its own.
async fn wait_sees_offset(client: &Client, peer: &str, offset_ms: i64) {
    let what = format!("{} to see {peer}'s clock {offset_ms} ms off", client.base());
    let r = wait_until(T, &what, || async {
        let Ok(info) = client.node_info().await else {
            return false;
        };
        clock_of(&info, peer)["offset_ms"]
            .as_i64()
            .is_some_and(|o| (o - offset_ms).abs() < 5_000)
    })
    .await;
    if let Err(e) = r {
        panic!("{e}; /api/node: {:?}", client.node_info().await);
    }
}

/// Symptom 2: one node of three with its clock far off (beyond the 5-minute skew
/// bound). Nothing acknowledged is lost: events stamped too far ahead are held, not
/// skipped; the node that is off knows it (two peers against one) and refuses writes;
/// the nodes holding events say so in `/readyz`; once the clock is set right every
/// replica converges by itself.
async fn far_skew(offset_ms: i64) {
    let _slot = SLOTS.acquire().await.unwrap();
    let c = start(ClusterOptions {
        nodes: 3,
        movable_clocks: true,
        ..Default::default()
    })
    .await;
    let clients = c.clients();
    let stop = Arc::new(AtomicBool::new(false));
    // The writes start before the clock moves, so some are stamped with the bad
    // clock before anyone can know it is bad.
    let writers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, cl)| writer(cl.clone(), &format!("n{}", i + 1), stop.clone(), true))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.clock(2).set(offset_ms).unwrap();

    for peer in [&clients[0], &clients[1]] {
        wait_sees_offset(peer, "node3", offset_ms).await;
    }
    wait_sees_offset(&clients[2], "node1", -offset_ms).await;
    wait_sees_offset(&clients[2], "node2", -offset_ms).await;
    let expected = if offset_ms > 0 { "ahead" } else { "behind" };
    wait_until(T, "node3 to know its clock is off", || async {
        let info = clients[2].node_info().await.unwrap_or_default();
        info["clock"]["status"] == expected
    })
    .await
    .unwrap();
    // node3 is the odd one out, and says so: no write is stamped with its clock.
    let resp = clients[2]
        .request(reqwest::Method::PUT, &clients[2].pair_url("refused"))
        .json(&serde_json::json!({"values": ["x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "clock_skew", "{body}");
    wait_unready_because(&clients[2], &["clock", expected], T).await;

    // The nodes holding events they cannot apply yet say so, naming the clock.
    if offset_ms > 0 {
        // node3's writes stamped before it knew (one heartbeat round at least, with a
        // write every 50 ms) are held by its peers.
        let real_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let stamped_ahead = clients[2]
            .list_all()
            .await
            .unwrap()
            .iter()
            .filter(|p| p.origin == "node3")
            .filter(|p| u64::from_str_radix(&p.version[..16], 16).unwrap() > real_now + 300_000)
            .count();
        eprintln!("node3 acknowledged {stamped_ahead} writes stamped ahead before it knew");
        if stamped_ahead > 0 {
            wait_unready_because(&clients[0], &["clock", "node3"], T).await;
        }
    } else {
        // node3 holds its peers' events (they keep writing).
        wait_until(T, "node3 to hold node1's events", || async {
            let info = clients[2].node_info().await.unwrap_or_default();
            info["clock"]["held"]["node1"]["events"].as_u64() > Some(0)
        })
        .await
        .unwrap();
        wait_unready_because(&clients[2], &["holding", "node1"], T).await;
    }
    assert!(clients[0]
        .metrics()
        .await
        .unwrap()
        .contains("kvsync_clock_offset_seconds{peer=\"node3\"}"));

    c.clock(2).set(0).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (written, refused) = stop_writers(&stop, writers).await;
    eprintln!(
        "clock {offset_ms:+} ms: {} writes acknowledged, {refused} refused",
        written.len()
    );
    assert_converged(&c, &written, T).await;
    for cl in &clients {
        wait_until(T, "every node ready", || cl.ready())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_node_with_its_clock_10_minutes_ahead_loses_nothing_and_heals() {
    far_skew(600_000).await;
}

#[tokio::test]
async fn a_node_with_its_clock_10_minutes_behind_loses_nothing_and_heals() {
    far_skew(-600_000).await;
}

/// Within the skew bound (2 minutes either way) everything converges while the clocks
/// differ, the peers report the difference, and a write made after seeing a newer
/// version wins everywhere (hybrid logical clock).
#[tokio::test]
async fn clocks_two_minutes_apart_converge_and_keep_causal_order() {
    let _slot = SLOTS.acquire().await.unwrap();
    let c = start(ClusterOptions {
        nodes: 3,
        movable_clocks: true,
        ..Default::default()
    })
    .await;
    let clients = c.clients();
    for offset in [120_000i64, -120_000] {
        c.clock(2).set(offset).unwrap();
        wait_sees_offset(&clients[0], "node3", offset).await;
        let key = format!("causal{offset}");
        // node3 writes first; node1 overwrites after it has seen node3's version.
        let first = clients[2].put(&key, &["from node3"]).await.unwrap();
        wait_until(T, "node1 to see node3's write", || async {
            clients[0].get(&key).await.ok().flatten().as_ref() == Some(&first)
        })
        .await
        .unwrap();
        let second = clients[0].put(&key, &["from node1"]).await.unwrap();
        let other = clients[1]
            .put(&format!("plain{offset}"), &["x"])
            .await
            .unwrap();
        assert_converged(&c, &[second.clone(), other], T).await;
        for cl in &clients {
            let held = cl.get(&key).await.unwrap().unwrap();
            assert_eq!(held.values, ["from node1"], "{}", cl.base());
            // A clock stepped while the node runs can stall its Kafka client for a
            // moment (librdkafka times some waits on the wall clock): it must heal.
            if let Err(e) = wait_until(T, "every node ready", || cl.ready()).await {
                panic!("{e}: {:?}", readyz(cl).await);
            }
        }
    }
}

/// Finding 4: a background task that ends or panics must not leave the node serving
/// with replication dead. A debug-build-only fault hook (`KVSYNC_TEST_FAULT`, compiled
/// out of release builds) makes the replicator or the relay panic on one key.
async fn dying_task(point: &str) {
    let _slot = SLOTS.acquire().await.unwrap();
    let mut c = start(ClusterOptions::default()).await;
    // The faulty node: node2 applies (replicator), node1 publishes (relay).
    let (faulty, writer) = if point == "apply" { (1, 0) } else { (0, 0) };
    let fault = format!("{point}:poison");
    c.nodes[faulty]
        .reconfigure(|s| s.env.push(("KVSYNC_TEST_FAULT".into(), fault)))
        .await
        .unwrap();
    c.nodes[faulty].wait_ready(T).await.unwrap();
    let written = c.nodes[writer]
        .client()
        .put("poison", &["x"])
        .await
        .unwrap();

    let exited = wait_until(T, "the faulty node to exit", || {
        let status = c.nodes[faulty].exit_status();
        async move { status.is_some() }
    })
    .await;
    if let Err(e) = exited {
        panic!(
            "{e}: it went on serving with its {point} task dead; log:\n{}",
            c.nodes[faulty].log_tail(30)
        );
    }
    let status = c.nodes[faulty].exit_status().unwrap();
    assert_ne!(status, Some(0), "a node whose task died exits non-zero");
    assert!(
        c.nodes[faulty].log().contains("poison"),
        "the log says which task died and why"
    );

    // Restarted without the fault (as a supervisor would, once fixed), nothing is lost.
    c.nodes[faulty]
        .reconfigure(|s| s.env.retain(|(k, _)| k != "KVSYNC_TEST_FAULT"))
        .await
        .unwrap();
    assert_converged(&c, &[written], T).await;
}

#[tokio::test]
async fn a_replicator_that_panics_takes_the_node_down() {
    dying_task("apply").await;
}

#[tokio::test]
async fn a_relay_that_panics_takes_the_node_down() {
    dying_task("publish").await;
}

/// The shutdown timeout bounds the HTTP drain too: a request stuck on a hung database
/// does not hold the node up past it.
#[tokio::test]
async fn shutdown_is_bounded_by_its_timeout_even_with_a_request_stuck() {
    let _slot = SLOTS.acquire().await.unwrap();
    let mut c = start(ClusterOptions {
        nodes: 1,
        env: vec![
            ("KVSYNC_SHUTDOWN_TIMEOUT_MS".into(), "1000".into()),
            // Long enough that only the shutdown bound can end the stuck request.
            ("KVSYNC_MONGODB_TIMEOUT_MS".into(), "60000".into()),
            ("KVSYNC_REQUEST_TIMEOUT_MS".into(), "60000".into()),
        ],
        ..Default::default()
    })
    .await;
    let client = c.nodes[0].client();
    client.put("k", &["v"]).await.unwrap();
    c.mongos[0].pause();
    let stuck = tokio::spawn({
        let client = client.clone();
        async move { client.list_all().await }
    });
    // The request has reached the node and waits on the database.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !stuck.is_finished(),
        "the request waits on the hung database"
    );
    let asked = Instant::now();
    let code = c.nodes[0].terminate(Duration::from_secs(30)).await;
    let took = asked.elapsed();
    c.mongos[0].unpause();
    eprintln!("stopped {took:?} after SIGTERM with a request stuck: {code:?}");
    assert!(code.is_ok(), "exited by itself: {code:?}");
    // One bound for the HTTP drain, one for the consumer and relay, and slack.
    assert!(
        took < Duration::from_secs(6),
        "shutdown took {took:?} with a 1 s shutdown timeout"
    );
}

/// A node that joined while a peer held an event stamped ahead (a clock 10 minutes
/// ahead) took that peer's state, which lacked the event, and started reading the
/// topic after it: it lacked the event long after the clock was set right. A peer now
/// publishes its state for a joiner only once it holds nothing back.
#[tokio::test]
async fn a_node_joining_while_a_peer_holds_events_stamped_ahead_gets_them() {
    let _slot = SLOTS.acquire().await.unwrap();
    let mut c = start(ClusterOptions {
        nodes: 2,
        movable_clocks: true,
        // Repair would close the gap in time; this is about the join itself.
        env: vec![("KVSYNC_REPAIR_INTERVAL_MS".into(), "600000".into())],
        ..Default::default()
    })
    .await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    a.put("before", &["x"]).await.unwrap();
    c.identical(T).await.unwrap();
    c.clock(1).set(600_000).unwrap();
    wait_sees_offset(&a, "node2", 600_000).await;
    b.put("probe/n2", &["stamped ahead"]).await.unwrap();
    wait_until(T, "node1 to hold node2's event", || async {
        let info = a.node_info().await.unwrap_or_default();
        info["clock"]["held"]["node2"]["events"].as_u64() > Some(0)
    })
    .await
    .unwrap();

    // node3 is new: it joins from a peer's state (node1, the first live peer, is asked),
    // and says so until it has it.
    c.start_node(&[]).await.unwrap();
    let joiner = c.nodes[2].client();
    wait_until(T, "node3 to join, or to say it is joining", || async {
        let (_, body) = readyz(&joiner).await;
        body["reasons"].to_string().contains("joining")
            || joiner.get("before").await.ok().flatten().is_some()
    })
    .await
    .unwrap();

    c.clock(1).set(0).unwrap();
    let fixed = Instant::now();
    // The state it joins from has it (no repair round runs meanwhile).
    joiner
        .wait_for_values("probe/n2", Some(&["stamped ahead"]), T)
        .await
        .unwrap();
    eprintln!(
        "node3 held node2's event {:?} after the clock was set right",
        fixed.elapsed()
    );
    c.identical(T).await.unwrap();
}
