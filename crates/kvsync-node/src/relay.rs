//! The outbox relay: publishes every local change and clears its outbox mark once the
//! broker has acknowledged it.
//!
//! Changes arrive over a channel right after their write, for low latency. A periodic
//! scan of the outbox marks catches everything else: a full channel, a broker outage
//! (it backs off while publishing fails) and changes left behind by a crash.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use kvsync_core::Event;
use kvsync_kafka::Publisher;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use crate::app::App;

const SCAN_BATCH: i64 = 512;
const MAX_IN_FLIGHT: usize = 4096;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct Relay {
    app: Arc<App>,
    publisher: Publisher,
    interval: Duration,
    in_flight: Arc<Mutex<HashSet<Uuid>>>,
    permits: Arc<Semaphore>,
    failures: Arc<AtomicU32>,
    tasks: TaskTracker,
}

impl Relay {
    pub fn new(app: Arc<App>, publisher: Publisher, interval: Duration) -> Self {
        Self {
            app,
            publisher,
            interval,
            in_flight: Default::default(),
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            failures: Default::default(),
            tasks: TaskTracker::new(),
        }
    }

    pub async fn run(
        self,
        mut queue: mpsc::Receiver<Event>,
        shutdown: CancellationToken,
        drain_timeout: Duration,
    ) {
        // Scan at once: a crash may have left changes unpublished.
        let mut next_scan = tokio::time::Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(event) = queue.recv() => {
                    self.spawn_publish(event).await;
                }
                _ = tokio::time::sleep_until(next_scan) => {
                    let full_page = self.scan().await;
                    next_scan = tokio::time::Instant::now() + if full_page {
                        Duration::ZERO
                    } else {
                        self.backoff()
                    };
                }
            }
        }
        // Publish what was queued; anything that does not make it stays marked in the
        // store and goes out after the restart.
        while let Ok(event) = queue.try_recv() {
            self.spawn_publish(event).await;
        }
        self.tasks.close();
        if tokio::time::timeout(drain_timeout, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown: some publications were still in flight; they stay in the outbox"
            );
        }
        self.publisher.flush(Duration::from_secs(1));
    }

    fn backoff(&self) -> Duration {
        let failures = self.failures.load(Ordering::Relaxed).min(8);
        (self.interval * 2u32.pow(failures)).min(MAX_BACKOFF.max(self.interval))
    }

    /// Publishes every marked change not already in flight. Returns whether there may
    /// be more than one batch waiting.
    async fn scan(&self) -> bool {
        let pending = match self.app.store.pending(SCAN_BATCH).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "outbox scan failed");
                return false;
            }
        };
        let full = pending.len() as i64 == SCAN_BATCH;
        if let Ok(n) = self.app.store.count_pending().await {
            self.app.metrics.outbox_backlog.set(n as i64);
        }
        if !pending.is_empty() {
            tracing::debug!(count = pending.len(), "relaying outbox");
        }
        let mut started = 0;
        for event in pending {
            if self.spawn_publish(event).await {
                started += 1;
            }
        }
        // A full page of events that are all already in flight: wait, don't spin.
        full && started > 0 && self.failures.load(Ordering::Relaxed) == 0
    }

    /// Starts publishing `event` unless it is already in flight.
    async fn spawn_publish(&self, event: Event) -> bool {
        if !self
            .in_flight
            .lock()
            .expect("in-flight lock")
            .insert(event.id)
        {
            return false;
        }
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return false;
        };
        let app = self.app.clone();
        let publisher = self.publisher.clone();
        let in_flight = self.in_flight.clone();
        let failures = self.failures.clone();
        self.tasks.spawn(async move {
            match publisher.publish(&event).await {
                Ok(()) => {
                    app.metrics.published.inc();
                    failures.store(0, Ordering::Relaxed);
                    if let Err(e) = app.store.clear_outbox(&event.key, event.id).await {
                        // Harmless: the scan publishes it again, and peers skip duplicates.
                        tracing::warn!(error = %e, key = %event.key, "could not clear outbox mark");
                    }
                }
                Err(e) => {
                    app.metrics.publish_failures.inc();
                    let n = failures.fetch_add(1, Ordering::Relaxed);
                    if n == 0 {
                        tracing::warn!(error = %e, "publishing failed; changes stay in the outbox and are retried");
                    }
                }
            }
            in_flight.lock().expect("in-flight lock").remove(&event.id);
            drop(permit);
        });
        true
    }
}
