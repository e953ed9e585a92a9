//! The consumer loop: applies peers' events under the merge rule and stores each
//! offset only once its event has been dealt with.

use std::{sync::Arc, time::Duration};

use kvsync_core::{Event, Outcome};
use kvsync_kafka::{Message, Subscriber};
use tokio_util::sync::CancellationToken;

use crate::app::{now_ms, App};

pub async fn run(
    app: Arc<App>,
    subscriber: Subscriber,
    max_clock_skew_ms: u64,
    shutdown: CancellationToken,
) {
    let mut last_error = String::new();
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = subscriber.recv() => m,
        };
        app.metrics
            .assigned_partitions
            .set(subscriber.assigned_partitions() as i64);
        let message = match message {
            Ok(m) => m,
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
        if !handle(&app, message.payload(), max_clock_skew_ms, &shutdown).await {
            break; // Shutting down mid-apply: the offset stays unstored, so it is redone.
        }
        if let Err(e) = subscriber.done(&message) {
            tracing::warn!(error = %e, "could not store offset");
        }
    }
    subscriber.commit();
    tracing::info!("replicator stopped");
}

/// Deals with one message. Returns false only when shutdown interrupted it before the
/// event was applied.
async fn handle(
    app: &App,
    payload: Option<&[u8]>,
    max_clock_skew_ms: u64,
    shutdown: &CancellationToken,
) -> bool {
    let event = match Event::decode(payload.unwrap_or_default())
        .and_then(|e| e.check_clock(now_ms(), max_clock_skew_ms).map(|()| e))
    {
        Ok(e) => e,
        Err(e) => {
            app.metrics.reject(e.kind());
            tracing::warn!(error = %e, "skipping invalid event");
            return true;
        }
    };
    if event.origin == app.node {
        app.metrics.skipped_own.inc();
        return true;
    }
    // The database may be down: retry the same event until it is back, never skip it.
    let mut delay = Duration::from_millis(50);
    loop {
        match app.apply_remote(&event).await {
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
                    _ = shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}
