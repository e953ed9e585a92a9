//! Tombstones: how much slower the first page of `GET /api/pairs` gets when the node's
//! database also holds many deleted keys. Writes live pairs through the API and times the
//! page; inserts tombstones straight into the node's database, as the node stores them,
//! and times it again; collects them with `Store::collect_tombstones` and times it once
//! more.

use std::time::{Duration, SystemTime};

use anyhow::{ensure, Context, Result};
use clap::Args;
use kvsync_core::{Event, Key, NodeId, Op, Timestamp, Values, Version};
use kvsync_store::Store;
use kvsync_testkit::{Client, Cluster, ClusterOptions};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::{
    latency::ms,
    progress,
    report::Machine,
    stats::{round3, Samples, Stats},
    target::run_id,
};

/// The requirement this measures: the page with tombstones takes at most this many times
/// as long as without.
const ALLOWED_RATIO: f64 = 1.5;
/// Tombstones per `insert_many`.
const INSERT_CHUNK: u64 = 5000;
/// When the tombstones were written and deleted (milliseconds since the epoch: 2001),
/// older than anything a node writes, so collecting what is older removes only them.
const TOMBSTONE_MS: u64 = 1_000_000_000_000;

#[derive(Debug, Clone, Args)]
pub struct TombstoneArgs {
    /// Live pairs written through the API.
    #[arg(long, default_value_t = 100)]
    pub live: usize,
    /// Tombstones inserted into the node's database.
    #[arg(long, default_value_t = 100_000)]
    pub tombstones: u64,
    /// The page size asked for (`limit`).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Timed requests per measurement, one at a time.
    #[arg(long, default_value_t = 300)]
    pub requests: usize,
    /// Untimed requests before each measurement.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Seconds to wait after inserting or collecting the tombstones before the next
    /// measurement, so that it times the listing rather than the database still busy with
    /// the bulk write.
    #[arg(long, default_value_t = 10.0)]
    pub settle: f64,
    /// URL of a running node to measure instead of a local one. It should hold no pairs:
    /// the page measured is its first, whatever it holds. Its tombstones are collected
    /// afterwards (they are older than anything it wrote) and its live pairs deleted.
    #[arg(long, requires = "mongodb_uri")]
    pub node: Option<String>,
    /// With --node: that node's MongoDB, where the tombstones go (and are collected from).
    #[arg(long, requires = "node")]
    pub mongodb_uri: Option<String>,
    /// With --node: that node's database (its KVSYNC_MONGODB_DB).
    #[arg(long, default_value = "kvsync")]
    pub database: String,
    /// Bearer token for the node's API, if it requires one.
    #[arg(long, env = "KVSYNC_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Extra setting for the local node, KEY=VALUE (repeatable), e.g.
    /// KVSYNC_MONGODB_TIMEOUT_MS=30000.
    #[arg(long = "node-env", value_parser = kvsync_testkit::parse_key_value)]
    pub node_env: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TombstoneResult {
    pub generated_at: String,
    pub machine: Machine,
    pub node: String,
    pub live: usize,
    pub tombstones: u64,
    pub limit: usize,
    pub requests: usize,
    pub warmup: usize,
    pub settle_seconds: f64,
    /// The page with the live pairs only.
    pub without: Measurement,
    /// The same page once the tombstones were inserted.
    pub with: Measurement,
    /// The same page once `collect_tombstones` removed them.
    pub collected: Measurement,
    pub insert_seconds: f64,
    pub collect_seconds: f64,
    pub collected_count: u64,
    /// with ÷ without, p50 and p99.
    pub ratio_p50: f64,
    pub ratio_p99: f64,
    pub allowed_ratio: f64,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub latency: Stats,
    /// Failed requests, or pages other than the live pairs expected.
    pub errors: usize,
    pub error_samples: Vec<String>,
    /// Documents in the node's collection, tombstones included.
    pub documents: u64,
}

pub async fn run(args: &TombstoneArgs, machine: Machine) -> Result<TombstoneResult> {
    ensure!(
        args.live > 0 && args.limit > 0 && args.requests > 0,
        "--live, --limit and --requests must be positive"
    );
    let with_token = |c: Client| match &args.token {
        Some(t) => c.with_token(t),
        None => c,
    };
    // A local node, or the one given; the cluster is kept until the end.
    let (client, mongodb_uri, database, cluster, node) = match (&args.node, &args.mongodb_uri) {
        (Some(url), Some(uri)) => (
            with_token(Client::new(url)),
            uri.clone(),
            args.database.clone(),
            None,
            format!("given: {url}"),
        ),
        _ => {
            eprintln!("starting a local node (broker, one MongoDB-protocol server, one node)");
            let cluster = Cluster::start(ClusterOptions {
                nodes: 1,
                env: std::iter::once(("KVSYNC_LOG".to_owned(), "warn".to_owned()))
                    .chain(args.node_env.iter().cloned())
                    .collect(),
                ..Default::default()
            })
            .await
            .context("starting the local node (see scripts/install-deps.sh)")?;
            let database = args
                .node_env
                .iter()
                .find(|(k, _)| k == "KVSYNC_MONGODB_DB")
                .map_or_else(|| "kvsync".to_owned(), |(_, v)| v.clone());
            (
                cluster.nodes[0].client(),
                cluster.mongos[0].uri(),
                database,
                Some(cluster),
                "local (testkit): tansu broker, one nx-27017, one node".to_owned(),
            )
        }
    };
    let prefix = format!("bench-{}/", run_id());
    // Tombstones sort before the live pairs: a listing that walks keys in order and
    // skips deleted ones meets every tombstone before the first live pair.
    let live_key = |i: usize| format!("{prefix}live/{i:04}");
    let tombstone_key = |i: u64| format!("{prefix}gone/{i:07}");

    let pb = progress::bar(args.live as u64, "tombstones: live pairs");
    for i in 0..args.live {
        client
            .put(&live_key(i), &["value"])
            .await
            .with_context(|| format!("writing {}", live_key(i)))?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let expected: Vec<String> = (0..args.live.min(args.limit)).map(live_key).collect();

    let raw = mongodb::Client::with_uri_str(&mongodb_uri).await?;
    let pairs = raw
        .database(&database)
        .collection::<mongodb::bson::Document>("pairs");
    eprintln!("tombstones: timing the page without tombstones");
    let without = measure(&client, &pairs, args, &expected).await?;

    // Tombstones as a node stores them: a value written, then the key deleted, long ago,
    // with no pending publication.
    let origin = NodeId::parse("bench")?;
    let version = |ms: u64, i: u64| {
        Version::new(
            Timestamp {
                wall_ms: ms,
                counter: i as u32,
            },
            origin.clone(),
        )
    };
    let pb = progress::bar(args.tombstones, "tombstones: inserting");
    let started = Instant::now();
    let mut i = 0;
    while i < args.tombstones {
        let end = (i + INSERT_CHUNK).min(args.tombstones);
        let docs = (i..end)
            .map(|i| {
                let key = Key::parse(tombstone_key(i))?;
                let values = Values::new(vec!["value".to_owned()], key.as_str().len())?;
                let written = version(TOMBSTONE_MS, i);
                let mut state = Event::new(key.clone(), written, Op::Put(values)).state;
                state.delete(&version(TOMBSTONE_MS + 1, i));
                Ok(kvsync_store::stored_document(&key, &state, 2))
            })
            .collect::<Result<Vec<_>>>()?;
        pairs.insert_many(docs).await?;
        pb.inc(end - i);
        i = end;
    }
    pb.finish_and_clear();
    let insert_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "tombstones: inserted {} in {insert_seconds:.1} s; timing the page with them",
        args.tombstones
    );
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let with = measure(&client, &pairs, args, &expected).await?;

    let store = Store::connect(&mongodb_uri, &database, Duration::from_secs(30)).await?;
    let cutoff = format!("{:016x}", TOMBSTONE_MS + 2);
    let started = Instant::now();
    let collected_count = store.collect_tombstones(&cutoff, usize::MAX).await?;
    let collect_seconds = started.elapsed().as_secs_f64();
    store.shutdown().await;
    eprintln!(
        "tombstones: collected {collected_count} in {collect_seconds:.1} s; timing the page again"
    );
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let collected = measure(&client, &pairs, args, &expected).await?;
    raw.shutdown().await;
    if cluster.is_none() {
        for i in 0..args.live {
            client.delete(&live_key(i)).await?;
        }
    }

    let ratio = |a: f64, b: f64| if b > 0.0 { round3(a / b) } else { f64::NAN };
    let ratio_p50 = ratio(with.latency.p50_ms, without.latency.p50_ms);
    let ratio_p99 = ratio(with.latency.p99_ms, without.latency.p99_ms);
    Ok(TombstoneResult {
        generated_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        machine,
        node,
        live: args.live,
        tombstones: args.tombstones,
        limit: args.limit,
        requests: args.requests,
        warmup: args.warmup,
        settle_seconds: args.settle,
        met: ratio_p50 <= ALLOWED_RATIO
            && ratio_p99 <= ALLOWED_RATIO
            && with.errors == 0
            && without.errors == 0,
        without,
        with,
        collected,
        insert_seconds: round3(insert_seconds),
        collect_seconds: round3(collect_seconds),
        collected_count,
        ratio_p50,
        ratio_p99,
        allowed_ratio: ALLOWED_RATIO,
    })
}

#[derive(Deserialize)]
struct Page {
    pairs: Vec<Listed>,
}

#[derive(Deserialize)]
struct Listed {
    key: String,
}

/// Times `args.requests` requests for the first page, one after the other, from sending
/// the request to the last byte of the answer, and checks each page holds `expected`.
async fn measure(
    client: &Client,
    pairs: &mongodb::Collection<mongodb::bson::Document>,
    args: &TombstoneArgs,
    expected: &[String],
) -> Result<Measurement> {
    let url = client.url("/api/pairs");
    let limit = args.limit.to_string();
    let mut samples = Samples::default();
    let mut errors = Vec::new();
    let pb = progress::bar(
        (args.warmup + args.requests) as u64,
        "tombstones: GET /api/pairs",
    );
    for i in 0..args.warmup + args.requests {
        let t0 = Instant::now();
        let answer = async {
            let response = client
                .request(reqwest::Method::GET, &url)
                .query(&[("limit", limit.as_str())])
                .send()
                .await?
                .error_for_status()?;
            response.bytes().await
        }
        .await;
        let elapsed = t0.elapsed();
        pb.inc(1);
        if i < args.warmup {
            continue;
        }
        let page = match answer {
            Ok(body) => serde_json::from_slice::<Page>(&body).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match page {
            Ok(page) if page.pairs.iter().map(|p| &p.key).eq(expected) => samples.push(ms(elapsed)),
            Ok(page) => errors.push(format!(
                "{} pairs listed, not the {} live ones written",
                page.pairs.len(),
                expected.len()
            )),
            Err(e) => errors.push(e),
        }
    }
    pb.finish_and_clear();
    let count = errors.len();
    errors.truncate(5);
    Ok(Measurement {
        latency: samples.stats().rounded(),
        errors: count,
        error_samples: errors,
        documents: pairs.estimated_document_count().await?,
    })
}

impl TombstoneResult {
    pub fn markdown(&self) -> String {
        let row = |name: &str, m: &Measurement| {
            let s = &m.latency;
            format!(
                "| {name} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                m.documents, s.count, m.errors, s.mean_ms, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
            )
        };
        let mut md = format!(
            "# kvsync: listing with tombstones\n\n\
             Generated {} on {} ({} cores, {:.1} GiB), kvsync {}. Node: {}.\n\n\
             `GET /api/pairs?limit={}` with {} live pairs, one request at a time: {} timed after {} \
             untimed, from sending the request to the last byte of the answer; milliseconds. \
             The tombstones ({}, inserted into the node's database as it stores them) sort \
             before the live pairs; the measurements after inserting and after collecting them \
             start {} s later.\n\n\
             | database holds | documents | requests | errors | mean | p50 | p90 | p99 | max |\n\
             |---|--:|--:|--:|--:|--:|--:|--:|--:|\n",
            self.generated_at,
            self.machine.cpu,
            self.machine.cores,
            self.machine.memory_gib,
            self.machine.kvsync_commit,
            self.node,
            self.limit,
            self.live,
            self.requests,
            self.warmup,
            self.tombstones,
            self.settle_seconds,
        );
        md += &row("live pairs only", &self.without);
        md += &row(&format!("and {} tombstones", self.tombstones), &self.with);
        md += &row("after collect_tombstones", &self.collected);
        md += &format!(
            "\nWith tombstones ÷ without: **p50 {:.2}×, p99 {:.2}×** (allowed: {:.1}×): {}. \
             With tombstones ÷ after collection (a second baseline, measured later): p50 {:.2}×, \
             p99 {:.2}×.\n\n\
             Inserting the tombstones took {:.1} s; `Store::collect_tombstones` removed {} of \
             them in {:.1} s.\n",
            self.ratio_p50,
            self.ratio_p99,
            self.allowed_ratio,
            if self.met { "met" } else { "**not met**" },
            self.with.latency.p50_ms / self.collected.latency.p50_ms,
            self.with.latency.p99_ms / self.collected.latency.p99_ms,
            self.insert_seconds,
            self.collected_count,
            self.collect_seconds,
        );
        for (name, m) in [
            ("without", &self.without),
            ("with", &self.with),
            ("collected", &self.collected),
        ] {
            for e in &m.error_samples {
                md += &format!("\n- error ({name}): {e}");
            }
        }
        md
    }

    pub fn write(&self, dir: &std::path::Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        Ok(())
    }
}
