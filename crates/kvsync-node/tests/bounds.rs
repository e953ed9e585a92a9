//! Bounded resources against real nodes: nothing a client sends grows the node's metrics,
//! no request holds the node longer than the request timeout (the event stream aside),
//! open connections and event streams are capped with a JSON 503 past the cap, and
//! "clear database" works in bounded batches and streams its progress.

use std::time::{Duration, Instant};

use kvsync_testkit::{raw, wait_until, Client, Cluster, ClusterOptions};
use reqwest::{header::CONTENT_TYPE, Method, StatusCode};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);
const TOKEN: &str = "tok-bounds-6c1e9a0f2b7d";

async fn one_node(env: &[(&str, &str)]) -> Cluster {
    Cluster::start(ClusterOptions {
        nodes: 1,
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    })
    .await
    .expect("cluster starts")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One round of the flood: for each `i`, a request with a made-up method (over a raw
/// connection, since HTTP clients refuse them) and one with a standard method, both on
/// paths no two requests share, every other pair of them with the token. The kinds of
/// request repeat with `i % 10`, so any round of 10 or more covers every kind.
async fn flood(a: &Client, anon: &Client, range: std::ops::Range<usize>) {
    let auth = format!("Bearer {TOKEN}");
    let tasks: Vec<_> = (0..8)
        .map(|lane| {
            let (a, anon, auth) = (a.clone(), anon.clone(), auth.clone());
            let range = range.clone();
            tokio::spawn(async move {
                for i in range.filter(|i| i % 8 == lane) {
                    let authed = (i / 10) % 2 == 0;
                    let headers: Vec<(&str, &str)> = if authed {
                        vec![("Authorization", auth.as_str())]
                    } else {
                        vec![]
                    };
                    let path = match i % 5 {
                        0 => "/".to_owned(),
                        1 => format!("/api/pairs/k{i}"),
                        2 => format!("/nope{i}"),
                        3 => format!("/api/x{i}?q={i}"),
                        _ => "/metrics".to_owned(),
                    };
                    let method = format!("X{i:05}Y");
                    let req = raw::build(&method, &path, &headers, None);
                    let r = raw::request(a.base(), &req, T).await.unwrap();
                    assert!(r.status < 500, "{method} {path}: {}", r.status);

                    let client = if authed { &a } else { &anon };
                    let (method, path) = match i % 10 {
                        0..=2 => (Method::GET, format!("/api/pairs/k{i}")),
                        3 => (Method::GET, format!("/file{i}.html")),
                        4 => (Method::DELETE, format!("/api/pairs/gone{i}")),
                        5 => (Method::PUT, format!("/api/things/{i}")),
                        6 => (Method::GET, format!("/api/pairs?prefix=p{i}")),
                        7 => (Method::PATCH, format!("/api/pairs/k{i}")),
                        8 => (Method::OPTIONS, format!("/x/{i}")),
                        _ => (Method::HEAD, format!("/api/node/{i}")),
                    };
                    let r = client
                        .request(method.clone(), &client.url(&path))
                        .timeout(T)
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().as_u16() < 500, "{method} {path}: {}", r.status());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn metric_series_stay_constant_under_a_flood_of_made_up_methods_and_paths() {
    let c = one_node(&[("KVSYNC_API_TOKEN", TOKEN)]).await;
    let a = c.nodes[0].client();
    let anon = Client::new(&c.nodes[0].url);
    let series = || async {
        // Scraping counts itself: scrape once so the count includes that series.
        a.series_count().await.unwrap();
        a.series_count().await.unwrap()
    };
    let at_start = series().await;
    let (rss_start, _) = c.nodes[0].memory_kib().unwrap();

    flood(&a, &anon, 0..1000).await;
    let after_first = series().await;
    let (rss_first, _) = c.nodes[0].memory_kib().unwrap();
    // Twice as many again, every method and path new, the same kinds of request.
    flood(&a, &anon, 1000..3000).await;
    let after_second = series().await;
    let (rss_second, _) = c.nodes[0].memory_kib().unwrap();
    eprintln!(
        "series: {at_start} at start, {after_first} after 2,000 requests, {after_second} after \
         6,000; RSS {:.1} / {:.1} / {:.1} MiB",
        mib(rss_start),
        mib(rss_first),
        mib(rss_second)
    );
    assert_eq!(
        after_first, after_second,
        "new methods and paths made new series"
    );
    assert!(after_second < 150, "{after_second} series");
    let metrics = a.metrics().await.unwrap();
    for junk in ["X00001Y", "X02999Y", "/api/pairs/k1", "nope", "things"] {
        assert!(!metrics.contains(junk), "/metrics shows {junk:?}");
    }
}

/// Reads an event stream until its text contains `needle`.
async fn read_until(resp: &mut reqwest::Response, seen: &mut String, needle: &str) -> bool {
    let deadline = Instant::now() + T;
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            _ => return false,
        }
    }
    true
}

#[tokio::test]
async fn requests_time_out_while_mongodb_hangs_but_event_streams_stay() {
    const TIMEOUT_MS: u64 = 1000;
    // The database's own timeout is far longer: only the request timeout can answer.
    let c = one_node(&[
        ("KVSYNC_REQUEST_TIMEOUT_MS", "1000"),
        ("KVSYNC_MONGODB_TIMEOUT_MS", "120000"),
    ])
    .await;
    let a = c.nodes[0].client();
    a.put("k", &["v"]).await.unwrap();
    let mut events = a
        .request(Method::GET, &a.url("/api/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    let mut seen = String::new();
    assert!(read_until(&mut events, &mut seen, "event: hello").await);

    c.mongos[0].pause();
    let routes: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::GET, "/api/pairs/k", None),
        (Method::PUT, "/api/pairs/k", Some(json!({"values": ["w"]}))),
        (
            Method::POST,
            "/api/pairs/k/values",
            Some(json!({"value": "x"})),
        ),
        (Method::DELETE, "/api/pairs/k", None),
        (Method::GET, "/api/pairs", None),
        (Method::DELETE, "/api/pairs", None),
        (Method::GET, "/api/digest", None),
        (Method::GET, "/api/node", None),
        (Method::GET, "/metrics", None),
    ];
    let mut failures = Vec::new();
    for (method, path, body) in routes {
        let mut r = a
            .request(method.clone(), &a.url(path))
            .timeout(Duration::from_secs(8));
        if let Some(b) = &body {
            r = r.json(b);
        }
        let started = Instant::now();
        let result = r.send().await;
        let elapsed = started.elapsed();
        let what = format!("{method} {path}");
        match result {
            Err(e) => failures.push(format!("{what}: no answer after {elapsed:?} ({e})")),
            Ok(resp) => {
                let status = resp.status();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                if status != StatusCode::GATEWAY_TIMEOUT || body["error"] != "timeout" {
                    failures.push(format!("{what}: {status} {body}"));
                }
                if body["detail"].as_str().is_none_or(str::is_empty) {
                    failures.push(format!("{what}: no detail"));
                }
                if elapsed > Duration::from_millis(TIMEOUT_MS + 3000) {
                    failures.push(format!("{what}: answered after {elapsed:?}"));
                }
            }
        }
    }
    // Probes stay quick: liveness needs no database, readiness has its own bound.
    let started = Instant::now();
    assert!(reqwest::get(a.url("/healthz"))
        .await
        .unwrap()
        .status()
        .is_success());
    assert!(started.elapsed() < Duration::from_secs(2));
    c.mongos[0].unpause();

    // The event stream opened before is still there, past several timeouts.
    a.put("after", &["the hang"]).await.unwrap();
    if !read_until(&mut events, &mut seen, "\"key\":\"after\"").await {
        failures.push(format!("the event stream ended or stalled: {seen:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Opens an event stream over a raw connection; the connection is the stream.
async fn open_stream(base: &str) -> (raw::RawResponse, tokio::net::TcpStream) {
    let mut conn = raw::connect(base).await.unwrap();
    let r = raw::exchange(&mut conn, &raw::build("GET", "/api/events", &[], None), T)
        .await
        .unwrap();
    (r, conn)
}

#[tokio::test]
async fn event_streams_and_connections_are_capped() {
    const STREAMS: usize = 3;
    const CONNECTIONS: usize = 16;
    let c = one_node(&[
        ("KVSYNC_MAX_EVENT_STREAMS", "3"),
        ("KVSYNC_MAX_CONNECTIONS", "16"),
    ])
    .await;
    let base = c.nodes[0].url.clone();
    let mut failures = Vec::new();

    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let (r, conn) = open_stream(&base).await;
        assert_eq!(r.status, 200, "stream {i}: {}", r.head);
        streams.push(conn);
    }
    let (r, _refused) = open_stream(&base).await;
    if r.status != 503 || r.json().map(|b| b["error"] == "too_many_streams").ok() != Some(true) {
        failures.push(format!(
            "stream {} past the cap of {STREAMS}: {} {:?}",
            STREAMS + 1,
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    // A closed stream frees its place.
    drop(streams.pop());
    let freed = wait_until(T, "a stream's place to be freed", || {
        let base = base.clone();
        async move { open_stream(&base).await.0.status == 200 }
    })
    .await;
    if let Err(e) = freed {
        failures.push(e.to_string());
    }

    // Idle keep-alive connections: the node holds at most CONNECTIONS (the streams above
    // among them) and answers the others at once with a JSON 503.
    let healthz = raw::build("GET", "/healthz", &[], None);
    let mut held = Vec::new();
    let (mut served, mut refused) = (0, 0);
    for _ in 0..CONNECTIONS + 4 {
        let mut conn = raw::connect(&base).await.unwrap();
        let r = raw::exchange(&mut conn, &healthz, T).await.unwrap();
        match r.status {
            200 => served += 1,
            503 if r.json().map(|b| b["error"] == "too_many_connections").ok() == Some(true) => {
                refused += 1
            }
            s => failures.push(format!("connection past the cap: {s} {}", r.head)),
        }
        held.push(conn);
    }
    if served > CONNECTIONS || refused < 4 {
        failures.push(format!(
            "{served} connections served and {refused} refused, with a cap of {CONNECTIONS}"
        ));
    }
    drop(held);
    drop(streams);
    let back = wait_until(T, "connections to be accepted again", || {
        let (base, healthz) = (base.clone(), healthz.clone());
        async move { matches!(raw::request(&base, &healthz, T).await, Ok(r) if r.status == 200) }
    })
    .await;
    if let Err(e) = back {
        failures.push(e.to_string());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Writes `n` pairs `prefix000000`... with a few concurrent writers. A write the node
/// refuses for a slow database (a loaded machine, with a short database timeout) is
/// made again: rewriting the same values is harmless.
async fn fill(a: &Client, prefix: &str, n: usize) {
    let tasks: Vec<_> = (0..8)
        .map(|lane| {
            let (a, prefix) = (a.clone(), prefix.to_owned());
            tokio::spawn(async move {
                for i in (0..n).filter(|i| i % 8 == lane) {
                    let key = format!("{prefix}{i:06}");
                    let mut attempts = 0;
                    while let Err(e) = a.put(&key, &["v"]).await {
                        attempts += 1;
                        let unavailable = e.to_string().contains("database_unavailable");
                        assert!(unavailable && attempts < 20, "{key}: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn clear_deletes_in_batches_streams_its_progress_and_replicates() {
    const PAIRS: u64 = 1234;
    let c = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    fill(&a, "clear/", PAIRS as usize).await;
    c.converged(T).await.unwrap();
    let applied_before = b.counter("events_applied").await.unwrap();

    let mut resp = a
        .request(Method::DELETE, &a.url("/api/pairs"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
    let (mut text, mut chunks) = (String::new(), 0);
    while let Some(bytes) = resp.chunk().await.unwrap() {
        chunks += 1;
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(body["deleted"], PAIRS, "{body}");
    // The running total after each batch of 500, sent as each batch is done.
    assert_eq!(body["progress"], json!([500, 1000, PAIRS]), "{body}");
    assert!(chunks >= 3, "the answer came in {chunks} piece(s): {text}");
    assert!(body.get("error").is_none(), "{body}");

    // Each delete is an ordinary replicated delete.
    assert!(a.keys().await.unwrap().is_empty());
    c.identical(T).await.unwrap();
    assert!(b.keys().await.unwrap().is_empty());
    assert_eq!(
        b.counter("events_applied").await.unwrap(),
        applied_before + PAIRS
    );
    // Nothing left: a second clear deletes nothing.
    assert_eq!(a.clear().await.unwrap(), 0);
}

#[tokio::test]
async fn a_clear_cut_short_by_the_database_says_so_and_can_be_finished() {
    const PAIRS: u64 = 1234;
    let c = one_node(&[("KVSYNC_MONGODB_TIMEOUT_MS", "1000")]).await;
    let a = c.nodes[0].client();
    fill(&a, "cut/", PAIRS as usize).await;

    let mut resp = a
        .request(Method::DELETE, &a.url("/api/pairs"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The first batch's total arrives; then the database hangs.
    let mut text = String::new();
    while !text.contains("500") {
        let bytes = tokio::time::timeout(T, resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .expect("the answer ended before the first batch's total");
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    c.mongos[0].pause();
    let started = Instant::now();
    while let Some(bytes) = tokio::time::timeout(T, resp.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    // The deletes under way time out once; none starts after that.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    c.mongos[0].unpause();
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(body["error"], "database_unavailable", "{body}");
    let deleted = body["deleted"].as_u64().unwrap();
    assert!((500..PAIRS).contains(&deleted), "{body}");

    // What was deleted stays deleted; clearing again finishes the job. (A delete that
    // timed out may still have been applied when the database woke up.) The database
    // first works off the requests that queued while it hung, so a read may still time
    // out for a moment: wait until one goes through.
    let woke = Instant::now();
    let left = loop {
        match a.keys().await {
            Ok(keys) => break keys.len() as u64,
            Err(e) if woke.elapsed() > T => panic!("the node still cannot list its keys: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert!(
        left <= PAIRS - deleted,
        "{left} left after {deleted} deleted"
    );
    assert_eq!(a.clear().await.unwrap(), left);
    assert!(a.keys().await.unwrap().is_empty());
}

/// Measures clearing a large database: time, and the node's memory before, during and
/// after. Run by hand (`KVSYNC_CLEAR_PAIRS` sets the size, default 100,000):
/// `cargo test --release -p kvsync-node --test bounds -- --ignored --nocapture`
#[tokio::test]
#[ignore = "a measurement, run by hand"]
async fn measure_clearing_a_large_database() {
    use kvsync_core::{Event, Key, NodeId, Op, Timestamp, Values, Version};

    let n: u64 = std::env::var("KVSYNC_CLEAR_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let c = one_node(&[]).await;
    let a = c.nodes[0].client();
    // Written straight into the node's database, as the node would have stored them (and
    // older than its clock): the API would take minutes to write this many.
    let mongo = mongodb::Client::with_uri_str(c.mongos[0].uri())
        .await
        .unwrap();
    let pairs = mongo
        .database("kvsync")
        .collection::<mongodb::bson::Document>("pairs");
    let node = NodeId::parse("node1".to_owned()).unwrap();
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 60_000;
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let docs = chunk.iter().map(|&i| {
            let version = Version::new(
                Timestamp {
                    wall_ms,
                    counter: i as u32,
                },
                node.clone(),
            );
            let key = Key::parse(format!("bulk/{i:07}")).unwrap();
            let values = Values::new(vec!["value".to_owned()], key.as_str().len()).unwrap();
            let state = Event::new(key.clone(), version, Op::Put(values)).state;
            kvsync_store::stored_document(&key, &state, 1)
        });
        pairs.insert_many(docs).await.unwrap();
    }
    eprintln!("inserted {n} pairs in {:.1?}", started.elapsed());
    assert_eq!(a.digest().await.unwrap().0, n);

    let memory = || c.nodes[0].memory_kib().unwrap();
    let (rss_before, peak_before) = memory();
    let started = Instant::now();
    let digest = a.digest().await.unwrap();
    let digest_time = started.elapsed();
    let (rss_digest, peak_digest) = memory();
    eprintln!(
        "digest of {} entries: {digest_time:.1?}; RSS {:.1} -> {:.1} MiB, peak {:.1} -> {:.1} MiB",
        digest.0,
        mib(rss_before),
        mib(rss_digest),
        mib(peak_before),
        mib(peak_digest)
    );

    let pid = c.nodes[0].pid().unwrap();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = tokio::spawn({
        let sampling = sampling.clone();
        async move {
            let mut max = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
                let rss: u64 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                    .unwrap();
                max = max.max(rss);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            max
        }
    });
    let started = Instant::now();
    let deleted = a.clear().await.unwrap();
    let clear_time = started.elapsed();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let max_rss = sampler.await.unwrap();
    let (rss_after, peak_after) = memory();
    eprintln!(
        "cleared {deleted} pairs in {clear_time:.1?} ({:.0} deletes/s); RSS {:.1} MiB before, \
         at most {:.1} MiB during, {:.1} MiB after; peak RSS {:.1} -> {:.1} MiB",
        deleted as f64 / clear_time.as_secs_f64(),
        mib(rss_digest),
        mib(max_rss),
        mib(rss_after),
        mib(peak_digest),
        mib(peak_after)
    );
    assert_eq!(deleted, n);
    assert!(a.keys().await.unwrap().is_empty());
}

/// Idle connections used to hold their places for good: a client holding as many idle
/// sockets as the cap (some silent since they connected, some kept alive after a
/// request) locked every other client out. Each is now closed after the header-read or
/// idle timeout, and a normal client is served within that timeout and a second. An
/// event stream, busy for its whole life, is not idle.
#[tokio::test]
async fn idle_connections_cannot_lock_other_clients_out() {
    const CONNECTIONS: usize = 8;
    const TIMEOUT_MS: u64 = 2_000;
    let c = one_node(&[
        ("KVSYNC_MAX_CONNECTIONS", "8"),
        ("KVSYNC_HEADER_READ_TIMEOUT_MS", "2000"),
        ("KVSYNC_IDLE_TIMEOUT_MS", "2000"),
        ("KVSYNC_BODY_TIMEOUT_MS", "2000"),
    ])
    .await;
    let base = c.nodes[0].url.clone();
    let healthz = raw::build("GET", "/healthz", &[], None);

    let (_stream_head, mut stream) = open_stream(&base).await;
    let mut held = Vec::new();
    for i in 0..CONNECTIONS - 1 {
        let mut conn = raw::connect(&base).await.unwrap();
        if i % 2 == 0 {
            // Kept alive after one request.
            let r = raw::exchange(&mut conn, &healthz, T).await.unwrap();
            assert_eq!(r.status, 200, "{}", r.head);
        } else {
            // Half a request head, then silence.
            use tokio::io::AsyncWriteExt;
            conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        held.push(conn);
    }
    let locked_at = Instant::now();
    // Every place is taken: a new client is refused at once...
    let r = raw::request(&base, &healthz, T).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.head);
    // ...until the idle ones are closed.
    let mut served = None;
    while locked_at.elapsed() < T {
        if let Ok(r) = raw::request(&base, &healthz, T).await {
            if r.status == 200 {
                served = Some(locked_at.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let served = served.expect("a normal client is served once idle connections are closed");
    eprintln!("served {served:?} after every place was taken by idle connections");
    assert!(
        served <= Duration::from_millis(TIMEOUT_MS + 1_000),
        "served after {served:?}, past the idle timeout and a second"
    );

    // The event stream lived on through it, and still carries changes.
    c.nodes[0].client().put("after/idle", &["x"]).await.unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + T;
    use tokio::io::AsyncReadExt;
    while !String::from_utf8_lossy(&seen).contains("after/idle") {
        let mut buf = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut buf))
            .await
            .expect("the event stream carries the change")
            .unwrap();
        assert!(n > 0, "the event stream was closed as idle");
        seen.extend_from_slice(&buf[..n]);
    }

    // A body that stops arriving is answered 408 once the body timeout has passed.
    let mut conn = raw::connect(&base).await.unwrap();
    {
        use tokio::io::AsyncWriteExt;
        conn.write_all(
            b"PUT /api/pairs/slow HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"values\":",
        )
        .await
        .unwrap();
    }
    let mut answer = Vec::new();
    let started = Instant::now();
    while !String::from_utf8_lossy(&answer).contains("}") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(T, conn.read(&mut buf))
            .await
            .expect("an answer to a stalled body")
            .unwrap();
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(TIMEOUT_MS - 100));
    assert_eq!(c.nodes[0].client().get("slow").await.unwrap(), None);
    drop(held);
}
