//! Writes that wait for their replication: `PUT /api/pairs/{key}?wait=all` beside a plain
//! PUT on the same cluster, each cluster size on a cluster of its own. Every answer of a
//! waiting write must say `all` (header `Kvsync-Replicated` and the body's
//! `replication`), and every peer must serve the written version right after it.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use kvsync_testkit::Client;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::{
    latency::ms,
    progress, sse,
    stats::{Samples, Stats},
    target::{load_average, run_id, text, wait_members_live, Target, TargetArgs},
};

#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Cluster sizes, one local cluster each (with --node-a/--node-b: the cluster the
    /// given nodes belong to, whatever its size).
    #[arg(long, default_value = "2,3", value_delimiter = ',')]
    pub nodes: Vec<usize>,
    /// Measured writes of each kind (plain and wait=all) per cluster size. The kinds
    /// alternate, so both meet the same conditions.
    #[arg(long, default_value_t = 300)]
    pub count: usize,
    /// Unmeasured writes of each kind first.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Writes per second, both kinds together, open loop. Default: one at a time, each
    /// sent once the previous was answered (and checked).
    #[arg(long)]
    pub rate: Option<f64>,
    /// The waiting writes' timeout_ms.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Size of each write's value in bytes.
    #[arg(long, default_value_t = 64)]
    pub value_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct WaitResult {
    pub rate_per_s: Option<f64>,
    pub timeout_ms: u64,
    pub runs: Vec<WaitRun>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WaitRun {
    /// Members of the cluster (the writing node included).
    pub nodes: usize,
    /// Live peers the writing node listed before the run: what wait=all waits for.
    pub peers: usize,
    /// Measured writes of each kind.
    pub writes: usize,
    /// Round trip of a plain PUT on node 1.
    pub plain: Stats,
    /// Round trip of `PUT ...?wait=all` on node 1.
    pub wait_all: Stats,
    /// `replication.waited_ms` as the node reported it (whole milliseconds): from the
    /// database write until enough peers had confirmed.
    pub node_waited: Stats,
    /// From just before the PUT until the change arrived on the change feed
    /// (`/api/events`) of the last of the other nodes: the replication itself.
    pub plain_on_every_peer: Stats,
    pub wait_all_on_every_peer: Stats,
    /// A waiting write's answer after its change arrived on the last peer's feed: what
    /// the confirmation (the peers' heartbeats) took on top of the replication.
    pub confirmation_after_last_peer: Stats,
    /// Answers of the waiting writes by `Kvsync-Replicated`.
    pub answered_all: usize,
    pub answered_partial: usize,
    pub answered_none: usize,
    /// Waiting writes that said `all` while their body disagreed (timed out, fewer
    /// peers confirmed than required, or fewer required than there are peers).
    pub inconsistent: usize,
    /// Failed requests, either kind.
    pub http_errors: usize,
    /// Reads on a peer, right after an `all`, that did not return the written version.
    pub not_on_peer: usize,
    /// Every one of the above that is not an `all`: partial and none answers, failed
    /// requests, inconsistent answers and reads that missed.
    pub errors: usize,
    pub error_samples: Vec<String>,
    pub wait_quantiles: Vec<f64>,
    pub plain_quantiles: Vec<f64>,
    /// The machine's load average (1, 5, 15 min) before and after this cluster's run.
    pub load_average_before: String,
    pub load_average_after: String,
}

pub async fn run(target_args: &TargetArgs, args: &WaitArgs) -> Result<WaitResult> {
    anyhow::ensure!(args.count > 0, "--count must be positive");
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate > 0.0, "--rate must be positive");
    }
    let given = target_args.node_a.is_some();
    let sizes = if given { vec![2] } else { args.nodes.clone() };
    let mut runs = Vec::new();
    for n in sizes {
        let target = Target::open_nodes(target_args, n).await?;
        if target.local {
            wait_members_live(&target.nodes, n, Duration::from_secs(60)).await?;
        }
        let run = run_one(&target, args).await?;
        eprintln!(
            "wait: {} nodes: plain p50 {:.2} ms, wait=all p50 {:.2} ms, {} errors",
            run.nodes, run.plain.p50_ms, run.wait_all.p50_ms, run.errors
        );
        runs.push(run);
        // The cluster stops here, before the next one starts.
        drop(target);
    }
    Ok(WaitResult {
        rate_per_s: args.rate,
        timeout_ms: args.timeout_ms,
        runs,
    })
}

/// What one write saw.
struct Outcome {
    waiting: bool,
    measured: bool,
    key: String,
    /// The version written (empty if the write failed).
    version: String,
    t0: Instant,
    answered: Instant,
    round_trip_ms: f64,
    /// The failure, if the request failed.
    error: Option<String>,
    /// `Kvsync-Replicated` of a waiting write.
    replicated: Option<String>,
    /// Its body's `replication`.
    replication: Value,
    /// Peers that did not serve the written version right after the answer.
    missed: Vec<String>,
}

async fn run_one(target: &Target, args: &WaitArgs) -> Result<WaitRun> {
    let load_average_before = load_average();
    let view = target.a.get_json("/api/cluster").await?;
    let me = view["node"].as_str().unwrap_or_default().to_owned();
    let members: Vec<String> = view["members"]
        .as_array()
        .context("/api/cluster lists no members")?
        .iter()
        .filter(|m| m["status"] == "live")
        .filter_map(|m| m["node"].as_str().map(str::to_owned))
        .collect();
    let peers = members.iter().filter(|m| **m != me).count();
    let nodes = if target.local {
        target.nodes.len()
    } else {
        members.len()
    };
    let others: Vec<Client> = target.nodes[1..].to_vec();
    let prefix = format!("bench-{}/wait/{nodes}/", run_id());
    let mut feeds = Vec::new();
    for peer in &others {
        feeds.push(sse::subscribe(peer, &prefix).await?);
    }
    let total = 2 * (args.warmup + args.count);
    let pb = progress::bar(total as u64, &format!("wait: {nodes} nodes"));
    let mut outcomes = Vec::with_capacity(total);
    let mut rng = fastrand::Rng::new();
    let mut ticker = args
        .rate
        .map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r)));
    let mut handles = Vec::new();
    for i in 0..total {
        let waiting = i % 2 == 1;
        let measured = i >= 2 * args.warmup;
        let key = format!("{prefix}{}/{i}", if waiting { "wait-all" } else { "plain" });
        let value = text(&mut rng, args.value_bytes);
        let (a, others, timeout_ms) = (target.a.clone(), others.clone(), args.timeout_ms);
        let write =
            async move { write_one(&a, &others, key, value, waiting, measured, timeout_ms).await };
        match &mut ticker {
            Some(t) => {
                t.tick().await;
                handles.push(tokio::spawn(write));
            }
            None => outcomes.push(write.await),
        }
        pb.inc(1);
    }
    for h in handles {
        outcomes.push(h.await?);
    }
    pb.finish_and_clear();
    // When each measured write reached each peer's change feed.
    let expected: std::collections::HashMap<&str, &str> = outcomes
        .iter()
        .filter(|o| o.measured && !o.version.is_empty())
        .map(|o| (o.key.as_str(), o.version.as_str()))
        .collect();
    let mut arrivals: std::collections::HashMap<String, Vec<Instant>> =
        std::collections::HashMap::new();
    for feed in &mut feeds {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = 0;
        while seen < expected.len() {
            match tokio::time::timeout_at(deadline, feed.arrivals.recv()).await {
                Ok(Some(a)) => {
                    if expected.get(a.key.as_str()) == Some(&a.version.as_str()) {
                        seen += 1;
                        arrivals.entry(a.key).or_default().push(a.at);
                    }
                }
                _ => break,
            }
        }
    }
    let last_arrival = |o: &Outcome| -> Option<Instant> {
        let at = arrivals.get(&o.key)?;
        (at.len() == feeds.len()).then(|| at.iter().copied().max())?
    };

    let (mut plain, mut wait_all, mut node_waited) =
        (Samples::default(), Samples::default(), Samples::default());
    let (mut plain_peers, mut wait_peers, mut confirmation) =
        (Samples::default(), Samples::default(), Samples::default());
    let (mut all, mut partial, mut none, mut inconsistent, mut http_errors, mut not_on_peer) =
        (0, 0, 0, 0, 0, 0);
    let mut samples = Vec::new();
    for o in outcomes.iter().filter(|o| o.measured) {
        if let Some(e) = &o.error {
            http_errors += 1;
            samples.push(e.clone());
            continue;
        }
        let last = last_arrival(o);
        if !o.waiting {
            plain.push(o.round_trip_ms);
            if let Some(at) = last {
                plain_peers.push(ms(at.saturating_duration_since(o.t0)));
            }
            continue;
        }
        wait_all.push(o.round_trip_ms);
        if let Some(at) = last {
            wait_peers.push(ms(at.saturating_duration_since(o.t0)));
            confirmation.push(ms(o.answered.saturating_duration_since(at)));
        }
        if let Some(w) = o.replication["waited_ms"].as_f64() {
            node_waited.push(w);
        }
        match o.replicated.as_deref() {
            Some("all") => all += 1,
            Some("partial") => partial += 1,
            _ => none += 1,
        }
        if o.replicated.as_deref() != Some("all") {
            samples.push(format!(
                "answered {:?}: {}",
                o.replicated.as_deref().unwrap_or("(no header)"),
                o.replication
            ));
            continue;
        }
        let r = &o.replication;
        let confirmed = r["confirmed"].as_array().map_or(0, Vec::len);
        let required = r["required"].as_u64().unwrap_or(0) as usize;
        if r["timed_out"] != false || confirmed < required || required < peers {
            inconsistent += 1;
            samples.push(format!("answered all with {r}"));
        }
        if !o.missed.is_empty() {
            not_on_peer += 1;
            samples.push(format!(
                "after an `all`, not yet on {}",
                o.missed.join(", ")
            ));
        }
    }
    samples.truncate(5);
    Ok(WaitRun {
        nodes,
        peers,
        writes: args.count,
        plain: plain.stats().rounded(),
        wait_all: wait_all.stats().rounded(),
        node_waited: node_waited.stats().rounded(),
        plain_on_every_peer: plain_peers.stats().rounded(),
        wait_all_on_every_peer: wait_peers.stats().rounded(),
        confirmation_after_last_peer: confirmation.stats().rounded(),
        answered_all: all,
        answered_partial: partial,
        answered_none: none,
        inconsistent,
        http_errors,
        not_on_peer,
        errors: partial + none + inconsistent + http_errors + not_on_peer,
        error_samples: samples,
        wait_quantiles: wait_all.quantiles(),
        plain_quantiles: plain.quantiles(),
        load_average_before,
        load_average_after: load_average(),
    })
}

/// One PUT (waiting for all peers if `waiting`), timed; after a waiting one, a read of
/// the key on every other node.
async fn write_one(
    a: &Client,
    others: &[Client],
    key: String,
    value: String,
    waiting: bool,
    measured: bool,
    timeout_ms: u64,
) -> Outcome {
    let mut req = a
        .request(reqwest::Method::PUT, &a.pair_url(&key))
        .json(&json!({ "values": [value] }));
    if waiting {
        req = req.query(&[
            ("wait", "all".to_owned()),
            ("timeout_ms", timeout_ms.to_string()),
        ]);
    }
    let t0 = Instant::now();
    let answer = async {
        let resp = req.send().await?;
        let status = resp.status();
        let replicated = resp
            .headers()
            .get("kvsync-replicated")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body: Value = resp.json().await?;
        anyhow::ensure!(status.is_success(), "HTTP {status}: {body}");
        anyhow::Ok((replicated, body))
    }
    .await;
    let answered = Instant::now();
    let mut out = Outcome {
        waiting,
        measured,
        key: key.clone(),
        version: String::new(),
        t0,
        answered,
        round_trip_ms: ms(answered - t0),
        error: None,
        replicated: None,
        replication: Value::Null,
        missed: Vec::new(),
    };
    match answer {
        Err(e) => out.error = Some(format!("PUT {key}: {e:#}")),
        Ok((replicated, body)) => {
            out.version = body["version"].as_str().unwrap_or_default().to_owned();
            out.replicated = replicated;
            out.replication = body["replication"].clone();
            if waiting && out.replicated.as_deref() == Some("all") {
                let version = body["version"].as_str().unwrap_or_default();
                for peer in others {
                    let held = match peer.get(&key).await {
                        Ok(Some(p)) => p.version.as_str() >= version,
                        _ => false,
                    };
                    if !held {
                        out.missed.push(peer.base().to_owned());
                    }
                }
            }
        }
    }
    out
}

impl WaitResult {
    pub fn markdown(&self, s: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            s,
            "## Writes that wait for their replication: `PUT /api/pairs/{{key}}?wait=all`\n"
        );
        let pace = match self.rate_per_s {
            Some(r) => format!("{r} writes/s (both kinds together, open loop)"),
            None => "one at a time (each sent once the previous was answered and checked)".into(),
        };
        let _ = writeln!(
            s,
            "On node 1, plain PUTs and PUTs with `?wait=all&timeout_ms={}` alternating, {pace}, a new key each. \
             Round trip of the PUT, milliseconds; \"node's wait\" is the answer's `replication.waited_ms` (whole \
             milliseconds, from the database write until every live peer had confirmed); \"on every peer's feed\" is \
             from just before the PUT until the change arrived on the change feed (`/api/events`) of the last of the \
             other nodes, and the last row is how long after that the waiting write was answered (the peers' \
             confirmations travel in heartbeats on the control topic). An error is any waiting \
             write not answered `all` (header and body agreeing), any failed request, and any read on a peer, right \
             after an `all`, that did not return the written version.\n",
            self.timeout_ms
        );
        let _ = writeln!(
            s,
            "| cluster | PUT | writes | errors | mean | p50 | p90 | p99 | max |\n|---|---|--:|--:|--:|--:|--:|--:|--:|"
        );
        for r in &self.runs {
            let cluster = format!(
                "{} nodes ({} peer{})",
                r.nodes,
                r.peers,
                if r.peers == 1 { "" } else { "s" }
            );
            let row = |s: &mut String, kind: &str, writes: String, errors: String, st: &Stats| {
                let _ = writeln!(
                    s,
                    "| {cluster} | {kind} | {writes} | {errors} | {} | {} | {} | {} | {} |",
                    fmt_ms(st.mean_ms),
                    fmt_ms(st.p50_ms),
                    fmt_ms(st.p90_ms),
                    fmt_ms(st.p99_ms),
                    fmt_ms(st.max_ms)
                );
            };
            row(
                s,
                "plain",
                r.writes.to_string(),
                (r.writes - r.plain.count).to_string(),
                &r.plain,
            );
            row(
                s,
                "`wait=all`",
                r.writes.to_string(),
                r.errors.to_string(),
                &r.wait_all,
            );
            row(
                s,
                "node's wait",
                String::new(),
                String::new(),
                &r.node_waited,
            );
            row(
                s,
                "plain: on every peer's feed",
                String::new(),
                String::new(),
                &r.plain_on_every_peer,
            );
            row(
                s,
                "`wait=all`: on every peer's feed",
                String::new(),
                String::new(),
                &r.wait_all_on_every_peer,
            );
            row(
                s,
                "`wait=all`: answer after the last peer's feed",
                String::new(),
                String::new(),
                &r.confirmation_after_last_peer,
            );
        }
        s.push('\n');
        for r in &self.runs {
            let _ = writeln!(
                s,
                "- {} nodes: `wait=all` costs {} ms more than a plain PUT at the median ({}× its p50), {} at p99. \
                 Answers: {} `all`, {} `partial`, {} `none`; {} inconsistent, {} failed requests, {} reads on a peer \
                 that missed the version. Load average (1, 5, 15 min): {} before, {} after.",
                r.nodes,
                fmt_ms(r.wait_all.p50_ms - r.plain.p50_ms),
                if r.plain.p50_ms > 0.0 {
                    format!("{:.1}", r.wait_all.p50_ms / r.plain.p50_ms)
                } else {
                    "—".into()
                },
                fmt_ms(r.wait_all.p99_ms - r.plain.p99_ms),
                r.answered_all,
                r.answered_partial,
                r.answered_none,
                r.inconsistent,
                r.http_errors,
                r.not_on_peer,
                r.load_average_before,
                r.load_average_after
            );
            for e in &r.error_samples {
                let _ = writeln!(s, "  - error: {e}");
            }
        }
        s.push('\n');
    }
}

fn fmt_ms(v: f64) -> String {
    crate::report::fmt_ms(v)
}
