//! Tasker's REST API: versioned JSON routes under `/v1` over an embedded [`Engine`], plus
//! `/health`, `/health/ready` and `/metrics`.
//!
//! The web dashboard ([`dashboard`]) is served from the same router, at `/`.
//!
//! Every error is `{"error": {"code", "message"}}` with its status chosen in one place
//! ([`error::ApiError`]). With a bearer token configured, every route but `/health` requires
//! `Authorization: Bearer <token>`, or the dashboard's cookie holding the same token.

pub mod dashboard;
mod dead_letters;
pub mod error;
mod events;
pub mod extract;
mod health;
mod tasks;
mod templates;
pub mod views;
mod workers;

use std::sync::Arc;

use axum::{
    extract::{DefaultBodyLimit, Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use tasker_orchestrator::Engine;

use crate::error::ApiError;

/// API settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Required bearer token; `None` leaves the API open.
    pub auth_token: Option<String>,
    /// Largest request body in bytes (larger ones get 413).
    pub body_limit: usize,
    /// How long the answer to a committed write waits out a storage outage before it is built
    /// from what the write returned (default [`tasker_store::FOLLOW_UP_PATIENCE`]).
    pub follow_up_patience: std::time::Duration,
    /// Turns `true` when the server starts to stop: long-lived event streams end then, so
    /// they do not hold a graceful shutdown open. `None`: they end only on their own.
    pub stopping: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            auth_token: None,
            body_limit: 1024 * 1024,
            follow_up_patience: tasker_store::FOLLOW_UP_PATIENCE,
            stopping: None,
        }
    }
}

/// What every handler gets.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// API settings.
    pub config: Arc<ApiConfig>,
}

/// The whole API.
pub fn router(engine: Arc<Engine>, config: ApiConfig) -> Router {
    let limit = config.body_limit;
    let state = AppState {
        engine,
        config: Arc::new(config),
    };
    let protected = Router::new()
        .route(
            "/v1/templates",
            post(templates::register).get(templates::list),
        )
        .route("/v1/templates/{namespace}/{name}", get(templates::latest))
        .route(
            "/v1/templates/{namespace}/{name}/{version}",
            get(templates::version),
        )
        .route("/v1/tasks", post(tasks::create).get(tasks::list))
        .route("/v1/tasks/batch", post(tasks::create_batch))
        .route("/v1/tasks/{id}", get(tasks::show))
        .route("/v1/tasks/counts", get(tasks::counts))
        .route("/v1/tasks/{id}/events", get(events::task_events))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/tasks/{id}/steps/{step}/retry", post(tasks::retry_step))
        .route(
            "/v1/tasks/{id}/steps/{step}/resolve",
            post(tasks::resolve_step),
        )
        .route("/v1/workers/claim", post(workers::claim))
        .route("/v1/steps/{id}/heartbeat", post(workers::heartbeat))
        .route("/v1/steps/{id}/complete", post(workers::complete))
        .route("/v1/steps/{id}/fail", post(workers::fail))
        .route("/v1/dead_letters", get(dead_letters::list))
        .route(
            "/v1/dead_letters/{id}",
            get(dead_letters::show).delete(dead_letters::discard),
        )
        .route("/v1/dead_letters/{id}/requeue", post(dead_letters::requeue))
        .route("/v1/health/pools", get(health::pools))
        .route("/v1/cluster", get(health::cluster))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/health", get(health::live))
        .merge(protected)
        .merge(dashboard::router(state.clone()))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(refuse_cross_site_writes))
        .layer(middleware::from_fn(reject_nul_in_uri))
        .layer(middleware::map_response(error_shape))
        .with_state(state)
}

/// How a request proved it holds the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Credential {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// The dashboard's cookie.
    Cookie,
}

/// Whether the request carries `expected`, and how. A bearer header, when present, decides
/// alone. The scheme is matched case-insensitively (RFC 7235) and the token compared in
/// constant time, so the answer's timing says nothing about how much of a guess was right.
pub(crate) fn credentials_match(
    headers: &axum::http::HeaderMap,
    expected: &str,
) -> Option<Credential> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    if let Some(given) = bearer {
        return token_matches(given, expected).then_some(Credential::Bearer);
    }
    dashboard::cookie_token(headers)
        .filter(|given| token_matches(given, expected))
        .map(|_| Credential::Cookie)
}

/// Requires the token when one is configured: as a bearer header, or as the dashboard's
/// cookie. A write on the cookie's authority must also carry the dashboard's own header, which
/// a page of another site cannot send, so the cookie never lends itself to a forged request.
async fn authenticate(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(expected) = &state.config.auth_token {
        match credentials_match(request.headers(), expected) {
            Some(Credential::Bearer) => {}
            Some(Credential::Cookie)
                if request.method().is_safe()
                    || request.headers().contains_key(dashboard::DASHBOARD_HEADER) => {}
            Some(Credential::Cookie) => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "a write authorized by the dashboard's cookie must carry the {} header",
                        dashboard::DASHBOARD_HEADER
                    ),
                ))
            }
            None => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing or wrong bearer token",
                ))
            }
        }
    }
    Ok(next.run(request).await)
}

/// The token of an `Authorization: Bearer <token>` value, whatever the scheme's case.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(char::is_whitespace)?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// Constant-time equality (only the length of `expected` can leak).
fn token_matches(given: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// 403 for a write a browser sent from another page than this server's own (its
/// `Sec-Fetch-Site` is `cross-site` or `same-site`; ports do not make sites differ, so a page
/// on another port of the same host is `same-site`). Without a token nothing else would stop
/// a page elsewhere from posting to a server on localhost. Clients that are not browsers send
/// no such header and are not affected.
async fn refuse_cross_site_writes(request: Request, next: Next) -> Result<Response, ApiError> {
    let from_elsewhere = request
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|v| v == "cross-site" || v == "same-site");
    if from_elsewhere && !request.method().is_safe() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a page of another site may not write to this server",
        ));
    }
    Ok(next.run(request).await)
}

/// 400 for a path or query that percent-decodes to a NUL character: no id, name or filter
/// holds one, and no backend could store it.
async fn reject_nul_in_uri(request: Request, next: Next) -> Result<Response, ApiError> {
    let uri = request.uri();
    for (part, text) in [("path", Some(uri.path())), ("query", uri.query())] {
        if text.is_some_and(|t| t.to_ascii_lowercase().contains("%00")) {
            return Err(ApiError::bad_request(format!(
                "{part}: NUL characters (%00) are not allowed"
            )));
        }
    }
    Ok(next.run(request).await)
}

/// Gives every error answer the API's shape, `{"error": {"code", "message"}}`: those of our
/// handlers already have it; this catches the ones axum makes itself (a rejected path or
/// query, 405, 413 from the body limit on any route, 415) and rewrites their plain text.
async fn error_shape(response: Response) -> Response {
    let status = response.status();
    // JSON is ours already; HTML is a dashboard page (its error page or the login form).
    let is_ours = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_ours {
        return response;
    }
    let headers = response.headers().clone();
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        s if s.is_server_error() => "internal",
        _ => "error",
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut shaped = ApiError::new(status, code, message).into_response();
    // Keep what the original said beyond its body (`Allow` on a 405, say).
    for (name, value) in &headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            shaped.headers_mut().insert(name, value.clone());
        }
    }
    shaped
}

/// Parses an id from the path: decimal digits only (`+1`, `01x` or `-1` name no resource).
pub(crate) fn parse_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    let not_found = || ApiError::not_found(format!("{what} {raw:?} not found"));
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_found());
    }
    raw.parse().map_err(|_| not_found())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_strict_decimals() {
        assert_eq!(parse_id("42", "task").unwrap(), 42);
        assert_eq!(parse_id("007", "task").unwrap(), 7);
        for bad in [
            "+1",
            "-1",
            " 1",
            "1 ",
            "",
            "1e3",
            "0x1",
            "99999999999999999999",
        ] {
            let e = parse_id(bad, "task").unwrap_err();
            assert_eq!(e.status, StatusCode::NOT_FOUND, "{bad:?}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_tokens_compare_exactly() {
        for header in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER  s3cret",
            " Bearer s3cret ",
        ] {
            assert_eq!(bearer_token(header), Some("s3cret"), "{header:?}");
        }
        for header in ["Basic s3cret", "Bearers3cret", "s3cret", ""] {
            assert_eq!(bearer_token(header), None, "{header:?}");
        }
        assert!(token_matches("s3cret", "s3cret"));
        for wrong in ["s3cre", "s3crett", "S3cret", ""] {
            assert!(!token_matches(wrong, "s3cret"), "{wrong:?}");
        }
    }
}
