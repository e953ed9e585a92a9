//! A small client for one node's HTTP API, with errors typed by what a script needs to
//! tell apart (see [`Error::exit_code`]).

use std::{fmt, time::Duration};

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use reqwest::{header, Method, RequestBuilder, Response, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::WaitArgs;

/// Exit codes scripts can rely on (documented in `--help` and the README).
pub mod exit {
    pub const OK: u8 = 0;
    pub const NOT_FOUND: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const PRECONDITION_FAILED: u8 = 3;
    pub const API: u8 = 4;
    pub const UNREACHABLE: u8 = 5;
    pub const NOT_REPLICATED: u8 = 6;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the node at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// Boxed: the node's answer is large next to the other variants.
    #[error(transparent)]
    Api(Box<ApiError>),
    #[error("unexpected answer from the node: {0}")]
    BadAnswer(String),
    #[error(
        "clear failed after deleting {deleted} pairs: {detail} ({code}); clear again to finish"
    )]
    ClearFailed {
        deleted: u64,
        code: String,
        detail: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Input {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Error::Api(Box::new(e))
    }
}

impl Error {
    /// Names `key` in an error the node answered about it.
    fn about(mut self, key: &str) -> Self {
        if let Error::Api(e) = &mut self {
            e.key = Some(key.to_owned());
        }
        self
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Api(e) if e.status == StatusCode::NOT_FOUND => exit::NOT_FOUND,
            Error::Api(e) if e.status == StatusCode::PRECONDITION_FAILED => {
                exit::PRECONDITION_FAILED
            }
            Error::Unreachable { .. } => exit::UNREACHABLE,
            Error::Usage(_) | Error::Input { .. } => exit::USAGE,
            Error::Api(_) | Error::BadAnswer(_) | Error::ClearFailed { .. } | Error::Output(_) => {
                exit::API
            }
        }
    }

    fn from_reqwest(url: &str, e: reqwest::Error) -> Self {
        // reqwest's own message is only "error sending request for url (...)"; the
        // innermost cause says what went wrong ("Connection refused", "operation timed out").
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            reason = s.to_string();
            source = s.source();
        }
        if e.is_connect() || e.is_timeout() {
            Error::Unreachable {
                url: url.to_owned(),
                reason,
            }
        } else {
            Error::BadAnswer(reason)
        }
    }
}

/// The API's `{"error","detail"}` answer (and `current` with a 412).
#[derive(Debug, thiserror::Error)]
pub struct ApiError {
    /// The key the request was about, if any, to name it in the message.
    pub key: Option<String>,
    pub status: StatusCode,
    pub code: String,
    pub detail: String,
    pub current: Option<Value>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(
            f,
            "{} ({}, HTTP {})",
            self.detail,
            self.code,
            self.status.as_u16()
        )?;
        match &self.current {
            Some(Value::Null) => write!(f, "; the pair does not exist now"),
            // The tag to write over it with (`--if-match`); the version from an
            // older node that sends none.
            Some(p) => match (p.get("etag"), p.get("version")) {
                (Some(Value::String(t)), _) => write!(f, "; its ETag now is {t}"),
                (_, Some(Value::String(v))) => write!(f, "; its version now is {v}"),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }
}

impl ApiError {
    async fn read(response: Response) -> Error {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or_default();
        let field = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_owned);
        let e = match field("error") {
            Some(code) => ApiError {
                key: None,
                status,
                code,
                detail: field("detail").unwrap_or_default(),
                // Present and null: the pair does not exist (an Option<Value> field
                // would read that as absent).
                current: body.get("current").cloned(),
            },
            // Not one of ours (a proxy in between, say): show what came, briefly.
            None => ApiError {
                key: None,
                status,
                code: "http_error".into(),
                detail: text.chars().take(200).collect::<String>().trim().to_owned(),
                current: None,
            },
        };
        e.into()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pair {
    pub key: String,
    pub values: Vec<String>,
    pub version: String,
    /// What `--if-match` takes: the version and a digest of the values.
    #[serde(default)]
    pub etag: String,
    pub updated_at: String,
    pub origin: String,
}

#[derive(Debug, Deserialize)]
pub struct Page {
    pub pairs: Vec<Pair>,
    pub next: Option<String>,
}

/// A pair after a write, and whether the write created it.
pub struct Written {
    pub pair: Pair,
    pub created: bool,
    /// What a write that waited for its replication found.
    pub replication: Option<Value>,
}

pub struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    timeout: Duration,
}

impl Api {
    /// `timeout` bounds connecting and each whole request; `idle` bounds the silence
    /// between two pieces of a streamed answer (the event stream, a clear).
    pub fn new(
        url: &str,
        token: Option<String>,
        timeout: Duration,
        idle: Duration,
    ) -> Result<Self, Error> {
        let parsed = Url::parse(url).map_err(|e| Error::Usage(format!("--url {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::Usage(format!("--url {url:?}: not an http(s) URL")));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(idle)
            .user_agent(concat!("kvsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Usage(format!("HTTP client: {e}")))?;
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
            http,
            token: token.filter(|t| !t.is_empty()),
            timeout,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends `r`; any answer, whatever its status.
    async fn answer(&self, r: RequestBuilder) -> Result<Response, Error> {
        r.send()
            .await
            .map_err(|e| Error::from_reqwest(&self.base, e))
    }

    /// Sends `r` with the whole-request timeout; a non-2xx answer is an [`ApiError`].
    async fn send(&self, r: RequestBuilder) -> Result<Response, Error> {
        self.send_streamed(r.timeout(self.timeout)).await
    }

    /// Like [`Api::send`] but without a bound on the whole request, for answers that
    /// stream for as long as they take.
    async fn send_streamed(&self, r: RequestBuilder) -> Result<Response, Error> {
        let response = self.answer(r).await?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(ApiError::read(response).await)
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, response: Response) -> Result<T, Error> {
        response
            .json()
            .await
            .map_err(|e| Error::from_reqwest(&self.base, e))
    }

    async fn written(&self, response: Response) -> Result<Written, Error> {
        let created = response.status() == StatusCode::CREATED;
        let mut body: Value = self.json(response).await?;
        let replication = body.as_object_mut().and_then(|o| o.remove("replication"));
        Ok(Written {
            pair: serde_json::from_value(body)
                .map_err(|e| Error::BadAnswer(format!("not a pair: {e}")))?,
            created,
            replication,
        })
    }

    pub async fn get(&self, key: &str) -> Result<Pair, Error> {
        let r = self.request(Method::GET, &pair_path(key)?);
        let r = self.send(r).await.map_err(|e| e.about(key))?;
        self.json(r).await
    }

    pub async fn put(
        &self,
        key: &str,
        values: &[String],
        if_match: Option<&str>,
        wait: &WaitArgs,
    ) -> Result<Written, Error> {
        let r = self
            .request(Method::PUT, &pair_path(key)?)
            .json(&serde_json::json!({ "values": values }));
        let r = self.send(with_wait(with_if_match(r, if_match), wait)).await;
        self.written(r.map_err(|e| e.about(key))?).await
    }

    pub async fn append(
        &self,
        key: &str,
        value: &str,
        if_match: Option<&str>,
        wait: &WaitArgs,
    ) -> Result<Written, Error> {
        let r = self
            .request(Method::POST, &format!("{}/values", pair_path(key)?))
            .json(&serde_json::json!({ "value": value }));
        let r = self.send(with_wait(with_if_match(r, if_match), wait)).await;
        self.written(r.map_err(|e| e.about(key))?).await
    }

    /// Deletes a pair; with a wait, returns what it found of the replication.
    pub async fn delete(
        &self,
        key: &str,
        if_match: Option<&str>,
        wait: &WaitArgs,
    ) -> Result<Option<Value>, Error> {
        let r = self.request(Method::DELETE, &pair_path(key)?);
        let r = self
            .send(with_wait(with_if_match(r, if_match), wait))
            .await
            .map_err(|e| e.about(key))?;
        if wait.wait.is_none() {
            return Ok(None);
        }
        let mut body: Value = self.json(r).await?;
        Ok(body.as_object_mut().and_then(|o| o.remove("replication")))
    }

    /// `GET /api/export`: the answer, streaming.
    pub async fn export(&self, prefix: &str, tombstones: bool) -> Result<Response, Error> {
        let r = self.request(Method::GET, "/api/export").query(&[
            ("prefix", prefix.to_owned()),
            ("tombstones", tombstones.to_string()),
        ]);
        self.send_streamed(r).await
    }

    /// `POST /api/import` of up to 1,000 exported lines: `(changed, unchanged)`.
    pub async fn import(&self, lines: &str) -> Result<(u64, u64), Error> {
        let r = self
            .request(Method::POST, "/api/import")
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(lines.to_owned());
        let body: Value = self.json(self.send(r).await?).await?;
        Ok((
            body["changed"].as_u64().unwrap_or(0),
            body["unchanged"].as_u64().unwrap_or(0),
        ))
    }

    /// `GET /api/cluster`.
    pub async fn cluster(&self) -> Result<Value, Error> {
        let r = self.send(self.request(Method::GET, "/api/cluster")).await?;
        self.json(r).await
    }

    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, Error> {
        let mut query = vec![("prefix", prefix.to_owned()), ("limit", limit.to_string())];
        query.extend(after.map(|a| ("after", a.to_owned())));
        let r = self
            .send(self.request(Method::GET, "/api/pairs").query(&query))
            .await?;
        self.json(r).await
    }

    /// `DELETE /api/pairs`: the answer streams its progress while the clear runs.
    pub async fn clear(&self) -> Result<Response, Error> {
        self.send_streamed(self.request(Method::DELETE, "/api/pairs"))
            .await
    }

    /// `GET /api/events`: the Server-Sent Events stream, open.
    /// `last_event_id`: resume after that event (sent as `Last-Event-ID`).
    pub async fn events(
        &self,
        prefix: &str,
        last_event_id: Option<&str>,
    ) -> Result<Response, Error> {
        let mut r = self
            .request(Method::GET, "/api/events")
            .query(&[("prefix", prefix)])
            .header(header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            r = r.header("Last-Event-ID", id);
        }
        self.send_streamed(r).await
    }

    pub async fn node(&self) -> Result<Value, Error> {
        let r = self.send(self.request(Method::GET, "/api/node")).await?;
        self.json(r).await
    }

    /// `GET /readyz`: whether the node is ready, and its report. 503 is an answer here.
    pub async fn ready(&self) -> Result<(bool, Value), Error> {
        let r = self
            .answer(self.request(Method::GET, "/readyz").timeout(self.timeout))
            .await?;
        match r.status() {
            StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE => {
                let ready = r.status() == StatusCode::OK;
                Ok((ready, self.json(r).await?))
            }
            _ => Err(ApiError::read(r).await),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn stream_error(&self, e: reqwest::Error) -> Error {
        Error::from_reqwest(&self.base, e)
    }
}

/// `/api/pairs/{key}` with the key as one percent-encoded path segment.
fn pair_path(key: &str) -> Result<String, Error> {
    // URL parsers resolve "." and ".." segments even when percent-encoded, so such a
    // request would reach another route (`/api/pairs/` or `/api/`).
    if key == "." || key == ".." {
        return Err(Error::Usage(format!(
            "the key {key:?} cannot be addressed in a URL path"
        )));
    }
    Ok(format!(
        "/api/pairs/{}",
        utf8_percent_encode(key, NON_ALPHANUMERIC)
    ))
}

/// Asks the node to answer once the write has reached its peers, within the request's
/// own timeout.
fn with_wait(r: RequestBuilder, wait: &WaitArgs) -> RequestBuilder {
    match &wait.wait {
        None => r,
        Some(w) => r.query(&[
            ("wait", w.clone()),
            ("timeout_ms", wait.wait_timeout.as_millis().to_string()),
        ]),
    }
}

/// `If-Match` with the pair's entity tag (quoted), as the node's ETag gives it.
fn with_if_match(r: RequestBuilder, tag: Option<&str>) -> RequestBuilder {
    match tag {
        None => r,
        Some(v) if v == "*" || v.starts_with('"') => r.header(header::IF_MATCH, v),
        Some(v) => r.header(header::IF_MATCH, format!("\"{v}\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_encoded_segment() {
        assert_eq!(pair_path("a/b c").unwrap(), "/api/pairs/a%2Fb%20c");
        assert_eq!(pair_path("thé?#").unwrap(), "/api/pairs/th%C3%A9%3F%23");
        assert_eq!(pair_path("...").unwrap(), "/api/pairs/%2E%2E%2E");
        for dots in [".", ".."] {
            assert!(matches!(pair_path(dots), Err(Error::Usage(_))));
        }
    }

    #[test]
    fn precondition_failed_names_the_current_tag() {
        let e = ApiError {
            key: Some("k".into()),
            status: StatusCode::PRECONDITION_FAILED,
            code: "precondition_failed".into(),
            detail: "changed".into(),
            current: Some(serde_json::json!({ "version": "v2", "etag": "v2~ab" })),
        };
        assert_eq!(
            e.to_string(),
            "k: changed (precondition_failed, HTTP 412); its ETag now is v2~ab"
        );
        assert_eq!(Error::from(e).exit_code(), exit::PRECONDITION_FAILED);
    }
}
