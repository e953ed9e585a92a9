//! `/api/pairs`: the key-value API.

use std::{convert::Infallible, time::Duration};

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use futures::StreamExt;
use kvsync_core::{folder_of, EntityTag, Key, KeyMatch, Values, Version};
use kvsync_store::StoredPair;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::ToSchema;

use super::{
    error::{ApiError, ErrorBody},
    extract::{precondition, JsonBody, KeyPath, ValuePath, Q},
    Ctx,
};
use crate::{
    app::{elements, rfc3339, values_of, ConflictNote, ValueBody, Written},
    cluster::{Replication, WaitFor},
};

pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// The `{key}` path segment, for the OpenAPI document.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Only its schema is used; `KeyPath` extracts it.
pub struct KeyParam {
    /// The key, percent-encoded: 1 to 512 bytes of UTF-8, no control characters.
    key: String,
}

/// The `{id}` path segment of one value, for the OpenAPI document.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Only its schema is used; `ValuePath` extracts it.
pub struct IdParam {
    /// The value's id (`elements[].id` of the pair).
    id: String,
}

/// The conditional-write headers, for the OpenAPI document (`precondition` reads them).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Only its schema is used.
pub struct Preconditions {
    /// Write only if the pair's entity tag is one of these ETags (or `*`: if it exists).
    /// A tag this service did not issue (a weak tag too) matches nothing: 412. With
    /// `If-None-Match` too, both must hold.
    #[param(rename = "If-Match")]
    if_match: Option<String>,
    /// Only `*`: write only if the pair does not exist.
    #[param(rename = "If-None-Match")]
    if_none_match: Option<String>,
}

const BAD_WRITE: &str = "`invalid_key`, `invalid_query` (bad `wait`/`timeout_ms`), `invalid_precondition`, `malformed_json`, `invalid_body` (wrong or unknown fields)";
const BAD_VALUE_PATH: &str =
    "`invalid_key`, `invalid_value_id`, `invalid_query`, `invalid_precondition`";
const BAD_VALUE_WRITE: &str = "`invalid_key`, `invalid_value_id`, `invalid_query`, `invalid_precondition`, `malformed_json`, `invalid_body`";
const NO_VALUE: &str = "`not_found` (no such pair) or `no_such_value` (no value with this id)";
const CONTENDED: &str = "`contended`: too many concurrent writes of this key; retry";
const PRECONDITION: &str = "`precondition_failed`: `If-Match`/`If-None-Match` did not hold; `current` is the pair as it is now (null if absent)";
const TOO_LARGE: &str =
    "`too_large` (the values exceed the pair's limits) or `body_too_large` (over 4 MiB)";
const UNSUPPORTED: &str = "`unsupported_media_type`: the body is not sent as `application/json`";
const WRITE_UNAVAILABLE: &str = "`database_unavailable`, or `clock_skew` (this node's clock is off; writes are refused until it agrees)";

/// A pair as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Pair)]
pub struct PairBody {
    pub key: String,
    pub values: Vec<String>,
    /// The same values with their ids, for writes of one value.
    pub elements: Vec<ValueBody>,
    /// The version of the last write: it orders the pair's states.
    #[schema(example = "0000019361a2b3c4-00000003-node1")]
    pub version: String,
    /// The entity tag (the `ETag` header, unquoted): the version and a digest of the
    /// values. It changes whenever the values do, merges included; send it back in
    /// `If-Match`.
    #[schema(example = "0000019361a2b3c4-00000003-node1~9f86d081884c7d65")]
    pub etag: String,
    /// When the last write was made (RFC 3339), by its node's clock.
    pub updated_at: String,
    /// The node that made the last write.
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
            etag: EntityTag::of(&p.state)
                .map(|t| t.to_string())
                .unwrap_or_default(),
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

/// Sets the `ETag` header from the `etag` of the pair shown (none when it is deleted),
/// so the digest is computed once per answer.
fn set_etag(response: &mut Response, etag: &str) {
    if !etag.is_empty() {
        let value = HeaderValue::from_str(&format!("\"{etag}\"")).expect("tags are ASCII");
        response.headers_mut().insert(header::ETAG, value);
    }
}

fn pair_response(status: StatusCode, pair: &StoredPair) -> Response {
    let body = PairBody::from(pair);
    let etag = body.etag.clone();
    let mut response = (status, Json(body)).into_response();
    set_etag(&mut response, &etag);
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

/// A write's answer when it waited for its replication (`?wait=`): the pair, and how far
/// the write got.
#[derive(Serialize, ToSchema)]
#[schema(as = Written)]
pub struct WrittenBody {
    #[serde(flatten)]
    pub pair: PairBody,
    /// Only with `?wait=`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<Replication>,
}

/// `?wait=all|N&timeout_ms=T` on a write: answer once the live peers (or N of them) have
/// applied it, or at the timeout with those that have not. The write stands either way.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitParams {
    /// Wait until `all` live peers, or this many (1 or more), have applied the write.
    /// The answer then has a `replication` field and a `Kvsync-Replicated` header.
    #[param(pattern = "^(all|[1-9][0-9]{0,8})$")]
    wait: Option<String>,
    /// How long to wait (default 5000), capped below the request timeout. Without
    /// `wait` there is nothing to wait for, and it is ignored.
    timeout_ms: Option<u32>,
}

/// How long a write waits for its replication unless told otherwise.
const DEFAULT_WAIT_MS: u64 = 5000;

impl WaitParams {
    fn parse(&self, ctx: &Ctx) -> Result<Option<(WaitFor, Duration)>, ApiError> {
        let Some(wait) = &self.wait else {
            return Ok(None);
        };
        let wait = match wait.as_str() {
            "all" => WaitFor::All,
            n => match n.parse::<usize>() {
                Ok(n) if n >= 1 => WaitFor::AtLeast(n),
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_query",
                        "wait must be all or a number of peers (1 or more)",
                    ))
                }
            },
        };
        Ok(Some((wait, wait_timeout(ctx, self.timeout_ms))))
    }
}

/// The wait asked for, kept within the request timeout (with room to answer).
fn wait_timeout(ctx: &Ctx, asked_ms: Option<u32>) -> Duration {
    let cap = ctx
        .limits
        .request_timeout
        .saturating_sub(Duration::from_millis(250));
    Duration::from_millis(asked_ms.map_or(DEFAULT_WAIT_MS, u64::from)).min(cap)
}

/// Waits, if asked, until the write's event has reached the peers.
async fn replicate(
    ctx: &Ctx,
    pair: &StoredPair,
    wait: Option<(WaitFor, Duration)>,
) -> Option<Replication> {
    let (wait, timeout) = wait?;
    let version = pair.version()?;
    let started = tokio::time::Instant::now();
    let Some((partition, offset)) = ctx
        .app
        .cluster
        .publication_of(&pair.key, version, timeout)
        .await
    else {
        // Not even published in time (the broker is down): no peer has it.
        let peers = ctx.app.cluster.live_peers();
        return Some(Replication {
            required: match wait {
                WaitFor::All => peers.len(),
                WaitFor::AtLeast(n) => n,
            },
            confirmed: Vec::new(),
            pending: peers.iter().map(ToString::to_string).collect(),
            timed_out: true,
            waited_ms: started.elapsed().as_millis() as u64,
        });
    };
    let left = timeout.saturating_sub(started.elapsed());
    let mut r = ctx
        .app
        .cluster
        .wait_applied(partition, offset, wait, left)
        .await;
    r.waited_ms = started.elapsed().as_millis() as u64;
    Some(r)
}

/// The `Kvsync-Replicated` header of a write that waited: `all` (enough peers
/// confirmed), `partial` (some did) or `none`.
fn replicated_header(response: &mut Response, r: &Replication) {
    let label = if !r.timed_out {
        "all"
    } else if r.confirmed.is_empty() {
        "none"
    } else {
        "partial"
    };
    response.headers_mut().insert(
        HeaderName::from_static("kvsync-replicated"),
        HeaderValue::from_static(label),
    );
}

/// A write's answer, after waiting for its replication if asked: the pair, with a
/// `replication` field saying how far it got when it waited.
async fn answer(ctx: &Ctx, w: Written, wait: Option<(WaitFor, Duration)>) -> Response {
    let Some(r) = replicate(ctx, &w.pair, wait).await else {
        return written(w);
    };
    let status = if w.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = WrittenBody {
        pair: PairBody::from(&w.pair),
        replication: Some(r.clone()),
    };
    let etag = body.pair.etag.clone();
    let mut response = (status, Json(body)).into_response();
    set_etag(&mut response, &etag);
    replicated_header(&mut response, &r);
    response
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only keys that start with this (itself a valid key).
    #[serde(default)]
    prefix: String,
    /// The cursor: the `next` of the previous page.
    after: Option<String>,
    /// Pairs per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Adds `total`: how many live pairs the prefix matches (a count over an index; a
    /// search does not narrow it).
    #[serde(default)]
    count: bool,
    /// Search: keys containing this text (with `glob`, keys must match both).
    contains: Option<String>,
    /// Search: keys this glob matches as a whole (`*`, `?`).
    glob: Option<String>,
    /// The search ignores case (no effect without `contains` or `glob`).
    #[serde(default)]
    ignore_case: bool,
    /// Folder view: keys with this separator after the prefix are grouped into folders
    /// (listed as they are; a search narrows the keys outside folders).
    delimiter: Option<String>,
}

/// Keys a search or folder listing examines per request at most; it answers with what it
/// found and a `next` cursor to go on from.
pub const SEARCH_SCAN: usize = 5000;
/// Index reads a folder listing makes per request at most (one per folder skipped).
const FOLDER_STEPS: usize = 200;
const MAX_DELIMITER_CHARS: usize = 8;

/// One page of a search (`contains`/`glob`) or a folder listing (`delimiter`): scans at most
/// [`SEARCH_SCAN`] live keys of the prefix's range, reading keys only, then the pairs found.
async fn search(
    ctx: &Ctx,
    p: &ListParams,
    limit: usize,
    matchers: &[KeyMatch],
) -> Result<PageBody, ApiError> {
    let prefix = p.prefix.as_str();
    let delimiter = p.delimiter.as_deref();
    let end = kvsync_store::prefix_end(prefix);
    // Where to start: after the cursor (past the whole folder when it names one).
    let (mut from, mut inclusive) = match p.after.as_deref() {
        Some(after) if after >= prefix => match delimiter {
            Some(d) if folder_of(after, prefix, d) == Some(after) => {
                match kvsync_store::prefix_end(after) {
                    Some(past) => (past, true),
                    None => {
                        return Ok(PageBody {
                            folders: Some(Vec::new()),
                            scanned: Some(0),
                            ..PageBody::default()
                        })
                    }
                }
            }
            _ => (after.to_owned(), false),
        },
        _ => (prefix.to_owned(), true),
    };
    let step = if delimiter.is_some() { 100 } else { 1000 };
    let mut keys: Vec<Key> = Vec::new();
    let mut folders: Vec<String> = Vec::new();
    let (mut scanned, mut steps) = (0usize, 0usize);
    let mut cursor: Option<String> = None;
    let mut exhausted = false;
    'scan: while keys.len() + folders.len() < limit && scanned < SEARCH_SCAN && steps < FOLDER_STEPS
    {
        steps += 1;
        let batch = ctx
            .app
            .store
            .live_keys_between(
                &from,
                inclusive,
                end.as_deref(),
                step.min(SEARCH_SCAN - scanned),
            )
            .await?;
        if batch.is_empty() {
            exhausted = true;
            break;
        }
        for key in &batch {
            scanned += 1;
            let k = key.as_str();
            if let Some(folder) = delimiter.and_then(|d| folder_of(k, prefix, d)) {
                folders.push(folder.to_owned());
                cursor = Some(folder.to_owned());
                match kvsync_store::prefix_end(folder) {
                    Some(past) => (from, inclusive) = (past, true),
                    None => {
                        exhausted = true;
                        break 'scan;
                    }
                }
                continue 'scan; // skip the folder's keys: read on from past it
            }
            if matchers.iter().all(|m| m.matches(k)) {
                keys.push(key.clone());
            }
            cursor = Some(k.to_owned());
            if keys.len() + folders.len() == limit {
                break 'scan;
            }
        }
        from = cursor.clone().unwrap_or(from);
        inclusive = false;
    }
    let pairs: Vec<PairBody> = ctx
        .app
        .store
        .get_many(&keys)
        .await?
        .iter()
        .map(PairBody::from)
        .collect();
    let next = if exhausted { None } else { cursor };
    Ok(PageBody {
        pairs,
        next,
        total: None,
        folders: delimiter.is_some().then_some(folders),
        scanned: Some(scanned),
    })
}

fn check_pattern(name: &str, text: &str) -> Result<(), ApiError> {
    if text.is_empty() || text.len() > kvsync_core::key::MAX_KEY_BYTES {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "{name} must be 1 to {} bytes",
                kvsync_core::key::MAX_KEY_BYTES
            ),
        ));
    }
    Ok(())
}

/// One page of pairs, in key order.
#[derive(Serialize, ToSchema, Default)]
#[schema(as = PairPage)]
pub struct PageBody {
    pub pairs: Vec<PairBody>,
    /// The `after` of the next page; null on the last page.
    pub next: Option<String>,
    /// With `count=true`: how many live pairs the prefix matches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// With `delimiter`: the folders found on this page (keys up to and including the
    /// separator), in key order among the pairs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folders: Option<Vec<String>>,
    /// With `contains`, `glob` or `delimiter`: how many keys this request examined (at most
    /// 5,000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scanned: Option<usize>,
}

/// Lists live pairs in key order, a page at a time.
#[utoipa::path(
    get,
    path = "/api/pairs",
    tag = "pairs",
    params(ListParams),
    responses(
        (status = 200, description = "One page of pairs", body = PageBody),
        (status = 400, description = "`invalid_query`: an unknown parameter, a limit out of range, or a prefix or cursor that is not a valid key", body = ErrorBody),
        (status = 503, description = "`database_unavailable`", body = ErrorBody),
    )
)]
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
    let bad = |detail: &str| Err(ApiError::bad_request("invalid_query", detail.to_owned()));
    // Every combination means something, so none is refused: the document can state
    // each parameter's own rules, not rules between parameters.
    let mut matchers = Vec::new();
    if let Some(text) = &p.contains {
        check_pattern("contains", text)?;
        matchers.push(KeyMatch::contains(text, p.ignore_case));
    }
    if let Some(pattern) = &p.glob {
        check_pattern("glob", pattern)?;
        matchers.push(KeyMatch::glob(pattern, p.ignore_case));
    }
    if let Some(d) = &p.delimiter {
        // Characters, not bytes: what the API document can state.
        let chars = d.chars().count();
        if chars == 0 || chars > MAX_DELIMITER_CHARS || d.chars().any(char::is_control) {
            return bad("delimiter must be 1 to 8 characters, without control characters");
        }
    }
    if !matchers.is_empty() || p.delimiter.is_some() {
        let mut body = search(&ctx, &p, limit, &matchers).await?;
        if p.count {
            body.total = Some(ctx.app.store.count_live_prefix(&p.prefix).await?);
        }
        return Ok(Json(body).into_response());
    }
    let (page, more) = ctx
        .app
        .store
        .list(&p.prefix, p.after.as_deref(), limit)
        .await?;
    let next = more.then(|| page.last().map(|p| p.key.as_str().to_owned()));
    let pairs: Vec<PairBody> = page.iter().map(PairBody::from).collect();
    let mut body = PageBody {
        pairs,
        next: next.flatten(),
        ..PageBody::default()
    };
    if p.count {
        body.total = Some(ctx.app.store.count_live_prefix(&p.prefix).await?);
    }
    Ok(Json(body).into_response())
}

/// A version, or the version of an entity tag, with or without quotes.
fn min_version(text: &str) -> Result<Version, ApiError> {
    let bad = |e: &dyn std::fmt::Display| {
        ApiError::bad_request("invalid_query", format!("min_version: {e}"))
    };
    let text = text.strip_prefix('"').unwrap_or(text);
    let text = text.strip_suffix('"').unwrap_or(text);
    if text.contains('~') {
        return text
            .parse::<EntityTag>()
            .map(|t| t.version)
            .map_err(|e| bad(&e));
    }
    text.parse().map_err(|e| bad(&e))
}

/// `?min_version=V&timeout_ms=T` on a read: wait until this node holds the key at
/// version V or later (a version a write on any node returned), up to the timeout.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// Answer only once this node holds the key at this version or later (a version a
    /// write on any node returned, or its entity tag; quotes allowed).
    #[param(
        pattern = r#"^"?[0-9a-fA-F]{16}-[0-9a-fA-F]{8}-[A-Za-z0-9._-]{1,64}(~[0-9a-f]{16})?"?$"#
    )]
    min_version: Option<String>,
    /// How long to wait for `min_version` (default 5000), capped below the request
    /// timeout. Without `min_version` there is nothing to wait for, and it is ignored.
    timeout_ms: Option<u32>,
}

/// Reads one pair.
#[utoipa::path(
    get,
    path = "/api/pairs/{key}",
    tag = "pairs",
    params(KeyParam, ReadParams),
    responses(
        (status = 200, description = "The pair", body = PairBody, headers(("ETag" = String, description = "The pair's entity tag, quoted: send it back in `If-Match`"))),
        (status = 400, description = "`invalid_key`, or `invalid_query` (an unknown parameter, a malformed `min_version`)", body = ErrorBody),
        (status = 404, description = "`not_found`: no such pair (or it was deleted)", body = ErrorBody),
        (status = 503, description = "`version_not_here_yet`: this node did not reach `min_version` in time; `database_unavailable`", body = ErrorBody),
    )
)]
pub async fn get(
    State(ctx): State<Ctx>,
    KeyPath(key): KeyPath,
    Q(p): Q<ReadParams>,
) -> Result<Response, ApiError> {
    let Some(min) = &p.min_version else {
        let pair = ctx.app.get(&key).await?;
        return Ok(pair_response(StatusCode::OK, &pair));
    };
    let min = min_version(min)?;
    let timeout = wait_timeout(&ctx, p.timeout_ms);
    match ctx.app.get_at_least(&key, &min, timeout).await? {
        Some(pair) if pair.is_live() => Ok(pair_response(StatusCode::OK, &pair)),
        Some(_) => Err(crate::app::AppError::NotFound.into()),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "version_not_here_yet",
            format!(
                "this node does not hold version {min} of the key yet (waited {} ms); retry, or read from the node that took the write",
                timeout.as_millis()
            ),
        )),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PutRequest)]
pub struct PutBody {
    /// The pair's new values, in order (the list may be empty).
    values: Vec<String>,
}

/// Creates a pair or replaces all its values.
#[utoipa::path(
    put,
    path = "/api/pairs/{key}",
    tag = "pairs",
    params(KeyParam, WaitParams, Preconditions),
    request_body = PutBody,
    responses(
        (status = 200, description = "Replaced", body = WrittenBody, headers(("ETag" = String, description = "The pair's new entity tag, quoted"), ("Kvsync-Replicated" = String, description = "Only with `?wait=`: `all` (enough peers confirmed), `partial` (some did) or `none`"))),
        (status = 201, description = "Created", body = WrittenBody, headers(("ETag" = String, description = "The pair's new entity tag, quoted"), ("Kvsync-Replicated" = String, description = "Only with `?wait=`: `all` (enough peers confirmed), `partial` (some did) or `none`"))),
        (status = 400, description = BAD_WRITE, body = ErrorBody),
        (status = 409, description = CONTENDED, body = ErrorBody),
        (status = 412, description = PRECONDITION, body = ErrorBody),
        (status = 413, description = TOO_LARGE, body = ErrorBody),
        (status = 415, description = UNSUPPORTED, body = ErrorBody),
        (status = 503, description = WRITE_UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn put(
    State(ctx): State<Ctx>,
    KeyPath(key): KeyPath,
    Q(w): Q<WaitParams>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PutBody>,
) -> Result<Response, ApiError> {
    let pre = precondition(&headers)?;
    let wait = w.parse(&ctx)?;
    let values = Values::new(body.values, key.as_str().len())?;
    let w = ctx.app.put(&key, values, &pre).await?;
    Ok(answer(&ctx, w, wait).await)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AppendRequest)]
pub struct AppendBody {
    /// The value to add at the end (the pair is created if absent).
    value: String,
}

/// Adds one value at the end of a pair's list.
#[utoipa::path(
    post,
    path = "/api/pairs/{key}/values",
    tag = "pairs",
    params(KeyParam, WaitParams, Preconditions),
    request_body = AppendBody,
    responses(
        (status = 200, description = "Appended", body = WrittenBody, headers(("ETag" = String, description = "The pair's new entity tag, quoted"), ("Kvsync-Replicated" = String, description = "Only with `?wait=`: `all` (enough peers confirmed), `partial` (some did) or `none`"))),
        (status = 201, description = "Created with this one value", body = WrittenBody, headers(("ETag" = String, description = "The pair's new entity tag, quoted"), ("Kvsync-Replicated" = String, description = "Only with `?wait=`: `all` (enough peers confirmed), `partial` (some did) or `none`"))),
        (status = 400, description = BAD_WRITE, body = ErrorBody),
        (status = 409, description = CONTENDED, body = ErrorBody),
        (status = 412, description = PRECONDITION, body = ErrorBody),
        (status = 413, description = TOO_LARGE, body = ErrorBody),
        (status = 415, description = UNSUPPORTED, body = ErrorBody),
        (status = 503, description = WRITE_UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn append(
    State(ctx): State<Ctx>,
    KeyPath(key): KeyPath,
    Q(w): Q<WaitParams>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<AppendBody>,
) -> Result<Response, ApiError> {
    let pre = precondition(&headers)?;
    let wait = w.parse(&ctx)?;
    let w = ctx.app.append(&key, body.value, &pre).await?;
    Ok(answer(&ctx, w, wait).await)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = EditRequest)]
pub struct ValueBodyIn {
    /// The value's new text.
    value: String,
}

/// Changes one value in place.
#[utoipa::path(
    put,
    path = "/api/pairs/{key}/values/{id}",
    tag = "pairs",
    params(KeyParam, IdParam, WaitParams, Preconditions),
    request_body = ValueBodyIn,
    responses(
        (status = 200, description = "Changed", body = WrittenBody, headers(("ETag" = String, description = "The pair's new entity tag, quoted"), ("Kvsync-Replicated" = String, description = "Only with `?wait=`: `all` (enough peers confirmed), `partial` (some did) or `none`"))),
        (status = 400, description = BAD_VALUE_WRITE, body = ErrorBody),
        (status = 404, description = NO_VALUE, body = ErrorBody),
        (status = 409, description = CONTENDED, body = ErrorBody),
        (status = 412, description = PRECONDITION, body = ErrorBody),
        (status = 413, description = TOO_LARGE, body = ErrorBody),
        (status = 415, description = UNSUPPORTED, body = ErrorBody),
        (status = 503, description = WRITE_UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn edit_value(
    State(ctx): State<Ctx>,
    ValuePath(key, id): ValuePath,
    Q(w): Q<WaitParams>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ValueBodyIn>,
) -> Result<Response, ApiError> {
    let pre = precondition(&headers)?;
    let wait = w.parse(&ctx)?;
    let w = ctx.app.edit(&key, &id, body.value, &pre).await?;
    Ok(answer(&ctx, w, wait).await)
}

/// Removes one value; the pair stays.
#[utoipa::path(
    delete,
    path = "/api/pairs/{key}/values/{id}",
    tag = "pairs",
    params(KeyParam, IdParam, WaitParams, Preconditions),
    responses(
        (status = 200, description = "Removed: the pair without the value", body = WrittenBody, headers(("ETag" = String, description = "The pair's new entity tag, quoted"), ("Kvsync-Replicated" = String, description = "Only with `?wait=`: `all` (enough peers confirmed), `partial` (some did) or `none`"))),
        (status = 400, description = BAD_VALUE_PATH, body = ErrorBody),
        (status = 404, description = NO_VALUE, body = ErrorBody),
        (status = 409, description = CONTENDED, body = ErrorBody),
        (status = 412, description = PRECONDITION, body = ErrorBody),
        (status = 503, description = WRITE_UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn remove_value(
    State(ctx): State<Ctx>,
    ValuePath(key, id): ValuePath,
    Q(w): Q<WaitParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let pre = precondition(&headers)?;
    let wait = w.parse(&ctx)?;
    let w = ctx.app.remove_value(&key, &id, &pre).await?;
    Ok(answer(&ctx, w, wait).await)
}

/// The conflicts recorded for a key.
#[derive(Serialize, ToSchema)]
#[schema(as = Conflicts)]
pub struct ConflictsBody {
    pub conflicts: Vec<ConflictNote>,
}

/// The conflicts this node settled for a key, oldest first.
#[utoipa::path(
    get,
    path = "/api/pairs/{key}/conflicts",
    tag = "pairs",
    params(KeyParam),
    responses(
        (status = 200, description = "The key's conflicts (empty if none)", body = ConflictsBody),
        (status = 400, description = "`invalid_key`", body = ErrorBody),
        (status = 503, description = "`database_unavailable`", body = ErrorBody),
    )
)]
pub async fn conflicts(
    State(ctx): State<Ctx>,
    KeyPath(key): KeyPath,
) -> Result<Response, ApiError> {
    let recorded = ctx.app.store.conflicts(&key).await?;
    let notes: Vec<ConflictNote> = recorded
        .iter()
        .map(|c| ConflictNote::recorded(&key, c))
        .collect();
    Ok(Json(ConflictsBody { conflicts: notes }).into_response())
}

/// Forgets the conflicts recorded for a key (they were seen, or restored).
#[utoipa::path(
    delete,
    path = "/api/pairs/{key}/conflicts",
    tag = "pairs",
    params(KeyParam),
    responses(
        (status = 204, description = "Forgotten (also when there were none)"),
        (status = 400, description = "`invalid_key`", body = ErrorBody),
        (status = 503, description = "`database_unavailable`", body = ErrorBody),
    )
)]
pub async fn dismiss_conflicts(
    State(ctx): State<Ctx>,
    KeyPath(key): KeyPath,
) -> Result<StatusCode, ApiError> {
    ctx.app.store.dismiss_conflicts(&key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The answer to a delete that waited for its replication.
#[derive(Serialize, ToSchema)]
#[schema(as = Deleted)]
pub struct DeletedBody {
    pub key: String,
    pub deleted: bool,
    /// The delete's version.
    pub version: Option<String>,
    pub replication: Replication,
}

/// 204; with `?wait=`, 200 and a body that says how far the delete got.
#[utoipa::path(
    delete,
    path = "/api/pairs/{key}",
    tag = "pairs",
    params(KeyParam, WaitParams, Preconditions),
    responses(
        (status = 200, description = "Deleted, after waiting (`?wait=`)", body = DeletedBody, headers(("Kvsync-Replicated" = String, description = "Only with `?wait=`: `all` (enough peers confirmed), `partial` (some did) or `none`"))),
        (status = 204, description = "Deleted"),
        (status = 400, description = "`invalid_key`, `invalid_query`, `invalid_precondition`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such pair", body = ErrorBody),
        (status = 409, description = CONTENDED, body = ErrorBody),
        (status = 412, description = PRECONDITION, body = ErrorBody),
        (status = 503, description = WRITE_UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn delete(
    State(ctx): State<Ctx>,
    KeyPath(key): KeyPath,
    Q(w): Q<WaitParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let pre = precondition(&headers)?;
    let wait = w.parse(&ctx)?;
    let tombstone = ctx.app.delete(&key, &pre).await?;
    let Some(r) = replicate(&ctx, &tombstone, wait).await else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let version = tombstone.version().map(ToString::to_string);
    let mut response = Json(DeletedBody {
        key: key.as_str().to_owned(),
        deleted: true,
        version,
        replication: r.clone(),
    })
    .into_response();
    replicated_header(&mut response, &r);
    Ok(response)
}

/// "Clear database": deletes every live pair, batch by batch, each an ordinary
/// replicated delete. The answer is one JSON document, streamed as the clear goes:
/// `{"progress":[500,1000,...],"deleted":n}`, a running total after each batch. A failure
/// part-way ends it with `"error"` and `"detail"` (the status, sent first, is 200 by
/// then). The first batch is read before answering, so a database that cannot be used
/// gets the usual 503 (or 504).
#[utoipa::path(
    delete,
    path = "/api/pairs",
    tag = "pairs",
    responses(
        (status = 200, description = "The clear's progress, streamed as one JSON document", body = ClearBody),
        (status = 503, description = "`database_unavailable`", body = ErrorBody),
    )
)]
pub async fn clear(State(ctx): State<Ctx>) -> Result<Response, ApiError> {
    let first = ctx.app.clear_batch(None).await?;
    // The clear runs in its own task, so a client that goes away stops it between
    // batches, never in the middle of a delete.
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(run_clear(ctx, first, tx));
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The answer of a clear, as [`run_clear`] streams it (written by hand, piece by piece).
#[derive(ToSchema)]
#[schema(as = ClearProgress)]
#[allow(dead_code)] // Only its schema is used.
pub struct ClearBody {
    /// The running total of deleted pairs after each batch.
    progress: Vec<u64>,
    /// Pairs deleted in all.
    deleted: u64,
    /// Only when the clear failed part-way: the error's code (`database_unavailable`,
    /// `internal`, `shutting_down`, ...) and what went wrong.
    error: Option<String>,
    detail: Option<String>,
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
            let tail =
                serde_json::json!({ "deleted": deleted, "error": e.error, "detail": e.detail });
            // The object without its opening brace continues the one already begun.
            format!("],{}", &tail.to_string()[1..])
        }
    };
    let _ = tx.send(end).await;
}
