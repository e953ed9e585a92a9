//! A node joining a cluster that holds many pairs written many times: from its peers'
//! state (the default) and by replaying the topic (`KVSYNC_JOIN_FROM_STATE=false`), one
//! after the other on the same cluster. A local cluster of two nodes gets `--pairs`
//! pairs written `--writes-per-key` times each, as schema-2 events produced straight to
//! its topic (as a third node's PUTs would be); once both nodes have applied them, each joining
//! node is timed from its start until it is ready and holds every pair (its digest equals
//! the others').

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use futures::StreamExt;
use kvsync_core::{Event, Key, NodeId, PairState, Timestamp, Version};
use kvsync_testkit::Client;
use serde::Serialize;
use tokio::time::Instant;

use crate::{
    progress,
    stats::round3,
    target::{cpu_seconds, load_average, run_id, text, wait_members_live, Target, TargetArgs},
};

/// Events in flight at once while loading the topic.
const LOAD_IN_FLIGHT: usize = 4096;
/// How often the joining node's readiness and progress are asked (cheap requests: no
/// database scan).
const POLL: Duration = Duration::from_millis(100);
/// Least time between two digest rounds (each reads every pair on every node).
const DIGEST_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinMode {
    /// The node's default: an empty node asks a live peer for its state.
    State,
    /// KVSYNC_JOIN_FROM_STATE=false: the node replays the whole topic.
    Replay,
}

impl JoinMode {
    fn label(self) -> &'static str {
        match self {
            JoinMode::State => "from state",
            JoinMode::Replay => "by replay",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct JoinArgs {
    /// Pairs the cluster holds before the joins. The issue's example, 20,000 pairs
    /// written 10 times (200,000 events), takes well over 15 minutes on a 2-core machine
    /// (see bench/README.md); the default is a quarter of it.
    #[arg(long, default_value_t = 5_000)]
    pub pairs: u64,
    /// Times each pair is written: the topic holds pairs × this events. Written round by
    /// round (every pair once per round, in a new random order each round).
    #[arg(long, default_value_t = 10)]
    pub writes_per_key: u64,
    /// Size of each value in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// The joins to make, in this order, each by a new node with a database of its own.
    /// The replay goes first by default so that it replays exactly the loaded events
    /// (a join from state adds a re-publication of every pair to the topic).
    #[arg(
        long,
        value_enum,
        default_value = "replay,state",
        value_delimiter = ','
    )]
    pub modes: Vec<JoinMode>,
    /// Longest wait for a joining node to hold every pair (seconds).
    #[arg(long, default_value_t = 1800.0)]
    pub join_timeout: f64,
    /// Longest wait for the two nodes to apply the loaded events (seconds).
    #[arg(long, default_value_t = 1800.0)]
    pub load_timeout: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct JoinResult {
    pub pairs: u64,
    pub writes_per_key: u64,
    /// Events loaded onto the topic: pairs × writes per key.
    pub events: u64,
    pub value_bytes: usize,
    /// Producing them, and at what rate.
    pub load_seconds: f64,
    pub load_events_per_s: f64,
    /// From the last event produced until both nodes had applied everything and held
    /// equal digests.
    pub cluster_applied_after_s: f64,
    /// Events each of the two nodes applied by then.
    pub cluster_events_applied: Vec<u64>,
    pub joins: Vec<JoinRun>,
    /// The machine's load average (1, 5, 15 min) before the load and after the joins.
    pub load_average_before: String,
    pub load_average_after: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct JoinRun {
    pub mode: JoinMode,
    pub label: String,
    pub node: String,
    /// Records on the data topic when the node started (sum over partitions).
    pub topic_records_before: i64,
    /// Records added to it during the join (re-publications of the snapshot and of
    /// anti-entropy repairs).
    pub topic_records_added: i64,
    /// From spawning the process until it answered HTTP.
    pub listening_s: f64,
    /// Until `/readyz` first said ready.
    pub ready_s: Option<f64>,
    /// Until it was ready and its consumer had caught up with the topic.
    pub caught_up_s: Option<f64>,
    /// Until it was ready and held every pair: the end of the first digest round (its
    /// digest and both others' equal, with `pairs` keys). The round's length is the
    /// figure's resolution.
    pub all_pairs_s: Option<f64>,
    pub digest_round_s: Option<f64>,
    pub timed_out: bool,
    /// The joiner's `events_applied` counter when it was first ready, and at the end.
    pub events_applied_at_ready: Option<u64>,
    pub events_applied: Option<u64>,
    pub events_skipped_stale: Option<u64>,
    /// Conflicts the joiner recorded (none expected: every key has one writer).
    pub conflicts: Option<u64>,
    /// Over the two other nodes, during the join: snapshots served, and keys
    /// re-published by anti-entropy repair.
    pub snapshots_served: u64,
    pub repair_keys_republished: u64,
    /// The joiner's CPU time and peak resident memory until it held every pair.
    pub joiner_cpu_s: Option<f64>,
    pub joiner_peak_rss_kib: Option<u64>,
    /// The joiner's and the serving peer's log lines about the join.
    pub log: Vec<String>,
}

pub async fn run(target_args: &TargetArgs, args: &JoinArgs) -> Result<JoinResult> {
    anyhow::ensure!(
        target_args.node_a.is_none(),
        "join starts nodes of its own: it needs a local cluster (no --node-a/--node-b)"
    );
    anyhow::ensure!(
        args.pairs > 0 && args.writes_per_key > 0,
        "--pairs and --writes-per-key must be positive"
    );
    anyhow::ensure!(!args.modes.is_empty(), "no --modes given");
    let mut targs = target_args.clone();
    // The joins' own log lines (info) say what happened; requests are not logged at info.
    if !targs.node_env.iter().any(|(k, _)| k == "KVSYNC_LOG") {
        targs.node_env.push(("KVSYNC_LOG".into(), "info".into()));
    }
    let load_average_before = load_average();
    let mut target = Target::open_nodes(&targs, 2).await?;
    wait_members_live(&target.nodes, 2, Duration::from_secs(60)).await?;

    let events = args.pairs * args.writes_per_key;
    eprintln!(
        "join: producing {events} events ({} pairs × {}) to the topic",
        args.pairs, args.writes_per_key
    );
    let load_started = Instant::now();
    load(&target, args).await?;
    let load_seconds = load_started.elapsed().as_secs_f64();
    let load_end_ms = now_ms();
    eprintln!(
        "join: produced in {load_seconds:.1} s ({:.0} events/s); waiting for both nodes to apply them",
        events as f64 / load_seconds
    );
    let settled_from = Instant::now();
    let peers = target.nodes.clone();
    quiet(
        &peers,
        load_end_ms,
        Some(args.pairs),
        Duration::from_secs_f64(args.load_timeout),
    )
    .await
    .context("the two nodes applying the loaded events")?;
    let cluster_applied_after_s = settled_from.elapsed().as_secs_f64();
    let mut cluster_events_applied = Vec::new();
    for p in &peers {
        cluster_events_applied.push(p.counter("events_applied").await?);
    }
    eprintln!(
        "join: both nodes hold the {} pairs, {cluster_applied_after_s:.1} s after the last event \
         (events applied: {cluster_events_applied:?})",
        args.pairs
    );

    let mut joins = Vec::new();
    for mode in &args.modes {
        let run = join_one(&mut target, &peers, *mode, args).await?;
        eprintln!(
            "join {}: ready after {}, every pair after {}, {} events applied",
            mode.label(),
            secs(run.ready_s),
            secs(run.all_pairs_s),
            run.events_applied
                .map_or_else(|| "?".to_owned(), |n| n.to_string())
        );
        joins.push(run);
        // The joiner stops; what its join made the others publish settles before the next.
        quiet(
            &peers,
            now_ms(),
            None,
            Duration::from_secs_f64(args.load_timeout),
        )
        .await
        .context("the two nodes settling after a join")?;
    }
    Ok(JoinResult {
        pairs: args.pairs,
        writes_per_key: args.writes_per_key,
        events,
        value_bytes: args.value_bytes,
        load_seconds: round3(load_seconds),
        load_events_per_s: round3(events as f64 / load_seconds),
        cluster_applied_after_s: round3(cluster_applied_after_s),
        cluster_events_applied,
        joins,
        load_average_before,
        load_average_after: load_average(),
    })
}

fn secs(s: Option<f64>) -> String {
    s.map_or_else(|| "(never)".to_owned(), |s| format!("{s:.1} s"))
}

/// Produces every write as an event of origin `bench-load`, made as a node makes a PUT
/// (the new list replaces the key's current state, which the event then carries whole):
/// round by round, each round every key once in a new random order, versions increasing
/// (a hybrid clock of its own). Produced with a batching producer: the node's
/// `Publisher` sends each event alone (it is made for latency), which this broker takes
/// at a few hundred events a second.
async fn load(target: &Target, args: &JoinArgs) -> Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let cluster = target.cluster.as_ref().context("a local cluster")?;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.broker.addr())
        .set("client.id", "kvsync-bench-load")
        .set("acks", "all")
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set("message.timeout.ms", "60000")
        // As the node's publisher: one key's events in one partition, where it puts them.
        .set("partitioner", "murmur2_random")
        .create()
        .context("the load's Kafka producer")?;
    let topic = cluster.topic().to_owned();
    let origin = NodeId::parse("bench-load")?;
    let prefix = format!("bench-{}/pairs/", run_id());
    let (pairs, rounds, bytes) = (args.pairs, args.writes_per_key, args.value_bytes);
    let keys: Vec<Key> = (0..pairs)
        .map(|i| Key::parse(format!("{prefix}{i:07}")))
        .collect::<Result<_, _>>()?;
    let mut states: Vec<PairState> = vec![PairState::default(); keys.len()];
    let mut rng = fastrand::Rng::new();
    let mut value_rng = fastrand::Rng::new();
    let mut clock = (0u64, 0u32);
    let pb = progress::bar(pairs * rounds, "join: events to the topic");
    let mut order: Vec<usize> = (0..keys.len()).collect();
    let writes = (0..rounds).flat_map(move |_| {
        rng.shuffle(&mut order);
        order.clone()
    });
    let mut failed = 0u64;
    let mut first_error = None;
    let mut sends = futures::stream::iter(writes)
        .map(|i| -> Result<(String, Vec<u8>)> {
            let wall = now_ms();
            clock = if wall > clock.0 {
                (wall, 0)
            } else {
                (clock.0, clock.1 + 1)
            };
            let key = &keys[i];
            let version = Version::new(Timestamp::new(clock.0, clock.1), origin.clone());
            let value = text(&mut value_rng, bytes);
            states[i].replace(vec![value], &version, key.as_str().len())?;
            let event = Event::of_state(key.clone(), version, states[i].clone());
            Ok((key.as_str().to_owned(), event.encode()))
        })
        .map(|record| {
            let (producer, topic) = (&producer, &topic);
            async move {
                let (key, payload) = record?;
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(&payload),
                        Duration::from_secs(60),
                    )
                    .await
                    .map_err(|(e, _)| anyhow::Error::from(e))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(LOAD_IN_FLIGHT);
    while let Some(sent) = sends.next().await {
        if let Err(e) = sent {
            failed += 1;
            first_error.get_or_insert(e.to_string());
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    if failed > 0 {
        bail!(
            "{failed} events could not be produced; the first: {}",
            first_error.unwrap_or_default()
        );
    }
    Ok(())
}

/// Waits until every one of `nodes` has applied everything the topic held at `since_ms`
/// (its consumer caught up after then) and all hold equal digests (with `pairs` keys,
/// if given).
async fn quiet(
    nodes: &[Client],
    since_ms: u64,
    pairs: Option<u64>,
    timeout: Duration,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let last;
        let mut caught_up = true;
        for n in nodes {
            caught_up &= self_caught_up_ms(n).await.is_some_and(|c| c >= since_ms);
        }
        if caught_up {
            let digests = futures::future::join_all(nodes.iter().map(Client::digest)).await;
            let digests: Vec<_> = digests.into_iter().map(|d| d.ok()).collect();
            if let Some(Some(first)) = digests.first() {
                if digests.iter().all(|d| d.as_ref() == Some(first))
                    && pairs.is_none_or(|p| first.0 == p)
                {
                    return Ok(());
                }
            }
            last = format!("digests {digests:?}");
        } else {
            last = "a consumer has not caught up".into();
        }
        if started.elapsed() > timeout {
            bail!("not settled within {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// When the node last had applied everything the broker held (its own entry in
/// `/api/cluster`; no database access).
async fn self_caught_up_ms(node: &Client) -> Option<u64> {
    let view = node.get_json("/api/cluster").await.ok()?;
    let me = view["members"]
        .as_array()?
        .iter()
        .find(|m| m["self"] == true)?;
    let at = humantime::parse_rfc3339(me["caught_up_at"].as_str()?).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

/// Sum of the data topic's high watermarks, as `node` last saw them.
async fn topic_records(node: &Client) -> Result<i64> {
    let info = node.node_info().await?;
    Ok(info["consumer"]["partitions"]
        .as_array()
        .context("consumer partitions in /api/node")?
        .iter()
        .filter_map(|p| p["high_watermark"].as_i64())
        .sum())
}

/// The `repair` section of `/api/cluster`: (snapshots served, keys re-published).
async fn repair_counters(node: &Client) -> Result<(u64, u64)> {
    let view = node.get_json("/api/cluster").await?;
    let r = &view["repair"];
    Ok((
        r["snapshots_served"].as_u64().unwrap_or(0),
        r["keys_republished"].as_u64().unwrap_or(0),
    ))
}

async fn join_one(
    target: &mut Target,
    peers: &[Client],
    mode: JoinMode,
    args: &JoinArgs,
) -> Result<JoinRun> {
    let topic_before = topic_records(&peers[0]).await?;
    let mut repair_before = Vec::new();
    for p in peers {
        repair_before.push(repair_counters(p).await?);
    }
    let env: Vec<(String, String)> = match mode {
        JoinMode::State => Vec::new(),
        JoinMode::Replay => vec![("KVSYNC_JOIN_FROM_STATE".into(), "false".into())],
    };
    let cluster = target.cluster.as_mut().context("a local cluster")?;
    // Where the two nodes' logs stand: only what they log from here on is about this join.
    let log_from: Vec<usize> = cluster.nodes[..2].iter().map(|n| n.log().len()).collect();
    eprintln!("join {}: starting a node", mode.label());
    let start_ms = now_ms();
    let t0 = Instant::now();
    let node = cluster.start_node(&env).await?;
    let listening_s = t0.elapsed().as_secs_f64();
    let (client, pid, id) = (node.client(), node.pid(), node.spec.id.clone());
    let index = cluster.nodes.len() - 1;
    let cpu_before = pid.and_then(cpu_seconds);

    let deadline = t0 + Duration::from_secs_f64(args.join_timeout);
    let (mut ready_s, mut caught_up_s, mut all_pairs_s, mut digest_round_s) =
        (None, None, None, None);
    let mut applied_at_ready = None;
    let mut last_digest: Option<Instant> = None;
    let mut cpu_s = None;
    let mut rss = None;
    let everyone: Vec<Client> = std::iter::once(client.clone())
        .chain(peers.iter().cloned())
        .collect();
    while Instant::now() < deadline {
        if ready_s.is_none() && client.ready().await {
            ready_s = Some(t0.elapsed().as_secs_f64());
            applied_at_ready = client.counter("events_applied").await.ok();
        }
        if ready_s.is_some()
            && caught_up_s.is_none()
            && self_caught_up_ms(&client)
                .await
                .is_some_and(|c| c >= start_ms)
        {
            caught_up_s = Some(t0.elapsed().as_secs_f64());
        }
        if caught_up_s.is_some() && last_digest.is_none_or(|t| t.elapsed() >= DIGEST_EVERY) {
            let round = Instant::now();
            last_digest = Some(round);
            let digests = futures::future::join_all(everyone.iter().map(Client::digest)).await;
            let digests: Vec<_> = digests.into_iter().map(|d| d.ok()).collect();
            if let Some(Some(first)) = digests.first() {
                if first.0 == args.pairs && digests.iter().all(|d| d.as_ref() == Some(first)) {
                    all_pairs_s = Some(t0.elapsed().as_secs_f64());
                    digest_round_s = Some(round.elapsed().as_secs_f64());
                    cpu_s = pid
                        .and_then(cpu_seconds)
                        .zip(cpu_before)
                        .map(|(a, b)| a - b);
                    rss = cluster.nodes[index].memory_kib().map(|(_, peak)| peak);
                    break;
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    let timed_out = all_pairs_s.is_none();
    let applied = client.counter("events_applied").await.ok();
    let stale = client.counter("events_skipped_stale").await.ok();
    let conflicts = client.counter("conflicts").await.ok();
    let topic_after = topic_records(&peers[0]).await?;
    let (mut served, mut repaired) = (0, 0);
    for (p, (s0, r0)) in peers.iter().zip(&repair_before) {
        let (s1, r1) = repair_counters(p).await?;
        served += s1.saturating_sub(*s0);
        repaired += r1.saturating_sub(*r0);
    }
    let mut log: Vec<String> = log_lines(&cluster.nodes[index].log(), &id);
    for (n, from) in cluster.nodes[..2].iter().zip(log_from) {
        let text = n.log();
        log.extend(log_lines(text.get(from..).unwrap_or_default(), &n.spec.id));
    }
    // The joiner goes: the next join starts from the same two nodes.
    cluster.nodes[index]
        .terminate(Duration::from_secs(30))
        .await?;
    cluster.mongos[index].kill();
    Ok(JoinRun {
        mode,
        label: mode.label().to_owned(),
        node: id,
        topic_records_before: topic_before,
        topic_records_added: topic_after - topic_before,
        listening_s: round3(listening_s),
        ready_s: ready_s.map(round3),
        caught_up_s: caught_up_s.map(round3),
        all_pairs_s: all_pairs_s.map(round3),
        digest_round_s: digest_round_s.map(round3),
        timed_out,
        events_applied_at_ready: applied_at_ready,
        events_applied: applied,
        events_skipped_stale: stale,
        conflicts,
        snapshots_served: served,
        repair_keys_republished: repaired,
        joiner_cpu_s: cpu_s.map(round3),
        joiner_peak_rss_kib: rss,
        log,
    })
}

/// A node's log lines about joins, snapshots and repairs (at most 30), each prefixed
/// with the node's id.
fn log_lines(log: &str, node: &str) -> Vec<String> {
    const WORDS: [&str; 9] = [
        "join",
        "owns partitions",
        "snapshot",
        "state published",
        "asking a peer",
        "replaying",
        "differs",
        "re-published",
        "its state",
    ];
    log.lines()
        .filter(|l| WORDS.iter().any(|w| l.contains(w)) && !l.contains("concurrent writes"))
        .take(30)
        .map(|l| format!("{node}: {}", strip_ansi(l).trim()))
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl JoinResult {
    pub fn markdown(&self, s: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            s,
            "## A third node joins: from its peers' state, and by replaying the topic\n"
        );
        let _ = writeln!(
            s,
            "A 2-node cluster held {} pairs written as {} events ({} writes per pair, {}-byte values), produced \
             straight to its topic by the benchmark (origin `bench-load`) in {:.1} s ({:.0} events/s); both nodes \
             had applied them and held equal digests {:.1} s after the last one (events applied: {}). Then each \
             join below started a new node with an empty database of its own, timed from spawning its process; \
             after each, the joiner was stopped and the two nodes settled before the next. Load average of the \
             machine (1, 5, 15 min): {} before, {} after.\n",
            self.pairs,
            self.events,
            self.writes_per_key,
            self.value_bytes,
            self.load_seconds,
            self.load_events_per_s,
            self.cluster_applied_after_s,
            self.cluster_events_applied
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" and "),
            self.load_average_before,
            self.load_average_after
        );
        let mut header = String::from("| |");
        let mut rule = String::from("|---|");
        for j in &self.joins {
            let _ = write!(header, " {} ({}) |", j.label, j.node);
            rule.push_str("--:|");
        }
        let _ = writeln!(s, "{header}\n{rule}");
        let row = |s: &mut String, name: &str, cell: &dyn Fn(&JoinRun) -> String| {
            let _ = write!(s, "| {name} |");
            for j in &self.joins {
                let _ = write!(s, " {} |", cell(j));
            }
            s.push('\n');
        };
        let sec = |v: Option<f64>| v.map_or_else(|| "never".to_owned(), |v| format!("{v:.1} s"));
        let num = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        row(s, "answers HTTP after", &|j| sec(Some(j.listening_s)));
        row(s, "ready (`/readyz`) after", &|j| sec(j.ready_s));
        row(s, "ready and caught up with the topic after", &|j| {
            sec(j.caught_up_s)
        });
        row(s, "**ready and holds every pair after**", &|j| {
            format!("**{}**", sec(j.all_pairs_s))
        });
        row(s, "resolution (one digest round of 3 nodes)", &|j| {
            j.digest_round_s
                .map_or_else(String::new, |v| format!("{v:.2} s"))
        });
        row(s, "**events the joiner applied**", &|j| {
            format!("**{}**", num(j.events_applied))
        });
        row(s, "of which before it was first ready", &|j| {
            num(j.events_applied_at_ready)
        });
        row(s, "stale events it skipped", &|j| {
            num(j.events_skipped_stale)
        });
        row(s, "conflicts it recorded", &|j| num(j.conflicts));
        row(s, "records on the topic when it started", &|j| {
            j.topic_records_before.to_string()
        });
        row(s, "records added to the topic during the join", &|j| {
            j.topic_records_added.to_string()
        });
        row(s, "snapshots served by the peers", &|j| {
            j.snapshots_served.to_string()
        });
        row(
            s,
            "keys re-published by the peers' anti-entropy repair",
            &|j| j.repair_keys_republished.to_string(),
        );
        row(s, "joiner's CPU time until then", &|j| {
            j.joiner_cpu_s
                .map_or_else(String::new, |v| format!("{v:.1} s"))
        });
        row(s, "joiner's peak memory (VmHWM)", &|j| {
            j.joiner_peak_rss_kib
                .map_or_else(String::new, |k| format!("{:.1} MiB", k as f64 / 1024.0))
        });
        s.push('\n');
        for j in &self.joins {
            if j.timed_out {
                let _ = writeln!(
                    s,
                    "The join {} did not end with every pair on the joiner within the timeout.\n",
                    j.label
                );
            }
            if !j.log.is_empty() {
                let _ = writeln!(s, "Log lines of the join {}:\n\n```text", j.label);
                for l in &j.log {
                    let _ = writeln!(s, "{l}");
                }
                let _ = writeln!(s, "```\n");
            }
        }
    }
}
