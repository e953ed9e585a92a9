//! The one place where errors become HTTP responses: `{"error": code, "detail": text}`.

use axum::{
    extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use kvsync_core::{KeyError, ValuesError};
use kvsync_store::StoreError;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::pairs::PairBody;
use crate::app::AppError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub detail: String,
    /// For 412: the pair as it is now (null if absent), so a client can offer it.
    pub current: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            error,
            detail: detail.into(),
            current: None,
        }
    }

    pub fn bad_request(error: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this node requires a bearer token (Authorization: Bearer <token>)",
        )
    }
}

/// The body of every error answer (the OpenAPI document's `Error`).
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// A stable code for programs, such as `invalid_key`, `precondition_failed` or
    /// `database_unavailable` (each answer's description lists its codes).
    #[schema(example = "invalid_key")]
    pub error: &'static str,
    /// What went wrong, for people.
    pub detail: String,
    /// Only on 412: the pair as it is now, or null if it does not exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<PairBody>, required = false)]
    pub current: Option<Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.error,
            detail: self.detail,
            current: self.current,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        Self::bad_request("invalid_key", e.to_string())
    }
}

impl From<ValuesError> for ApiError {
    fn from(e: ValuesError) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "database unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "MongoDB is not reachable; retry later",
                )
            }
            e => {
                tracing::error!(error = %e, "database error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "database error",
                )
            }
        }
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::NotFound => Self::not_found("no pair with this key"),
            AppError::NoSuchValue(id) => Self::new(
                StatusCode::NOT_FOUND,
                "no_such_value",
                format!("the pair has no value with id {id} (removed or replaced meanwhile?)"),
            ),
            AppError::PreconditionFailed { current } => Self {
                current: Some(
                    current
                        .map(|p| json!(PairBody::from(&*p)))
                        .unwrap_or(Value::Null),
                ),
                ..Self::new(
                    StatusCode::PRECONDITION_FAILED,
                    "precondition_failed",
                    "the pair does not match the request's precondition (changed elsewhere?)",
                )
            },
            AppError::Values(e) => e.into(),
            e @ AppError::TooLarge { .. } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            AppError::Contended => Self::new(
                StatusCode::CONFLICT,
                "contended",
                AppError::Contended.to_string(),
            ),
            e @ AppError::ClockSkew(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "clock_skew", e.to_string())
            }
            AppError::Store(e) => e.into(),
        }
    }
}

impl ApiError {
    /// A body that did not arrive in time (see `conn`), if `e` is one.
    fn body_timeout(e: &(dyn std::error::Error + 'static)) -> Option<Self> {
        super::conn::is_body_timeout(e)
            .map(|t| Self::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", t.to_string()))
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if let Some(e) = Self::body_timeout(&r) {
            return e;
        }
        let error = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "invalid_body"
        };
        Self::new(r.status(), error, r.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if let Some(e) = Self::body_timeout(&r) {
            return e;
        }
        let error = match &r {
            JsonRejection::JsonSyntaxError(_) => "malformed_json",
            JsonRejection::JsonDataError(_) => "invalid_body",
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            _ if r.status() == StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            _ => "invalid_body",
        };
        Self::new(r.status(), error, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request("invalid_key", r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request("invalid_query", r.body_text())
    }
}
