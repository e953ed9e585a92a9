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

/// Ready when MongoDB answers and the consumer holds partitions; else 503 and why.
pub async fn readyz(State(ctx): State<Ctx>) -> Response {
    let mongodb = match tokio::time::timeout(Duration::from_secs(2), ctx.app.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("MongoDB did not answer within 2 s".to_owned()),
    };
    let partitions = ctx.consumer.assigned_partitions();
    let mut reasons = Vec::new();
    if let Err(e) = &mongodb {
        reasons.push(format!("mongodb: {e}"));
    }
    if partitions == 0 {
        reasons.push("kafka: the consumer has no partitions assigned yet".to_owned());
    }
    let ready = reasons.is_empty();
    let body = json!({
        "ready": ready,
        "node": ctx.app.node.as_str(),
        "mongodb": if mongodb.is_ok() { "ok" } else { "unavailable" },
        "kafka": { "assigned_partitions": partitions },
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
    if let Ok(n) = ctx.app.store.count_pending().await {
        ctx.app.metrics.outbox_backlog.set(n as i64);
    }
    ctx.app
        .metrics
        .assigned_partitions
        .set(ctx.consumer.assigned_partitions() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.app.metrics.render(),
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
        "consumer": {
            "assigned_partitions": ctx.consumer.assigned_partitions(),
        },
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
        },
    }))
}

pub async fn digest(State(ctx): State<Ctx>) -> Result<Json<serde_json::Value>, ApiError> {
    let (count, digest) = ctx.app.store.digest().await?;
    Ok(Json(json!({ "count": count, "digest": digest })))
}
