//! The outbox relay: publishes every local change and clears its outbox mark once the
//! broker has acknowledged it.
//!
//! Changes arrive over a channel right after their write, for low latency. A scan of
//! the outbox marks catches everything else: changes left behind by a crash (at
//! start-up), a broker outage (while publishing fails, backing off), a full channel or
//! a mark that could not be cleared. The scan runs only then, and as a slow sweep: on
//! some servers it reads the whole collection, which would stall every other query.
//!
//! Marks of acknowledged events are cleared by one task, as many per database operation
//! as have been acknowledged meanwhile: alone, a mark is cleared at once; under load,
//! clearing costs the database a fraction of an operation per write.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures::FutureExt;
use kvsync_core::{Event, Key};
use kvsync_kafka::{KafkaSettings, Publisher};
use tokio::{
    sync::{mpsc, Semaphore},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use crate::{app::App, oversize::Limit, replicator::ReplicationStatus};

const SCAN_BATCH: i64 = 512;
const MAX_IN_FLIGHT: usize = 4096;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Most marks cleared by one database operation.
const CLEAR_BATCH: usize = 256;
/// How long acknowledged marks gather before they are cleared together.
const CLEAR_LINGER: Duration = Duration::from_millis(20);
/// A scan now and then even when nothing asked for one: cheap insurance.
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("a publication task panicked: {0}")]
    TaskDied(String),
    #[error("the outbox clearer stopped")]
    ClearerDied,
}

/// What the relay needs besides the app: how to rebuild its producer, and how to tell
/// whether the broker answers at all.
pub struct RelaySettings {
    pub kafka: KafkaSettings,
    pub interval: Duration,
    pub stall_timeout: Duration,
    pub replication: Arc<ReplicationStatus>,
}

pub struct Relay {
    app: Arc<App>,
    publisher: Publisher,
    settings: RelaySettings,
    /// Since when every publication has failed.
    failing_since: Arc<Mutex<Option<std::time::Instant>>>,
    /// Set when a publication task panicked, with why.
    fatal: CancellationToken,
    fatal_why: Arc<Mutex<Option<String>>>,
    in_flight: Arc<Mutex<HashSet<Uuid>>>,
    /// Changes too large to publish: left alone until the next sweep.
    held: Arc<Mutex<HashSet<Uuid>>>,
    permits: Arc<Semaphore>,
    failures: Arc<AtomicU32>,
    /// Set while the relay scans the outbox until it finds nothing left.
    scanning: Arc<AtomicBool>,
    /// Acknowledged events whose marks are to be cleared.
    acked: mpsc::Sender<(Key, Uuid)>,
    acked_rx: Option<mpsc::Receiver<(Key, Uuid)>>,
    tasks: TaskTracker,
}

impl Relay {
    pub fn new(app: Arc<App>, publisher: Publisher, settings: RelaySettings) -> Self {
        let (acked, acked_rx) = mpsc::channel(MAX_IN_FLIGHT);
        Self {
            app,
            publisher,
            settings,
            failing_since: Default::default(),
            fatal: CancellationToken::new(),
            fatal_why: Default::default(),
            in_flight: Default::default(),
            held: Default::default(),
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            failures: Default::default(),
            scanning: Arc::new(AtomicBool::new(true)),
            acked,
            acked_rx: Some(acked_rx),
            tasks: TaskTracker::new(),
        }
    }

    /// Runs until `shutdown`. An error means a part of the relay died (a bug): the
    /// caller stops the node rather than accept writes that would never be published.
    pub async fn run(
        mut self,
        mut queue: mpsc::Receiver<Event>,
        shutdown: CancellationToken,
        drain_timeout: Duration,
    ) -> Result<(), RelayError> {
        let mut clearer = tokio::spawn(clear_marks(
            self.app.clone(),
            self.in_flight.clone(),
            self.scanning.clone(),
            self.acked_rx.take().expect("run once"),
        ));
        // Scan at once: a crash may have left changes unpublished.
        let mut next_scan = Instant::now();
        let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        loop {
            let scanning = self.scanning.load(Ordering::Relaxed);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = self.fatal.cancelled() => {
                    let why = self.fatal_why.lock().expect("fatal lock").clone().unwrap_or_default();
                    return Err(RelayError::TaskDied(why));
                }
                _ = &mut clearer => return Err(RelayError::ClearerDied),
                _ = watchdog.tick() => self.rebuild_if_stuck(),
                Some(event) = queue.recv() => {
                    self.spawn_publish(event).await;
                }
                _ = self.app.rescan.notified(), if !scanning => {
                    self.scanning.store(true, Ordering::Relaxed);
                    next_scan = Instant::now();
                }
                _ = tokio::time::sleep_until(next_scan), if scanning => {
                    next_scan = Instant::now() + match self.scan().await {
                        Scan::Clean => {
                            self.scanning.store(false, Ordering::Relaxed);
                            self.report_backlog();
                            Duration::ZERO
                        }
                        Scan::More => Duration::ZERO,
                        Scan::Retry => self.backoff(),
                    };
                }
                _ = tokio::time::sleep_until(next_sweep) => {
                    next_sweep = Instant::now() + SWEEP_INTERVAL;
                    // The broker's limit may have been raised meanwhile.
                    self.held.lock().expect("held lock").clear();
                    self.scanning.store(true, Ordering::Relaxed);
                    next_scan = Instant::now();
                }
            }
        }
        // Publish what was queued; anything that does not make it stays marked in the
        // store and goes out after the restart.
        while let Ok(event) = queue.try_recv() {
            self.spawn_publish(event).await;
        }
        self.tasks.close();
        let deadline = Instant::now() + drain_timeout;
        if tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown: some publications were still in flight; they stay in the outbox"
            );
        }
        // The clearer ends once the last acknowledgement is in; a mark it could not
        // clear only means the event is published again after the restart.
        let Self {
            publisher, acked, ..
        } = self;
        drop(acked);
        let _ = tokio::time::timeout_at(deadline, clearer).await;
        publisher.flush(Duration::from_secs(1));
        Ok(())
    }

    /// Publications failing for longer than the stall bound while the broker answers
    /// the probe: the producer itself is stuck (a connection that never recovered).
    /// A new one starts afresh; the outbox scan republishes what waits.
    fn rebuild_if_stuck(&mut self) {
        let since = *self.failing_since.lock().expect("failing lock");
        let stuck = since.is_some_and(|t| t.elapsed() >= self.settings.stall_timeout);
        if !stuck
            || !self
                .settings
                .replication
                .broker_answered_within(Duration::from_secs(3))
        {
            return;
        }
        match Publisher::new(&self.settings.kafka) {
            Ok(p) => {
                tracing::warn!(
                    "publications keep failing while the broker answers; rebuilding the producer"
                );
                self.publisher = p;
                self.app.metrics.publisher_recoveries.inc();
                *self.failing_since.lock().expect("failing lock") = None;
                self.app.rescan.notify_one();
            }
            Err(e) => tracing::warn!(error = %e, "could not rebuild the producer"),
        }
    }

    fn backoff(&self) -> Duration {
        let failures = self.failures.load(Ordering::Relaxed).min(8);
        let interval = self.settings.interval;
        (interval * 2u32.pow(failures)).min(MAX_BACKOFF.max(interval))
    }

    /// Publishes every marked change not already in flight.
    async fn scan(&self) -> Scan {
        let pending = match self.app.store.pending(SCAN_BATCH).await {
            Ok(mut p) => {
                // Changes too large to publish wait for the next sweep, not the next scan.
                let held = self.held.lock().expect("held lock");
                p.retain(|e| !held.contains(&e.id));
                p
            }
            Err(e) => {
                tracing::debug!(error = %e, "outbox scan failed");
                return Scan::Retry;
            }
        };
        if let Ok(n) = self.app.store.count_pending().await {
            self.app.metrics.outbox_backlog.set(n as i64);
        }
        if pending.is_empty() {
            return if self.failures.load(Ordering::Relaxed) == 0 {
                Scan::Clean
            } else {
                Scan::Retry
            };
        }
        tracing::debug!(count = pending.len(), "relaying outbox");
        let full = pending.len() as i64 == SCAN_BATCH;
        let mut started = 0;
        for event in pending {
            if self.spawn_publish(event).await {
                started += 1;
            }
        }
        // A full page of events that are all already in flight: wait, don't spin.
        if full && started > 0 && self.failures.load(Ordering::Relaxed) == 0 {
            Scan::More
        } else {
            Scan::Retry
        }
    }

    /// Outside scans, the backlog is what is in flight (every mark has been handed over).
    fn report_backlog(&self) {
        report_backlog(&self.app, &self.in_flight, &self.scanning);
    }

    /// Starts publishing `event` unless it is already in flight.
    async fn spawn_publish(&self, event: Event) -> bool {
        if self.held.lock().expect("held lock").contains(&event.id) {
            return false;
        }
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
        let scanning = self.scanning.clone();
        let acked = self.acked.clone();
        let failing_since = self.failing_since.clone();
        let (fatal, fatal_why) = (self.fatal.clone(), self.fatal_why.clone());
        report_backlog(&app, &in_flight, &scanning);
        let held = self.held.clone();
        let publish = async move {
            crate::fault::point("publish", event.key.as_str());
            let event = app.refresh_if_old(event);
            // Encoded once: measured against the limit, then sent.
            let payload = event.encode();
            let result = if app.fits_encoded(&event.key, payload.len()) {
                publisher
                    .publish_encoded(event.key.as_str(), &payload)
                    .await
                    .map_err(|e| {
                        if e.is_too_large() {
                            Refusal::TooLarge(format!(
                                "the broker or producer refuses its {}-byte event: {e}",
                                payload.len()
                            ))
                        } else {
                            Refusal::Failed(e)
                        }
                    })
            } else {
                Err(Refusal::Noted)
            };
            match result {
                // Retrying cannot help: the change stays in the outbox, reported, and is
                // tried again at the next sweep; a later change of the key replaces it.
                Err(Refusal::Noted) => {
                    held.lock().expect("held lock").insert(event.id);
                }
                Err(Refusal::TooLarge(why)) => {
                    app.metrics.oversized_skips.inc();
                    held.lock().expect("held lock").insert(event.id);
                    if app.oversized.note(Limit::Publish, &event.key, why.clone()) {
                        tracing::error!(key = %event.key, why, "a change is too large to publish; it stays in the outbox and is reported in /readyz");
                    }
                }
                Ok((partition, offset)) => {
                    app.oversized.clear(Limit::Publish, &event.key);
                    app.metrics.published.inc();
                    app.cluster
                        .published_event(&event.key, &event.version, partition, offset);
                    failures.store(0, Ordering::Relaxed);
                    *failing_since.lock().expect("failing lock") = None;
                    // Still in flight until its mark is cleared, so a scan meanwhile
                    // does not publish it again.
                    if acked.send((event.key, event.id)).await.is_ok() {
                        return;
                    }
                }
                Err(Refusal::Failed(e)) => {
                    app.metrics.publish_failures.inc();
                    let n = failures.fetch_add(1, Ordering::Relaxed);
                    failing_since
                        .lock()
                        .expect("failing lock")
                        .get_or_insert_with(std::time::Instant::now);
                    if n == 0 {
                        tracing::warn!(error = %e, "publishing failed; changes stay in the outbox and are retried");
                    }
                    app.rescan.notify_one();
                }
            }
            in_flight.lock().expect("in-flight lock").remove(&event.id);
            report_backlog(&app, &in_flight, &scanning);
            drop(permit);
        };
        self.tasks.spawn(async move {
            // A panic here would leave the change unpublished until a restart: stop the
            // node rather than serve on without publishing.
            if let Err(panic) = std::panic::AssertUnwindSafe(publish).catch_unwind().await {
                let why = crate::panic_message(panic);
                *fatal_why.lock().expect("fatal lock") = Some(why);
                fatal.cancel();
            }
        });
        true
    }
}

/// Clears the marks of acknowledged events, as many per operation as have arrived.
async fn clear_marks(
    app: Arc<App>,
    in_flight: Arc<Mutex<HashSet<Uuid>>>,
    scanning: Arc<AtomicBool>,
    mut acked: mpsc::Receiver<(Key, Uuid)>,
) {
    let mut batch = Vec::with_capacity(CLEAR_BATCH);
    while acked.recv_many(&mut batch, CLEAR_BATCH).await > 0 {
        // At a steady write rate acknowledgements come one at a time: waiting a moment
        // for more makes clearing one database operation per linger, not one per write
        // (half of a write's database commands). A mark left by a crash meanwhile only
        // gets its change published again, which peers skip.
        tokio::time::sleep(CLEAR_LINGER).await;
        while batch.len() < CLEAR_BATCH {
            match acked.try_recv() {
                Ok(mark) => batch.push(mark),
                Err(_) => break,
            }
        }
        if let Err(e) = app.store.clear_outboxes(&batch).await {
            // Harmless: a scan publishes them again, and peers skip duplicates.
            tracing::warn!(error = %e, count = batch.len(), "could not clear outbox marks");
            app.rescan.notify_one();
        }
        {
            let mut in_flight = in_flight.lock().expect("in-flight lock");
            for (_, id) in &batch {
                in_flight.remove(id);
            }
        }
        report_backlog(&app, &in_flight, &scanning);
        batch.clear();
    }
}

/// Why a publication did not happen.
enum Refusal {
    /// The event is larger than the node publishes (already noted by `App::fits`).
    Noted,
    /// The producer or the broker refuses the event for its size.
    TooLarge(String),
    /// Anything else: the broker is away, slow, or refused for a passing reason.
    Failed(kvsync_kafka::BusError),
}

enum Scan {
    /// Nothing left to publish.
    Clean,
    /// A full page was handed over: look again at once.
    More,
    /// Changes are still waiting (or the scan failed): look again after a pause.
    Retry,
}

fn report_backlog(app: &App, in_flight: &Mutex<HashSet<Uuid>>, scanning: &AtomicBool) {
    if !scanning.load(Ordering::Relaxed) {
        let n = in_flight.lock().expect("in-flight lock").len();
        app.metrics.outbox_backlog.set(n as i64);
    }
}
