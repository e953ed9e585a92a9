//! One probe for every system: a write on one member, its change notification read on
//! another, both instants on this process's clock; and concurrent writers for
//! throughput. kvsync (HTTP PUT, `/api/events`), etcd (its JSON gateway: `/v3/kv/put`,
//! a `/v3/watch` stream) and Redis (RESP: SET on the primary, keyspace notifications on
//! the replica) each supply a writer and a watcher; the timing code is the same.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use futures::{future::BoxFuture, FutureExt, StreamExt};
use kvsync_testkit::{free_port, listens_on, wait_until, Client, Proc};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
    sync::{mpsc, Mutex},
    time::Instant,
};

use crate::{
    latency::ms,
    sse::{self, Arrival, Feed},
    stats::{round3, Samples, Stats},
    target::{cpu_seconds, load_average, text, Payload},
    throughput::CpuUse,
};

/// Writes `value` under `key`; returns the version the system gave the write, when it
/// gives one that its notifications carry too (Redis does not).
pub type WriteFn =
    Arc<dyn Fn(String, String) -> BoxFuture<'static, Result<Option<String>>> + Send + Sync>;
type ConnectFn = Arc<dyn Fn(usize) -> BoxFuture<'static, Result<WriteFn>> + Send + Sync>;
type WatchFn = Arc<dyn Fn(usize, String) -> BoxFuture<'static, Result<Feed>> + Send + Sync>;

/// A system under test, seen through its members.
#[derive(Clone)]
pub struct System {
    pub name: String,
    /// Opens a writer on member i (with a connection of its own where the protocol
    /// needs one).
    pub connect: ConnectFn,
    /// Subscribes on member i to changes of keys starting with a prefix; returns once
    /// the subscription is in place.
    pub watch: WatchFn,
    /// Its processes, labelled, for their CPU time.
    pub procs: Vec<(u32, String)>,
}

/// kvsync nodes: PUT /api/pairs/{key}, and `/api/events?prefix=`.
pub fn kvsync(nodes: &[Client], procs: Vec<(u32, String)>) -> System {
    let nodes: Arc<Vec<Client>> = Arc::new(nodes.to_vec());
    let n2 = nodes.clone();
    System {
        name: "kvsync".into(),
        connect: Arc::new(move |i| {
            let client = nodes[i].clone();
            async move {
                let f: WriteFn = Arc::new(move |key: String, value: String| {
                    let client = client.clone();
                    async move { Ok(Some(client.put(&key, &[value.as_str()]).await?.version)) }
                        .boxed()
                });
                Ok(f)
            }
            .boxed()
        }),
        watch: Arc::new(move |i, prefix| {
            let client = n2[i].clone();
            async move { sse::subscribe(&client, &prefix).await }.boxed()
        }),
        procs,
    }
}

// ---------------------------------------------------------------------------------
// Latency

/// One payload set's figures from one or more latency runs.
#[derive(Debug, Clone, Default)]
pub struct SetSamples {
    pub replication: Samples,
    pub ack: Samples,
    pub writes: usize,
    pub errors: usize,
    pub error_samples: Vec<String>,
}

impl SetSamples {
    pub fn merge(&mut self, other: SetSamples) {
        self.replication.extend(other.replication);
        self.ack.extend(other.ack);
        self.writes += other.writes;
        self.errors += other.errors;
        self.error_samples.extend(other.error_samples);
        self.error_samples.truncate(5);
    }
}

pub struct LatencyPlan<'a> {
    pub payloads: &'a [Payload],
    /// Measured writes per payload set.
    pub count: usize,
    /// Writes per second, open loop.
    pub rate: f64,
    pub warmup: usize,
    pub arrival_timeout: Duration,
    /// (member written, member watched); write i uses route (i / sets) mod routes.
    pub routes: Vec<(usize, usize)>,
}

/// Writes `plan.count` pairs of every payload set on the routes' first members and
/// times their notifications on the second.
pub async fn latency(
    sys: &System,
    plan: &LatencyPlan<'_>,
    prefix: &str,
) -> Result<Vec<SetSamples>> {
    anyhow::ensure!(
        plan.rate > 0.0 && !plan.routes.is_empty(),
        "a rate and a route"
    );
    // One watcher per watched member, merged into one stream of arrivals.
    let (tx, mut arrivals) = mpsc::unbounded_channel::<Arrival>();
    let mut feeds = Vec::new();
    let mut forwarders = Vec::new();
    let mut watched: Vec<usize> = plan.routes.iter().map(|r| r.1).collect();
    watched.sort_unstable();
    watched.dedup();
    for to in watched {
        let mut feed = (sys.watch)(to, format!("{prefix}{to}/"))
            .await
            .with_context(|| format!("{}: watching member {}", sys.name, to + 1))?;
        let tx = tx.clone();
        let (ftx, frx) = mpsc::unbounded_channel();
        let inner = std::mem::replace(&mut feed.arrivals, frx);
        forwarders.push(tokio::spawn(async move {
            let mut inner = inner;
            while let Some(a) = inner.recv().await {
                if tx.send(a).is_err() {
                    break;
                }
            }
            drop(ftx);
        }));
        feeds.push(feed);
    }
    drop(tx);
    let mut writers: HashMap<usize, WriteFn> = HashMap::new();
    for (from, _) in &plan.routes {
        if !writers.contains_key(from) {
            writers.insert(*from, (sys.connect)(*from).await?);
        }
    }
    let mut rng = fastrand::Rng::new();
    if plan.warmup > 0 {
        let warm = run_sets(
            &writers,
            &mut arrivals,
            prefix,
            "warm",
            &[Payload::Fixed(64)],
            plan.warmup,
            plan,
            &mut rng,
        )
        .await?;
        if warm[0].replication.is_empty() {
            bail!(
                "{}: no warm-up write was notified: {:?}",
                sys.name,
                warm[0].error_samples.first()
            );
        }
    }
    let out = run_sets(
        &writers,
        &mut arrivals,
        prefix,
        "m",
        plan.payloads,
        plan.count,
        plan,
        &mut rng,
    )
    .await;
    for f in forwarders {
        f.abort();
    }
    drop(feeds);
    out
}

#[allow(clippy::too_many_arguments)]
async fn run_sets(
    writers: &HashMap<usize, WriteFn>,
    arrivals: &mut mpsc::UnboundedReceiver<Arrival>,
    prefix: &str,
    tag: &str,
    payloads: &[Payload],
    count: usize,
    plan: &LatencyPlan<'_>,
    rng: &mut fastrand::Rng,
) -> Result<Vec<SetSamples>> {
    let n = payloads.len();
    let total = count * n;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.rate));
    let mut handles = Vec::with_capacity(total);
    for i in 0..total {
        ticker.tick().await;
        let payload = payloads[i % n];
        let (from, to) = plan.routes[(i / n) % plan.routes.len()];
        let key = format!("{prefix}{to}/{tag}/{}/{i}", payload.name());
        let size = payload.size(rng);
        let value = text(rng, size);
        let write = writers[&from].clone();
        handles.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = write(key.clone(), value).await;
            (key, t0, Instant::now(), r)
        }));
    }
    let mut out = vec![SetSamples::default(); n];
    // key -> (set, t0, version written, counted yet)
    let mut sent: HashMap<String, (usize, Instant, Option<String>, bool)> =
        HashMap::with_capacity(total);
    for (i, h) in handles.into_iter().enumerate() {
        let (key, t0, ack, r) = h.await?;
        out[i % n].writes += 1;
        match r {
            Ok(version) => {
                out[i % n].ack.push(ms(ack - t0));
                sent.insert(key, (i % n, t0, version, false));
            }
            Err(e) => out[i % n].error_samples.push(format!("write {key}: {e:#}")),
        }
    }
    let deadline = Instant::now() + plan.arrival_timeout;
    let mut seen = 0;
    while seen < sent.len() {
        match tokio::time::timeout_at(deadline, arrivals.recv()).await {
            Ok(Some(a)) => {
                let Some((set, t0, version, done)) = sent.get_mut(&a.key) else {
                    continue; // Another phase's key.
                };
                if *done {
                    continue;
                }
                seen += 1;
                *done = true;
                match version {
                    Some(v) if *v != a.version => out[*set].error_samples.push(format!(
                        "{}: version {} notified, {} written",
                        a.key, a.version, v
                    )),
                    _ => out[*set]
                        .replication
                        .push(ms(a.at.saturating_duration_since(*t0))),
                }
            }
            Ok(None) => bail!("the watchers closed"),
            Err(_) => break,
        }
    }
    let mut missing = vec![0usize; n];
    for (set, _, _, done) in sent.values() {
        if !done {
            missing[*set] += 1;
        }
    }
    for (k, s) in out.iter_mut().enumerate() {
        if missing[k] > 0 {
            s.error_samples.push(format!(
                "{} changes not notified within {:?}",
                missing[k], plan.arrival_timeout
            ));
        }
        s.error_samples.truncate(5);
        s.errors = s.writes - s.replication.len();
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// Throughput

pub struct LoadPlan {
    pub writers: usize,
    pub seconds: f64,
    pub keys: u64,
    pub value_bytes: usize,
    /// Writes per second over all writers (each paced at its share); None: as fast as
    /// they are answered.
    pub rate: Option<f64>,
    /// Members the writers are spread over (writer w on members[w mod len]).
    pub members: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub writers: usize,
    pub target_rate: Option<f64>,
    pub acknowledged: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// From the first write until the last acknowledgement.
    pub seconds: f64,
    pub writes_per_s: f64,
    pub write_latency: Stats,
    pub cpu: Vec<CpuUse>,
    /// The machine's load average (1, 5, 15 min) when the run ended.
    pub load_average: String,
    /// When the last write was acknowledged (for what follows, not serialized).
    #[serde(skip)]
    pub ended: Option<Instant>,
    #[serde(skip)]
    pub latency_samples: Samples,
}

pub async fn load(sys: &System, plan: &LoadPlan, prefix: &str) -> Result<LoadResult> {
    anyhow::ensure!(
        plan.writers > 0 && plan.keys > 0 && !plan.members.is_empty(),
        "writers, keys and members"
    );
    let mut conns = Vec::new();
    for w in 0..plan.writers {
        conns.push((sys.connect)(plan.members[w % plan.members.len()]).await?);
    }
    let mut procs = sys.procs.clone();
    procs.push((std::process::id(), "kvsync-bench (the clients)".into()));
    let cpu_before: Vec<Option<f64>> = procs.iter().map(|(p, _)| cpu_seconds(*p)).collect();
    let counter = Arc::new(AtomicU64::new(0));
    let duration = Duration::from_secs_f64(plan.seconds);
    let start = Instant::now();
    let mut handles = Vec::new();
    for (w, write) in conns.into_iter().enumerate() {
        let counter = counter.clone();
        let (keys, bytes, writers, rate) = (plan.keys, plan.value_bytes, plan.writers, plan.rate);
        let prefix = prefix.to_owned();
        handles.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::new();
            let mut lat = Samples::default();
            let (mut errors, mut samples, mut last) = (0u64, Vec::new(), start);
            let mut j = 0u64;
            loop {
                if let Some(rate) = rate {
                    // This writer's j-th slot: writes of all writers evenly spaced.
                    let at = start
                        + Duration::from_secs_f64((j * writers as u64 + w as u64) as f64 / rate);
                    tokio::time::sleep_until(at).await;
                }
                j += 1;
                if start.elapsed() >= duration {
                    break;
                }
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let key = format!("{prefix}{}", i % keys);
                let t0 = Instant::now();
                match write(key, text(&mut rng, bytes)).await {
                    Ok(_) => {
                        last = Instant::now();
                        lat.push(ms(last - t0));
                    }
                    Err(e) => {
                        errors += 1;
                        if samples.len() < 3 {
                            samples.push(format!("writer {w}: {e:#}"));
                        }
                    }
                }
            }
            (lat, errors, samples, last)
        }));
    }
    let mut lat = Samples::default();
    let (mut errors, mut error_samples, mut end) = (0, Vec::new(), start);
    for h in handles {
        let (l, e, s, last) = h.await?;
        lat.extend(l);
        errors += e;
        error_samples.extend(s);
        end = end.max(last);
    }
    error_samples.truncate(5);
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_use(&procs, &cpu_before, wall);
    let seconds = (end - start).as_secs_f64().max(1e-9);
    let acknowledged = lat.len() as u64;
    Ok(LoadResult {
        writers: plan.writers,
        target_rate: plan.rate.map(round3),
        acknowledged,
        errors,
        error_samples,
        seconds: round3(seconds),
        writes_per_s: round3(acknowledged as f64 / seconds),
        write_latency: lat.stats().rounded(),
        cpu,
        load_average: load_average(),
        ended: Some(end),
        latency_samples: lat,
    })
}

/// CPU each process used since `before`, and that as a share of the machine over `wall`
/// seconds.
pub fn cpu_use(procs: &[(u32, String)], before: &[Option<f64>], wall: f64) -> Vec<CpuUse> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    procs
        .iter()
        .zip(before)
        .filter_map(|((pid, name), before)| {
            let used = cpu_seconds(*pid)? - (*before)?;
            Some(CpuUse {
                process: name.clone(),
                cpu_seconds: round3(used),
                share_of_machine: round3(used / (wall * cores)),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// etcd

/// An etcd cluster on loopback, fsync on (its default), killed when dropped.
pub struct Etcd {
    pub urls: Vec<String>,
    /// Index of the leader in `urls` when the cluster was ready.
    pub leader: usize,
    pub version: String,
    procs: Vec<Proc>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub async fn start(members: usize) -> Result<Self> {
        let bin = which("etcd").context("etcd not found: scripts/install-deps.sh --peers")?;
        let dir = tempfile::Builder::new()
            .prefix("kvsync-bench-etcd-")
            .tempdir()?;
        let ports: Vec<(u16, u16)> = (0..members)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_>>()?;
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{}=http://127.0.0.1:{peer}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut procs = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("m{}", i + 1);
            let data = dir.path().join(&name);
            procs.push(Proc::spawn(
                &format!("etcd {}", i + 1),
                std::process::Command::new(&bin)
                    .arg("--name")
                    .arg(&name)
                    .arg("--data-dir")
                    .arg(&data)
                    .arg("--listen-client-urls")
                    .arg(format!("http://127.0.0.1:{client}"))
                    .arg("--advertise-client-urls")
                    .arg(format!("http://127.0.0.1:{client}"))
                    .arg("--listen-peer-urls")
                    .arg(format!("http://127.0.0.1:{peer}"))
                    .arg("--initial-advertise-peer-urls")
                    .arg(format!("http://127.0.0.1:{peer}"))
                    .arg("--initial-cluster")
                    .arg(&initial)
                    .arg("--initial-cluster-state")
                    .arg("new")
                    .arg("--initial-cluster-token")
                    .arg("kvsync-bench")
                    .arg("--logger")
                    .arg("zap")
                    .arg("--log-level")
                    .arg("warn"),
                &dir.path().join(format!("{name}.log")),
            )?);
        }
        let urls: Vec<String> = ports
            .iter()
            .map(|(c, _)| format!("http://127.0.0.1:{c}"))
            .collect();
        let http = reqwest::Client::new();
        wait_until(Duration::from_secs(60), "etcd members healthy", || async {
            for u in &urls {
                let ok = match http.get(format!("{u}/health")).send().await {
                    Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["health"] == "true"),
                    Err(_) => false,
                };
                if !ok {
                    return false;
                }
            }
            true
        })
        .await?;
        let mut leader = None;
        let mut version = String::new();
        for (i, u) in urls.iter().enumerate() {
            let s: Value = http
                .post(format!("{u}/v3/maintenance/status"))
                .body("{}")
                .send()
                .await?
                .json()
                .await?;
            version = s["version"].as_str().unwrap_or("").to_owned();
            if s["leader"] == s["header"]["member_id"] {
                leader = Some(i);
            }
        }
        Ok(Self {
            urls,
            leader: leader.context("no etcd member says it leads")?,
            version,
            procs,
            _dir: dir,
        })
    }

    /// A follower's index (the first member that is not the leader).
    pub fn follower(&self) -> usize {
        (0..self.urls.len())
            .find(|i| *i != self.leader)
            .unwrap_or(0)
    }

    pub fn system(&self) -> System {
        let urls = Arc::new(self.urls.clone());
        let u2 = urls.clone();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("an HTTP client");
        System {
            name: "etcd".into(),
            connect: Arc::new(move |i| {
                let url = format!("{}/v3/kv/put", urls[i]);
                let http = http.clone();
                async move {
                    let f: WriteFn = Arc::new(move |key: String, value: String| {
                        let (http, url) = (http.clone(), url.clone());
                        async move {
                            let body =
                                json!({"key": b64(key.as_bytes()), "value": b64(value.as_bytes())});
                            let r = http.post(&url).body(body.to_string()).send().await?;
                            let status = r.status();
                            let v: Value = r.json().await?;
                            if !status.is_success() {
                                bail!("etcd put: HTTP {status}: {v}");
                            }
                            Ok(Some(json_int(&v["header"]["revision"])))
                        }
                        .boxed()
                    });
                    Ok(f)
                }
                .boxed()
            }),
            watch: Arc::new(move |i, prefix| {
                let url = format!("{}/v3/watch", u2[i]);
                async move { etcd_watch(&url, &prefix).await }.boxed()
            }),
            procs: self
                .procs
                .iter()
                .map(|p| (p.pid(), p.name().to_owned()))
                .collect(),
        }
    }
}

/// An int64 of the gateway's JSON (a string) as text.
fn json_int(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn etcd_watch(url: &str, prefix: &str) -> Result<Feed> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1; // The range [prefix, prefix with its last byte + 1).
    }
    let body = json!({"create_request": {"key": b64(prefix.as_bytes()), "range_end": b64(&end)}});
    let resp = reqwest::Client::new()
        .post(url)
        .body(body.to_string())
        .send()
        .await
        .context("opening an etcd watch")?;
    if !resp.status().is_success() {
        bail!("etcd watch: HTTP {}", resp.status());
    }
    let (tx, arrivals) = mpsc::unbounded_channel();
    let (created_tx, created_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut created = Some(created_tx);
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            let at = Instant::now();
            buf.extend_from_slice(&chunk);
            let mut stream = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
            let mut messages = Vec::new();
            for m in stream.by_ref() {
                match m {
                    Ok(v) => messages.push(v),
                    Err(_) => break, // The rest of a message comes with the next chunk.
                }
            }
            let used = stream.byte_offset();
            buf.drain(..used);
            for m in messages {
                let r = &m["result"];
                if r["created"] == true {
                    if let Some(c) = created.take() {
                        let _ = c.send(());
                    }
                }
                for e in r["events"].as_array().into_iter().flatten() {
                    if e["type"] == "DELETE" {
                        continue;
                    }
                    let key = e["kv"]["key"]
                        .as_str()
                        .and_then(unb64)
                        .map(|k| String::from_utf8_lossy(&k).into_owned());
                    if let Some(key) = key {
                        let _ = tx.send(Arrival {
                            key,
                            version: json_int(&e["kv"]["mod_revision"]),
                            at,
                        });
                    }
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), created_rx)
        .await
        .context("etcd watch not created within 10 s")?
        .context("etcd watch closed before it was created")?;
    Ok(Feed::from_task(arrivals, task))
}

// ---------------------------------------------------------------------------------
// Redis

/// A Redis primary and one replica on loopback, killed when dropped. Persistence off
/// (no snapshots, no AOF): what Redis acknowledges is in memory.
pub struct Redis {
    pub ports: Vec<u16>,
    pub version: String,
    procs: Vec<Proc>,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub async fn start() -> Result<Self> {
        let bin = which("redis-server")
            .context("redis-server not found: scripts/install-deps.sh --peers")?;
        let dir = tempfile::Builder::new()
            .prefix("kvsync-bench-redis-")
            .tempdir()?;
        let (p, r) = (free_port()?, free_port()?);
        let mut procs = Vec::new();
        for (name, port, extra) in [
            // Without this the primary waits 5 s before it serves a replica's first sync.
            (
                "redis primary",
                p,
                vec!["--repl-diskless-sync-delay".to_owned(), "0".into()],
            ),
            (
                "redis replica",
                r,
                vec![
                    "--replicaof".to_owned(),
                    "127.0.0.1".into(),
                    p.to_string(),
                    "--notify-keyspace-events".into(),
                    "K$".into(),
                ],
            ),
        ] {
            let data = dir.path().join(port.to_string());
            std::fs::create_dir_all(&data)?;
            let proc = Proc::spawn(
                name,
                std::process::Command::new(&bin)
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                    .arg("--dir")
                    .arg(&data)
                    .args(&extra),
                &data.join("redis.log"),
            )?;
            let pid = proc.pid();
            wait_until(
                Duration::from_secs(30),
                &format!("{name} listening"),
                || async move { listens_on(pid, port) },
            )
            .await?;
            procs.push(proc);
        }
        let mut replica = Resp::connect(r).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Reply::Bulk(Some(b)) = replica.cmd(&["INFO", "replication"]).await? {
                if String::from_utf8_lossy(&b).contains("master_link_status:up") {
                    break;
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the Redis replica not in sync after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let version = match replica.cmd(&["INFO", "server"]).await? {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b)
                .lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .unwrap_or("")
                .trim()
                .to_owned(),
            _ => String::new(),
        };
        Ok(Self {
            ports: vec![p, r],
            version,
            procs,
            _dir: dir,
        })
    }

    pub fn system(&self) -> System {
        let ports = Arc::new(self.ports.clone());
        let p2 = ports.clone();
        System {
            name: "Redis".into(),
            connect: Arc::new(move |i| {
                let port = ports[i];
                async move {
                    let conn = Arc::new(Mutex::new(Resp::connect(port).await?));
                    let f: WriteFn = Arc::new(move |key: String, value: String| {
                        let conn = conn.clone();
                        async move {
                            match conn.lock().await.cmd(&["SET", &key, &value]).await? {
                                Reply::Simple(_) => Ok(None),
                                other => bail!("SET: {other:?}"),
                            }
                        }
                        .boxed()
                    });
                    Ok(f)
                }
                .boxed()
            }),
            watch: Arc::new(move |i, prefix| {
                let port = p2[i];
                async move { redis_watch(port, &prefix).await }.boxed()
            }),
            procs: self
                .procs
                .iter()
                .map(|p| (p.pid(), p.name().to_owned()))
                .collect(),
        }
    }
}

const KEYSPACE: &str = "__keyspace@0__:";

async fn redis_watch(port: u16, prefix: &str) -> Result<Feed> {
    let mut conn = Resp::connect(port).await?;
    conn.send(&["PSUBSCRIBE", &format!("{KEYSPACE}{prefix}*")])
        .await?;
    match conn.read().await? {
        Reply::Array(a) if matches!(a.first(), Some(Reply::Bulk(Some(k))) if k == b"psubscribe") => {
        }
        other => bail!("PSUBSCRIBE: {other:?}"),
    }
    let (tx, arrivals) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(reply) = conn.read().await {
            let at = Instant::now();
            let Reply::Array(parts) = reply else { continue };
            if let [Reply::Bulk(Some(kind)), _, Reply::Bulk(Some(channel)), Reply::Bulk(Some(event))] =
                parts.as_slice()
            {
                if kind != b"pmessage" || event != b"set" {
                    continue;
                }
                let channel = String::from_utf8_lossy(channel);
                if let Some(key) = channel.strip_prefix(KEYSPACE) {
                    let _ = tx.send(Arrival {
                        key: key.to_owned(),
                        version: String::new(),
                        at,
                    });
                }
            }
        }
    });
    Ok(Feed::from_task(arrivals, task))
}

/// A RESP2 reply (the payloads of some are only shown in error messages).
#[derive(Debug)]
#[allow(dead_code)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// A RESP2 connection: commands as arrays of bulk strings, replies parsed as they come.
pub struct Resp {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Resp {
    pub async fn connect(port: u16) -> Result<Self> {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Self {
            r: BufReader::new(r),
            w,
        })
    }

    pub async fn send(&mut self, args: &[&str]) -> Result<()> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&buf).await?;
        Ok(())
    }

    pub async fn cmd(&mut self, args: &[&str]) -> Result<Reply> {
        self.send(args).await?;
        match self.read().await? {
            Reply::Error(e) => bail!("redis: {e}"),
            r => Ok(r),
        }
    }

    pub fn read(&mut self) -> BoxFuture<'_, Result<Reply>> {
        async move {
            let mut line = String::new();
            if self.r.read_line(&mut line).await? == 0 {
                bail!("redis closed the connection");
            }
            let line = line.trim_end_matches("\r\n");
            let (kind, rest) = line.split_at(1.min(line.len()));
            Ok(match kind {
                "+" => Reply::Simple(rest.to_owned()),
                "-" => Reply::Error(rest.to_owned()),
                ":" => Reply::Int(rest.parse()?),
                "$" => {
                    let n: i64 = rest.parse()?;
                    if n < 0 {
                        Reply::Bulk(None)
                    } else {
                        let mut b = vec![0; n as usize + 2];
                        self.r.read_exact(&mut b).await?;
                        b.truncate(n as usize);
                        Reply::Bulk(Some(b))
                    }
                }
                "*" => {
                    let n: i64 = rest.parse()?;
                    let mut items = Vec::new();
                    for _ in 0..n.max(0) {
                        items.push(self.read().await?);
                    }
                    Reply::Array(items)
                }
                _ => bail!("redis: unexpected reply {line:?}"),
            })
        }
        .boxed()
    }
}

// ---------------------------------------------------------------------------------

/// `name` on PATH (or in /usr/sbin, where some packages put servers).
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            Path::new("/usr/sbin").to_owned(),
            Path::new("/usr/bin").to_owned(),
        ])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (etcd's gateway carries keys and values so).
pub fn b64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn unb64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = B64.iter().position(|b| *b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(b64(plain.as_bytes()), coded);
            assert_eq!(unb64(coded).unwrap(), plain.as_bytes());
        }
        assert!(unb64("Zm9v!").is_none());
    }
}
