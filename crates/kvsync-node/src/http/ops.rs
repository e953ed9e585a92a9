//! Operational endpoints: health, readiness, metrics, node status and state digest.

use std::time::Duration;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use super::{error::ApiError, Ctx};

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when MongoDB answers, the consumer owns every partition of the topic and makes
/// progress, and no peer event is held for clock reasons; else 503 and why.
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
    let ready = reasons.is_empty();
    let body = json!({
        "ready": ready,
        "node": ctx.app.node.as_str(),
        "mongodb": if mongodb.is_ok() { "ok" } else { "unavailable" },
        "kafka": {
            "owned_partitions": ctx.replication.owned_partitions(),
            "topic_partitions": ctx.replication.topic_partitions(),
        },
        "clock": ctx.app.clock.own().label(),
        "reasons": reasons,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

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

pub async fn node(State(ctx): State<Ctx>) -> Json<serde_json::Value> {
    let m = &ctx.app.metrics;
    let backlog = ctx.app.store.count_pending().await.ok();
    Json(json!({
        "node_id": ctx.app.node.as_str(),
        "topic": ctx.topic,
        "consumer_group": ctx.group,
        "consumer": ctx.replication.report(),
        "clock": ctx.app.clock.report(),
        // null when MongoDB cannot be asked.
        "outbox_backlog": backlog,
        "counters": {
            "local_writes": m.local_writes.get(),
            "events_published": m.published.get(),
            "publish_failures": m.publish_failures.get(),
            "events_applied": m.applied.get(),
            "events_skipped_stale": m.skipped_stale.get(),
            "events_skipped_own": m.skipped_own.get(),
            "events_rejected": m.rejected_total(),
            "conflicts": m.conflicts_total(),
            "consumer_recoveries": m.consumer_recoveries.get(),
            "publisher_recoveries": m.publisher_recoveries.get(),
        },
    }))
}

fn own_report(ctx: &Ctx) -> kvsync_core::cluster::Report {
    ctx.app.cluster.report(&ctx.replication)
}

/// Every member this node knows of, its status, and the lag between every two members.
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

pub async fn digest(State(ctx): State<Ctx>) -> Result<Json<serde_json::Value>, ApiError> {
    let (count, digest) = ctx.app.store.digest().await?;
    Ok(Json(json!({ "count": count, "digest": digest })))
}
