//! The resumable change feed (`/api/events` with event ids and `Last-Event-ID`) against
//! real nodes, a real Kafka-protocol broker and real MongoDB-protocol servers.

use std::{collections::BTreeMap, time::Duration};

use futures::{stream::BoxStream, StreamExt};
use kvsync_testkit::{wait_until, Client, Cluster, ClusterOptions};
use reqwest::Method;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

async fn cluster(nodes: usize, env: &[(&str, &str)]) -> Cluster {
    Cluster::start(ClusterOptions {
        nodes,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
    .await
    .expect("cluster starts")
}

/// Waits until `client` holds `key` with exactly `values` (None: absent).
async fn wait_for(client: &Client, key: &str, values: Option<&[&str]>) {
    client.wait_for_values(key, values, T).await.unwrap();
}

#[derive(Debug, Clone)]
struct Ev {
    id: Option<String>,
    event: String,
    data: String,
}

impl Ev {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    fn key(&self) -> String {
        self.json()["key"].as_str().unwrap_or_default().to_owned()
    }

    /// The sequence number at the end of the id.
    fn seq(&self) -> u64 {
        seq_of(
            self.id
                .as_deref()
                .unwrap_or_else(|| panic!("no id: {self:?}")),
        )
    }
}

fn seq_of(id: &str) -> u64 {
    id.rsplit('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("id {id:?} does not end in a number"))
}

/// A minimal Server-Sent Events reader.
struct Sse {
    body: BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buf: String,
}

impl Sse {
    /// Opens `/api/events` + `query`, with a `Last-Event-ID` header if given.
    async fn open(client: &Client, query: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = client.request(Method::GET, &client.url(&format!("/api/events{query}")));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.unwrap();
        assert!(resp.status().is_success(), "{:?}", resp.status());
        Sse {
            body: resp.bytes_stream().map(|c| c.map(|b| b.to_vec())).boxed(),
            buf: String::new(),
        }
    }

    /// The next event; `None` when the stream ended or failed.
    async fn next(&mut self) -> Option<Ev> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Ev {
                    id: None,
                    event: "message".into(),
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => ev.id = Some(value.to_owned()),
                        "event" => ev.event = value.to_owned(),
                        "data" => ev.data.push_str(value),
                        _ => continue,
                    }
                    any = true;
                }
                if any {
                    return Some(ev);
                }
                continue;
            }
            let chunk = tokio::time::timeout(T, self.body.next())
                .await
                .unwrap_or_else(|_| panic!("no event within {T:?}; left: {:?}", self.buf))?;
            match chunk {
                Ok(c) => self
                    .buf
                    .push_str(&String::from_utf8_lossy(&c).replace("\r\n", "\n")),
                Err(_) => return None,
            }
        }
    }

    /// Events up to and including the first one `done` accepts.
    async fn until(&mut self, mut done: impl FnMut(&Ev) -> bool) -> Vec<Ev> {
        let mut seen = Vec::new();
        loop {
            let ev = self
                .next()
                .await
                .unwrap_or_else(|| panic!("stream ended; seen: {seen:#?}"));
            let stop = done(&ev);
            seen.push(ev);
            if stop {
                return seen;
            }
        }
    }

    /// Reads until `key` has a change event satisfying `ok`.
    async fn until_change(&mut self, key: &str, ok: impl Fn(&Value) -> bool) -> Vec<Ev> {
        self.until(|e| e.event == "change" && e.key() == key && ok(&e.json()))
            .await
    }
}

fn changes(events: &[Ev]) -> Vec<&Ev> {
    events.iter().filter(|e| e.event == "change").collect()
}

/// The ids of `events` (every event but `conflict` must have one) increase strictly;
/// `hello` carries the position the stream starts from, which is not a change.
fn assert_monotonic(events: &[Ev], after: Option<u64>) {
    let mut last = after;
    for e in events
        .iter()
        .filter(|e| e.event != "conflict" && e.event != "hello")
    {
        let seq = e.seq();
        assert!(
            last.is_none_or(|l| seq > l),
            "ids not increasing at {e:?} (after {last:?}); all: {events:#?}"
        );
        last = Some(seq);
    }
}

fn values(change: &Value) -> Option<Vec<String>> {
    serde_json::from_value(change["values"].clone()).unwrap()
}

#[tokio::test]
async fn a_client_resumes_across_a_kill_with_the_final_state_of_every_key() {
    let mut c = cluster(2, &[]).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());

    let mut stream = Sse::open(&b, "?prefix=k/", None).await;
    let hello = stream.next().await.unwrap();
    assert_eq!(hello.event, "hello");
    assert!(
        hello
            .id
            .as_deref()
            .is_some_and(|id| id.starts_with("node2.")),
        "a fresh stream's hello carries the point it follows from: {hello:?}"
    );
    a.put("k/1", &["v0"]).await.unwrap();
    a.put("k/gone", &["x"]).await.unwrap();
    a.put("k/2", &["w"]).await.unwrap();
    a.put("k/untouched", &["u"]).await.unwrap();
    let before = stream
        .until_change("k/untouched", |c| c["deleted"] == false)
        .await;
    for e in changes(&before) {
        assert!(e.id.is_some(), "every change has an id: {e:?}");
    }
    assert_monotonic(&before, None);
    let last = before.last().unwrap().id.clone().unwrap();

    // The watched node dies; its peer goes on writing and deleting.
    c.nodes[1].kill();
    assert!(
        tokio::time::timeout(T, async { while stream.next().await.is_some() {} })
            .await
            .is_ok(),
        "the stream ends with its node"
    );
    for i in 1..=5 {
        a.put("k/1", &[&format!("v{i}")]).await.unwrap();
    }
    assert!(a.delete("k/gone").await.unwrap());
    assert!(a.delete("k/2").await.unwrap());
    a.put("k/new", &["n"]).await.unwrap();

    c.nodes[1].restart().await.unwrap();
    c.nodes[1].wait_ready(T).await.unwrap();
    wait_for(&b, "k/1", Some(&["v5"])).await;
    wait_for(&b, "k/gone", None).await;
    wait_for(&b, "k/2", None).await;
    wait_for(&b, "k/new", Some(&["n"])).await;

    let mut resumed = Sse::open(&b, "?prefix=k/", Some(&last)).await;
    let hello = resumed.next().await.unwrap();
    assert_eq!(hello.event, "hello");
    // Once the replay is through, a live change follows it.
    let live = tokio::spawn({
        let a = a.clone();
        async move {
            // The replay is short; a live write during it is fine too, as long as the
            // final states come out right.
            a.put("k/live", &["l"]).await.unwrap();
        }
    });
    let after = resumed.until_change("k/live", |_| true).await;
    live.await.unwrap();
    assert!(
        !after.iter().any(|e| e.event == "resync"),
        "resumable: {after:#?}"
    );
    assert_monotonic(&after, Some(seq_of(&last)));
    let mut seen: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in changes(&after) {
        seen.entry(e.key()).or_default().push(e.json());
    }
    let once = |key: &str| -> Value {
        let got = seen
            .get(key)
            .unwrap_or_else(|| panic!("{key} missed: {after:#?}"));
        assert_eq!(got.len(), 1, "{key} once, at its final state: {got:#?}");
        got[0].clone()
    };
    assert_eq!(values(&once("k/1")), Some(vec!["v5".to_owned()]));
    assert_eq!(once("k/gone")["deleted"], true);
    assert_eq!(once("k/2")["deleted"], true);
    assert_eq!(values(&once("k/new")), Some(vec!["n".to_owned()]));
    assert!(
        !seen.contains_key("k/untouched"),
        "not changed since the id: {after:#?}"
    );
}

#[tokio::test]
async fn tokens_that_cannot_resume_get_resync_and_the_query_form_works() {
    // A short horizon, so that tombstones are collected during the test.
    let c = cluster(1, &[("KVSYNC_TOMBSTONE_HORIZON_MS", "1500")]).await;
    let a = c.nodes[0].client();

    let mut stream = Sse::open(&a, "", None).await;
    let hello = stream.next().await.unwrap();
    let start = hello.id.clone().expect("hello carries an id");
    a.put("q/a", &["1"]).await.unwrap();
    let first = stream.until_change("q/a", |_| true).await;
    let after_a = first.last().unwrap().id.clone().unwrap();
    drop(stream);
    a.put("q/b", &["2"]).await.unwrap();
    a.put("q/c", &["3"]).await.unwrap();

    // The query parameter, for clients that cannot set headers.
    let query = format!("?last_event_id={}", urlencode(&after_a));
    let mut resumed = Sse::open(&a, &query, None).await;
    let got = resumed.until_change("q/c", |_| true).await;
    let keys: Vec<String> = changes(&got).iter().map(|e| e.key()).collect();
    assert_eq!(keys, ["q/b", "q/c"], "{got:#?}");
    assert_monotonic(&got, Some(seq_of(&after_a)));
    drop(resumed);

    // Tokens this node cannot resume from: another node's, another store's, garbage.
    let epoch_of = |id: &str| id.rsplit('.').nth(1).unwrap().to_owned();
    let foreign = [
        format!("node9.{}.{}", epoch_of(&start), seq_of(&start)),
        format!("node1.not-this-store.{}", seq_of(&start)),
        "garbage".to_owned(),
        format!("node1.{}.{}", epoch_of(&start), u64::MAX),
    ];
    for token in &foreign {
        let mut s = Sse::open(&a, "", Some(token)).await;
        let got = s.until(|e| e.event == "resync").await;
        let resync = got.last().unwrap();
        assert!(
            resync
                .id
                .as_deref()
                .is_some_and(|id| id.starts_with("node1.")),
            "resync carries a fresh id to go on from: {resync:?}"
        );
        assert!(
            changes(&got).is_empty(),
            "{token}: no replay before the resync: {got:#?}"
        );
    }

    // A delete, collected past the horizon: a client from before it missed it for good.
    assert!(a.delete("q/b").await.unwrap());
    wait_until(T, "the tombstone to be collected", || async {
        a.metric("kvsync_tombstones_collected_total")
            .await
            .ok()
            .flatten()
            .unwrap_or(0.0)
            >= 1.0
    })
    .await
    .unwrap();
    let mut s = Sse::open(&a, "", Some(&after_a)).await;
    let got = s
        .until(|e| e.event == "resync" || e.event == "change")
        .await;
    assert_eq!(got.last().unwrap().event, "resync", "{got:#?}");
    // A client that came after the collection resumes.
    let mut fresh = Sse::open(&a, "", None).await;
    let now = fresh.next().await.unwrap().id.unwrap();
    drop(fresh);
    a.put("q/d", &["4"]).await.unwrap();
    let mut s = Sse::open(&a, "", Some(&now)).await;
    let got = s
        .until(|e| e.event == "resync" || (e.event == "change" && e.key() == "q/d"))
        .await;
    assert_eq!(got.last().unwrap().event, "change", "{got:#?}");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Many concurrent writes, local and replicated: ids increase strictly on every stream,
/// and a client that drops out halfway and resumes still ends with every key's final
/// state (a change numbered before one already sent cannot commit after it unseen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_keep_ids_monotonic_and_resumes_complete() {
    let c = cluster(2, &[]).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    let mut whole = Sse::open(&a, "?prefix=c/", None).await;
    let mut part = Sse::open(&a, "?prefix=c/", None).await;
    whole.next().await.unwrap();
    part.next().await.unwrap();

    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = if w % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                for i in 0..25 {
                    let key = format!("c/{}", (w * 7 + i) % 12);
                    let value = format!("{w}-{i}");
                    if i % 9 == 8 {
                        let _ = client.delete(&key).await;
                    } else {
                        client.put(&key, &[&value]).await.unwrap();
                    }
                }
            })
        })
        .collect();
    // The partial client reads a few events, drops out, and resumes later.
    let early = part.until(|e| e.event == "change").await;
    let mut part_events = early.clone();
    let part_last = early.last().unwrap().id.clone().unwrap();
    drop(part);
    for w in writers {
        w.await.unwrap();
    }
    // Events of different keys travel on different partitions: a marker can overtake a
    // key's last change. Once the nodes agree, every change is numbered before the
    // marker's on both, and a stream that shows the marker has shown them.
    c.converged(T).await.unwrap();
    a.put("c/zz-done", &["done"]).await.unwrap();
    wait_for(&b, "c/zz-done", Some(&["done"])).await;
    b.put("c/zz-done", &["really"]).await.unwrap();
    wait_for(&a, "c/zz-done", Some(&["really"])).await;

    let mut all = whole
        .until_change("c/zz-done", |c| values(c) == Some(vec!["really".into()]))
        .await;
    let mut part = Sse::open(&a, "?prefix=c/", Some(&part_last)).await;
    part_events.extend(
        part.until_change("c/zz-done", |c| values(c) == Some(vec!["really".into()]))
            .await,
    );
    assert_monotonic(&all, None);
    assert!(
        !part_events.iter().any(|e| e.event == "resync"),
        "{part_events:#?}"
    );
    all.retain(|e| e.event != "hello");
    part_events.retain(|e| e.event != "hello");
    assert_monotonic(&part_events, None);

    let truth: BTreeMap<String, Option<Vec<String>>> = {
        let mut t = BTreeMap::new();
        for i in 0..12 {
            let key = format!("c/{i}");
            t.insert(key.clone(), a.get(&key).await.unwrap().map(|p| p.values));
        }
        t
    };
    for (name, events) in [("whole", &all), ("resumed", &part_events)] {
        let mut last: BTreeMap<String, Option<Vec<String>>> = BTreeMap::new();
        for e in changes(events) {
            let v = e.json();
            let state = if v["deleted"] == true {
                None
            } else {
                values(&v)
            };
            last.insert(e.key(), state);
        }
        for (key, want) in &truth {
            let got = last.get(key).cloned().flatten();
            assert_eq!(&got, want, "{name}: final state of {key}");
        }
    }
}

/// A write the node gave up on (no answer within the database timeout) may still land
/// once the database wakes up. The node then holds a change nothing announced: a peer's
/// change whose retry finds it already merged (stale), or a local write answered 503.
/// Live feed clients must still hear of both, in order with everything else.
#[tokio::test]
async fn changes_that_land_after_the_database_timed_out_reach_the_feed() {
    let c = cluster(2, &[("KVSYNC_MONGODB_TIMEOUT_MS", "500")]).await;
    let (a, b) = (c.nodes[0].client(), c.nodes[1].client());
    a.put("late/remote", &["r0"]).await.unwrap();
    b.put("late/local", &["l0"]).await.unwrap();
    wait_for(&b, "late/remote", Some(&["r0"])).await;
    wait_for(&a, "late/local", Some(&["l0"])).await;

    let mut stream = Sse::open(&b, "?prefix=late/", None).await;
    let hello = stream.next().await.unwrap();
    assert_eq!(hello.event, "hello");
    let from = seq_of(hello.id.as_deref().unwrap());

    c.mongos[1].pause();
    a.put("late/remote", &["r1"]).await.unwrap();
    wait_until(
        T,
        "node2 to give up on applying the peer's change",
        || async {
            c.nodes[1]
                .log_tail(400)
                .contains("applying event failed; retrying")
        },
    )
    .await
    .unwrap();
    let r = b
        .request(Method::PUT, &b.pair_url("late/local"))
        .json(&serde_json::json!({"values": ["l1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    c.mongos[1].unpause();

    // The peer's change must arrive; the refused local write may or may not have landed.
    wait_for(&b, "late/remote", Some(&["r1"])).await;
    let local = b.get("late/local").await.unwrap().unwrap().values;
    eprintln!("the refused local write left {local:?}");
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let events = tokio::time::timeout(
        T,
        stream.until(|e| {
            if e.event == "change" {
                seen.insert(e.key(), values(&e.json()).unwrap_or_default());
            }
            seen.get("late/remote").is_some_and(|v| v == &["r1"])
                && (local == ["l0"] || seen.get("late/local") == Some(&local))
        }),
    )
    .await;
    let Ok(events) = events else {
        panic!("the feed did not tell of every landed change; it told {seen:?}");
    };
    assert_monotonic(&events, Some(from));
}
