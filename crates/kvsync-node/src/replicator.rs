//! The consumer loop: applies peers' events under the merge rule and stores each
//! offset only once its event, and every event before it, has been dealt with.
//!
//! Events are applied concurrently on a few lanes, chosen by key, so that a node keeps
//! up with a peer that writes through many connections at once (one database round trip
//! at a time would cap it at the inverse of the round trip). Events of one key share a
//! lane, so they are applied, and announced to the change feed, in topic order.
//! Offsets are stored in the order the messages arrived, whatever order the lanes finish
//! in, so a crash never skips an event that was not applied.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use futures::{future::BoxFuture, stream::FuturesOrdered, FutureExt, StreamExt};
use kvsync_core::{Event, Outcome};
use kvsync_kafka::{Delivery, Subscriber};
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::app::{now_ms, App};

/// Concurrent applies (lanes) and messages received but not yet settled.
const LANES: usize = 8;
const MAX_IN_FLIGHT: usize = 512;

type Job = (Event, oneshot::Sender<bool>);

pub async fn run(
    app: Arc<App>,
    subscriber: Subscriber,
    max_clock_skew_ms: u64,
    shutdown: CancellationToken,
) {
    let lanes_stop = shutdown.child_token();
    let tasks = TaskTracker::new();
    let lanes: Vec<mpsc::Sender<Job>> = (0..LANES)
        .map(|_| {
            let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
            tasks.spawn(lane(app.clone(), rx, lanes_stop.clone()));
            tx
        })
        .collect();
    tasks.close();

    // Messages in arrival order, each resolving to whether it was dealt with.
    let mut settled: FuturesOrdered<BoxFuture<'static, (Delivery, bool)>> = FuturesOrdered::new();
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some((delivery, done)) = settled.next(), if !settled.is_empty() => {
                if !done {
                    break; // Shutting down mid-apply: its offset stays unstored, so it is redone.
                }
                if let Err(e) = subscriber.done(&delivery) {
                    tracing::warn!(error = %e, "could not store offset");
                }
            }
            message = subscriber.recv(), if settled.len() < MAX_IN_FLIGHT => {
                app.metrics
                    .assigned_partitions
                    .set(subscriber.assigned_partitions() as i64);
                let delivery = match message {
                    Ok(d) => d,
                    Err(e) => {
                        // librdkafka reconnects by itself; report each distinct error once.
                        let text = e.to_string();
                        if text != last_error {
                            tracing::warn!(error = %text, "consumer error; retrying");
                            last_error = text;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                last_error.clear();
                let outcome = match accept(&app, delivery.payload(), max_clock_skew_ms) {
                    Some(event) => {
                        let (tx, rx) = oneshot::channel();
                        let lane = &lanes[lane_of(&event)];
                        if lane.send((event, tx)).await.is_err() {
                            break;
                        }
                        Settle::Pending(rx)
                    }
                    None => Settle::Done,
                };
                settled.push_back(
                    async move {
                        let done = match outcome {
                            Settle::Done => true,
                            Settle::Pending(rx) => rx.await.unwrap_or(false),
                        };
                        (delivery, done)
                    }
                    .boxed(),
                );
            }
        }
    }
    lanes_stop.cancel();
    drop(lanes);
    tasks.wait().await;
    // Offsets of events already applied, in order, up to the first one that was not.
    while let Some((delivery, done)) = settled.next().await {
        if !done {
            break;
        }
        let _ = subscriber.done(&delivery);
    }
    subscriber.commit();
    tracing::info!("replicator stopped");
}

enum Settle {
    Done,
    Pending(oneshot::Receiver<bool>),
}

fn lane_of(event: &Event) -> usize {
    let mut h = DefaultHasher::new();
    event.key.as_str().hash(&mut h);
    (h.finish() % LANES as u64) as usize
}

/// The event to apply, or None when the message is to be skipped: invalid (logged and
/// counted) or this node's own.
fn accept(app: &App, payload: Option<&[u8]>, max_clock_skew_ms: u64) -> Option<Event> {
    let event = match Event::decode(payload.unwrap_or_default())
        .and_then(|e| e.check_clock(now_ms(), max_clock_skew_ms).map(|()| e))
    {
        Ok(e) => e,
        Err(e) => {
            app.metrics.reject(e.kind());
            tracing::warn!(error = %e, "skipping invalid event");
            return None;
        }
    };
    if event.origin == app.node {
        app.metrics.skipped_own.inc();
        return None;
    }
    Some(event)
}

/// Applies its events one after another, answering for each whether it was dealt with.
async fn lane(app: Arc<App>, mut jobs: mpsc::Receiver<Job>, stop: CancellationToken) {
    loop {
        let (event, reply) = tokio::select! {
            _ = stop.cancelled() => return,
            job = jobs.recv() => match job {
                Some(job) => job,
                None => return,
            },
        };
        let done = apply(&app, &event, &stop).await;
        let _ = reply.send(done);
        if !done {
            return;
        }
    }
}

/// Applies one event. Returns false only when shutdown interrupted it before it was
/// applied.
async fn apply(app: &App, event: &Event, stop: &CancellationToken) -> bool {
    // The database may be down: retry the same event until it is back, never skip it.
    let mut delay = Duration::from_millis(50);
    loop {
        match app.apply_remote(event).await {
            Ok(Outcome::Applied) => {
                app.metrics.applied.inc();
                let lag_ms = now_ms().saturating_sub(event.version.ts.wall_ms);
                app.metrics.replication_lag.observe(lag_ms as f64 / 1000.0);
                return true;
            }
            Ok(Outcome::Stale) => {
                app.metrics.skipped_stale.inc();
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, key = %event.key, "applying event failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}
