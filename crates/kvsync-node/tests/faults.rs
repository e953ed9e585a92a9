//! Faults injected into real processes: the broker, a node or a node's MongoDB-protocol
//! server killed (SIGKILL) or hung (SIGSTOP) mid-flight, concurrent conflicting writers,
//! and poison records written straight onto the topic. Every test ends by comparing the
//! full state of every node.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::{stream, StreamExt};
use kvsync_core::{event::MAX_EVENT_BYTES, Event, Key, NodeId, Op, Timestamp, Values, Version};
use kvsync_testkit::{test_seed, wait_until, Client, Cluster, ClusterOptions, Pair, Rng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

async fn cluster(nodes: usize) -> Cluster {
    Cluster::start(ClusterOptions {
        nodes,
        ..Default::default()
    })
    .await
    .expect("cluster starts")
}

/// Identical keys, values, versions and origins on every node, and equal digests
/// (tombstones included). Returns the pairs.
async fn assert_identical(c: &Cluster) -> Vec<Pair> {
    c.identical(T).await.unwrap()
}

/// Puts `[key]` under every key, `concurrency` requests at a time; every write must be
/// acknowledged (2xx). Returns the acknowledged pairs.
async fn put_all(client: &Client, keys: Vec<String>, concurrency: usize) -> Vec<Pair> {
    stream::iter(keys)
        .map(|k| async move {
            client
                .put(&k, &[&k])
                .await
                .unwrap_or_else(|e| panic!("PUT {k} on {}: {e}", client.base()))
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}/{i:04}")).collect()
}

/// The acknowledged pairs that `client` does not hold exactly as acknowledged.
async fn not_held<'a>(client: &Client, written: &'a [Pair]) -> anyhow::Result<Vec<&'a Pair>> {
    let held: HashMap<String, Pair> = client
        .list_all()
        .await?
        .into_iter()
        .map(|p| (p.key.clone(), p))
        .collect();
    Ok(written
        .iter()
        .filter(|p| held.get(&p.key) != Some(p))
        .collect())
}

/// Waits until `client` holds every acknowledged pair with its acknowledged version.
async fn wait_holds(client: &Client, written: &[Pair]) {
    let what = format!(
        "{} to hold {} acknowledged writes",
        client.base(),
        written.len()
    );
    let held = wait_until(T, &what, || async {
        matches!(not_held(client, written).await, Ok(v) if v.is_empty())
    })
    .await;
    if let Err(e) = held {
        let missing = not_held(client, written).await;
        let sample = missing.map(|m| format!("{} missing, e.g. {:?}", m.len(), m.first()));
        panic!("{e}; {sample:?}");
    }
}

/// Waits until node `i` is ready; on failure shows its log.
async fn wait_ready(c: &Cluster, i: usize) {
    if let Err(e) = c.nodes[i].wait_ready(T).await {
        panic!("{e}; log:\n{}", c.nodes[i].log_tail(60));
    }
}

async fn outbox_backlog(client: &Client) -> Option<u64> {
    client.node_info().await.ok()?["outbox_backlog"].as_u64()
}

async fn wait_outbox_drained(client: &Client) {
    wait_until(
        T,
        &format!("{} to drain its outbox", client.base()),
        || async { outbox_backlog(client).await == Some(0) },
    )
    .await
    .unwrap();
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// The wall-clock part of a version (`<16 hex>-<8 hex>-<node>`).
fn wall_ms(version: &str) -> u64 {
    u64::from_str_radix(&version[..16], 16).expect("hex wall clock")
}

/// Scenario 1: writes acknowledged while the broker is down (killed, or hung) all reach
/// the peer once it is back, each applied exactly once.
async fn broker_outage(kill: bool) {
    let mut c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    let before = put_all(&a, vec!["before".into()], 1).await;
    wait_holds(&b, &before).await;
    wait_outbox_drained(&a).await;

    if kill {
        c.broker.kill();
    } else {
        c.broker.pause();
    }
    let written = put_all(&a, keys("outage", 500), 8).await;
    assert_eq!(
        outbox_backlog(&a).await,
        Some(500),
        "every change waits in the outbox while the broker is unreachable"
    );
    if kill {
        c.broker.resume_service().await.unwrap();
    } else {
        c.broker.unpause();
    }

    wait_holds(&b, &written).await;
    assert_identical(&c).await;
    wait_outbox_drained(&a).await;
    // A republished duplicate is skipped as stale; only one version per key is applied.
    assert_eq!(
        b.counter("events_applied").await.unwrap(),
        501,
        "node2 applied each change once"
    );
    let duplicates = b.counter("events_skipped_stale").await.unwrap();
    eprintln!("node2 skipped {duplicates} duplicate deliveries");
    assert_eq!(b.counter("events_rejected").await.unwrap(), 0);
    assert_identical(&c).await;
}

#[tokio::test]
async fn writes_during_a_broker_kill_are_acknowledged_and_applied_once() {
    broker_outage(true).await;
}

#[tokio::test]
async fn writes_during_a_broker_hang_are_acknowledged_and_applied_once() {
    broker_outage(false).await;
}

/// Scenario 2: a peer killed in the middle of a write stream catches up after a restart.
#[tokio::test]
async fn a_peer_killed_mid_stream_catches_up_after_restart() {
    let mut c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    let acked = Arc::new(AtomicUsize::new(0));
    let stream = tokio::spawn({
        let (a, acked) = (a.clone(), acked.clone());
        async move {
            stream::iter(keys("stream", 2000))
                .map(|k| {
                    let (a, acked) = (&a, &acked);
                    async move {
                        let p = a.put(&k, &[&k]).await.unwrap();
                        acked.fetch_add(1, Ordering::Relaxed);
                        p
                    }
                })
                .buffer_unordered(4)
                .collect::<Vec<Pair>>()
                .await
        }
    });
    let reached = |n: usize| {
        let acked = acked.clone();
        move || {
            let done = acked.load(Ordering::Relaxed) >= n;
            async move { done }
        }
    };
    wait_until(T, "700 writes", reached(700)).await.unwrap();
    c.nodes[1].kill();
    let at_kill = acked.load(Ordering::Relaxed);
    wait_until(T, "1400 writes", reached(1400)).await.unwrap();
    c.nodes[1].restart().await.unwrap();
    let at_restart = acked.load(Ordering::Relaxed);
    let written = stream.await.unwrap();
    assert!(
        at_kill < 2000,
        "node2 was killed mid-stream (after {at_kill} writes)"
    );
    eprintln!("node2 killed after {at_kill} writes, restarted after {at_restart}");

    wait_ready(&c, 1).await;
    wait_holds(&b, &written).await;
    let state = assert_identical(&c).await;
    assert_eq!(state.len(), 2000);
}

/// Scenario 3: node1 is killed right after a burst of acknowledged writes, before it
/// can have published them all; at start-up its relay publishes what the outbox holds.
#[tokio::test]
async fn acknowledged_writes_survive_a_crash_before_publication() {
    let mut c = cluster(2).await;
    let b = c.nodes[1].client();
    let outbox = kvsync_store::Store::connect(
        &c.mongos[0].uri(),
        // The node's default database name.
        "kvsync",
        Duration::from_secs(5),
    )
    .await
    .unwrap();

    // First as it comes: 300 concurrent writes, killed the moment all are acknowledged.
    let a = c.nodes[0].client();
    let mut written = put_all(&a, keys("burst", 300), 300).await;
    c.nodes[0].kill();
    let left = outbox.count_pending().await.unwrap();
    eprintln!("killed with {left} of 300 changes unpublished");
    c.nodes[0].restart().await.unwrap();
    wait_ready(&c, 0).await;
    wait_holds(&b, &written).await;
    wait_outbox_drained(&a).await;

    // Then for certain: the broker hangs during the burst, so nothing can have been
    // published when node1 dies.
    c.broker.pause();
    let burst = put_all(&a, keys("unpublished", 300), 300).await;
    c.nodes[0].kill();
    assert_eq!(
        outbox.count_pending().await.unwrap(),
        300,
        "every change still marked at the crash"
    );
    c.broker.unpause();
    c.nodes[0].restart().await.unwrap();
    written.extend(burst);
    wait_holds(&b, &written).await;
    wait_ready(&c, 0).await;
    wait_outbox_drained(&a).await;
    let state = assert_identical(&c).await;
    assert_eq!(state.len(), 600);
}

/// Scenario 4: node2's database goes away (killed, or hung). Node2 says so (503 with a
/// JSON reason, not ready), node1 keeps taking writes, and node2's consumer retries the
/// same events instead of skipping them until the database is back.
async fn database_outage(kill: bool) {
    let mut c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    let before = put_all(&a, vec!["before".into()], 1).await;
    wait_holds(&b, &before).await;

    if kill {
        c.mongos[1].kill();
    } else {
        c.mongos[1].pause();
    }
    let writes = put_all(&a, keys("meanwhile", 300), 8);
    let answers = async {
        let requests = [
            // First, while idle connections to the hung server are pooled: the server
            // then applies this write when it wakes up, after the 503.
            b.request(Method::PUT, &b.pair_url("before"))
                .json(&json!({"values": ["late"]})),
            b.request(Method::GET, &b.pair_url("before")),
            b.request(Method::GET, &b.url("/api/pairs")),
            b.request(Method::PUT, &b.pair_url("refused"))
                .json(&json!({"values": ["x"]})),
            b.request(Method::DELETE, &b.pair_url("before")),
        ];
        for request in requests {
            let started = Instant::now();
            let r = request.send().await.unwrap();
            let (status, took) = (r.status(), started.elapsed());
            let body: Value = r.json().await.unwrap();
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert_eq!(body["error"], "database_unavailable", "{body}");
            assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
            // KVSYNC_MONGODB_TIMEOUT_MS is 2 s by default; the rest is slack.
            assert!(took < Duration::from_secs(5), "answered after {took:?}");
        }
        let r = reqwest::get(b.url("/readyz")).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = r.json().await.unwrap();
        let reasons = body["reasons"].as_array().expect("reasons");
        assert!(
            reasons
                .iter()
                .any(|r| r.as_str().is_some_and(|r| r.contains("mongodb"))),
            "{body}"
        );
    };
    let (written, ()) = tokio::join!(writes, answers);
    // The events reached node2 while its database was away, and were retried.
    wait_until(T, "node2 to retry an event", || async {
        c.nodes[1]
            .log_tail(400)
            .contains("applying event failed; retrying")
    })
    .await
    .unwrap();

    if kill {
        c.mongos[1].resume_service().await.unwrap();
    } else {
        c.mongos[1].unpause();
    }
    wait_ready(&c, 1).await;
    wait_holds(&b, &written).await;
    let state = assert_identical(&c).await;
    assert_eq!(
        state.len(),
        301,
        "the refused PUT of a new key wrote nothing"
    );
    let late = state.iter().find(|p| p.key == "before").unwrap();
    if kill {
        assert_eq!(late, &before[0], "a refused write changed nothing");
    } else {
        eprintln!("\"before\" after the hang: {:?}", late.values);
    }
    assert_eq!(b.counter("events_rejected").await.unwrap(), 0);
}

#[tokio::test]
async fn a_peer_outlives_its_database_being_killed() {
    database_outage(true).await;
}

#[tokio::test]
async fn a_peer_outlives_its_database_hanging() {
    database_outage(false).await;
}

/// Scenario 5: three nodes write the same 50 keys at once (puts, appends, deletes) for
/// `KVSYNC_TEST_CONFLICT_SECS` (default 20); they end identical.
#[tokio::test]
async fn three_nodes_writing_the_same_keys_converge() {
    let secs: u64 = std::env::var("KVSYNC_TEST_CONFLICT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed = test_seed();
    eprintln!("conflicts for {secs} s, KVSYNC_TEST_SEED={seed}");
    let c = cluster(3).await;
    let keys: Arc<Vec<String>> = Arc::new((0..50).map(|i| format!("contested/{i:02}")).collect());
    let until = Instant::now() + Duration::from_secs(secs);
    // Two writers per node.
    let writers = c.clients().into_iter().enumerate().flat_map(|(n, client)| {
        let keys = keys.clone();
        (0..2).map(move |w| {
            let (client, keys) = (client.clone(), keys.clone());
            let mut rng = Rng::new(seed, (n * 2 + w) as u64);
            tokio::spawn(async move {
                let mut counts = [0u64; 3];
                let mut i = 0u64;
                while Instant::now() < until {
                    let key = &keys[rng.below(keys.len() as u64) as usize];
                    let value = format!("n{n}w{w}-{i}");
                    let op = rng.below(10);
                    let url = match op {
                        0..=1 => client.pair_url(key),
                        2..=5 => format!("{}/values", client.pair_url(key)),
                        _ => client.pair_url(key),
                    };
                    let request = match op {
                        0..=1 => client.request(Method::DELETE, &url),
                        2..=5 => client
                            .request(Method::POST, &url)
                            .json(&json!({ "value": value })),
                        _ => client
                            .request(Method::PUT, &url)
                            .json(&json!({ "values": [value] })),
                    };
                    let status = request.send().await.unwrap().status();
                    // 404: deleting what is already gone; 409: outrun by too many
                    // concurrent changes of that key. Anything else is a failure.
                    match status.as_u16() {
                        200..=299 => counts[0] += 1,
                        404 if op <= 1 => counts[1] += 1,
                        409 => counts[2] += 1,
                        s => panic!("node{} answered {s} to op {op} on {key}", n + 1),
                    }
                    i += 1;
                }
                counts
            })
        })
    });
    let mut totals = [0u64; 3];
    for w in futures::future::join_all(writers).await {
        for (t, n) in totals.iter_mut().zip(w.unwrap()) {
            *t += n;
        }
    }
    eprintln!(
        "{} changes, {} deletes of absent keys, {} contended",
        totals[0], totals[1], totals[2]
    );
    assert!(totals[0] > 0);
    let state = assert_identical(&c).await;
    assert!(state.len() <= 50);
}

fn rejected_series(reason: &str) -> String {
    format!("kvsync_events_rejected_total{{reason=\"{reason}\"}}")
}

/// Scenario 6: records no node would publish are counted by reason, logged and skipped;
/// replication goes on. A valid event stamped a day ahead is not skipped but held (and
/// reported) until the clocks agree: it never drags the node's clock along.
#[tokio::test]
async fn poison_events_are_counted_logged_and_skipped() {
    let c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    let foreign = NodeId::parse("node9").unwrap();
    let event = |key: &str, wall_ms: u64, values: Vec<String>| {
        let key = Key::parse(key).unwrap();
        let values = Values::new(values, key.as_str().len()).unwrap();
        let version = Version::new(Timestamp::new(wall_ms, 0), foreign.clone());
        Event::new(key, version, Op::Put(values))
    };
    // The event format, with a value filled beyond the limits.
    let stuffed = |key: &str, value_len: usize| {
        let mut e: Value =
            serde_json::from_slice(&event(key, now_ms(), vec!["x".into()]).encode()).unwrap();
        e["state"]["els"][0]["value"] = json!("x".repeat(value_len));
        serde_json::to_vec(&e).unwrap()
    };
    let day_ms = 24 * 3600 * 1000;
    let poison: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "poison/garbage",
            b"\x00\xffnot json {".to_vec(),
            "malformed",
        ),
        (
            "poison/shape",
            br#"{"hello":"world","values":[1,2]}"#.to_vec(),
            "malformed",
        ),
        (
            "poison/schema",
            br#"{"schema":3,"key":"poison/schema"}"#.to_vec(),
            "schema",
        ),
        ("poison/value", stuffed("poison/value", 70_000), "state"),
        (
            "poison/huge",
            stuffed("poison/huge", MAX_EVENT_BYTES + 1024),
            "too_large",
        ),
    ];
    for (key, payload, _) in &poison {
        c.broker.produce(c.topic(), key, payload).await.unwrap();
    }
    let future = event("poison/future", now_ms() + day_ms, vec!["later".into()]);
    c.broker
        .produce(c.topic(), "poison/future", &future.encode())
        .await
        .unwrap();
    // The same path with a valid event: it is applied, so the others fail on content.
    let control = event("poison/control", now_ms(), vec!["fine".into()]);
    c.broker
        .produce(c.topic(), "poison/control", &control.encode())
        .await
        .unwrap();
    let written = put_all(&a, keys("good", 20), 4).await;
    wait_holds(&b, &written).await;

    let mut expected: HashMap<&str, f64> = HashMap::new();
    for (_, _, reason) in &poison {
        *expected.entry(reason).or_default() += 1.0;
    }
    for client in [&a, &b] {
        wait_until(
            T,
            &format!("{} to count the rejections", client.base()),
            || async {
                let mut all = true;
                for (reason, n) in &expected {
                    let got = client.metric(&rejected_series(reason)).await.ok().flatten();
                    all &= got == Some(*n);
                }
                all
            },
        )
        .await
        .unwrap();
        assert_eq!(
            client.counter("events_rejected").await.unwrap(),
            poison.len() as u64,
            "no other rejections on {}",
            client.base()
        );
        assert_eq!(
            client
                .get("poison/control")
                .await
                .unwrap()
                .map(|p| p.values),
            Some(vec!["fine".to_owned()])
        );
        for (key, _, _) in &poison {
            assert_eq!(client.get(key).await.unwrap(), None, "{key} was applied");
        }
        // Held, not applied and not skipped: reported until the clocks agree.
        assert_eq!(client.get("poison/future").await.unwrap(), None);
        wait_until(T, "the held event to be reported", || async {
            let ready = client.get_json("/readyz").await.unwrap_or_default();
            let info = client.node_info().await.unwrap_or_default();
            ready["reasons"]
                .to_string()
                .contains("holding 1 events from node9")
                && info["clock"]["held"]["node9"]["events"] == 1
        })
        .await
        .unwrap();
        assert!(!client.ready().await, "{} holds an event", client.base());
        assert_eq!(
            client
                .metric("kvsync_events_held{peer=\"node9\"}")
                .await
                .unwrap(),
            Some(1.0)
        );
    }
    let log = c.nodes[1].log_tail(400);
    for needle in [
        "skipping invalid event",
        "not valid JSON",
        "unsupported event schema 3",
        "ahead of this node's clock",
        "bytes; the limit is",
    ] {
        assert!(log.contains(needle), "node2's log lacks {needle:?}:\n{log}");
    }

    // The future event did not drag node2's clock ahead.
    let after = b.put("after-poison", &["x"]).await.unwrap();
    assert!(wall_ms(&after.version) < now_ms() + 60_000, "{after:?}");
    wait_holds(&a, &[after]).await;
    assert_identical(&c).await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Sequential PUTs on `client`; their latencies, sorted.
async fn timed_puts(client: &Client, prefix: &str, n: usize) -> (Vec<Pair>, Vec<Duration>) {
    let mut written = Vec::new();
    let mut took = Vec::new();
    for k in keys(prefix, n) {
        let started = Instant::now();
        written.push(client.put(&k, &[&k]).await.unwrap());
        took.push(started.elapsed());
    }
    took.sort();
    (written, took)
}

/// Scenario 7: a hung peer does not slow writes on the other node: nothing on the write
/// path waits for a peer.
#[tokio::test]
async fn a_hung_peer_does_not_slow_writes() {
    let c = cluster(2).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    let (mut written, baseline) = timed_puts(&a, "baseline", 200).await;
    c.nodes[1].pause();
    let (during, paused) = timed_puts(&a, "paused", 200).await;
    c.nodes[1].unpause();
    let (p50, p99) = (percentile(&baseline, 0.5), percentile(&baseline, 0.99));
    let (q50, q99) = (percentile(&paused, 0.5), percentile(&paused, 0.99));
    eprintln!("PUT latency: baseline p50 {p50:?} p99 {p99:?}; node2 hung p50 {q50:?} p99 {q99:?}");
    let worst = *paused.last().unwrap();
    assert!(
        worst < Duration::from_secs(2),
        "slowest write took {worst:?}"
    );
    // Generous: only a write path that waits for the peer would break this.
    assert!(
        q99 < p99 * 10 + Duration::from_millis(500),
        "p99 {q99:?} with node2 hung, {p99:?} before"
    );

    written.extend(during);
    wait_holds(&b, &written).await;
    let state = assert_identical(&c).await;
    assert_eq!(state.len(), 400);
}
