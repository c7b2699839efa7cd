//! Remote worker routes.

use std::time::Duration;

use axum::{
    extract::{Path, State},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tasker_orchestrator::{pipeline::messages::StepOutcome, pipeline::remote};
use tasker_types::StepId;

use crate::{error::ApiError, extract::ApiJson, parse_id, AppState};

/// `POST /v1/workers/claim`: `{"steps": [...]}`, empty when nothing is ready.
pub(crate) async fn claim(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<remote::ClaimRequest>,
) -> Result<Json<Value>, ApiError> {
    let steps = state.engine.claim_steps(&request).await?;
    Ok(Json(json!({"steps": steps})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Heartbeat {
    lease_token: String,
    /// New lease from now (default 30 s).
    lease_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Complete {
    lease_token: String,
    #[serde(default)]
    output: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Fail {
    lease_token: String,
    error: String,
    #[serde(default = "yes")]
    retryable: bool,
}

fn yes() -> bool {
    true
}

fn step_id(raw: &str) -> Result<StepId, ApiError> {
    parse_id(raw, "step").map(StepId)
}

/// `POST /v1/steps/{id}/heartbeat`: 409 when the lease is no longer held.
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Heartbeat>,
) -> Result<Json<Value>, ApiError> {
    let lease = Duration::from_millis(body.lease_ms.unwrap_or(30_000).max(1));
    state
        .engine
        .heartbeat_step(step_id(&id)?, &body.lease_token, lease)
        .await?;
    Ok(Json(json!({"ok": true})))
}

/// `POST /v1/steps/{id}/complete`: 409 when the lease is no longer held (nothing changes).
pub(crate) async fn complete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Complete>,
) -> Result<Json<Value>, ApiError> {
    state
        .engine
        .finish_step(
            step_id(&id)?,
            &body.lease_token,
            StepOutcome::Success {
                output: body.output,
            },
        )
        .await?;
    Ok(Json(json!({"ok": true})))
}

/// `POST /v1/steps/{id}/fail`: 409 when the lease is no longer held (nothing changes).
pub(crate) async fn fail(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Fail>,
) -> Result<Json<Value>, ApiError> {
    let outcome = StepOutcome::Failure {
        error: body.error,
        retryable: body.retryable,
    };
    state
        .engine
        .finish_step(step_id(&id)?, &body.lease_token, outcome)
        .await?;
    Ok(Json(json!({"ok": true})))
}
