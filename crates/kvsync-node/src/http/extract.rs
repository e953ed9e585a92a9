//! Extractors whose rejections are our JSON errors rather than axum's plain text.

use axum::{
    extract::{FromRequest, FromRequestParts, Path, Query},
    http::{header, request::Parts, HeaderMap},
};
use kvsync_core::{state::ElemIdError, ElemId, EntityTag, Key};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::app::Precondition;

/// The `{key}` path segment, percent-decoded and validated.
pub struct KeyPath(pub Key);

impl<S: Send + Sync> FromRequestParts<S> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        Ok(Self(Key::parse(raw)?))
    }
}

/// `/api/pairs/{key}/values/{id}`: a key and the id of one of its values.
pub struct ValuePath(pub Key, pub ElemId);

impl<S: Send + Sync> FromRequestParts<S> for ValuePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((key, id)) = Path::<(String, String)>::from_request_parts(parts, state).await?;
        let key = Key::parse(key)?;
        let id = id
            .parse()
            .map_err(|e: ElemIdError| ApiError::bad_request("invalid_value_id", e.to_string()))?;
        Ok(Self(key, id))
    }
}

/// A JSON body whose rejections (malformed, wrong type, no JSON content type, too large)
/// are our JSON errors (see `From<JsonRejection> for ApiError`).
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);

pub struct Q<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // The query decoder replaces invalid UTF-8 with U+FFFD, which would silently
        // answer a different question than the one asked.
        if !percent_decodes_to_utf8(parts.uri.query().unwrap_or_default()) {
            return Err(ApiError::bad_request(
                "invalid_query",
                "the query string is not valid UTF-8 once percent-decoded",
            ));
        }
        let Query(v) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(v))
    }
}

fn percent_decodes_to_utf8(query: &str) -> bool {
    percent_encoding::percent_decode_str(query)
        .decode_utf8()
        .is_ok()
}

/// `If-Match` / `If-None-Match` as a [`Precondition`]. Entity tags are those this
/// service issues (version and state digest, see `kvsync_core::etag`); any other tag,
/// weak ones included (If-Match compares strongly), matches nothing.
pub fn precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    let text = |name: header::HeaderName| -> Result<Option<String>, ApiError> {
        let values: Vec<_> = headers.get_all(&name).iter().collect();
        if values.is_empty() {
            return Ok(None);
        }
        let joined = values
            .iter()
            .map(|v| v.to_str())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                ApiError::bad_request("invalid_precondition", format!("{name} is not ASCII"))
            })?
            .join(",");
        Ok(Some(joined))
    };
    let if_none_match = match text(header::IF_NONE_MATCH)? {
        None => None,
        Some(v) if v.trim() == "*" => Some(Precondition::Absent),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_precondition",
                "only `If-None-Match: *` is supported on writes",
            ))
        }
    };
    let if_match = text(header::IF_MATCH)?.map(|v| {
        if v.trim() == "*" {
            return Precondition::Exists;
        }
        // A tag this service never issued (malformed, weak, or of another format)
        // matches no state: the precondition fails with 412, as RFC 9110 has it.
        Precondition::IfMatch(
            v.split(',')
                .filter_map(|tag| {
                    let tag = tag.trim();
                    let inner = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"'));
                    inner.unwrap_or(tag).parse::<EntityTag>().ok()
                })
                .collect(),
        )
    });
    // Both: each must hold (RFC 9110 evaluates If-Match, then If-None-Match).
    Ok(match (if_match, if_none_match) {
        (None, None) => Precondition::None,
        (Some(p), None) | (None, Some(p)) => p,
        (Some(a), Some(b)) => Precondition::All(vec![a, b]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(name: header::HeaderName, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn query_must_decode_to_utf8() {
        // A stray '%' is kept literally, as the query decoder does.
        for ok in [
            "",
            "prefix=a%2Fb",
            "prefix=%D0%BA%F0%9F%98%80",
            "a=%",
            "a=%zz",
        ] {
            assert!(percent_decodes_to_utf8(ok), "{ok}");
        }
        for bad in ["after=%FF", "a=%C3", "prefix=%ed%a0%80"] {
            assert!(!percent_decodes_to_utf8(bad), "{bad}");
        }
    }

    #[test]
    fn parses_preconditions() {
        let v = "0000019361a2b3c4-00000003-node1~0123456789abcdef";
        assert_eq!(precondition(&HeaderMap::new()).unwrap(), Precondition::None);
        assert_eq!(
            precondition(&with(header::IF_MATCH, &format!("\"{v}\""))).unwrap(),
            Precondition::IfMatch(vec![v.parse().unwrap()])
        );
        assert_eq!(
            precondition(&with(header::IF_MATCH, v)).unwrap(),
            Precondition::IfMatch(vec![v.parse().unwrap()])
        );
        assert_eq!(
            precondition(&with(header::IF_MATCH, "*")).unwrap(),
            Precondition::Exists
        );
        assert_eq!(
            precondition(&with(header::IF_NONE_MATCH, "*")).unwrap(),
            Precondition::Absent
        );
        // A bare version is no longer a tag: it cannot tell a merged-in value apart.
        for never in [
            "\"nope\"",
            "W/\"0000019361a2b3c4-00000003-node1~0123456789abcdef\"",
            "\"0000019361a2b3c4-00000003-node1\"",
            "",
        ] {
            let p = precondition(&with(header::IF_MATCH, never)).unwrap();
            assert_eq!(p, Precondition::IfMatch(vec![]), "{never}");
        }
        assert!(precondition(&with(header::IF_NONE_MATCH, "\"x\"")).is_err());
        let mut both = with(header::IF_MATCH, "*");
        both.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert_eq!(
            precondition(&both).unwrap(),
            Precondition::All(vec![Precondition::Exists, Precondition::Absent])
        );
    }
}
