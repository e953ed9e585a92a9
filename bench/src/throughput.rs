//! Throughput: concurrent writers on node A for a bounded time (or a number of writes),
//! then how long node B takes to hold the same state.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use tokio::time::Instant;

use crate::{
    latency::ms,
    progress,
    stats::{Samples, Stats},
    target::{cpu_seconds, run_id, text, FloorMongo, Rss, Target},
};

#[derive(Debug, Clone, Args)]
pub struct ThroughputArgs {
    /// Concurrent writers on node A.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    /// How long the writers run (seconds), unless --writes is given.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Run until this many writes were made instead of for --seconds (e.g. 100000 for
    /// the memory check).
    #[arg(long)]
    pub writes: Option<u64>,
    /// Distinct keys the writers cycle through (later writes replace earlier ones).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Size of each write's value in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Longest wait for node B to converge after the writes (seconds).
    #[arg(long, default_value_t = 300.0)]
    pub converge_timeout: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputResult {
    pub writers: usize,
    pub value_bytes: usize,
    pub keys: u64,
    pub writes: u64,
    pub acknowledged: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub seconds: f64,
    pub writes_per_s: f64,
    pub write_latency: Stats,
    /// From the last acknowledged write until A and B had equal digests.
    pub converged_after_ms: Option<f64>,
    /// How long one digest round (both nodes, concurrently) took: the resolution of the
    /// figure above.
    pub digest_round_ms: Option<f64>,
    pub converge_error: Option<String>,
    /// CPU seconds each process of the local cluster (and the benchmark) used during
    /// the writes, and that as a share of the machine's cores over the run.
    pub cpu: Vec<CpuUse>,
    /// The same writers inserting new keys, each with one driver call of its own (the
    /// document and outbox mark a local write stores), on a dedicated MongoDB-protocol
    /// server (no HTTP, no node, no group commit): what the database alone sustains.
    pub db_alone_writes_per_s: Option<f64>,
    pub rss_before: Option<Rss>,
    pub rss_after: Option<Rss>,
    pub rss_peak: Option<Rss>,
    /// Memory of A and B while the writes went on (the last sample after convergence).
    pub rss_series: Vec<RssSample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RssSample {
    pub seconds: f64,
    /// Writes issued so far.
    pub writes: u64,
    pub a_kib: u64,
    pub b_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    pub process: String,
    pub cpu_seconds: f64,
    /// cpu_seconds / (run seconds × cores).
    pub share_of_machine: f64,
}

pub async fn run(target: &Target, args: &ThroughputArgs) -> Result<ThroughputResult> {
    anyhow::ensure!(
        args.writers > 0 && args.keys > 0,
        "writers and keys must be positive"
    );
    let prefix = format!("bench-{}/tp/", run_id());
    let issued = Arc::new(AtomicU64::new(0));
    let limit = args.writes;
    let duration = Duration::from_secs_f64(args.seconds);
    let rss_before = target.rss();
    let pb = match limit {
        Some(n) => progress::bar(n, "throughput: writes"),
        None => progress::bar(duration.as_millis() as u64, "throughput: ms"),
    };
    let mut procs = target.procs.clone();
    procs.push((std::process::id(), "kvsync-bench (the writers)".into()));
    let cpu_before: Vec<Option<f64>> = procs.iter().map(|(p, _)| cpu_seconds(*p)).collect();
    let start = Instant::now();
    let mut handles = Vec::new();
    for w in 0..args.writers {
        let (client, issued, prefix, keys, bytes) = (
            target.a.clone(),
            issued.clone(),
            prefix.clone(),
            args.keys,
            args.value_bytes,
        );
        let pb = pb.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::new();
            let mut lat = Samples::default();
            let mut errors = Vec::new();
            let mut error_count = 0u64;
            let mut last_ack = start;
            loop {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                match limit {
                    Some(n) if i >= n => break,
                    None if start.elapsed() >= duration => break,
                    _ => {}
                }
                let key = format!("{prefix}{}", i % keys);
                let value = text(&mut rng, bytes);
                let t0 = Instant::now();
                match client.put(&key, &[value.as_str()]).await {
                    Ok(_) => {
                        last_ack = Instant::now();
                        lat.push(ms(last_ack - t0));
                    }
                    Err(e) => {
                        error_count += 1;
                        if errors.len() < 3 {
                            errors.push(format!("writer {w}: {e}"));
                        }
                    }
                }
                if limit.is_some() {
                    pb.inc(1);
                }
            }
            (lat, error_count, errors, last_ack)
        }));
    }
    // Time-bound bar and memory peak, sampled while the writers run.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sampler = {
        let pb = pb.clone();
        let pids = target.pids.clone();
        let timed = limit.is_none();
        let issued = issued.clone();
        // A memory sample every tenth of a timed run, or every 10 s of a counted one.
        let step = if timed {
            duration.as_secs_f64() / 10.0
        } else {
            10.0
        };
        tokio::spawn(async move {
            let mut peak: Option<Rss> = None;
            let mut series = Vec::new();
            let mut next = 0.0;
            loop {
                if timed {
                    pb.set_position(start.elapsed().as_millis() as u64);
                }
                if let [a, b, ..] = pids.as_slice() {
                    if let (Some(a), Some(b)) =
                        (crate::target::rss_kib(*a), crate::target::rss_kib(*b))
                    {
                        peak = Some(match peak {
                            Some(p) => Rss {
                                a_kib: p.a_kib.max(a),
                                b_kib: p.b_kib.max(b),
                            },
                            None => Rss { a_kib: a, b_kib: b },
                        });
                        let t = start.elapsed().as_secs_f64();
                        if t >= next {
                            let writes = issued
                                .load(Ordering::Relaxed)
                                .min(limit.unwrap_or(u64::MAX));
                            series.push(RssSample {
                                seconds: crate::stats::round3(t),
                                writes,
                                a_kib: a,
                                b_kib: b,
                            });
                            next += step;
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = &mut stop_rx => return (peak, series),
                }
            }
        })
    };
    let mut lat = Samples::default();
    let mut errors = 0;
    let mut error_samples = Vec::new();
    let mut end = start;
    for h in handles {
        let (l, e, s, last) = h.await?;
        lat.extend(l);
        errors += e;
        error_samples.extend(s);
        end = end.max(last);
    }
    pb.finish_and_clear();
    let _ = stop_tx.send(());
    let (mut rss_peak, mut rss_series) = sampler.await?;
    let seconds = (end - start).as_secs_f64();
    let wall = start.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let cpu = procs
        .iter()
        .zip(cpu_before)
        .filter_map(|((pid, name), before)| {
            let used = cpu_seconds(*pid)? - before?;
            Some(CpuUse {
                process: name.clone(),
                cpu_seconds: crate::stats::round3(used),
                share_of_machine: crate::stats::round3(used / (wall * cores)),
            })
        })
        .collect();
    let acknowledged = lat.len() as u64;
    eprintln!(
        "throughput: {acknowledged} writes acknowledged in {seconds:.1} s; waiting for node B"
    );
    let timeout = Duration::from_secs_f64(args.converge_timeout);
    let (converged_after_ms, digest_round_ms, converge_error) = match target.converge(timeout).await
    {
        Ok((_, round)) => (Some(ms(end.elapsed())), Some(ms(round)), None),
        Err(e) => (None, None, Some(e.to_string())),
    };
    let rss_after = target.rss();
    if let Some(a) = rss_after {
        rss_series.push(RssSample {
            seconds: crate::stats::round3(start.elapsed().as_secs_f64()),
            writes: acknowledged + errors,
            a_kib: a.a_kib,
            b_kib: a.b_kib,
        });
    }
    if let (Some(p), Some(a)) = (rss_peak.as_mut(), rss_after) {
        p.a_kib = p.a_kib.max(a.a_kib);
        p.b_kib = p.b_kib.max(a.b_kib);
    }
    error_samples.truncate(5);
    let db_alone_writes_per_s = match &target.mongo_for_floor {
        Some(m) => {
            eprintln!("throughput: the same writers on the database alone");
            Some(db_alone(m, args, duration.min(Duration::from_secs(5))).await?)
        }
        None => None,
    };
    Ok(ThroughputResult {
        writers: args.writers,
        value_bytes: args.value_bytes,
        keys: args.keys,
        writes: acknowledged + errors,
        acknowledged,
        errors,
        error_samples,
        seconds: crate::stats::round3(seconds),
        writes_per_s: crate::stats::round3(acknowledged as f64 / seconds.max(1e-9)),
        write_latency: lat.stats().rounded(),
        converged_after_ms: converged_after_ms.map(crate::stats::round3),
        digest_round_ms: digest_round_ms.map(crate::stats::round3),
        converge_error,
        cpu,
        db_alone_writes_per_s: db_alone_writes_per_s.map(crate::stats::round3),
        rss_before,
        rss_after,
        rss_peak,
        rss_series,
    })
}

/// Writes/s of `args.writers` concurrent single-document writes (an insert of a new key
/// with its outbox mark, the least a local write costs) on a dedicated server, each its
/// own driver call as any client of the database would make it: not through the store,
/// whose group commit would put several in one command.
async fn db_alone(server: &FloorMongo, args: &ThroughputArgs, duration: Duration) -> Result<f64> {
    use kvsync_core::{Event, Key, NodeId, Op, Timestamp, Values, Version};
    let (mongo, _dir) = server.start().await?;
    let store =
        kvsync_store::Store::connect(&mongo.uri(), "kvsync", Duration::from_secs(5)).await?;
    store.ensure_indexes().await?;
    let client = mongodb::Client::with_uri_str(mongo.uri()).await?;
    let pairs = client
        .database("kvsync")
        .collection::<mongodb::bson::Document>("pairs");
    let node = NodeId::parse("bench-db")?;
    let counter = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..args.writers {
        let (pairs, node, counter, acked) =
            (pairs.clone(), node.clone(), counter.clone(), acked.clone());
        let bytes = args.value_bytes;
        handles.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::new();
            while start.elapsed() < duration {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let key = Key::parse(format!("db/{i}"))?;
                let values = Values::new(vec![text(&mut rng, bytes)], key.as_str().len())?;
                let wall = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis() as u64;
                let version = Version::new(
                    Timestamp::new(wall, (i % (u32::MAX as u64)) as u32),
                    node.clone(),
                );
                let event = Event::new(key, version, Op::Put(values));
                let mut document = kvsync_store::stored_document(&event.key, &event.state, 1);
                document.insert(
                    "outbox",
                    mongodb::bson::doc! { "id": event.id.to_string(), "ver": event.version.to_string() },
                );
                document.insert("seq", i as i64);
                if pairs.insert_one(document).await.is_ok() {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let rate = acked.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    client.shutdown().await;
    store.shutdown().await;
    Ok(rate)
}
