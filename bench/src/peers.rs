//! kvsync beside the stores people would pick instead: etcd (3 members) and Redis
//! (primary and replica), started on loopback next to a local kvsync cluster and probed
//! with the same code (see `probe`), interleaved in rounds so that each system meets
//! the same machine.

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use serde_json::json;

use crate::{
    probe::{self, Etcd, LatencyPlan, LoadPlan, LoadResult, Redis, SetSamples, System},
    report::{fmt_ms, Machine},
    stats::{round3, Samples, Stats},
    target::{load_average, parse_payloads, run_id, Target, TargetArgs},
};

#[derive(Debug, Clone, Args)]
pub struct PeersArgs {
    /// Systems to measure, in the order of each round.
    #[arg(long, default_value = "kvsync,etcd,redis", value_delimiter = ',')]
    pub systems: Vec<String>,
    /// Measured writes per payload set and system, over all rounds.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Writes per second of the latency probe (open loop).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    #[arg(long, default_value = "10,256,512,random")]
    pub payloads: String,
    /// Unmeasured writes per system before the first round.
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// Concurrent writers of the throughput run.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    /// Seconds of throughput per system, over all rounds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Rounds: each round runs every system's share of the latency writes (then, in
    /// a second series of rounds, of the throughput seconds) one after the other.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    #[arg(long, default_value_t = 3)]
    pub etcd_members: usize,
    /// Tiny counts for a smoke run.
    #[arg(long)]
    pub quick: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SystemResult {
    pub name: String,
    pub version: String,
    pub promise: String,
    /// What was written where and watched where.
    pub path: String,
    pub sets: Vec<SetResult>,
    /// Every set together.
    pub replication: Stats,
    pub write_ack: Stats,
    pub throughput: ThroughputSummary,
    pub rounds: Vec<RoundNote>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetResult {
    pub label: String,
    pub writes: usize,
    pub errors: usize,
    pub error_samples: Vec<String>,
    pub replication: Stats,
    pub write_ack: Stats,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputSummary {
    pub writers: usize,
    pub acknowledged: u64,
    pub errors: u64,
    pub seconds: f64,
    pub writes_per_s: f64,
    pub write_latency: Stats,
    /// Per round.
    pub runs: Vec<LoadResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundNote {
    pub phase: String,
    pub round: usize,
    pub load_average: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeersResult {
    pub generated_at: String,
    pub machine: Machine,
    pub settings: serde_json::Value,
    pub systems: Vec<SystemResult>,
}

fn promise(name: &str) -> &'static str {
    match name {
        "kvsync" => "a PUT is acknowledged once in the node's own database (nx-27017: SQLite WAL, synchronous=NORMAL, so no fsync per write); replication to the other node is asynchronous, through the broker (tansu, SQLite storage)",
        "etcd" => "a put is acknowledged once a majority (2 of 3) have it in their fsynced write-ahead log (Raft, synchronous to a quorum); a follower's watch fires when it applies the entry",
        _ => "a SET is acknowledged from the primary's memory; replication is asynchronous, nothing is fsynced (no AOF, snapshots off in this run)",
    }
}

pub async fn run(target: &TargetArgs, args: &PeersArgs, machine: Machine) -> Result<PeersResult> {
    let mut args = args.clone();
    if args.quick {
        args.count = args.count.min(10);
        args.warmup = args.warmup.min(3);
        args.seconds = args.seconds.min(1.0);
        args.writers = args.writers.min(4);
    }
    let rounds = args.rounds.max(1);
    let payloads = parse_payloads(&args.payloads)?;
    let mut systems: Vec<(System, String, String, (usize, usize))> = Vec::new();
    // Kept running until the end.
    let mut kv_target = None;
    let mut etcd = None;
    let mut redis = None;
    for name in &args.systems {
        match name.as_str() {
            "kvsync" => {
                let t = Target::open(target).await?;
                let sys = probe::kvsync(&t.nodes, t.procs.clone());
                let version = machine.kvsync_commit.clone();
                systems.push((
                    sys,
                    version,
                    "PUT on node 1, change feed (/api/events) of node 2".into(),
                    (0, 1),
                ));
                kv_target = Some(t);
            }
            "etcd" => {
                eprintln!("starting etcd ({} members)", args.etcd_members);
                let e = Etcd::start(args.etcd_members).await?;
                let route = (e.leader, e.follower());
                systems.push((
                    e.system(),
                    e.version.clone(),
                    format!(
                        "put on the leader (member {}), watch on a follower (member {}), JSON gateway",
                        route.0 + 1,
                        route.1 + 1
                    ),
                    route,
                ));
                etcd = Some(e);
            }
            "redis" => {
                eprintln!("starting Redis (primary and replica)");
                let r = Redis::start().await?;
                systems.push((
                    r.system(),
                    r.version.clone(),
                    "SET on the primary, keyspace notification on the replica (RESP)".into(),
                    (0, 1),
                ));
                redis = Some(r);
            }
            other => anyhow::bail!("unknown system {other:?}: kvsync, etcd or redis"),
        }
    }
    let run = run_id();
    let timeout = Duration::from_secs(10);
    let mut sets: Vec<Vec<SetSamples>> =
        vec![vec![SetSamples::default(); payloads.len()]; systems.len()];
    let mut notes: Vec<Vec<RoundNote>> = vec![Vec::new(); systems.len()];
    let per_round = args.count.div_ceil(rounds);
    for round in 0..rounds {
        for (k, (sys, _, _, route)) in systems.iter().enumerate() {
            eprintln!("latency: {} (round {} of {rounds})", sys.name, round + 1);
            let plan = LatencyPlan {
                payloads: &payloads,
                count: per_round,
                rate: args.rate,
                warmup: if round == 0 { args.warmup } else { 0 },
                arrival_timeout: timeout,
                routes: vec![*route],
            };
            let out = probe::latency(sys, &plan, &format!("bench-{run}/peers/{round}/")).await?;
            for (s, o) in sets[k].iter_mut().zip(out) {
                s.merge(o);
            }
            notes[k].push(RoundNote {
                phase: "latency".into(),
                round: round + 1,
                load_average: load_average(),
            });
        }
    }
    let mut loads: Vec<Vec<LoadResult>> = vec![Vec::new(); systems.len()];
    for round in 0..rounds {
        for (k, (sys, _, _, route)) in systems.iter().enumerate() {
            eprintln!("throughput: {} (round {} of {rounds})", sys.name, round + 1);
            let plan = LoadPlan {
                writers: args.writers,
                seconds: args.seconds / rounds as f64,
                keys: args.keys,
                value_bytes: args.value_bytes,
                rate: None,
                members: vec![route.0],
            };
            let r = probe::load(sys, &plan, &format!("bench-{run}/tp/{round}/")).await?;
            notes[k].push(RoundNote {
                phase: "throughput".into(),
                round: round + 1,
                load_average: r.load_average.clone(),
            });
            loads[k].push(r);
        }
    }
    let results = systems
        .iter()
        .zip(sets)
        .zip(loads)
        .zip(notes)
        .map(|((((sys, version, path, _), sets), loads), notes)| {
            let mut all_rep = Samples::default();
            let mut all_ack = Samples::default();
            let sets = payloads
                .iter()
                .zip(sets)
                .map(|(p, s)| {
                    all_rep.extend(s.replication.clone());
                    all_ack.extend(s.ack.clone());
                    SetResult {
                        label: p.label(),
                        writes: s.writes,
                        errors: s.errors,
                        error_samples: s.error_samples,
                        replication: s.replication.stats().rounded(),
                        write_ack: s.ack.stats().rounded(),
                    }
                })
                .collect();
            let mut lat = Samples::default();
            for l in &loads {
                lat.extend(l.latency_samples.clone());
            }
            let acknowledged: u64 = loads.iter().map(|l| l.acknowledged).sum();
            let seconds: f64 = loads.iter().map(|l| l.seconds).sum();
            SystemResult {
                name: sys.name.clone(),
                version: version.clone(),
                promise: promise(&sys.name.to_lowercase()).into(),
                path: path.clone(),
                sets,
                replication: all_rep.stats().rounded(),
                write_ack: all_ack.stats().rounded(),
                throughput: ThroughputSummary {
                    writers: args.writers,
                    acknowledged,
                    errors: loads.iter().map(|l| l.errors).sum(),
                    seconds: round3(seconds),
                    writes_per_s: round3(acknowledged as f64 / seconds.max(1e-9)),
                    write_latency: lat.stats().rounded(),
                    runs: loads,
                },
                rounds: notes,
            }
        })
        .collect();
    drop((kv_target, etcd, redis));
    Ok(PeersResult {
        generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        machine,
        settings: json!({
            "systems": args.systems, "count_per_payload": args.count, "rate_per_s": args.rate,
            "payloads": args.payloads, "warmup": args.warmup, "writers": args.writers,
            "seconds": args.seconds, "keys": args.keys, "value_bytes": args.value_bytes,
            "rounds": rounds, "etcd_members": args.etcd_members, "quick": args.quick,
            "kvsync_fetch_wait_ms": target.fetch_wait_ms, "kvsync_node_env": target.node_env,
        }),
        systems: results,
    })
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

impl PeersResult {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "# kvsync beside etcd and Redis\n");
        let _ = writeln!(
            s,
            "{} ({} cores, {:.1} GiB), {}; {}. kvsync {}. Generated {}.\n",
            m.cpu, m.cores, m.memory_gib, m.os, m.kernel, m.kvsync_commit, self.generated_at
        );
        let st = &self.settings;
        let _ = writeln!(
            s,
            "Latency: {} writes per payload set and system at {} writes/s (open loop), in {} interleaved rounds; throughput: {} writers for {} s per system, {}-byte values over {} keys. Milliseconds.\n",
            st["count_per_payload"], st["rate_per_s"], st["rounds"], st["writers"], st["seconds"], st["value_bytes"], st["keys"]
        );
        let _ = writeln!(s, "| | version | replication p50 | p90 | p99 | max | errors | write ack p50 | writes/s ({} writers) | write p50 | write p99 |", st["writers"]);
        let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for r in &self.systems {
            let errors: usize = r.sets.iter().map(|x| x.errors).sum();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} |",
                r.name,
                r.version,
                fmt_ms(r.replication.p50_ms),
                fmt_ms(r.replication.p90_ms),
                fmt_ms(r.replication.p99_ms),
                fmt_ms(r.replication.max_ms),
                errors + r.throughput.errors as usize,
                fmt_ms(r.write_ack.p50_ms),
                r.throughput.writes_per_s,
                fmt_ms(r.throughput.write_latency.p50_ms),
                fmt_ms(r.throughput.write_latency.p99_ms),
            );
        }
        if let Some(kv) = self.systems.iter().find(|r| r.name == "kvsync") {
            let others: Vec<_> = self.systems.iter().filter(|r| r.name != "kvsync").collect();
            if !others.is_empty() {
                let _ = writeln!(s, "\nkvsync's figures as ratios to theirs (latency: above 1× is slower; throughput: below 1× is fewer writes/s):\n");
                let _ = writeln!(
                    s,
                    "| kvsync ÷ | replication p50 | p99 | write ack p50 | writes/s |"
                );
                let _ = writeln!(s, "|---|--:|--:|--:|--:|");
                for o in others {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} |",
                        o.name,
                        ratio(kv.replication.p50_ms, o.replication.p50_ms),
                        ratio(kv.replication.p99_ms, o.replication.p99_ms),
                        ratio(kv.write_ack.p50_ms, o.write_ack.p50_ms),
                        ratio(kv.throughput.writes_per_s, o.throughput.writes_per_s),
                    );
                }
            }
        }
        let _ = writeln!(s, "\nWhat each promises when it acknowledges a write:\n");
        for r in &self.systems {
            let _ = writeln!(s, "- **{}**: {}.", r.name, r.promise);
        }
        let _ = writeln!(s, "\nPer payload set (replication p50 / p99):\n");
        let labels: Vec<&str> = self
            .systems
            .first()
            .map(|r| r.sets.iter().map(|x| x.label.as_str()).collect())
            .unwrap_or_default();
        let _ = writeln!(s, "| | {} |", labels.join(" | "));
        let _ = writeln!(s, "|---|{}", "--:|".repeat(labels.len()));
        for r in &self.systems {
            let cells: Vec<String> = r
                .sets
                .iter()
                .map(|x| {
                    format!(
                        "{} / {}",
                        fmt_ms(x.replication.p50_ms),
                        fmt_ms(x.replication.p99_ms)
                    )
                })
                .collect();
            let _ = writeln!(s, "| {} | {} |", r.name, cells.join(" | "));
        }
        let _ = writeln!(
            s,
            "\nHow: {}",
            self.systems
                .iter()
                .map(|r| format!("{}: {}", r.name, r.path))
                .collect::<Vec<_>>()
                .join("; ")
        );
        let _ = writeln!(
            s,
            "\nCPU during the throughput runs (share of the machine, each round):\n"
        );
        for r in &self.systems {
            for (i, l) in r.throughput.runs.iter().enumerate() {
                let cpu: Vec<String> = l
                    .cpu
                    .iter()
                    .map(|c| format!("{} {:.0} %", c.process, c.share_of_machine * 100.0))
                    .collect();
                let _ = writeln!(
                    s,
                    "- {} round {}: {:.0} writes/s; {}",
                    r.name,
                    i + 1,
                    l.writes_per_s,
                    cpu.join(", ")
                );
            }
        }
        let _ = writeln!(s, "\nLoad average (1, 5, 15 min) after each step:\n");
        for r in &self.systems {
            let l: Vec<String> = r
                .rounds
                .iter()
                .map(|n| format!("{} {}: {}", n.phase, n.round, n.load_average))
                .collect();
            let _ = writeln!(s, "- {}: {}", r.name, l.join("; "));
        }
        for r in &self.systems {
            for x in &r.sets {
                for e in &x.error_samples {
                    let _ = writeln!(s, "- error, {} {}: {e}", r.name, x.label);
                }
            }
            for l in &r.throughput.runs {
                for e in &l.error_samples {
                    let _ = writeln!(s, "- error, {} throughput: {e}", r.name);
                }
            }
        }
        s
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("peers.md"), self.markdown())?;
        std::fs::write(dir.join("peers.json"), serde_json::to_string_pretty(self)?)?;
        Ok(())
    }
}
