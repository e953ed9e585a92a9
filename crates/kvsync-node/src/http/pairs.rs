//! `/api/pairs`: the key-value API.

use std::convert::Infallible;

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use futures::StreamExt;
use kvsync_core::{Key, Values, Version};
use kvsync_store::StoredPair;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{
    error::ApiError,
    extract::{precondition, JsonBody, KeyPath, ValuePath, Q},
    Ctx,
};
use crate::app::{elements, rfc3339, values_of, ConflictNote, ValueBody, Written};

pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// A pair as the API shows it.
#[derive(Debug, Serialize)]
pub struct PairBody {
    pub key: String,
    pub values: Vec<String>,
    /// The same values with their ids, for writes of one value.
    pub elements: Vec<ValueBody>,
    pub version: String,
    pub updated_at: String,
    pub origin: String,
    /// Conflicts this node settled for the key, oldest first (only when there are some).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<ConflictNote>,
}

impl From<&StoredPair> for PairBody {
    fn from(p: &StoredPair) -> Self {
        let version = p.version();
        let elements = elements(&p.state);
        Self {
            key: p.key.as_str().to_owned(),
            values: values_of(&elements),
            elements,
            version: version.map(ToString::to_string).unwrap_or_default(),
            updated_at: rfc3339(version.map_or(0, |v| v.ts.wall_ms)),
            origin: version.map(|v| v.node.to_string()).unwrap_or_default(),
            conflicts: p
                .conflicts
                .iter()
                .map(|c| ConflictNote::recorded(&p.key, c))
                .collect(),
        }
    }
}

fn etag(version: &Version) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("versions are ASCII")
}

fn pair_response(status: StatusCode, pair: &StoredPair) -> Response {
    let mut response = (status, Json(PairBody::from(pair))).into_response();
    if let Some(version) = pair.version() {
        response.headers_mut().insert(header::ETAG, etag(version));
    }
    response
}

fn written(w: Written) -> Response {
    let status = if w.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    pair_response(status, &w.pair)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

pub async fn list(State(ctx): State<Ctx>, Q(p): Q<ListParams>) -> Result<Response, ApiError> {
    let limit = p.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    // A prefix is the start of a key and a cursor is a key (a page's `next`): the key
    // rules apply, so a typo'd or mangled query fails instead of matching nothing.
    if let Some(after) = &p.after {
        Key::parse(after.as_str())
            .map_err(|e| ApiError::bad_request("invalid_query", format!("after: {e}")))?;
    }
    if !p.prefix.is_empty() {
        Key::parse(p.prefix.as_str())
            .map_err(|e| ApiError::bad_request("invalid_query", format!("prefix: {e}")))?;
    }
    let (page, more) = ctx
        .app
        .store
        .list(&p.prefix, p.after.as_deref(), limit)
        .await?;
    let next = more.then(|| page.last().map(|p| p.key.as_str().to_owned()));
    let pairs: Vec<PairBody> = page.iter().map(PairBody::from).collect();
    Ok(Json(json!({ "pairs": pairs, "next": next.flatten() })).into_response())
}

pub async fn get(State(ctx): State<Ctx>, KeyPath(key): KeyPath) -> Result<Response, ApiError> {
    let pair = ctx.app.get(&key).await?;
    Ok(pair_response(StatusCode::OK, &pair))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    values: Vec<String>,
}

pub async fn put(
    State(ctx): State<Ctx>,
    KeyPath(key): KeyPath,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PutBody>,
) -> Result<Response, ApiError> {
    let pre = precondition(&headers)?;
    let values = Values::new(body.values, key.as_str().len())?;
    Ok(written(ctx.app.put(&key, values, &pre).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendBody {
    value: String,
}

pub async fn append(
    State(ctx): State<Ctx>,
    KeyPath(key): KeyPath,
    headers: HeaderMap,
    JsonBody(body): JsonBody<AppendBody>,
) -> Result<Response, ApiError> {
    let pre = precondition(&headers)?;
    Ok(written(ctx.app.append(&key, body.value, &pre).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueBodyIn {
    value: String,
}

/// Changes one value in place.
pub async fn edit_value(
    State(ctx): State<Ctx>,
    ValuePath(key, id): ValuePath,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ValueBodyIn>,
) -> Result<Response, ApiError> {
    let pre = precondition(&headers)?;
    Ok(written(ctx.app.edit(&key, &id, body.value, &pre).await?))
}

/// Removes one value; the pair stays.
pub async fn remove_value(
    State(ctx): State<Ctx>,
    ValuePath(key, id): ValuePath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let pre = precondition(&headers)?;
    Ok(written(ctx.app.remove_value(&key, &id, &pre).await?))
}

/// The conflicts this node settled for a key, oldest first.
pub async fn conflicts(
    State(ctx): State<Ctx>,
    KeyPath(key): KeyPath,
) -> Result<Response, ApiError> {
    let recorded = ctx.app.store.conflicts(&key).await?;
    let notes: Vec<ConflictNote> = recorded
        .iter()
        .map(|c| ConflictNote::recorded(&key, c))
        .collect();
    Ok(Json(json!({ "conflicts": notes })).into_response())
}

/// Forgets the conflicts recorded for a key (they were seen, or restored).
pub async fn dismiss_conflicts(
    State(ctx): State<Ctx>,
    KeyPath(key): KeyPath,
) -> Result<StatusCode, ApiError> {
    ctx.app.store.dismiss_conflicts(&key).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn delete(
    State(ctx): State<Ctx>,
    KeyPath(key): KeyPath,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let pre = precondition(&headers)?;
    ctx.app.delete(&key, &pre).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// "Clear database": deletes every live pair, batch by batch, each an ordinary
/// replicated delete. The answer is one JSON document, streamed as the clear goes:
/// `{"progress":[500,1000,...],"deleted":n}`, a running total after each batch. A failure
/// part-way ends it with `"error"` and `"detail"` (the status, sent first, is 200 by
/// then). The first batch is read before answering, so a database that cannot be used
/// gets the usual 503 (or 504).
pub async fn clear(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    let first = ctx.app.clear_batch(None).await?;
    // The clear runs in its own task, so a client that goes away stops it between
    // batches, never in the middle of a delete.
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(run_clear(ctx, first, tx));
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn run_clear(ctx: Ctx, mut batch: Vec<Key>, tx: mpsc::Sender<String>) {
    let started = std::time::Instant::now();
    let mut deleted = 0u64;
    let mut separator = "";
    if tx.send(r#"{"progress":["#.to_owned()).await.is_err() {
        return;
    }
    let failure = loop {
        let Some(last) = batch.last().cloned() else {
            break None;
        };
        let full = batch.len() == crate::app::CLEAR_BATCH;
        let (n, failure) = ctx.app.delete_keys(std::mem::take(&mut batch)).await;
        deleted += n;
        if let Some(e) = failure {
            break Some(ApiError::from(e));
        }
        if tx.send(format!("{separator}{deleted}")).await.is_err() {
            tracing::info!(deleted, "clear stopped: its client went away");
            return;
        }
        separator = ",";
        tracing::info!(deleted, "clearing");
        if !full {
            break None;
        }
        if ctx.shutdown.is_cancelled() {
            break Some(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the node is shutting down; clear again once it is back",
            ));
        }
        batch = match ctx.app.clear_batch(Some(&last)).await {
            Ok(next) => next,
            Err(e) => break Some(ApiError::from(e)),
        };
    };
    let end = match failure {
        None => {
            tracing::info!(deleted, elapsed = ?started.elapsed(), "cleared");
            format!(r#"],"deleted":{deleted}}}"#)
        }
        Some(e) => {
            tracing::warn!(deleted, error = e.error, detail = %e.detail, "clear failed part-way");
            let tail = json!({ "deleted": deleted, "error": e.error, "detail": e.detail });
            // The object without its opening brace continues the one already begun.
            format!("],{}", &tail.to_string()[1..])
        }
    };
    let _ = tx.send(end).await;
}
