//! Backup and restore: `GET /api/export` streams every pair as JSON lines, and
//! `POST /api/import` merges such lines back under the normal merge rule.

use std::convert::Infallible;

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use futures::StreamExt;
use kvsync_core::{state::StateWire, Key, Outcome, PairState};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{error::ApiError, extract::Q, Ctx};
use crate::app::{elements, values_of};

/// Pairs sent per piece of the answer.
const EXPORT_CHUNK: usize = 500;
/// Most lines one import request takes (`kvsync import` sends a file in such chunks).
pub const MAX_IMPORT_LINES: usize = 1000;

/// One exported pair: its whole state (what an import merges), with its version, status
/// and values for people and tools that only read.
#[derive(Serialize)]
struct ExportLine {
    key: String,
    version: String,
    deleted: bool,
    values: Vec<String>,
    state: StateWire,
}

/// What an import reads of a line; the export's other fields are allowed and ignored.
#[derive(Deserialize)]
struct ImportLine {
    key: String,
    state: StateWire,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    #[serde(default)]
    tombstones: bool,
    #[serde(default)]
    prefix: String,
}

/// Streams every pair (with `tombstones=true`, deleted keys too) in key order, one JSON
/// object per line, from one cursor, so memory stays flat whatever the size; pairs changed
/// during the export appear as the cursor found them.
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
            let (id, pair) = match next {
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
pub async fn import(State(ctx): State<Ctx>, body: Bytes) -> Result<Response, ApiError> {
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
    for (key, state) in lines {
        match ctx.app.import(key, state).await? {
            Outcome::Applied => changed += 1,
            Outcome::Stale => unchanged += 1,
        }
    }
    Ok((
        StatusCode::OK,
        Json(json!({ "lines": total, "changed": changed, "unchanged": unchanged })),
    )
        .into_response())
}
