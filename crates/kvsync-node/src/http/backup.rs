//! Backup and restore: `GET /api/export` streams every pair as JSON lines, and
//! `POST /api/import` merges such lines back under the normal merge rule.

use std::convert::Infallible;

use axum::{
    body::{Body, Bytes},
    extract::{rejection::BytesRejection, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use futures::StreamExt;
use kvsync_core::{state::StateWire, Key, Outcome, PairState};
use kvsync_store::Scanned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::ToSchema;

use super::{
    error::{ApiError, ErrorBody},
    extract::Q,
    Ctx,
};
use crate::app::{elements, values_of};

/// Pairs sent per piece of the answer.
const EXPORT_CHUNK: usize = 500;
/// Most lines one import request takes (`kvsync import` sends a file in such chunks).
pub const MAX_IMPORT_LINES: usize = 1000;
/// Lines of one import merged at a time.
const IMPORT_CONCURRENCY: usize = 32;

/// One exported pair: its whole state (what an import merges), with its version, status
/// and values for people and tools that only read.
#[derive(Serialize, ToSchema)]
pub struct ExportLine {
    key: String,
    version: String,
    deleted: bool,
    /// Empty for a deleted key.
    values: Vec<String>,
    /// The pair's replicated state (values with their ids and versions, and the
    /// versions of the last replacement, write and delete): what an import merges.
    /// Give it back as it was exported.
    #[schema(value_type = Object)]
    state: StateWire,
}

/// What an import reads of a line; the export's other fields are allowed and ignored.
#[derive(Deserialize)]
struct ImportLine {
    key: String,
    state: StateWire,
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// Include deleted keys (their tombstones), so a restore deletes them too.
    #[serde(default)]
    tombstones: bool,
    /// Only keys that start with this (itself a valid key).
    #[serde(default)]
    prefix: String,
}

/// What an import did.
#[derive(Serialize, ToSchema)]
pub struct ImportSummary {
    /// Lines read (blank lines aside).
    lines: usize,
    /// Pairs the import changed.
    changed: u64,
    /// Pairs this node already held at the same or a newer state.
    unchanged: u64,
}

/// Streams every pair (with `tombstones=true`, deleted keys too) in key order, one JSON
/// object per line, from one cursor, so memory stays flat whatever the size; pairs changed
/// during the export appear as the cursor found them.
#[utoipa::path(
    get,
    path = "/api/export",
    tag = "backup",
    params(ExportParams),
    responses(
        (status = 200, description = "One `ExportLine` per line (JSON lines), in key order. A failure part-way ends the stream with an `Error` line.", body = ExportLine, content_type = "application/x-ndjson"),
        (status = 400, description = "`invalid_query`: an unknown parameter, or a prefix that is not a valid key", body = ErrorBody),
        (status = 503, description = "`database_unavailable`", body = ErrorBody),
    )
)]
pub async fn export(State(ctx): State<Ctx>, Q(p): Q<ExportParams>) -> Result<Response, ApiError> {
    if !p.prefix.is_empty() {
        Key::parse(p.prefix.as_str())
            .map_err(|e| ApiError::bad_request("invalid_query", format!("prefix: {e}")))?;
    }
    // The first page is read before answering, so a database that cannot be used gets
    // the usual 503 rather than an empty export.
    let from = (!p.prefix.is_empty()).then_some(p.prefix.as_str());
    let mut scan = ctx.app.store.scan(from).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let mut chunk = String::new();
        let mut in_chunk = 0;
        while let Some(next) = scan.next().await {
            let Scanned { id, pair, .. } = match next {
                Ok(found) => found,
                Err(e) => {
                    // The status is sent: end with a line that cannot be mistaken for a pair.
                    tracing::warn!(error = %e, "export failed part-way");
                    chunk.push_str(
                        &json!({ "error": "database_unavailable", "detail": e.to_string() })
                            .to_string(),
                    );
                    chunk.push('\n');
                    break;
                }
            };
            if !id.starts_with(&p.prefix) {
                break; // Past the prefix.
            }
            let Ok(pair) = pair else { continue };
            if !pair.is_live() && !p.tombstones {
                continue;
            }
            let els = elements(&pair.state);
            let line = ExportLine {
                key: pair.key.to_string(),
                version: pair.version().map(ToString::to_string).unwrap_or_default(),
                deleted: !pair.is_live(),
                values: if pair.is_live() {
                    values_of(&els)
                } else {
                    Vec::new()
                },
                state: pair.state.to_wire(),
            };
            chunk.push_str(&serde_json::to_string(&line).expect("a line serializes"));
            chunk.push('\n');
            in_chunk += 1;
            if in_chunk == EXPORT_CHUNK {
                if tx
                    .send(Bytes::from(std::mem::take(&mut chunk)))
                    .await
                    .is_err()
                {
                    return; // The client went away.
                }
                in_chunk = 0;
            }
        }
        if !chunk.is_empty() {
            let _ = tx.send(Bytes::from(chunk)).await;
        }
    });
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// Merges up to [`MAX_IMPORT_LINES`] exported lines into this node's pairs under the
/// normal merge rule (what the node holds newer stays; changes replicate). Every line is
/// checked before the first is applied: a bad one fails the request with its line number
/// and nothing written.
#[utoipa::path(
    post,
    path = "/api/import",
    tag = "backup",
    request_body(content = ExportLine, content_type = "application/x-ndjson", description = "Up to 1000 lines of an export, one JSON object per line; only `key` and `state` are read"),
    responses(
        (status = 200, description = "Merged", body = ImportSummary),
        (status = 400, description = "`invalid_import`: not UTF-8, too many lines, or a bad line (its number is in `detail`); nothing was written", body = ErrorBody),
        (status = 408, description = "`body_timeout`: the body did not arrive within `KVSYNC_BODY_TIMEOUT_MS`", body = ErrorBody),
        (status = 409, description = "`contended`", body = ErrorBody),
        (status = 413, description = "`body_too_large`: over 4 MiB", body = ErrorBody),
        (status = 503, description = "`database_unavailable` or `clock_skew`", body = ErrorBody),
    )
)]
pub async fn import(
    State(ctx): State<Ctx>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("invalid_import", "the body is not UTF-8"))?;
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if lines.len() == MAX_IMPORT_LINES {
            return Err(ApiError::bad_request(
                "invalid_import",
                format!("at most {MAX_IMPORT_LINES} lines per request; send the rest in another"),
            ));
        }
        let bad =
            |why: String| ApiError::bad_request("invalid_import", format!("line {}: {why}", n + 1));
        let parsed: ImportLine = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let key = Key::parse(parsed.key).map_err(|e| bad(e.to_string()))?;
        let state = PairState::from_wire(parsed.state).map_err(|e| bad(e.to_string()))?;
        if state.version().is_none() {
            return Err(bad("the state holds no write".into()));
        }
        lines.push((key, state));
    }
    let total = lines.len();
    let (mut changed, mut unchanged) = (0u64, 0u64);
    // Several lines at a time, so their writes share database commands (group commit).
    // Merging is commutative: two lines of one key end the same in either order.
    let mut merges = futures::stream::iter(lines)
        .map(|(key, state)| ctx.app.import(key, state))
        .buffer_unordered(IMPORT_CONCURRENCY);
    while let Some(outcome) = merges.next().await {
        match outcome? {
            Outcome::Applied => changed += 1,
            Outcome::Stale => unchanged += 1,
        }
    }
    Ok((
        StatusCode::OK,
        Json(ImportSummary {
            lines: total,
            changed,
            unchanged,
        }),
    )
        .into_response())
}
