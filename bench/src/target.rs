//! What the benchmark runs against: a local cluster it starts itself (the default; two
//! nodes, or more for the cluster measurements), or two running nodes given by URL.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use kvsync_testkit::{Client, Cluster, ClusterOptions, Mongo, Tools};
use serde::Serialize;

#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// URL of the node that takes the writes. Default: start a local cluster.
    #[arg(long, requires = "node_b")]
    pub node_a: Option<String>,
    /// URL of the node whose change feed is watched.
    #[arg(long, requires = "node_a")]
    pub node_b: Option<String>,
    /// Bearer token for the nodes' API, if they require one.
    #[arg(long, env = "KVSYNC_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Kafka bootstrap servers for the floor, with --node-a/--node-b (a local cluster
    /// uses its own broker).
    #[arg(long)]
    pub brokers: Option<String>,
    /// MongoDB URI for the floor's database writes, with --node-a/--node-b: node B's
    /// server if it keeps databases apart (MongoDB does; nx-27017 does not, so give it a
    /// separate instance). The floor's documents are deleted afterwards.
    #[arg(long)]
    pub mongodb_uri: Option<String>,
    /// fetch.wait.max.ms for the local cluster's nodes and the floor's consumer (the
    /// node's KVSYNC_KAFKA_FETCH_WAIT_MS). The test broker holds every fetch this long;
    /// the node's own default, 100, suits Apache Kafka, which answers when data arrives.
    #[arg(long, default_value_t = 5)]
    pub fetch_wait_ms: u32,
    /// Partitions of the floor's topic (the node creates its topic with 3).
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Extra setting for the local cluster's nodes, KEY=VALUE (repeatable), e.g.
    /// KVSYNC_RELAY_INTERVAL_MS=5000.
    #[arg(long = "node-env", value_parser = kvsync_testkit::parse_key_value)]
    pub node_env: Vec<(String, String)>,
    /// Where the local cluster keeps its data and logs (kept afterwards). Default: a
    /// temporary directory, removed at the end.
    #[arg(long)]
    pub cluster_dir: Option<std::path::PathBuf>,
}

pub struct Target {
    pub a: Client,
    pub b: Client,
    /// Every node of a local cluster (A and B first); A and B when given by URL.
    pub nodes: Vec<Client>,
    /// Process ids of nodes A and B (local cluster only), for their memory.
    pub pids: Vec<u32>,
    /// The local cluster's processes with a label (node 1, MongoDB 1, broker, ...), for
    /// their CPU time.
    pub procs: Vec<(u32, String)>,
    pub brokers: Option<String>,
    /// Node B's database, where the floor's writes go.
    pub mongodb_uri: Option<String>,
    pub fetch_wait_ms: u32,
    pub partitions: i32,
    /// Extra node settings of the local cluster.
    pub node_env: Vec<(String, String)>,
    pub local: bool,
    /// Starts a dedicated MongoDB-protocol server for the floor (local cluster only).
    pub mongo_for_floor: Option<FloorMongo>,
    /// The local cluster, kept running while the target lives.
    pub cluster: Option<Cluster>,
}

impl Target {
    /// Two nodes.
    pub async fn open(args: &TargetArgs) -> Result<Self> {
        Self::open_nodes(args, 2).await
    }

    /// A local cluster of `nodes` nodes (at least 2), or the two nodes given by URL.
    pub async fn open_nodes(args: &TargetArgs, nodes: usize) -> Result<Self> {
        anyhow::ensure!(nodes >= 2, "a cluster of at least 2 nodes");
        let with_token = |c: Client| match &args.token {
            Some(t) => c.with_token(t),
            None => c,
        };
        if let (Some(a), Some(b)) = (&args.node_a, &args.node_b) {
            let (a, b) = (with_token(Client::new(a)), with_token(Client::new(b)));
            return Ok(Self {
                nodes: vec![a.clone(), b.clone()],
                a,
                b,
                pids: Vec::new(),
                procs: Vec::new(),
                brokers: args.brokers.clone(),
                mongodb_uri: args.mongodb_uri.clone(),
                fetch_wait_ms: args.fetch_wait_ms,
                partitions: args.partitions,
                node_env: Vec::new(),
                local: false,
                mongo_for_floor: None,
                cluster: None,
            });
        }
        eprintln!(
            "starting a local cluster (broker, {nodes} MongoDB-protocol servers, {nodes} nodes)"
        );
        let cluster = Cluster::start(ClusterOptions {
            nodes,
            dir: args.cluster_dir.clone(),
            env: vec![
                (
                    "KVSYNC_KAFKA_FETCH_WAIT_MS".into(),
                    args.fetch_wait_ms.to_string(),
                ),
                ("KVSYNC_LOG".into(), "warn".into()),
            ]
            .into_iter()
            .chain(args.node_env.iter().cloned())
            .collect(),
            ..Default::default()
        })
        .await
        .context("starting the local cluster (see scripts/install-deps.sh)")?;
        let procs = label_children(&cluster);
        Ok(Self {
            a: cluster.nodes[0].client(),
            procs,
            b: cluster.nodes[1].client(),
            nodes: cluster.clients(),
            pids: cluster.nodes.iter().filter_map(|n| n.pid()).collect(),
            brokers: Some(cluster.broker.addr()),
            mongodb_uri: Some(cluster.mongos[1].uri()),
            fetch_wait_ms: args.fetch_wait_ms,
            partitions: args.partitions,
            node_env: args.node_env.clone(),
            local: true,
            mongo_for_floor: Some(FloorMongo),
            cluster: Some(cluster),
        })
    }

    /// Resident memory of nodes A and B in KiB (local cluster only).
    pub fn rss(&self) -> Option<Rss> {
        match self.pids.as_slice() {
            [a, b, ..] => Some(Rss {
                a_kib: rss_kib(*a)?,
                b_kib: rss_kib(*b)?,
            }),
            _ => None,
        }
    }

    /// Waits until A and B hold identical state (equal digests). Returns how long that
    /// took and how long one digest round (both nodes) took at the end.
    pub async fn converge(&self, timeout: Duration) -> Result<(Duration, Duration)> {
        let start = tokio::time::Instant::now();
        loop {
            let round = tokio::time::Instant::now();
            let (a, b) = tokio::join!(self.a.digest(), self.b.digest());
            let round = round.elapsed();
            if let (Ok(a), Ok(b)) = (&a, &b) {
                if a == b {
                    return Ok((start.elapsed(), round));
                }
            }
            if start.elapsed() > timeout {
                anyhow::bail!("A and B did not converge within {timeout:?}: {a:?} vs {b:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until every one of `clients` lists `members` members in `/api/cluster`, all
/// of them live (itself included): heartbeats have gone round.
pub async fn wait_members_live(
    clients: &[Client],
    members: usize,
    timeout: Duration,
) -> Result<()> {
    kvsync_testkit::wait_until(
        timeout,
        &format!("every node to see {members} live members"),
        || async {
            for c in clients {
                let Ok(view) = c.get_json("/api/cluster").await else {
                    return false;
                };
                let live = view["members"]
                    .as_array()
                    .map_or(0, |m| m.iter().filter(|m| m["status"] == "live").count());
                if live < members {
                    return false;
                }
            }
            true
        },
    )
    .await
}

/// Labels the cluster's processes among this process's children.
fn label_children(cluster: &Cluster) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The fields after the parenthesised command name: state, ppid, ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(me) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let label = if let Some(i) = cluster.nodes.iter().position(|n| n.pid() == Some(pid)) {
            format!("kvsync-node {}", i + 1)
        } else if args.iter().any(|a| a.ends_with("tansu")) {
            "broker (tansu)".to_owned()
        } else if let Some(i) = cluster.mongos.iter().position(|m| {
            args.windows(2)
                .any(|w| w[0] == "-p" && w[1] == m.port.to_string())
        }) {
            format!("MongoDB {} (nx-27017)", i + 1)
        } else {
            continue;
        };
        out.push((pid, label));
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the command name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    100.0 // USER_HZ on Linux, whatever the kernel's HZ.
}

/// A fresh nx-27017 (the cluster's MongoDB-protocol server) for the floor's writes.
pub struct FloorMongo;

impl FloorMongo {
    pub async fn start(&self) -> Result<(Mongo, tempfile::TempDir)> {
        let tools = Tools::locate()?;
        let dir = tempfile::Builder::new()
            .prefix("kvsync-bench-floor-")
            .tempdir()?;
        let mongo = Mongo::start(&tools, dir.path(), 0).await?;
        Ok((mongo, dir))
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rss {
    pub a_kib: u64,
    pub b_kib: u64,
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The machine's load average over 1, 5 and 15 minutes (`/proc/loadavg`): other work on
/// the machine shows in it.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A run id that keeps this run's keys apart from earlier runs' on the same nodes.
pub fn run_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{ms:x}")
}

/// `len` random ASCII letters and digits.
pub fn text(rng: &mut fastrand::Rng, len: usize) -> String {
    (0..len).map(|_| rng.alphanumeric()).collect()
}

/// One payload set of the latency benchmark: the size of the pair's single value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Fixed(usize),
    Random { min: usize, max: usize },
}

impl Payload {
    pub fn label(&self) -> String {
        match self {
            Payload::Fixed(n) => format!("{n} B"),
            Payload::Random { min, max } => format!("random {min}-{max} B"),
        }
    }

    /// Short name for keys and JSON.
    pub fn name(&self) -> String {
        match self {
            Payload::Fixed(n) => n.to_string(),
            Payload::Random { .. } => "random".into(),
        }
    }

    pub fn size(&self, rng: &mut fastrand::Rng) -> usize {
        match *self {
            Payload::Fixed(n) => n,
            Payload::Random { min, max } => rng.usize(min..=max),
        }
    }
}

/// Parses "10,256,512,random" (random: sizes between the smallest and largest fixed
/// size given, 10 and 512 if none).
pub fn parse_payloads(raw: &str) -> Result<Vec<Payload>> {
    let mut fixed = Vec::new();
    let mut random = false;
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part == "random" {
            random = true;
        } else {
            let n: usize = part
                .parse()
                .with_context(|| format!("payload size {part:?}: a number of bytes or 'random'"))?;
            anyhow::ensure!(n <= 64 * 1024, "payload {n} exceeds the 64 KiB value limit");
            fixed.push(Payload::Fixed(n));
        }
    }
    if random {
        let sizes = fixed.iter().map(|p| match p {
            Payload::Fixed(n) => *n,
            Payload::Random { .. } => 0,
        });
        let (min, max) = (
            sizes.clone().min().unwrap_or(10),
            sizes.max().unwrap_or(512),
        );
        let (min, max) = if min == max { (10, 512) } else { (min, max) };
        fixed.push(Payload::Random { min, max });
    }
    anyhow::ensure!(!fixed.is_empty(), "no payload sets given");
    Ok(fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_sets() {
        let p = parse_payloads("10,256,512,random").unwrap();
        assert_eq!(
            p,
            vec![
                Payload::Fixed(10),
                Payload::Fixed(256),
                Payload::Fixed(512),
                Payload::Random { min: 10, max: 512 }
            ]
        );
        assert_eq!(p[3].label(), "random 10-512 B");
        let mut rng = fastrand::Rng::new();
        for _ in 0..1000 {
            let n = p[3].size(&mut rng);
            assert!((10..=512).contains(&n));
        }
        let t = text(&mut rng, 17);
        assert!(t.len() == 17 && t.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(parse_payloads("x").is_err());
        assert!(parse_payloads("").is_err());
    }
}
