//! A JSON body extractor whose rejections are [`ApiError`]s: malformed JSON is 400, a body of
//! the wrong shape is 422 naming the field, a NUL character anywhere in it is 422 naming where,
//! an oversized body is 413, a body that is not JSON is 415.

use axum::{
    extract::{rejection::JsonRejection, FromRequest, Request},
    http::StatusCode,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// `Json<T>` with API errors.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let value = match axum::Json::<Value>::from_request(req, state).await {
            Ok(axum::Json(value)) => value,
            Err(rejection) => return Err(json_rejection(rejection)),
        };
        from_value(value).map(ApiJson)
    }
}

/// Reads a request's JSON `value` as a `T`: 422 naming where a NUL character is, or the field
/// that does not fit.
///
/// # Errors
///
/// [`ApiError`] 422 as above.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    reject_nul(&value)?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::invalid(inner.to_string())
        } else {
            ApiError::invalid(format!("{path}: {inner}"))
        }
    })
}

/// An optional JSON body: `None` when the request has none, else as [`ApiJson`] reads it.
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        // `Bytes` keeps to the body limit; its rejections are shaped by the router.
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    "payload_too_large"
                } else {
                    "bad_request"
                };
                ApiError::new(e.status(), code, e.body_text())
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a request with `Content-Type: application/json`",
            ));
        }
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
        from_value(value).map(|v| OptionalJson(Some(v)))
    }
}

/// 422 naming the first place in `value` (a JSON pointer) whose key or string holds a NUL
/// character: no backend stores one in text (PostgreSQL refuses it), so none is accepted.
///
/// # Errors
///
/// [`ApiError`] 422 as above.
pub fn reject_nul(value: &Value) -> Result<(), ApiError> {
    match nul_at(value, String::new()) {
        None => Ok(()),
        Some(pointer) => {
            let at = if pointer.is_empty() { "/" } else { &pointer };
            Err(ApiError::invalid(format!(
                "{at}: NUL characters (\\u0000) are not allowed"
            )))
        }
    }
}

/// Where the first NUL is, as a JSON pointer below `at`.
fn nul_at(value: &Value, at: String) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => Some(at),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_at(v, format!("{at}/{i}"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let key = k
                .replace('~', "~0")
                .replace('/', "~1")
                .replace('\0', "\\u0000");
            let here = format!("{at}/{key}");
            if k.contains('\0') {
                Some(here)
            } else {
                nul_at(v, here)
            }
        }),
        _ => None,
    }
}

/// Maps axum's JSON rejections onto our statuses.
pub fn json_rejection(rejection: JsonRejection) -> ApiError {
    let message = rejection.body_text();
    match rejection {
        JsonRejection::JsonDataError(_) => ApiError::invalid(message),
        JsonRejection::JsonSyntaxError(_) => ApiError::bad_request(message),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
        }
        other => ApiError::new(other.status(), "bad_request", message),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nul_is_found_in_strings_and_keys_at_any_depth() {
        assert!(reject_nul(&json!({"a": [1, "x", {"b": null}]})).is_ok());
        for (value, at) in [
            (json!("a\u{0}b"), "/"),
            (
                json!({"context": {"items": ["ok", "no\u{0}"]}}),
                "/context/items/1",
            ),
            (json!({"context": {"k\u{0}": 1}}), "/context/k\\u0000"),
            (json!({"a/b": {"c~": "\u{0}"}}), "/a~1b/c~0"),
        ] {
            let e = reject_nul(&value).unwrap_err();
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(
                e.message.starts_with(&format!("{at}: NUL")),
                "{}",
                e.message
            );
        }
    }
}
