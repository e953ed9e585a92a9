//! Scaling with nodes (replication delay and throughput with writes spread over 2, 3
//! and 5 nodes, a sustained run below the maximum and the lag after it) and the fetch
//! wait's curve (replication delay against broker and node CPU).

use std::{collections::BTreeMap, fmt::Write as _, path::Path, time::Duration};

use anyhow::Result;
use clap::Args;
use kvsync_testkit::Client;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::{
    latency::ms,
    probe::{self, LatencyPlan, LoadPlan, LoadResult, SetSamples},
    report::{fmt_ms, Machine},
    stats::{round3, Stats},
    target::{load_average, parse_payloads, run_id, wait_members_live, Target, TargetArgs},
    throughput::CpuUse,
};

#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// Cluster sizes, one after the other.
    #[arg(long, default_value = "2,3,5", value_delimiter = ',')]
    pub nodes: Vec<usize>,
    /// Measured latency writes (write i on node i mod n, watched on node i+1 mod n).
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    #[arg(long, default_value = "256")]
    pub payloads: String,
    /// Concurrent writers, spread over all nodes.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    /// Seconds of the run that finds the maximum.
    #[arg(long, default_value_t = 10.0)]
    pub max_seconds: f64,
    /// Seconds of the sustained run.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// The sustained run's rate as a share of the measured maximum: the maximum run's
    /// writes over the time until every node had them (or the acknowledged rate, if
    /// lower).
    #[arg(long, default_value_t = 0.8)]
    pub share: f64,
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    #[arg(long, default_value_t = 300.0)]
    pub converge_timeout: f64,
    /// Tiny counts and short runs (smoke test).
    #[arg(long)]
    pub quick: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleRow {
    pub nodes: usize,
    pub replication: Stats,
    pub latency_errors: usize,
    pub error_samples: Vec<String>,
    pub write_ack: Stats,
    pub latency_load_average: String,
    pub max: LoadResult,
    /// After the maximum run: until every node had the same digest.
    pub max_converged_after_ms: Option<f64>,
    /// The maximum's writes over the time until every node had them: the rate the
    /// cluster replicates at, which the sustained run takes its share of.
    pub applied_per_s: Option<f64>,
    pub sustained: LoadResult,
    /// After the sustained run: from its last acknowledgement until every node had the
    /// same digest (the lag left at its end).
    pub lag_at_end_ms: Option<f64>,
    /// One digest round over all nodes: the resolution of the lag.
    pub digest_round_ms: Option<f64>,
    pub converge_error: Option<String>,
    /// CPU milliseconds per acknowledged write in the sustained run, per process.
    pub cpu_ms_per_write: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleResult {
    pub generated_at: String,
    pub machine: Machine,
    pub settings: serde_json::Value,
    pub rows: Vec<ScaleRow>,
}

/// Waits until every node has the same digest; returns when that was, and one round's
/// length.
pub async fn converge_all(nodes: &[Client], timeout: Duration) -> Result<(Instant, Duration)> {
    let start = Instant::now();
    loop {
        let round = Instant::now();
        let digests = futures::future::join_all(nodes.iter().map(|c| c.digest())).await;
        let took = round.elapsed();
        let ok: Vec<_> = digests.iter().filter_map(|d| d.as_ref().ok()).collect();
        if ok.len() == nodes.len() && ok.windows(2).all(|w| w[0] == w[1]) {
            return Ok((Instant::now(), took));
        }
        if start.elapsed() > timeout {
            anyhow::bail!("the nodes did not converge within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn run_scale(
    target: &TargetArgs,
    args: &ScaleArgs,
    machine: Machine,
) -> Result<ScaleResult> {
    let mut args = args.clone();
    if args.quick {
        args.count = args.count.min(10);
        args.max_seconds = args.max_seconds.min(1.0);
        args.seconds = args.seconds.min(1.0);
        args.writers = args.writers.min(4);
    }
    let payloads = parse_payloads(&args.payloads)?;
    let timeout = Duration::from_secs_f64(args.converge_timeout);
    let mut rows = Vec::new();
    for &n in &args.nodes {
        let t = Target::open_nodes(target, n).await?;
        wait_members_live(&t.nodes, n, Duration::from_secs(60)).await?;
        let sys = probe::kvsync(&t.nodes, t.procs.clone());
        let run = run_id();
        eprintln!("{n} nodes: latency");
        let plan = LatencyPlan {
            payloads: &payloads,
            count: args.count.div_ceil(payloads.len()),
            rate: args.rate,
            warmup: 20,
            arrival_timeout: Duration::from_secs(10),
            routes: (0..n).map(|i| (i, (i + 1) % n)).collect(),
        };
        let mut lat = SetSamples::default();
        for s in probe::latency(&sys, &plan, &format!("bench-{run}/lat/")).await? {
            lat.merge(s);
        }
        let latency_load_average = load_average();
        let members: Vec<usize> = (0..n).collect();
        eprintln!(
            "{n} nodes: maximum, {} writers for {} s",
            args.writers, args.max_seconds
        );
        let max = probe::load(
            &sys,
            &LoadPlan {
                writers: args.writers,
                seconds: args.max_seconds,
                keys: args.keys,
                value_bytes: args.value_bytes,
                rate: None,
                members: members.clone(),
            },
            &format!("bench-{run}/max/"),
        )
        .await?;
        let max_converged_after_ms = converge_all(&t.nodes, timeout)
            .await
            .ok()
            .map(|(at, _)| round3(ms(at.saturating_duration_since(max.ended.unwrap_or(at)))));
        // A replicated write is done once every node has it: the writers' acknowledgement
        // rate overstates the maximum when the peers apply more slowly (they do here).
        let applied_per_s = max_converged_after_ms
            .map(|c| round3(max.acknowledged as f64 / (max.seconds + c / 1000.0).max(1e-9)));
        let rate = (applied_per_s
            .unwrap_or(max.writes_per_s)
            .min(max.writes_per_s)
            * args.share)
            .max(1.0);
        eprintln!(
            "{n} nodes: sustained, {rate:.0} writes/s for {} s",
            args.seconds
        );
        let sustained = probe::load(
            &sys,
            &LoadPlan {
                writers: args.writers,
                seconds: args.seconds,
                keys: args.keys,
                value_bytes: args.value_bytes,
                rate: Some(rate),
                members,
            },
            &format!("bench-{run}/sus/"),
        )
        .await?;
        let (lag_at_end_ms, digest_round_ms, converge_error) =
            match converge_all(&t.nodes, timeout).await {
                Ok((at, round)) => (
                    Some(round3(ms(
                        at.saturating_duration_since(sustained.ended.unwrap_or(at))
                    ))),
                    Some(round3(ms(round))),
                    None,
                ),
                Err(e) => (None, None, Some(e.to_string())),
            };
        let cpu_ms_per_write = sustained
            .cpu
            .iter()
            .map(|c| {
                (
                    c.process.clone(),
                    round3(c.cpu_seconds * 1000.0 / sustained.acknowledged.max(1) as f64),
                )
            })
            .collect();
        rows.push(ScaleRow {
            nodes: n,
            replication: lat.replication.stats().rounded(),
            latency_errors: lat.errors,
            error_samples: lat.error_samples,
            write_ack: lat.ack.stats().rounded(),
            latency_load_average,
            max,
            max_converged_after_ms,
            applied_per_s,
            sustained,
            lag_at_end_ms,
            digest_round_ms,
            converge_error,
            cpu_ms_per_write,
        });
        drop(t);
    }
    Ok(ScaleResult {
        generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        machine,
        settings: json!({
            "nodes": args.nodes, "count": args.count, "rate_per_s": args.rate, "payloads": args.payloads,
            "writers": args.writers, "max_seconds": args.max_seconds, "seconds": args.seconds,
            "share": args.share, "keys": args.keys, "value_bytes": args.value_bytes,
            "fetch_wait_ms": target.fetch_wait_ms, "node_env": target.node_env, "quick": args.quick,
        }),
        rows,
    })
}

fn cpu_line(cpu: &[CpuUse]) -> String {
    cpu.iter()
        .map(|c| format!("{} {:.0} %", c.process, c.share_of_machine * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ScaleResult {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let st = &self.settings;
        let _ = writeln!(s, "# kvsync with 2, 3 and 5 nodes\n");
        let _ = writeln!(
            s,
            "{} ({} cores), {}. kvsync {}. Generated {}. One broker and one nx-27017 per node, all on this machine. Latency: {} writes at {} writes/s, write i on node i mod n, watched on node i+1 mod n. Maximum: {} writers spread over the nodes for {} s; sustained: {} × the replicated maximum (the maximum run's writes over the time until every node had them) for {} s. Milliseconds.\n",
            m.cpu, m.cores, m.os, m.kvsync_commit, self.generated_at, st["count"], st["rate_per_s"],
            st["writers"], st["max_seconds"], st["share"], st["seconds"]
        );
        let _ = writeln!(s, "| nodes | replication p50 | p90 | p99 | errors | PUT p50 | max writes/s acknowledged | everywhere after | replicated writes/s | sustained target | achieved | write p99 (sustained) | lag at end | digest round | load average (latency; sustained) |");
        let _ = writeln!(
            s,
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"
        );
        for r in &self.rows {
            let _ =
                writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {}; {} |",
                r.nodes,
                fmt_ms(r.replication.p50_ms),
                fmt_ms(r.replication.p90_ms),
                fmt_ms(r.replication.p99_ms),
                r.latency_errors + r.sustained.errors as usize + r.max.errors as usize,
                fmt_ms(r.write_ack.p50_ms),
                r.max.writes_per_s,
                r.max_converged_after_ms.map(fmt_ms).unwrap_or_else(|| "–".into()),
                r.applied_per_s.unwrap_or(0.0),
                r.sustained.target_rate.unwrap_or(0.0),
                r.sustained.writes_per_s,
                fmt_ms(r.sustained.write_latency.p99_ms),
                r.lag_at_end_ms.map(fmt_ms).unwrap_or_else(|| "not converged".into()),
                r.digest_round_ms.map(fmt_ms).unwrap_or_default(),
                r.latency_load_average,
                r.sustained.load_average,
            );
        }
        let _ = writeln!(s, "\nCPU, share of the machine (2 cores = 100 %):\n");
        for r in &self.rows {
            let _ = writeln!(s, "- {} nodes, maximum: {}", r.nodes, cpu_line(&r.max.cpu));
            let _ = writeln!(
                s,
                "- {} nodes, sustained: {}",
                r.nodes,
                cpu_line(&r.sustained.cpu)
            );
        }
        let _ = writeln!(
            s,
            "\nCPU milliseconds per acknowledged write, sustained run:\n"
        );
        for r in &self.rows {
            let l: Vec<String> = r
                .cpu_ms_per_write
                .iter()
                .map(|(p, v)| format!("{p} {v:.3}"))
                .collect();
            let _ = writeln!(s, "- {} nodes: {}", r.nodes, l.join(", "));
        }
        for r in &self.rows {
            for e in r
                .error_samples
                .iter()
                .chain(&r.max.error_samples)
                .chain(&r.sustained.error_samples)
            {
                let _ = writeln!(s, "- error, {} nodes: {e}", r.nodes);
            }
            if let Some(e) = &r.converge_error {
                let _ = writeln!(s, "- {} nodes: {e}", r.nodes);
            }
        }
        s
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("scale.md"), self.markdown())?;
        std::fs::write(dir.join("scale.json"), serde_json::to_string_pretty(self)?)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Args)]
pub struct FetchWaitArgs {
    /// Fetch waits (ms) to measure, in this order; repeat values to interleave
    /// (e.g. 1,2,5,10,10,5,2,1): repeats are merged.
    #[arg(long, default_value = "1,2,5,10", value_delimiter = ',')]
    pub waits: Vec<u32>,
    /// Measured writes per wait and repeat, node 1 to node 2.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    #[arg(long, default_value = "256")]
    pub payloads: String,
    /// Seconds without writes over which idle CPU is measured.
    #[arg(long, default_value_t = 5.0)]
    pub idle_seconds: f64,
    #[arg(long)]
    pub quick: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FetchWaitRow {
    pub fetch_wait_ms: u32,
    pub runs: usize,
    pub replication: Stats,
    pub errors: usize,
    /// CPU seconds per second of wall clock (1.0 = one core) of each process while the
    /// probe wrote, and while nothing was written; summed over repeats, divided by
    /// their total time.
    pub cpu_busy: BTreeMap<String, f64>,
    pub cpu_idle: BTreeMap<String, f64>,
    pub load_averages: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FetchWaitResult {
    pub generated_at: String,
    pub machine: Machine,
    pub settings: serde_json::Value,
    pub rows: Vec<FetchWaitRow>,
}

fn cores_of(c: &[CpuUse], wall: f64) -> Vec<(String, f64)> {
    c.iter()
        .map(|u| (u.process.clone(), u.cpu_seconds / wall.max(1e-9)))
        .collect()
}

pub async fn run_fetch_wait(
    target: &TargetArgs,
    args: &FetchWaitArgs,
    machine: Machine,
) -> Result<FetchWaitResult> {
    let mut args = args.clone();
    if args.quick {
        args.count = args.count.min(10);
        args.idle_seconds = args.idle_seconds.min(0.5);
    }
    let payloads = parse_payloads(&args.payloads)?;
    struct Acc {
        runs: usize,
        lat: SetSamples,
        busy: BTreeMap<String, (f64, f64)>,
        idle: BTreeMap<String, (f64, f64)>,
        loads: Vec<String>,
    }
    let mut acc: BTreeMap<u32, Acc> = BTreeMap::new();
    for &wait in &args.waits {
        let mut t_args = target.clone();
        t_args.fetch_wait_ms = wait;
        let t = Target::open(&t_args).await?;
        wait_members_live(&t.nodes, 2, Duration::from_secs(60)).await?;
        let sys = probe::kvsync(&t.nodes, t.procs.clone());
        eprintln!(
            "fetch wait {wait} ms: idle {} s, then {} writes",
            args.idle_seconds, args.count
        );
        let before: Vec<Option<f64>> = t
            .procs
            .iter()
            .map(|(p, _)| crate::target::cpu_seconds(*p))
            .collect();
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(args.idle_seconds)).await;
        let idle_wall = start.elapsed().as_secs_f64();
        let idle = cores_of(&probe::cpu_use(&t.procs, &before, idle_wall), idle_wall);
        let before: Vec<Option<f64>> = t
            .procs
            .iter()
            .map(|(p, _)| crate::target::cpu_seconds(*p))
            .collect();
        let start = Instant::now();
        let plan = LatencyPlan {
            payloads: &payloads,
            count: args.count.div_ceil(payloads.len()),
            rate: args.rate,
            warmup: 20,
            arrival_timeout: Duration::from_secs(10),
            routes: vec![(0, 1)],
        };
        let sets = probe::latency(&sys, &plan, &format!("bench-{}/fw/", run_id())).await?;
        let busy_wall = start.elapsed().as_secs_f64();
        let busy = cores_of(&probe::cpu_use(&t.procs, &before, busy_wall), busy_wall);
        let a = acc.entry(wait).or_insert_with(|| Acc {
            runs: 0,
            lat: SetSamples::default(),
            busy: BTreeMap::new(),
            idle: BTreeMap::new(),
            loads: Vec::new(),
        });
        a.runs += 1;
        for s in sets {
            a.lat.merge(s);
        }
        for (p, c) in busy {
            let e = a.busy.entry(p).or_default();
            e.0 += c * busy_wall;
            e.1 += busy_wall;
        }
        for (p, c) in idle {
            let e = a.idle.entry(p).or_default();
            e.0 += c * idle_wall;
            e.1 += idle_wall;
        }
        a.loads.push(load_average());
        drop(t);
    }
    let avg = |m: BTreeMap<String, (f64, f64)>| {
        m.into_iter()
            .map(|(k, (c, w))| (k, round3(c / w.max(1e-9))))
            .collect()
    };
    let rows = acc
        .into_iter()
        .map(|(wait, a)| FetchWaitRow {
            fetch_wait_ms: wait,
            runs: a.runs,
            replication: a.lat.replication.stats().rounded(),
            errors: a.lat.errors,
            cpu_busy: avg(a.busy),
            cpu_idle: avg(a.idle),
            load_averages: a.loads,
        })
        .collect();
    Ok(FetchWaitResult {
        generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        machine,
        settings: json!({
            "waits": args.waits, "count": args.count, "rate_per_s": args.rate,
            "payloads": args.payloads, "idle_seconds": args.idle_seconds,
            "node_env": target.node_env, "quick": args.quick,
        }),
        rows,
    })
}

impl FetchWaitResult {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let st = &self.settings;
        let _ = writeln!(s, "# Replication delay against CPU, by fetch wait\n");
        let _ = writeln!(
            s,
            "{} ({} cores), {}. kvsync {}. Generated {}. A fresh 2-node cluster per run, in the order {}; per run {} writes at {} writes/s on node 1, watched on node 2, after {} s without writes. CPU in cores (1.00 = one core busy).\n",
            m.cpu, m.cores, m.os, m.kvsync_commit, self.generated_at, st["waits"], st["count"], st["rate_per_s"], st["idle_seconds"]
        );
        let procs: Vec<String> = self
            .rows
            .first()
            .map(|r| r.cpu_busy.keys().cloned().collect())
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "| fetch wait | runs | p50 | p90 | p99 | errors | {} | idle: {} | load average |",
            procs
                .iter()
                .map(|p| format!("{p} (writing)"))
                .collect::<Vec<_>>()
                .join(" | "),
            procs.join(" + ")
        );
        let _ = writeln!(
            s,
            "|--:|--:|--:|--:|--:|--:|{}--:|---|",
            "--:|".repeat(procs.len())
        );
        for r in &self.rows {
            let busy: Vec<String> = procs
                .iter()
                .map(|p| format!("{:.3}", r.cpu_busy.get(p).copied().unwrap_or(0.0)))
                .collect();
            let idle: Vec<String> = procs
                .iter()
                .map(|p| format!("{:.3}", r.cpu_idle.get(p).copied().unwrap_or(0.0)))
                .collect();
            let _ = writeln!(
                s,
                "| {} ms | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.fetch_wait_ms,
                r.runs,
                fmt_ms(r.replication.p50_ms),
                fmt_ms(r.replication.p90_ms),
                fmt_ms(r.replication.p99_ms),
                r.errors,
                busy.join(" | "),
                idle.join(" + "),
                r.load_averages.join("; ")
            );
        }
        s
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("fetch-wait.md"), self.markdown())?;
        std::fs::write(
            dir.join("fetch-wait.json"),
            serde_json::to_string_pretty(self)?,
        )?;
        Ok(())
    }
}
