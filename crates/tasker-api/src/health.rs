//! Health, the pools view and Prometheus metrics.

use std::{fmt::Write as _, time::Duration};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    Json,
};
use serde_json::{json, Value};
use tasker_orchestrator::{
    runtime::circuit_breaker::CircuitState, runtime::health::ExecutorHealth, runtime::metrics,
    ExecutorType,
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

/// `GET /v1/health/pools`: every pool with executors, health, utilization, breakers and
/// backpressure.
pub(crate) async fn pools(State(state): State<AppState>) -> Json<Value> {
    let snapshot = state.engine.snapshot();
    Json(json!({
        "pools": snapshot.pools,
        "series": snapshot.series,
        "backpressure": {"factor": snapshot.backpressure, "history": snapshot.pressure_history},
        "scaling": snapshot.scaling,
        "resources": state.engine.resources(),
    }))
}

/// Writes one metric family: its HELP and TYPE lines, then one sample per `(labels, value)`.
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, f64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// `GET /metrics`: Prometheus text format (the catalogue is in `tasker_orchestrator::runtime::metrics`).
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let snapshot = state.engine.snapshot();
    let pools = &snapshot.pools;
    let label = |t: &ExecutorType| format!("executor_type=\"{t}\"");
    let per_pool = |f: &dyn Fn(&tasker_orchestrator::runtime::pool::PoolSnapshot) -> f64| {
        pools
            .iter()
            .map(|(n, p)| (label(n), f(p)))
            .collect::<Vec<_>>()
    };
    let mut out = String::new();
    family(
        &mut out,
        "tasker_executor_batches_total",
        "counter",
        "Batches run.",
        per_pool(&|p| p.batches as f64),
    );
    family(
        &mut out,
        "tasker_executor_items_total",
        "counter",
        "Items processed.",
        per_pool(&|p| p.items as f64),
    );
    family(
        &mut out,
        "tasker_executor_errors_total",
        "counter",
        "Failed batches.",
        per_pool(&|p| p.errors as f64),
    );
    family(
        &mut out,
        "tasker_executor_busy_seconds_total",
        "counter",
        "Seconds inside process_batch.",
        per_pool(&|p| p.busy.as_secs_f64()),
    );
    let mut latency = Vec::new();
    for (n, p) in pools {
        for (q, v) in [
            ("0.5", p.latency.p50_ms),
            ("0.95", p.latency.p95_ms),
            ("0.99", p.latency.p99_ms),
        ] {
            latency.push((format!("{},quantile=\"{q}\"", label(n)), v / 1000.0));
        }
    }
    family(
        &mut out,
        "tasker_executor_batch_duration_seconds",
        "summary",
        "Batch latency.",
        latency,
    );
    // The summary's sample count belongs to its family, right after the quantiles.
    for (n, p) in pools {
        let _ = writeln!(
            out,
            "tasker_executor_batch_duration_seconds_count{{{}}} {}",
            label(n),
            p.latency.count
        );
    }
    family(
        &mut out,
        "tasker_pool_executors",
        "gauge",
        "Executors in the pool.",
        per_pool(&|p| p.executors.len() as f64),
    );
    family(
        &mut out,
        "tasker_circuit_breaker_state",
        "gauge",
        "0 closed, 1 half-open, 2 open.",
        per_pool(&|p| f64::from(p.circuit_breaker.as_gauge())),
    );
    family(
        &mut out,
        "tasker_pool_utilization_ratio",
        "gauge",
        "Busy time over wall time in the last monitor interval.",
        snapshot
            .series
            .iter()
            .filter_map(|(n, s)| s.last().map(|p| (label(n), p.utilization))),
    );
    family(
        &mut out,
        "tasker_backpressure_factor",
        "gauge",
        "Applied backpressure, 0 to 1.",
        [(String::new(), snapshot.backpressure)],
    );
    let mut health = Vec::new();
    for from in ExecutorHealth::ALL {
        for to in ExecutorHealth::ALL {
            let n = metrics::global().health_transitions(from, to);
            if n > 0 {
                health.push((format!("from=\"{from}\",to=\"{to}\""), n as f64));
            }
        }
    }
    family(
        &mut out,
        "tasker_executor_health_transitions_total",
        "counter",
        "Executor health changes.",
        health,
    );
    family(
        &mut out,
        "tasker_pool_scaling_decisions_total",
        "counter",
        "Scaling decisions.",
        metrics::global()
            .scaling_decisions_all()
            .into_iter()
            .map(|((pool, direction), n)| {
                (
                    format!("executor_type=\"{pool}\",direction=\"{direction}\""),
                    n as f64,
                )
            }),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
