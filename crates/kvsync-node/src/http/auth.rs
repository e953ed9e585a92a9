//! Optional bearer-token authentication for the API.

use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{error::ApiError, Ctx};

/// The configured token, kept only as its hash: comparing fixed-size hashes in
/// constant time leaks neither the token nor its length through timing.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl Token {
    pub fn new(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    fn matches(&self, candidate: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        self.0.ct_eq(&h).into()
    }
}

/// Routes that stay open: probes and the static UI (which then asks for the token).
pub(super) fn is_protected(path: &str) -> bool {
    path.starts_with("/api/") || path == "/api" || path == "/metrics"
}

pub async fn require_token(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let Some(token) = &ctx.token else {
        return next.run(req).await;
    };
    if !is_protected(req.uri().path()) {
        return next.run(req).await;
    }
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme name is case-insensitive (RFC 9110 section 11.1).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    // EventSource cannot set headers, so the event stream also takes a query parameter.
    let from_query = (req.uri().path() == "/api/events")
        .then(|| req.uri().query())
        .flatten()
        .and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "access_token")
                .map(|(_, v)| v.into_owned())
        });
    let ok = from_header.is_some_and(|t| token.matches(t))
        || from_query.is_some_and(|t| token.matches(&t));
    if ok {
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response()
    }
}
