//! The floor: what the broker and the database underneath cost by themselves, measured
//! with the node's own client code and settings (`kvsync_kafka`, `kvsync_store`).

use std::{collections::HashMap, time::Duration};

use anyhow::{bail, Context, Result};
use clap::Args;
use kvsync_core::{Event, Key, NodeId, Op, Timestamp, Values, Version};
use kvsync_kafka::{KafkaSettings, Probe, Publisher, Start, Subscriber};
use kvsync_store::Store;
use serde::Serialize;
use tokio::{sync::mpsc, time::Instant};

use crate::{
    latency::ms,
    progress,
    stats::{Samples, Stats},
    target::{run_id, text, Target},
};

#[derive(Debug, Clone, Args)]
pub struct FloorArgs {
    /// Messages, and database writes, measured for the floor.
    #[arg(long, default_value_t = 1000)]
    pub floor_count: usize,
    /// Messages (and writes) per second.
    #[arg(long, default_value_t = 100.0)]
    pub floor_rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FloorResult {
    /// Publisher::publish start until the Subscriber on a fresh topic receives it.
    pub kafka: Stats,
    /// Publisher::publish start until the broker acknowledged it (acks=all).
    pub publish_ack: Stats,
    /// One Store::apply_remote (the write a replicated change costs on B), new key.
    pub db_write: Stats,
    /// One Store::write_local of a new key (an insert: the least a PUT costs on A).
    pub db_local_write: Stats,
    /// The relay's periodic outbox scan (`Store::pending(512)` + `Store::count_pending()`)
    /// with nothing pending, over `scan_documents` documents.
    pub outbox_scan: Stats,
    pub scan_documents: u64,
    pub kafka_errors: usize,
    pub db_errors: usize,
    /// kafka p50 + db_write p50, and likewise p99 (and p90, mean).
    pub floor_p50_ms: f64,
    pub floor_p90_ms: f64,
    pub floor_p99_ms: f64,
    pub floor_mean_ms: f64,
    pub payload: String,
    /// Where the database writes went.
    pub db_server: String,
    pub fetch_wait_ms: u32,
    pub partitions: i32,
    /// Floor at 0%, 1%, ..., 100%: the sum of the two quantile functions.
    pub quantiles: Vec<f64>,
    pub kafka_quantiles: Vec<f64>,
    pub db_quantiles: Vec<f64>,
}

pub async fn run(target: &Target, args: &FloorArgs) -> Result<Option<FloorResult>> {
    let (Some(brokers), Some(mongodb_uri)) = (&target.brokers, &target.mongodb_uri) else {
        eprintln!("floor: skipped (give --brokers and --mongodb-uri with --node-a/--node-b)");
        return Ok(None);
    };
    anyhow::ensure!(args.floor_rate > 0.0, "--floor-rate must be positive");
    let id = run_id();
    let settings = KafkaSettings {
        brokers: brokers.clone(),
        topic: format!("kvsync-bench-floor-{id}"),
        partitions: target.partitions,
        replication_factor: 1,
        fetch_wait_ms: target.fetch_wait_ms,
        retention_ms: -1,
        max_event_bytes: kvsync_core::event::DEFAULT_PUBLISH_LIMIT,
        client_id: "kvsync-bench-floor".into(),
        extra: Vec::new(),
    };
    let mut rng = fastrand::Rng::new();
    let node = NodeId::parse("bench-floor")?;
    let event = |key: String, rng: &mut fastrand::Rng| -> Result<Event> {
        let size = rng.usize(10..=512);
        let values = Values::new(vec![text(rng, size)], key.len())?;
        Ok(Event::new(
            Key::parse(key)?,
            Version::new(Timestamp::new(now_ms(), 0), node.clone()),
            Op::Put(values),
        ))
    };

    // Kafka: produce to consume.
    let (kafka, publish_ack, kafka_errors) = {
        settings
            .ensure_topic()
            .await
            .context("creating the floor's topic")?;
        let group = format!("kvsync-bench-floor-{id}");
        let subscriber = Subscriber::new(&settings, &settings.topic, Some(&group))?;
        let partitions = Probe::new(&settings, &group)?.partitions(Duration::from_secs(10))?;
        let all: Vec<(i32, Start)> = (0..partitions).map(|p| (p, Start::Committed)).collect();
        subscriber.assign(&all)?;
        let publisher = Publisher::new(&settings)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant, i32)>();
        let reader = tokio::spawn(async move {
            loop {
                match subscriber.recv().await {
                    Ok(m) => {
                        let at = Instant::now();
                        if let Ok(e) = Event::decode(m.payload().unwrap_or_default()) {
                            if tx.send((e.key.into_string(), at, m.partition())).is_err() {
                                break;
                            }
                        }
                        let _ = subscriber.done_before(m.partition(), m.offset() + 1);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "floor consumer");
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                }
            }
        });
        // Until the consumer fetches: one probe at a time.
        let joined = Instant::now();
        'join: loop {
            if joined.elapsed() > Duration::from_secs(60) {
                reader.abort();
                bail!("the floor's consumer received nothing within 60 s");
            }
            let key = format!("kvsync-bench-floor-{id}/warmup/{}", rng.u64(..));
            publisher.publish(&event(key.clone(), &mut rng)?).await?;
            let deadline = Instant::now() + Duration::from_secs(2);
            while let Ok(Some((k, _, _))) = tokio::time::timeout_at(deadline, rx.recv()).await {
                if k == key {
                    break 'join;
                }
            }
        }
        // A few more unmeasured ones, then the measured run at the given rate.
        for i in 0..20 {
            publisher
                .publish(&event(
                    format!("kvsync-bench-floor-{id}/warmup2/{i}"),
                    &mut rng,
                )?)
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        while rx.try_recv().is_ok() {}

        let pb = progress::bar(args.floor_count as u64, "floor: Kafka produce -> consume");
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.floor_rate));
        let mut handles = Vec::with_capacity(args.floor_count);
        for i in 0..args.floor_count {
            ticker.tick().await;
            let key = format!("kvsync-bench-floor-{id}/k/{i}");
            let e = event(key.clone(), &mut rng)?;
            let publisher = publisher.clone();
            handles.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let r = publisher.publish(&e).await;
                (key, t0, Instant::now(), r)
            }));
            pb.inc(1);
        }
        pb.finish_and_clear();
        let mut sent = HashMap::new();
        let mut acks = Samples::default();
        let mut errors = 0;
        for h in handles {
            let (key, t0, ack, r) = h.await?;
            match r {
                Ok(_) => {
                    acks.push(ms(ack - t0));
                    sent.insert(key, t0);
                }
                Err(_) => errors += 1,
            }
        }
        let mut kafka = Samples::default();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sent.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((k, at, part))) => {
                    if std::env::var_os("KVSYNC_BENCH_DEBUG").is_some() {
                        eprintln!("floor: {k} arrived on partition {part}");
                    }
                    if let Some(t0) = sent.remove(&k) {
                        kafka.push(ms(at.saturating_duration_since(t0)));
                    }
                }
                _ => break,
            }
        }
        errors += sent.len();
        if !sent.is_empty() {
            let mut lost: Vec<_> = sent.keys().collect();
            lost.sort();
            eprintln!("floor: {} messages never arrived: {lost:?}", sent.len());
        }
        reader.abort();
        let _ = reader.await;
        (kafka, acks, errors)
    };

    // MongoDB: one write. nx-27017 ignores database names, so writes to node B's server
    // would land among B's pairs (and B's relay would publish the local writes' outbox
    // marks). A local cluster gets a dedicated instance of the same server for this; a
    // given URI is cleaned up afterwards.
    let (db, db_local, db_errors, scan, scan_documents) = {
        let dedicated = match &target.mongo_for_floor {
            Some(m) => Some(m.start().await?),
            None => None,
        };
        let uri = match &dedicated {
            Some((m, _)) => m.uri(),
            None => mongodb_uri.clone(),
        };
        let database = format!("kvsync_bench_floor_{id}");
        let store = Store::connect(&uri, &database, Duration::from_secs(5)).await?;
        store.ensure_indexes().await?;
        let prefix = format!("kvsync-bench-floor-{id}/");
        for i in 0..20 {
            store
                .apply_remote(&event(format!("{prefix}warmup/{i}"), &mut rng)?, 0, None)
                .await?;
        }
        let pb = progress::bar(
            2 * args.floor_count as u64,
            "floor: one MongoDB write (remote, local)",
        );
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.floor_rate));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut remote = Samples::default();
        let mut local = Samples::default();
        let mut marked = Vec::new();
        let mut errors = 0;
        for i in 0..args.floor_count {
            ticker.tick().await;
            let e = event(format!("{prefix}remote/{i}"), &mut rng)?;
            let t0 = Instant::now();
            match store.apply_remote(&e, 0, None).await {
                Ok(_) => remote.push(ms(t0.elapsed())),
                Err(_) => errors += 1,
            }
            pb.inc(1);
        }
        for i in 0..args.floor_count {
            ticker.tick().await;
            let e = event(format!("{prefix}local/{i}"), &mut rng)?;
            let t0 = Instant::now();
            // A new key: one insert, the least a local write costs.
            match store
                .write_local(&e.key, None, &e.state, e.id, &e.version)
                .await
            {
                Ok(_) => local.push(ms(t0.elapsed())),
                Err(_) => errors += 1,
            }
            marked.push((e.key, e.id));
            pb.inc(1);
        }
        pb.finish_and_clear();
        // The relay's scan for unpublished changes, with nothing pending (the usual
        // case): clear the marks as the relay would (in batches), then time its queries.
        for batch in marked.chunks(256) {
            store.clear_outboxes(batch).await?;
        }
        let mut scan = Samples::default();
        for _ in 0..20 {
            let t0 = Instant::now();
            store.pending(512).await?;
            store.count_pending().await?;
            scan.push(ms(t0.elapsed()));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let documents = (20 + 2 * args.floor_count) as u64;
        store.shutdown().await;
        if dedicated.is_none() {
            remove_floor_keys(&uri, &database, &prefix).await?;
        }
        (remote, local, errors, scan, documents)
    };

    let k = kafka.stats();
    let d = db.stats();
    let kq = kafka.quantiles();
    let dq = db.quantiles();
    Ok(Some(FloorResult {
        kafka: k.rounded(),
        publish_ack: publish_ack.stats().rounded(),
        db_write: d.rounded(),
        db_local_write: db_local.stats().rounded(),
        outbox_scan: scan.stats().rounded(),
        scan_documents,
        kafka_errors,
        db_errors,
        floor_p50_ms: crate::stats::round3(k.p50_ms + d.p50_ms),
        floor_p90_ms: crate::stats::round3(k.p90_ms + d.p90_ms),
        floor_p99_ms: crate::stats::round3(k.p99_ms + d.p99_ms),
        floor_mean_ms: crate::stats::round3(k.mean_ms + d.mean_ms),
        payload: "random 10-512 B".into(),
        db_server: if target.mongo_for_floor.is_some() {
            "a dedicated nx-27017 instance (the cluster's MongoDB-protocol server, same version) on this machine".into()
        } else {
            "the given MongoDB URI".into()
        },
        fetch_wait_ms: target.fetch_wait_ms,
        partitions: target.partitions,
        quantiles: kq
            .iter()
            .zip(&dq)
            .map(|(a, b)| crate::stats::round3(a + b))
            .collect(),
        kafka_quantiles: kq,
        db_quantiles: dq,
    }))
}

/// Deletes the floor's documents (keys starting with `prefix`) from a given server.
async fn remove_floor_keys(uri: &str, database: &str, prefix: &str) -> Result<()> {
    use mongodb::bson::{doc, Document};
    let client = mongodb::Client::with_uri_str(uri).await?;
    // '0' follows '/': every key with the prefix sorts in [prefix, end).
    let end = format!("{}0", prefix.trim_end_matches('/'));
    client
        .database(database)
        .collection::<Document>("pairs")
        .delete_many(doc! { "_id": { "$gte": prefix, "$lt": end } })
        .await?;
    client.shutdown().await;
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
