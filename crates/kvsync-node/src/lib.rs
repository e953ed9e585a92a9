//! A kvsync node, wired from its adapters: MongoDB store, Kafka bus, HTTP API.
//!
//! Start-up is split in two, as in mini-redis and zero-to-production: [`Node::build`]
//! connects nothing that may be down (MongoDB and Kafka are retried in the background)
//! and binds the HTTP listener, so the bound address is known (port 0 allowed);
//! [`Node::run_until_stopped`] runs the server and the background tasks under
//! supervision until shutdown, or until a task dies.

pub mod app;
pub mod clock_watch;
pub mod cluster;
pub mod config;
mod fault;
pub mod feed;
pub mod http;
mod key_index;
pub mod members;
pub mod metrics;
pub mod oversize;
pub mod relay;
pub mod repair;
pub mod replicator;
mod state_cache;

use std::{future::IntoFuture, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use kvsync_kafka::{KafkaSettings, Publisher};
use kvsync_store::Store;
use secrecy::ExposeSecret;
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{
    app::App,
    clock_watch::{ClockSettings, ClockWatch},
    cluster::ClusterView,
    config::Config,
    metrics::Metrics,
    relay::{Relay, RelaySettings},
    replicator::{ReplicationStatus, ReplicatorSettings},
};

const OUTBOX_QUEUE: usize = 8192;

/// A node that has bound its HTTP listener and is ready to run.
pub struct Node {
    config: Config,
    app: Arc<App>,
    kafka: KafkaSettings,
    group: String,
    listener: TcpListener,
    router: axum::Router,
    replication: Arc<ReplicationStatus>,
    outbox_rx: mpsc::Receiver<kvsync_core::Event>,
    publisher: Publisher,
    /// Ends the event streams, so the HTTP drain can finish.
    http_shutdown: CancellationToken,
}

impl Node {
    /// Builds the node and binds its listener; nothing here needs MongoDB or Kafka up.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
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

        let store = Store::connect_with(
            config.mongodb_uri.expose_secret(),
            &config.mongodb_db,
            config.mongodb_timeout(),
            config.mongodb_credentials(),
        )
        .await
        .context("MongoDB configuration")?;
        store.set_write_batch(usize::from(config.mongodb_write_batch));
        let publisher = Publisher::new(&kafka).context("Kafka producer")?;
        let (outbox_tx, outbox_rx) = mpsc::channel(OUTBOX_QUEUE);
        let metrics = Metrics::new();
        let clock = ClockWatch::new(
            node.clone(),
            ClockSettings {
                max_skew_ms: config.max_clock_skew_ms,
                max_jump_ms: config.max_clock_jump_ms,
                away_after: Duration::from_millis(config.peer_away_after_ms),
            },
            metrics.clone(),
        );
        let cluster = ClusterView::new(
            node.clone(),
            config.public_url.clone(),
            Duration::from_millis(config.peer_away_after_ms),
        );
        let mut app = App::new(node, store, metrics, clock, cluster, outbox_tx);
        app.tombstone_horizon_ms = config.tombstone_horizon_ms;
        app.max_event_bytes = config.max_event_bytes as usize;
        let app = Arc::new(app);
        let replication = Arc::new(ReplicationStatus::default());

        let listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding {}", config.http_addr))?;
        let http_shutdown = CancellationToken::new();
        let ctx = Arc::new(http::Shared {
            app: app.clone(),
            replication: replication.clone(),
            topic: kafka.topic.clone(),
            group: group.clone(),
            token: config
                .api_token
                .as_ref()
                .map(|t| http::Token::new(t.expose_secret())),
            limits: http::Limits::new(
                config.request_timeout(),
                config.connection_timeouts(),
                config.max_event_streams,
            ),
            shutdown: http_shutdown.clone(),
        });
        let router = http::router(ctx, &config.cors_origins);
        Ok(Self {
            config,
            app,
            kafka,
            group,
            listener,
            router,
            replication,
            outbox_rx,
            publisher,
            http_shutdown,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then stops in order, each phase bounded by
    /// the shutdown timeout: HTTP first (in-flight requests finish, event streams end),
    /// then the consumer (committing offsets) and the heartbeats, then the relay
    /// (finishing publications). If a background task ends or panics before shutdown,
    /// the node logs why, stops the same way and returns an error, so that the process
    /// exits non-zero and its supervisor restarts it: it never serves on with
    /// replication dead.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            config,
            app,
            kafka,
            group,
            listener,
            router,
            replication,
            outbox_rx,
            publisher,
            http_shutdown,
        } = self;
        let drain = Duration::from_millis(config.shutdown_timeout_ms);
        let stall_timeout = Duration::from_millis(config.stall_timeout_ms);

        // Neither MongoDB nor Kafka has to be up for the node to start: these retry.
        let setup_stop = CancellationToken::new();
        tokio::spawn(prepare_store(app.clone(), setup_stop.clone()));
        let (topic_ready_tx, topic_ready) = watch::channel(false);
        let topic_ready_relay = topic_ready.clone();
        tokio::spawn({
            let (kafka, stop) = (kafka.clone(), setup_stop.clone());
            async move {
                retry("topic", &stop, || kafka.ensure_topic()).await;
                let _ = topic_ready_tx.send(true);
            }
        });

        let consumer_stop = CancellationToken::new();
        let relay_stop = CancellationToken::new();
        let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
        tasks.spawn({
            let (app, stop, status) = (app.clone(), consumer_stop.clone(), replication.clone());
            let settings = ReplicatorSettings {
                kafka: kafka.clone(),
                group,
                stall_timeout,
                join_from_state: config.join_from_state,
            };
            let mut topic_ready = topic_ready.clone();
            async move {
                tokio::select! {
                    _ = stop.cancelled() => return ("replicator", Ok(())),
                    _ = topic_ready.wait_for(|r| *r) => {}
                }
                let r = replicator::run(app, settings, status, stop).await;
                ("replicator", r.map_err(Into::into))
            }
        });
        tasks.spawn({
            let (app, stop) = (app.clone(), consumer_stop.clone());
            async move {
                app.settle_uncertain(stop).await;
                ("uncertain-write settler", Ok(()))
            }
        });
        let (control_tx, control_rx) = mpsc::channel(1024);
        tasks.spawn({
            let (app, stop) = (app.clone(), consumer_stop.clone());
            let settings = members::ControlSettings {
                kafka: kafka.clone(),
                publisher: publisher.clone(),
                interval: Duration::from_millis(config.heartbeat_interval_ms),
                status: replication.clone(),
            };
            async move {
                let r = members::run(app, settings, control_tx, topic_ready, stop).await;
                ("heartbeats", r.map_err(Into::into))
            }
        });
        tasks.spawn({
            let (app, stop) = (app.clone(), consumer_stop.clone());
            let settings = repair::RepairSettings {
                publisher: publisher.clone(),
                control_topic: kafka.control_topic(),
                interval: Duration::from_millis(config.repair_interval_ms),
                rescan_interval: Duration::from_millis(config.repair_rescan_interval_ms),
                max_keys: config.repair_max_keys,
                join_timeout: Duration::from_millis(config.join_timeout_ms),
                // Two heartbeats: every live peer has announced itself by then.
                listen_first: Duration::from_millis(2 * config.heartbeat_interval_ms + 500),
                status: replication.clone(),
            };
            async move {
                repair::run(app, settings, control_rx, stop).await;
                ("repair", Ok(()))
            }
        });
        tasks.spawn({
            let relay = Relay::new(
                app.clone(),
                publisher,
                RelaySettings {
                    kafka,
                    interval: Duration::from_millis(config.relay_interval_ms.max(10)),
                    stall_timeout,
                    replication,
                },
            );
            let stop = relay_stop.clone();
            let mut topic_ready = topic_ready_relay;
            async move {
                // Nothing is published before the node has created the topic: a broker
                // that creates topics on first use would give it its own defaults.
                // Changes made meanwhile wait in the outbox, where the relay's first
                // scan finds them.
                tokio::select! {
                    _ = stop.cancelled() => return ("relay", Ok(())),
                    _ = topic_ready.wait_for(|r| *r) => {}
                }
                let r = relay.run(outbox_rx, stop, drain).await;
                ("relay", r.map_err(Into::into))
            }
        });

        tracing::info!(addr = %listener.local_addr()?, "listening");
        let listener = http::CappedListener::new(
            listener,
            config.max_connections,
            config.connection_timeouts(),
            app.metrics.clone(),
        );
        let http_stop = CancellationToken::new();
        let mut http = tokio::spawn(
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<http::ConnMeta>(),
            )
            .with_graceful_shutdown(http_stop.clone().cancelled_owned())
            .into_future(),
        );

        // Supervise until shutdown or the first task that dies.
        let mut failure: Option<anyhow::Error> = None;
        let mut http_done = false;
        tokio::select! {
            _ = shutdown.cancelled() => {}
            Some(joined) = tasks.join_next() => {
                let e = match joined {
                    Ok((name, Ok(()))) => anyhow::anyhow!("the {name} task ended before shutdown"),
                    Ok((name, Err(e))) => e.context(format!("the {name} task failed")),
                    Err(e) if e.is_panic() => anyhow::anyhow!("a background task panicked: {}", panic_message(e.into_panic())),
                    Err(e) => anyhow::anyhow!("a background task was cancelled: {e}"),
                };
                tracing::error!(error = %format!("{e:#}"), "stopping the node: a background task died");
                failure = Some(e);
            }
            served = &mut http => {
                http_done = true;
                let e = match served {
                    Ok(Ok(())) => anyhow::anyhow!("the HTTP server stopped"),
                    Ok(Err(e)) => anyhow::Error::from(e).context("HTTP server"),
                    Err(e) => anyhow::anyhow!("the HTTP server task failed: {e}"),
                };
                tracing::error!(error = %format!("{e:#}"), "stopping the node");
                failure = Some(e);
            }
        }

        // HTTP first: refuse new connections, end event streams, let requests finish.
        http_stop.cancel();
        http_shutdown.cancel();
        setup_stop.cancel();
        if !http_done && tokio::time::timeout(drain, &mut http).await.is_err() {
            tracing::warn!(timeout = ?drain, "HTTP requests still running at the shutdown timeout; dropping them");
            http.abort();
        }
        tracing::info!("HTTP stopped; stopping consumer and relay");
        consumer_stop.cancel();
        relay_stop.cancel();
        let all = async {
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok((name, Err(e))) => {
                        tracing::warn!(error = %format!("{e:#}"), task = name, "task ended with an error during shutdown")
                    }
                    Err(e) if e.is_panic() => {
                        tracing::warn!(panic = %panic_message(e.into_panic()), "task panicked during shutdown")
                    }
                    _ => {}
                }
            }
        };
        if tokio::time::timeout(drain + Duration::from_secs(1), all)
            .await
            .is_err()
        {
            tracing::warn!("background tasks still running at the shutdown timeout");
            tasks.abort_all();
        }
        if let Ok(app) = Arc::try_unwrap(app) {
            app.store.shutdown().await;
        }
        match failure {
            Some(e) => Err(e),
            None => {
                tracing::info!("stopped");
                Ok(())
            }
        }
    }
}

/// Builds the node and runs it until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Node::build(config).await?.run_until_stopped(shutdown).await
}

/// The message a panic carried, for the log line that says why a task died.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".to_owned())
}

async fn prepare_store(app: Arc<App>, shutdown: CancellationToken) {
    retry("MongoDB", &shutdown, || async {
        app.store.ensure_indexes().await?;
        app.ensure_ready().await
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
