//! The HTTP adapter: routes, middleware and the mapping of errors to JSON.

mod auth;
mod backup;
mod conn;
mod contract;
mod error;
mod events;
mod extract;
mod limits;
pub mod openapi;
mod ops;
pub mod pairs;
mod ui;

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{header, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::Response,
    Router,
};
use tokio_util::sync::CancellationToken;
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    trace::{DefaultOnFailure, TraceLayer},
};

pub use auth::Token;
pub use conn::{ConnMeta, Timeouts};
pub use error::ApiError;
pub use limits::{CappedListener, Limits};

use crate::{app::App, metrics::HttpLabels, replicator::ReplicationStatus};

/// Request bodies above this are refused with 413 before they are parsed. A maximal
/// pair (1 MiB of values) fits with room for JSON escaping.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

pub struct Shared {
    pub app: Arc<App>,
    pub replication: Arc<ReplicationStatus>,
    pub topic: String,
    pub group: String,
    pub token: Option<Token>,
    pub limits: Limits,
    pub shutdown: CancellationToken,
}

pub type Ctx = Arc<Shared>;

pub fn router(ctx: Ctx, cors_origins: &[String]) -> Router {
    // The routes come with their documentation (see `openapi`); add none here.
    let (routes, _) = openapi::routes().split_for_parts();
    let mut router = routes
        .fallback(ui::fallback)
        .method_not_allowed_fallback(ui::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            ctx.clone(),
            auth::require_token,
        ))
        .layer(middleware::from_fn_with_state(
            ctx.clone(),
            limits::time_limit,
        ))
        .layer(middleware::from_fn_with_state(ctx.clone(), count_requests))
        .layer(middleware::from_fn_with_state(ctx.clone(), conn::track))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // 5xx answers are logged once where they arise (see ApiError); readiness
        // probes answer 503 on purpose.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        );
    if let Some(cors) = cors_layer(cors_origins) {
        router = router.layer(cors);
    }
    router.with_state(ctx)
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<&String> = origins.iter().filter(|o| !o.trim().is_empty()).collect();
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o.trim() == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim()).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::PUT, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_MATCH,
                header::IF_NONE_MATCH,
            ])
            .expose_headers([header::ETAG])
            .max_age(Duration::from_secs(600)),
    )
}

/// The span every request's log lines carry. Never the whole URI: the event stream's
/// query may hold the access token.
fn request_span(req: &Request) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %method_label(req.method()),
        path = %req.uri().path(),
    )
}

/// Methods the API answers, by name; any other (clients may send any token) is `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Counts requests by labels drawn from fixed sets, so no request, authenticated or
/// not, can add a series: the method's label, the route template (never the path) or
/// `ui` / `unmatched` for requests no route took, and the status.
async fn count_requests(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str())
        // axum names its fallback with a private catch-all template.
        .filter(|p| !p.contains("__private__"))
        .map(str::to_owned);
    let response = next.run(req).await;
    let status = response.status();
    let route = route.unwrap_or_else(|| {
        let served = status.is_success() || status == StatusCode::NOT_MODIFIED;
        if served { "ui" } else { "unmatched" }.to_owned()
    });
    ctx.app
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method: method.to_owned(),
            route,
            status: status.as_u16(),
        })
        .inc();
    response
}
