//! Replication delay: a write on node A over HTTP until its change event arrives on node
//! B's change feed, both instants taken here, on one clock.

use std::{collections::HashMap, time::Duration};

use anyhow::{bail, Result};
use clap::Args;
use indicatif::ProgressBar;
use kvsync_core::{NodeId, PairState, Timestamp, Version};
use kvsync_testkit::Client;
use serde::Serialize;
use tokio::time::Instant;

use crate::{
    progress,
    sse::{self, Feed},
    stats::{Samples, Stats},
    target::{parse_payloads, run_id, text, Payload, Target},
};

#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    /// Writes per second on node A (open loop: a slow write does not delay the next).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Measured writes per payload set.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Payload sets: value sizes in bytes, and "random" for sizes between the smallest
    /// and the largest.
    #[arg(long, default_value = "10,256,512,random")]
    pub payloads: String,
    /// Unmeasured writes before the first set (connections, caches, consumer fetch loop).
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// How long to wait for the last changes of a set to arrive on B (seconds).
    #[arg(long, default_value_t = 10.0)]
    pub arrival_timeout: f64,
    /// Pairs imported on node A, and awaited on node B, before the run: the delay with
    /// that many pairs in the nodes (the run itself should then last a few repair
    /// intervals, 30 s each by default).
    #[arg(long, default_value_t = 0)]
    pub preload: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PayloadResult {
    pub name: String,
    pub label: String,
    /// Writes sent.
    pub writes: usize,
    /// Failed writes, changes that never arrived on B, or arrived with another version.
    pub errors: usize,
    pub error_samples: Vec<String>,
    /// Write on A (t0 just before the PUT) until its change event arrives on B.
    pub replication: Stats,
    /// The PUT's round trip on A alone (t0 until A acknowledged).
    pub write_ack: Stats,
    /// Replication delay at 0%, 1%, ..., 100%.
    pub quantiles: Vec<f64>,
    #[serde(skip)]
    pub samples: Samples,
}

/// B's own `kvsync_replication_lag_seconds` over the run: from the version's wall clock
/// (stamped on A before its database write) to the apply on B, in whole milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct NodeLag {
    pub count: u64,
    pub mean_ms: f64,
    /// Upper bounds of the histogram buckets holding the median and the 99th percentile.
    pub p50_bucket_le_ms: f64,
    pub p99_bucket_le_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyResult {
    pub rate_per_s: f64,
    pub payloads: Vec<PayloadResult>,
    pub node_lag: Option<NodeLag>,
    /// Times B's feed told the reader it had fallen behind (should be 0).
    pub feed_resyncs: u64,
}

pub async fn run(target: &Target, args: &LatencyArgs) -> Result<LatencyResult> {
    let payloads = parse_payloads(&args.payloads)?;
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let prefix = format!("bench-{}/lat/", run_id());
    if args.preload > 0 {
        preload(target, &format!("bench-{}/pre/", run_id()), args.preload).await?;
    }
    let mut feed = sse::subscribe(&target.b, &prefix).await?;
    let lag_before = lag_histogram(&target.b).await.ok();
    let mut rng = fastrand::Rng::new();
    if args.warmup > 0 {
        let warm = run_sets(
            target,
            &mut feed,
            &format!("{prefix}warmup/"),
            &[Payload::Fixed(64)],
            args.warmup,
            args,
            &mut rng,
            &ProgressBar::hidden(),
        )
        .await?;
        if warm[0].errors == warm[0].writes {
            bail!(
                "no warm-up write reached node B: {:?}",
                warm[0].error_samples.first()
            );
        }
    }
    let pb = progress::bar(
        (args.count * payloads.len()) as u64,
        "latency: writes on A, arrivals on B",
    );
    let results = run_sets(
        target, &mut feed, &prefix, &payloads, args.count, args, &mut rng, &pb,
    )
    .await?;
    pb.finish_and_clear();
    let lag_after = lag_histogram(&target.b).await.ok();
    let node_lag = match (lag_before, lag_after) {
        (Some(b), Some(a)) => a.minus(&b).summary(),
        _ => None,
    };
    Ok(LatencyResult {
        rate_per_s: args.rate,
        payloads: results,
        node_lag,
        feed_resyncs: feed.resyncs.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// Imports `n` pairs `{prefix}{i:07}` (one short value each) on A, 1,000 per request, and
/// waits until B holds them all.
async fn preload(target: &Target, prefix: &str, n: usize) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let version = Version::new(
        Timestamp {
            wall_ms: now,
            counter: 0,
        },
        NodeId::parse("bench")?,
    );
    let state =
        serde_json::to_value(PairState::whole(Some(vec!["preloaded".into()]), &version).to_wire())?;
    let pb = progress::bar(n as u64, "preload: pairs imported on A");
    for start in (0..n).step_by(1000) {
        let lines: Vec<String> = (start..n.min(start + 1000))
            .map(|i| {
                serde_json::json!({ "key": format!("{prefix}{i:07}"), "state": state }).to_string()
            })
            .collect();
        target.a.import(lines.join("\n")).await?;
        pb.inc(lines.len() as u64);
    }
    pb.finish_and_clear();
    eprintln!("preload: {n} pairs imported on node A; waiting for node B to hold them");
    let path = format!("/api/pairs?prefix={prefix}&count=true&limit=1");
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let held = target.b.get_json(&path).await?["total"]
            .as_u64()
            .unwrap_or(0);
        if held >= n as u64 {
            eprintln!("preload: node B holds the {n} pairs");
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("node B holds {held} of the {n} preloaded pairs after 30 minutes");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Writes `count` pairs of every payload set at `args.rate` writes/s in total, the sets
/// interleaved (write i uses set i mod n) so that every set meets the same conditions
/// (the nodes' collections grow during the run), and matches their arrivals on B.
#[allow(clippy::too_many_arguments)]
async fn run_sets(
    target: &Target,
    feed: &mut Feed,
    prefix: &str,
    payloads: &[Payload],
    count: usize,
    args: &LatencyArgs,
    rng: &mut fastrand::Rng,
    pb: &ProgressBar,
) -> Result<Vec<PayloadResult>> {
    let n = payloads.len();
    let total = count * n;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    let mut handles = Vec::with_capacity(total);
    for i in 0..total {
        ticker.tick().await;
        let payload = payloads[i % n];
        let key = format!("{prefix}{}/{i}", payload.name());
        let size = payload.size(rng);
        let value = text(rng, size);
        let client = target.a.clone();
        handles.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = client.put(&key, &[value.as_str()]).await;
            let ack = Instant::now();
            (key, t0, ack, r.map(|p| p.version))
        }));
        pb.inc(1);
    }
    let mut errors: Vec<Vec<String>> = vec![Vec::new(); n];
    let mut write_ack = vec![Samples::default(); n];
    // key -> (set, t0, version written; emptied once arrived)
    let mut sent: HashMap<String, (usize, Instant, String)> = HashMap::with_capacity(total);
    for (i, h) in handles.into_iter().enumerate() {
        let (key, t0, ack, r) = h.await?;
        match r {
            Ok(version) => {
                write_ack[i % n].push(ms(ack - t0));
                sent.insert(key, (i % n, t0, version));
            }
            Err(e) => errors[i % n].push(format!("PUT {key}: {e}")),
        }
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.arrival_timeout);
    let mut replication = vec![Samples::default(); n];
    let mut seen = 0;
    while seen < sent.len() {
        match tokio::time::timeout_at(deadline, feed.arrivals.recv()).await {
            Ok(Some(a)) => {
                let Some((set, t0, version)) = sent.get_mut(&a.key) else {
                    continue; // A late arrival of an earlier run.
                };
                if version.is_empty() {
                    continue; // Already counted.
                }
                seen += 1;
                if a.version == *version {
                    replication[*set].push(ms(a.at.saturating_duration_since(*t0)));
                } else {
                    errors[*set].push(format!(
                        "{}: version {} arrived, {} was written",
                        a.key, a.version, version
                    ));
                }
                version.clear();
            }
            Ok(None) => bail!("node B's change feed closed"),
            Err(_) => break,
        }
    }
    for (set, _, version) in sent.values() {
        if !version.is_empty() {
            errors[*set].push("a change did not arrive on B in time".into());
        }
    }
    Ok(payloads
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let mut e = std::mem::take(&mut errors[k]);
            let missing = e.iter().filter(|m| m.ends_with("in time")).count();
            e.retain(|m| !m.ends_with("in time"));
            if missing > 0 {
                e.push(format!(
                    "{missing} changes did not arrive on B within {:.1} s",
                    args.arrival_timeout
                ));
            }
            e.truncate(5);
            let r = std::mem::take(&mut replication[k]);
            PayloadResult {
                name: p.name(),
                label: p.label(),
                writes: count,
                errors: count - r.len(),
                error_samples: e,
                replication: r.stats().rounded(),
                write_ack: write_ack[k].stats().rounded(),
                quantiles: r.quantiles(),
                samples: r,
            }
        })
        .collect())
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The cumulative buckets, sum and count of `kvsync_replication_lag_seconds`.
#[derive(Debug, Clone, Default)]
struct LagHistogram {
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl LagHistogram {
    fn minus(&self, before: &Self) -> Self {
        let old: HashMap<u64, u64> = before
            .buckets
            .iter()
            .map(|(le, n)| (le.to_bits(), *n))
            .collect();
        Self {
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| (*le, n - old.get(&le.to_bits()).copied().unwrap_or(0)))
                .collect(),
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    fn bucket_for(&self, q: f64) -> f64 {
        let want = (q * self.count as f64).ceil() as u64;
        self.buckets
            .iter()
            .find(|(_, n)| *n >= want)
            .map(|(le, _)| *le * 1000.0)
            .unwrap_or(f64::INFINITY)
    }

    fn summary(&self) -> Option<NodeLag> {
        (self.count > 0).then(|| NodeLag {
            count: self.count,
            mean_ms: crate::stats::round3(self.sum / self.count as f64 * 1000.0),
            p50_bucket_le_ms: self.bucket_for(0.5),
            p99_bucket_le_ms: self.bucket_for(0.99),
        })
    }
}

async fn lag_histogram(client: &Client) -> Result<LagHistogram> {
    let text = client.metrics().await?;
    Ok(parse_lag(&text))
}

fn parse_lag(text: &str) -> LagHistogram {
    const NAME: &str = "kvsync_replication_lag_seconds";
    let mut h = LagHistogram::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(NAME) else {
            continue;
        };
        let Some((series, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        if series == "_sum" {
            h.sum = value.parse().unwrap_or(0.0);
        } else if series == "_count" {
            h.count = value.parse().unwrap_or(0);
        } else if let Some(le) = series
            .strip_prefix("_bucket{le=\"")
            .and_then(|s| s.strip_suffix("\"}"))
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            h.buckets.push((le, value.parse().unwrap_or(0)));
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_lag_histogram() {
        let text = "# HELP kvsync_replication_lag_seconds x\n\
            kvsync_replication_lag_seconds_sum 0.03\n\
            kvsync_replication_lag_seconds_count 4\n\
            kvsync_replication_lag_seconds_bucket{le=\"0.005\"} 1\n\
            kvsync_replication_lag_seconds_bucket{le=\"0.01\"} 3\n\
            kvsync_replication_lag_seconds_bucket{le=\"+Inf\"} 4\n";
        let h = parse_lag(text);
        assert_eq!(h.count, 4);
        let s = h.minus(&LagHistogram::default()).summary().unwrap();
        assert_eq!(s.mean_ms, 7.5);
        assert_eq!(s.p50_bucket_le_ms, 10.0);
        assert!(s.p99_bucket_le_ms.is_infinite());
    }
}
