//! Operational endpoints: health, readiness, metrics, node status and state digest.

use std::time::Duration;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::{
    error::{ApiError, ErrorBody},
    Ctx,
};

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    security(()),
    responses((status = 200, description = "Alive", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Whether the node can serve, and if not why.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    ready: bool,
    node: String,
    /// `ok` or `unavailable`.
    mongodb: &'static str,
    kafka: KafkaReadiness,
    /// This node's clock against its peers': `ok`, `ahead` or `behind`.
    clock: &'static str,
    /// Why the node is not ready (empty when it is).
    reasons: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct KafkaReadiness {
    owned_partitions: usize,
    /// Null until the topic's metadata has been read.
    topic_partitions: Option<i32>,
}

/// Ready when MongoDB answers, the consumer owns every partition of the topic and makes
/// progress, and no peer event is held for clock reasons; else 503 and why.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: `reasons` says why", body = Readiness),
    )
)]
pub async fn readyz(State(ctx): State<Ctx>) -> Response {
    let mongodb = match tokio::time::timeout(Duration::from_secs(2), ctx.app.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("MongoDB did not answer within 2 s".to_owned()),
    };
    let mut reasons = Vec::new();
    if let Err(e) = &mongodb {
        reasons.push(format!("mongodb: {e}"));
    }
    reasons.extend(ctx.replication.problems());
    reasons.extend(ctx.app.clock.problems());
    reasons.extend(ctx.app.cluster.join_problem());
    reasons.extend(ctx.app.oversized.problems());
    let ready = reasons.is_empty();
    let body = Readiness {
        ready,
        node: ctx.app.node.as_str().to_owned(),
        mongodb: if mongodb.is_ok() { "ok" } else { "unavailable" },
        kafka: KafkaReadiness {
            owned_partitions: ctx.replication.owned_partitions(),
            topic_partitions: ctx.replication.topic_partitions(),
        },
        clock: ctx.app.clock.own().label(),
        reasons,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics, in the OpenMetrics text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "The metrics", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"))
)]
pub async fn metrics(State(ctx): State<Ctx>) -> Response {
    let m = &ctx.app.metrics;
    if let Ok(n) = ctx.app.store.count_pending().await {
        m.outbox_backlog.set(n as i64);
    }
    m.assigned_partitions
        .set(ctx.replication.owned_partitions() as i64);
    m.consumer_lag.set(ctx.replication.lag());
    let own = own_report(&ctx);
    for (peer, up, lag) in ctx.app.cluster.peer_lags(&own) {
        m.peer(&peer, up, lag);
    }
    for limit in crate::oversize::Limit::ALL {
        m.oversized_keys
            .get_or_create(&crate::metrics::LimitLabels {
                limit: limit.label().to_owned(),
            })
            .set(ctx.app.oversized.count(limit) as i64);
    }
    m.clock_off.set(match ctx.app.clock.own() {
        kvsync_core::OwnClock::Agrees => 0,
        kvsync_core::OwnClock::Ahead { .. } => 1,
        kvsync_core::OwnClock::Behind { .. } => -1,
    });
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

/// This node's status.
#[derive(Serialize, ToSchema)]
pub struct NodeStatus {
    node_id: String,
    topic: String,
    consumer_group: String,
    /// The replication consumer: partitions, positions, lag, recoveries.
    #[schema(value_type = Object)]
    consumer: serde_json::Value,
    /// This node's clock against its peers', and peer events held for clock reasons.
    #[schema(value_type = Object)]
    clock: serde_json::Value,
    /// Local writes not yet published; null when MongoDB cannot be asked.
    outbox_backlog: Option<u64>,
    /// Keys whose state is too large to publish, or to store merged with a peer's
    /// change: they do not replicate until they shrink (also in `/readyz`).
    oversized_keys: Vec<crate::oversize::OversizedKey>,
    counters: NodeCounters,
}

/// Counters since this process started.
#[derive(Serialize, ToSchema)]
pub struct NodeCounters {
    local_writes: u64,
    events_published: u64,
    publish_failures: u64,
    events_applied: u64,
    events_skipped_stale: u64,
    events_skipped_own: u64,
    events_rejected: u64,
    conflicts: u64,
    consumer_recoveries: u64,
    publisher_recoveries: u64,
}

#[utoipa::path(
    get,
    path = "/api/node",
    tag = "operations",
    responses((status = 200, description = "This node's status", body = NodeStatus))
)]
pub async fn node(State(ctx): State<Ctx>) -> Json<NodeStatus> {
    let m = &ctx.app.metrics;
    let backlog = ctx.app.store.count_pending().await.ok();
    Json(NodeStatus {
        node_id: ctx.app.node.as_str().to_owned(),
        topic: ctx.topic.clone(),
        consumer_group: ctx.group.clone(),
        consumer: ctx.replication.report(),
        clock: ctx.app.clock.report(),
        outbox_backlog: backlog,
        oversized_keys: ctx.app.oversized.report(),
        counters: NodeCounters {
            local_writes: m.local_writes.get(),
            events_published: m.published.get(),
            publish_failures: m.publish_failures.get(),
            events_applied: m.applied.get(),
            events_skipped_stale: m.skipped_stale.get(),
            events_skipped_own: m.skipped_own.get(),
            events_rejected: m.rejected_total(),
            conflicts: m.conflicts_total(),
            consumer_recoveries: m.consumer_recoveries.get(),
            publisher_recoveries: m.publisher_recoveries.get(),
        },
    })
}

fn own_report(ctx: &Ctx) -> kvsync_core::cluster::Report {
    ctx.app.cluster.report(&ctx.replication)
}

/// Every member this node knows of, its status, and the lag between every two members.
#[utoipa::path(
    get,
    path = "/api/cluster",
    tag = "operations",
    responses((status = 200, description = "`members` (each with its status, clock offset and replication positions), `lags` between every two members, and this node's `repair` counters", body = Object))
)]
pub async fn cluster(State(ctx): State<Ctx>) -> Json<serde_json::Value> {
    let own = own_report(&ctx);
    let mut body = ctx.app.cluster.describe(own, &ctx.app.clock.offsets());
    let m = &ctx.app.metrics;
    body["repair"] = json!({
        "rounds": m.repair_rounds.get(),
        "buckets_differing": m.repair_buckets.get(),
        "keys_republished": m.repair_keys.get(),
        "snapshots_served": m.snapshots_served.get(),
        "tombstones_collected": m.tombstones_collected.get(),
    });
    Json(body)
}

/// A digest of every pair's state: equal on two nodes when they hold the same data.
#[derive(Serialize, ToSchema)]
pub struct Digest {
    /// How many stored pairs the digest covers.
    count: u64,
    digest: String,
}

#[utoipa::path(
    get,
    path = "/api/digest",
    tag = "operations",
    responses(
        (status = 200, description = "The digest of this node's pairs", body = Digest),
        (status = 503, description = "`database_unavailable`", body = ErrorBody),
    )
)]
pub async fn digest(State(ctx): State<Ctx>) -> Result<Json<Digest>, ApiError> {
    let (count, digest) = ctx.app.store.digest().await?;
    Ok(Json(Digest { count, digest }))
}
