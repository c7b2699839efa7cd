//! Tasker's REST API: versioned JSON routes under `/v1` over an embedded [`Engine`], plus
//! `/health`, `/health/ready` and `/metrics`.
//!
//! Every error is `{"error": {"code", "message"}}` with its status chosen in one place
//! ([`error::ApiError`]). With a bearer token configured, every route but `/health` requires
//! `Authorization: Bearer <token>`.

pub mod error;
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
    response::Response,
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
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            auth_token: None,
            body_limit: 1024 * 1024,
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
        .route("/v1/tasks/{id}", get(tasks::show))
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
        .route("/v1/health/pools", get(health::pools))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/health", get(health::live))
        .merge(protected)
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Requires the bearer token when one is configured.
async fn authenticate(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(expected) = &state.config.auth_token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(expected.as_str()) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token",
            ));
        }
    }
    Ok(next.run(request).await)
}

/// Parses a numeric id from the path; anything else names no resource.
pub(crate) fn parse_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("{what} {raw:?} not found")))
}
