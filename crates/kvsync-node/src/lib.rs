//! A kvsync node, wired from its adapters: MongoDB store, Kafka bus, HTTP API.

pub mod app;
pub mod config;
pub mod http;
pub mod metrics;
pub mod relay;
pub mod replicator;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use kvsync_kafka::{ConsumerState, Publisher, Subscriber};
use kvsync_store::Store;
use secrecy::ExposeSecret;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{app::App, config::Config, metrics::Metrics, relay::Relay};

const OUTBOX_QUEUE: usize = 8192;

/// Runs a node until `shutdown` is cancelled, then stops in order: HTTP first (finishing
/// in-flight requests), then the consumer (committing offsets), then the relay
/// (finishing publications).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let node = config.node_id().context("invalid node id")?;
    let kafka = config.kafka(&node);
    let group = format!("kvsync-{node}");
    tracing::info!(
        node = %node,
        http = %config.http_addr,
        mongodb_db = %config.mongodb_db,
        brokers = %kafka.brokers,
        topic = %kafka.topic,
        group = %group,
        auth = config.api_token.is_some(),
        "starting kvsync node"
    );

    let store = Store::connect(
        config.mongodb_uri.expose_secret(),
        &config.mongodb_db,
        config.mongodb_timeout(),
    )
    .await
    .context("MongoDB configuration")?;
    let publisher = Publisher::new(&kafka).context("Kafka producer")?;
    let consumer = ConsumerState::default();
    let (outbox_tx, outbox_rx) = mpsc::channel(OUTBOX_QUEUE);
    let app = Arc::new(App::new(node, store, Metrics::new(), outbox_tx));

    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding {}", config.http_addr))?;
    let ctx = Arc::new(http::Shared {
        app: app.clone(),
        consumer: consumer.clone(),
        topic: kafka.topic.clone(),
        group: group.clone(),
        token: config
            .api_token
            .as_ref()
            .map(|t| http::Token::new(t.expose_secret())),
        limits: http::Limits::new(config.request_timeout(), config.max_event_streams),
        shutdown: shutdown.clone(),
    });
    let router = http::router(ctx, &config.cors_origins);

    // Neither MongoDB nor Kafka has to be up for the node to start: these retry.
    tokio::spawn(prepare_store(app.clone(), shutdown.clone()));

    let consumer_stop = CancellationToken::new();
    let replicator = tokio::spawn({
        let (app, stop, skew) = (app.clone(), consumer_stop.clone(), config.max_clock_skew_ms);
        async move {
            retry("topic", &stop, || kafka.ensure_topic()).await;
            if stop.is_cancelled() {
                return;
            }
            match Subscriber::new(&kafka, &group, &consumer) {
                Ok(subscriber) => replicator::run(app, subscriber, skew, stop).await,
                Err(e) => {
                    tracing::error!(error = %e, "cannot create the consumer; replication is off")
                }
            }
        }
    });
    let relay_stop = CancellationToken::new();
    let drain = Duration::from_millis(config.shutdown_timeout_ms);
    let relay = tokio::spawn(
        Relay::new(
            app.clone(),
            publisher,
            Duration::from_millis(config.relay_interval_ms.max(10)),
        )
        .run(outbox_rx, relay_stop.clone(), drain),
    );

    tracing::info!(addr = %listener.local_addr()?, "listening");
    let listener = http::CappedListener::new(listener, config.max_connections, app.metrics.clone());
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("HTTP server")?;
    tracing::info!("HTTP stopped; stopping consumer and relay");

    consumer_stop.cancel();
    relay_stop.cancel();
    let _ = tokio::time::timeout(drain, replicator).await;
    let _ = tokio::time::timeout(drain + Duration::from_secs(1), relay).await;
    if let Ok(app) = Arc::try_unwrap(app) {
        app.store.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn prepare_store(app: Arc<App>, shutdown: CancellationToken) {
    retry("MongoDB", &shutdown, || async {
        app.store.ensure_indexes().await?;
        app.ensure_clock().await
    })
    .await;
}

/// Runs `step` until it succeeds (with capped exponential backoff) or shutdown.
async fn retry<F, Fut, E>(what: &str, shutdown: &CancellationToken, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match step().await {
            Ok(()) => {
                tracing::info!("{what} ready");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "{what} not ready; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
