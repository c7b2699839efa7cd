//! Health, the pools view and Prometheus metrics.

use std::time::Duration;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    Json,
};
use serde_json::{json, Value};
use tasker_orchestrator::{
    runtime::circuit_breaker::CircuitState, runtime::health::ExecutorHealth,
};

use crate::{error::ApiError, AppState};

/// `GET /health`: the process is up (never requires auth).
pub(crate) async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// How long `/health/ready` waits for its answer: a probe must hear "not ready" promptly when
/// the database hangs, not time out itself.
const READY_WITHIN: Duration = Duration::from_millis(900);

/// `GET /health/ready`: storage answers and no pool is broken; 503 otherwise, within a second.
pub(crate) async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let not_ready =
        |message: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message);
    tokio::time::timeout(READY_WITHIN, check_ready(&state))
        .await
        .map_err(|_| {
            not_ready(format!(
                "storage did not answer within {} ms",
                READY_WITHIN.as_millis()
            ))
        })?
        .map_err(not_ready)
}

async fn check_ready(state: &AppState) -> Result<Json<Value>, String> {
    state
        .engine
        .store()
        .queue_depth(tasker_orchestrator::pipeline::messages::TASK_REQUESTS)
        .await
        .map_err(|e| format!("storage: {e}"))?;
    let snapshot = state.engine.snapshot();
    let broken: Vec<String> = snapshot
        .pools
        .iter()
        .filter(|(_, p)| {
            p.circuit_breaker == CircuitState::Open
                || (!p.executors.is_empty()
                    && p.executors
                        .iter()
                        .all(|e| e.health == ExecutorHealth::Unhealthy))
        })
        .map(|(t, _)| t.to_string())
        .collect();
    if !broken.is_empty() {
        return Err(format!("pools not healthy: {}", broken.join(", ")));
    }
    Ok(Json(
        json!({"status": "ready", "backend": state.engine.store().backend_name()}),
    ))
}

/// `GET /v1/health/pools`: this instance's id and every pool with executors, health,
/// utilization, breakers and backpressure.
pub(crate) async fn pools(State(state): State<AppState>) -> Json<Value> {
    let snapshot = state.engine.snapshot();
    Json(json!({
        "instance": state.engine.instance_id(),
        "pools": snapshot.pools,
        "series": snapshot.series,
        "backpressure": {"factor": snapshot.backpressure, "history": snapshot.pressure_history},
        "scaling": snapshot.scaling,
        "resources": state.engine.resources(),
    }))
}

/// `GET /v1/cluster`: the instances sharing the database, their heartbeats and the leases
/// each holds, as this instance sees them.
pub(crate) async fn cluster(
    State(state): State<AppState>,
) -> Result<Json<tasker_orchestrator::runtime::membership::ClusterView>, ApiError> {
    Ok(Json(state.engine.cluster().await?))
}

/// `GET /metrics`: the engine's own recorder in the Prometheus text format (the catalogue is in
/// `tasker_orchestrator::runtime::metrics`). Its gauges were set when the monitor last
/// published its snapshot, so it agrees with `/v1/health/pools`; rendering never waits on the
/// coordinator.
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.engine.metrics().render(),
    )
}
