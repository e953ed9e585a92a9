//! kvsync-bench: replication latency (node A write to node B change event), the floor set
//! by the broker and the database underneath, throughput, what tombstones cost a
//! listing, writes that wait for their replication, and joins of a new node. See
//! bench/README.md.

mod floor;
mod join;
mod latency;
mod peers;
mod probe;
mod progress;
mod report;
mod scale;
mod sse;
mod stats;
mod target;
mod throughput;
mod tombstones;
mod wait;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::{
    floor::FloorArgs,
    join::JoinArgs,
    latency::LatencyArgs,
    report::Report,
    target::{Target, TargetArgs},
    throughput::ThroughputArgs,
    tombstones::TombstoneArgs,
    wait::WaitArgs,
};

#[derive(Parser)]
#[command(
    name = "kvsync-bench",
    version,
    about = "Replication latency, broker/database floor and throughput of kvsync. \
             Starts its own local cluster unless --node-a/--node-b are given."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Replication delay per payload set, beside the floor (measured first, unless
    /// --no-floor).
    Latency {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        latency: LatencyArgs,
        #[command(flatten)]
        floor: FloorArgs,
        /// Skip the floor.
        #[arg(long)]
        no_floor: bool,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Raw Kafka produce-to-consume latency and one MongoDB write.
    Floor {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        floor: FloorArgs,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Concurrent writers on node A; writes/s, write latency, convergence of node B,
    /// node memory before and after.
    Throughput {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        throughput: ThroughputArgs,
        #[command(flatten)]
        out: OutArgs,
    },
    /// `GET /api/pairs?limit=100` with live pairs only, then with many tombstones in the
    /// node's database, then once they are collected: latency and the ratio. Starts one
    /// local node unless --node is given.
    Tombstones {
        #[command(flatten)]
        tombstones: TombstoneArgs,
        #[command(flatten)]
        out: OutArgs,
    },
    /// PUT ?wait=all beside a plain PUT, on a local cluster of 2 nodes and one of 3
    /// (--nodes); every waiting write must be answered `all`.
    Wait {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        out: OutArgs,
    },
    /// A third node joins a 2-node cluster holding --pairs pairs written
    /// --writes-per-key times: by replaying the topic, then from its peers' state.
    Join {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        join: JoinArgs,
        #[command(flatten)]
        out: OutArgs,
    },
    /// The same probe against kvsync (2 nodes), etcd (3 members) and Redis (primary and
    /// replica), in interleaved rounds; kvsync's figures as ratios to theirs.
    Peers {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        peers: peers::PeersArgs,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Replication delay and throughput with 2, 3 and 5 nodes, writes spread over all
    /// nodes; a sustained run at a share of the measured maximum, and the lag after it.
    Scale {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        scale: scale::ScaleArgs,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Replication delay against broker and node CPU for several fetch waits
    /// (KVSYNC_KAFKA_FETCH_WAIT_MS).
    FetchWait {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        fetch: scale::FetchWaitArgs,
        #[command(flatten)]
        out: OutArgs,
    },
    /// Floor, latency and throughput on one cluster; writes report.md, report.json and
    /// latency.svg to bench/results/<date>-<machine tag>/ (or --out).
    All {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        latency: LatencyArgs,
        #[command(flatten)]
        floor: FloorArgs,
        #[command(flatten)]
        throughput: ThroughputArgs,
        /// Tiny counts for a smoke run (a few seconds).
        #[arg(long)]
        quick: bool,
        #[command(flatten)]
        out: OutArgs,
        /// Where results directories go when --out is not given.
        #[arg(long, default_value = "bench/results")]
        results_dir: PathBuf,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct OutArgs {
    /// Directory for report.md, report.json and latency.svg. Without it (except for
    /// `all`) the Markdown report goes to standard output only.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // The floor's Kafka clients log through tracing (librdkafka warnings, rebalances).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KVSYNC_BENCH_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let machine = report::describe_machine();
    let mut report = Report {
        generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        machine,
        settings: json!({}),
        floor: None,
        latency: None,
        throughput: None,
        wait: None,
        join: None,
        rss_start: None,
        targets: None,
    };
    let out = match cli.command {
        Cmd::Latency {
            target,
            latency,
            floor,
            no_floor,
            out,
        } => {
            let t = Target::open(&target).await?;
            report.settings = settings(&t, Some(&latency), (!no_floor).then_some(&floor), None);
            report.rss_start = t.rss();
            if !no_floor {
                report.floor = floor::run(&t, &floor).await?;
            }
            report.latency = Some(latency::run(&t, &latency).await?);
            out.out
        }
        Cmd::Floor { target, floor, out } => {
            let t = Target::open(&target).await?;
            report.settings = settings(&t, None, Some(&floor), None);
            report.floor = floor::run(&t, &floor).await?;
            out.out
        }
        Cmd::Throughput {
            target,
            throughput,
            out,
        } => {
            let t = Target::open(&target).await?;
            report.settings = settings(&t, None, None, Some(&throughput));
            report.rss_start = t.rss();
            report.throughput = Some(throughput::run(&t, &throughput).await?);
            out.out
        }
        Cmd::Tombstones { tombstones, out } => {
            // A report of its own: none of the cluster's figures apply.
            let result = tombstones::run(&tombstones, report.machine).await?;
            print!("{}", result.markdown());
            if let Some(dir) = out.out {
                result.write(&dir)?;
                eprintln!("report written to {}", dir.display());
            }
            return Ok(());
        }
        Cmd::Peers { target, peers, out } => {
            let result = peers::run(&target, &peers, report.machine).await?;
            print!("{}", result.markdown());
            if let Some(dir) = out.out {
                result.write(&dir)?;
                eprintln!("report written to {}", dir.display());
            }
            return Ok(());
        }
        Cmd::Scale { target, scale, out } => {
            let result = scale::run_scale(&target, &scale, report.machine).await?;
            print!("{}", result.markdown());
            if let Some(dir) = out.out {
                result.write(&dir)?;
                eprintln!("report written to {}", dir.display());
            }
            return Ok(());
        }
        Cmd::FetchWait { target, fetch, out } => {
            let result = scale::run_fetch_wait(&target, &fetch, report.machine).await?;
            print!("{}", result.markdown());
            if let Some(dir) = out.out {
                result.write(&dir)?;
                eprintln!("report written to {}", dir.display());
            }
            return Ok(());
        }
        Cmd::Wait { target, wait, out } => {
            report.settings = json!({
                "cluster": if target.node_a.is_some() { "given by URL".to_owned() } else {
                    format!("local (testkit): tansu broker, one nx-27017 per node, {:?} nodes", wait.nodes)
                },
                "fetch_wait_ms": target.fetch_wait_ms,
                "node_env": target.node_env,
                "wait": {
                    "count_per_kind": wait.count, "warmup": wait.warmup, "rate_per_s": wait.rate,
                    "timeout_ms": wait.timeout_ms, "value_bytes": wait.value_bytes,
                },
            });
            report.wait = Some(wait::run(&target, &wait).await?);
            out.out
        }
        Cmd::Join { target, join, out } => {
            report.settings = json!({
                "cluster": "local (testkit): tansu broker, one nx-27017 per node, 2 nodes and a joining one",
                "fetch_wait_ms": target.fetch_wait_ms,
                "node_env": target.node_env,
                "join": {
                    "pairs": join.pairs, "writes_per_key": join.writes_per_key,
                    "value_bytes": join.value_bytes, "modes": join.modes,
                },
            });
            report.join = Some(join::run(&target, &join).await?);
            out.out
        }
        Cmd::All {
            target,
            mut latency,
            mut floor,
            mut throughput,
            quick,
            out,
            results_dir,
        } => {
            if quick {
                latency.count = latency.count.min(15);
                latency.warmup = latency.warmup.min(5);
                floor.floor_count = floor.floor_count.min(15);
                throughput.writers = throughput.writers.min(4);
                throughput.seconds = throughput.seconds.min(1.5);
                throughput.writes = throughput.writes.map(|w| w.min(200));
            }
            let t = Target::open(&target).await?;
            report.settings = settings(&t, Some(&latency), Some(&floor), Some(&throughput));
            report.settings["quick"] = json!(quick);
            report.rss_start = t.rss();
            eprintln!("floor ...");
            report.floor = floor::run(&t, &floor).await?;
            eprintln!("latency ...");
            report.latency = Some(latency::run(&t, &latency).await?);
            eprintln!("throughput ...");
            report.throughput = Some(throughput::run(&t, &throughput).await?);
            Some(out.out.unwrap_or_else(|| {
                results_dir.join(format!(
                    "{}-{}",
                    &report.generated_at[..10],
                    report::machine_tag(&report.machine)
                ))
            }))
        }
    };
    report.compute_targets();
    print!("{}", report.markdown());
    if let Some(dir) = out {
        report.write(&dir)?;
        eprintln!("report written to {}", dir.display());
    }
    Ok(())
}

fn settings(
    t: &Target,
    latency: Option<&LatencyArgs>,
    floor: Option<&FloorArgs>,
    throughput: Option<&ThroughputArgs>,
) -> serde_json::Value {
    let mut s = json!({
        "cluster": if t.local { "local (testkit): tansu broker, one nx-27017 per node, 2 nodes" } else { "given by URL" },
        "fetch_wait_ms": t.fetch_wait_ms,
    });
    if !t.node_env.is_empty() {
        s["node_env"] = json!(t.node_env);
    }
    if let Some(l) = latency {
        s["latency"] = json!({
            "rate_per_s": l.rate, "count_per_payload": l.count, "payloads": l.payloads, "warmup": l.warmup, "preload": l.preload,
        });
    }
    if let Some(f) = floor {
        s["floor"] = json!({ "count": f.floor_count, "rate_per_s": f.floor_rate, "partitions": t.partitions });
    }
    if let Some(tp) = throughput {
        s["throughput"] = json!({
            "writers": tp.writers, "seconds": tp.seconds, "writes": tp.writes, "keys": tp.keys,
            "value_bytes": tp.value_bytes,
        });
    }
    s
}
