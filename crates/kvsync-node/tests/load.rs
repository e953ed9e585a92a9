//! A bounded load test on two real nodes: `KVSYNC_LOAD_CLIENTS` concurrent clients
//! (default 64, split over both nodes) run a mix of reads, listings, puts, appends and
//! deletes on a shared key space for `KVSYNC_LOAD_SECS` (default 60). No request may
//! fail with a 5xx or a transport error, the nodes' memory must stay flat, and both must
//! end identical. A summary is printed (`--nocapture` shows it).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use kvsync_testkit::{test_seed, Client, Cluster, ClusterOptions, Rng};
use reqwest::Method;
use serde_json::json;
use tokio::sync::Mutex;

const KEYS: u64 = 1000;
const OPS: [&str; 5] = ["get", "list", "put", "append", "delete"];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Picks an operation: 40% get, 10% list, 25% put, 15% append, 10% delete.
fn pick(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=39 => 0,
        40..=49 => 1,
        50..=74 => 2,
        75..=89 => 3,
        _ => 4,
    }
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    /// Per operation: latencies in microseconds of every answered request.
    latencies: [Vec<u32>; 5],
    /// 404: a get or delete of an absent key.
    absent: u64,
    /// 409 (outrun by concurrent changes of one key) or 413 (append to a full pair).
    contended: u64,
    /// Anything else: 5xx, other 4xx, transport errors.
    failures: Vec<String>,
}

async fn client_loop(client: Client, node: usize, seed: u64, stream: u64, until: Instant) -> Tally {
    let mut rng = Rng::new(seed, stream);
    let mut t = Tally::default();
    let mut i = 0u64;
    while Instant::now() < until {
        let key = format!("load/{:04}", rng.below(KEYS));
        let op = pick(&mut rng);
        let value = format!("c{stream}-{i}-{}", "x".repeat(rng.below(200) as usize));
        let pair = client.pair_url(&key);
        let request = match op {
            0 => client.request(Method::GET, &pair),
            1 => client
                .request(Method::GET, &client.url("/api/pairs"))
                .query(&[("prefix", &key[..7]), ("limit", "50")]),
            2 => client
                .request(Method::PUT, &pair)
                .json(&json!({ "values": [value] })),
            3 => client
                .request(Method::POST, &format!("{pair}/values"))
                .json(&json!({ "value": value })),
            _ => client.request(Method::DELETE, &pair),
        };
        let started = Instant::now();
        let outcome = match request.timeout(Duration::from_secs(30)).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                // Read the whole body: the request is not done before it is.
                match r.bytes().await {
                    Ok(_) => Ok(status),
                    Err(e) => Err(format!("body: {e}")),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        let micros = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        match outcome {
            Ok(200..=299) => t.latencies[op].push(micros),
            Ok(404) if op == 0 || op == 4 => {
                t.latencies[op].push(micros);
                t.absent += 1;
            }
            Ok(409) | Ok(413) if op >= 2 => {
                t.latencies[op].push(micros);
                t.contended += 1;
            }
            Ok(s) => t
                .failures
                .push(format!("node{} {} {key}: HTTP {s}", node + 1, OPS[op])),
            Err(e) => t
                .failures
                .push(format!("node{} {} {key}: {e}", node + 1, OPS[op])),
        }
        i += 1;
    }
    t
}

/// When (since the load started) and each node's RSS in KiB.
type RssSample = (Duration, Vec<u64>);

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_on_two_nodes_has_no_errors_flat_memory_and_converges() {
    let clients = env_or("KVSYNC_LOAD_CLIENTS", 64).max(1);
    let secs = env_or("KVSYNC_LOAD_SECS", 60).max(1);
    let seed = test_seed();
    eprintln!("load: {clients} clients for {secs} s, KVSYNC_TEST_SEED={seed}");
    let c = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let nodes = c.clients();
    let pids: Vec<u32> = c.nodes.iter().map(|n| n.pid().unwrap()).collect();

    // Memory, sampled every 250 ms from the start of the load to its end.
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let samples: Arc<Mutex<Vec<RssSample>>> = Arc::default();
    let sampler = {
        let (samples, pids) = (samples.clone(), pids.clone());
        tokio::spawn(async move {
            while Instant::now() < until {
                let rss = pids.iter().map(|&p| rss_kib(p).unwrap_or(0)).collect();
                samples.lock().await.push((started.elapsed(), rss));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let before: Vec<u64> = pids.iter().map(|&p| rss_kib(p).unwrap()).collect();

    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let node = (i % nodes.len() as u64) as usize;
            tokio::spawn(client_loop(nodes[node].clone(), node, seed, i, until))
        })
        .collect();
    let mut total = Tally::default();
    for t in tasks {
        let t = t.await.unwrap();
        for (all, mine) in total.latencies.iter_mut().zip(t.latencies) {
            all.extend(mine);
        }
        total.absent += t.absent;
        total.contended += t.contended;
        total.failures.extend(t.failures);
    }
    let elapsed = started.elapsed();
    sampler.await.unwrap();

    let converge_start = Instant::now();
    let state = c.identical(Duration::from_secs(300)).await;
    let converge = converge_start.elapsed();
    let after: Vec<u64> = pids.iter().map(|&p| rss_kib(p).unwrap()).collect();

    // The summary, before any assertion, so a failed run still reports.
    let answered: usize = total.latencies.iter().map(Vec::len).sum();
    eprintln!(
        "load: {answered} answered requests in {:.1} s = {:.0} requests/s, of which {} 404 \
         (absent key) and {} 409/413 (contended key, full pair); {} failures",
        elapsed.as_secs_f64(),
        answered as f64 / elapsed.as_secs_f64(),
        total.absent,
        total.contended,
        total.failures.len()
    );
    for (op, lat) in OPS.iter().zip(total.latencies.iter_mut()) {
        lat.sort_unstable();
        eprintln!(
            "load: {op:>6}: {:>6} requests, p50 {:>7.2} ms, p99 {:>7.2} ms, max {:>8.2} ms",
            lat.len(),
            percentile(lat, 0.5),
            percentile(lat, 0.99),
            percentile(lat, 1.0)
        );
    }
    let samples = samples.lock().await.clone();
    let half = Duration::from_secs_f64(elapsed.as_secs_f64() / 2.0);
    let mut flat = Vec::new();
    for (n, before) in before.iter().enumerate() {
        let peak = |keep: &dyn Fn(Duration) -> bool| {
            samples
                .iter()
                .filter(|(at, _)| keep(*at))
                .map(|(_, rss)| rss[n])
                .max()
                .unwrap_or(0)
        };
        let (first, second) = (peak(&|at| at < half), peak(&|at| at >= half));
        eprintln!(
            "load: node{} RSS {:.1} MiB before, peak {:.1} MiB in the first half and {:.1} MiB \
             in the second, {:.1} MiB after convergence",
            n + 1,
            mib(*before),
            mib(first),
            mib(second),
            mib(after[n])
        );
        flat.push((n, first, second));
    }
    eprintln!(
        "load: converged {:.1} s after the load",
        converge.as_secs_f64()
    );

    assert!(
        total.failures.is_empty(),
        "{} failed requests, first ones:\n{}",
        total.failures.len(),
        total.failures[..total.failures.len().min(20)].join("\n")
    );
    assert!(
        total.latencies[2].len() + total.latencies[3].len() > 0,
        "no write succeeded"
    );
    let state = state.expect("both nodes converge after the load");
    assert!(state.len() as u64 <= KEYS);
    // Flat: once warmed up (first half), the second half does not keep growing. The
    // slack absorbs allocator noise; a leak proportional to requests would exceed it.
    for (n, first, second) in flat {
        assert!(
            second <= first + first / 4 + 16 * 1024,
            "node{}'s memory grew from a peak of {:.1} MiB to {:.1} MiB",
            n + 1,
            mib(first),
            mib(second)
        );
    }
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(
            n.counter("events_rejected").await.unwrap(),
            0,
            "node{} rejected events",
            i + 1
        );
    }
}
