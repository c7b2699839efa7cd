//! Task routes.
//!
//! A write that committed is answered as done: the reads that build the answer ride out a
//! storage outage (`ApiConfig::follow_up_patience`), and when storage stays away the answer
//! is built from what the write returned. A client retrying a 5xx therefore never repeats a
//! write that took effect.

use axum::{
    extract::{Path, Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tasker_orchestrator::pipeline::messages::TaskRequest;
use tasker_store::{retry_while_unavailable, TaskCountParams, TaskCreated, TaskListParams};
use tasker_types::{TaskId, TaskRow, TaskState};

use crate::{
    error::ApiError,
    extract::{ApiJson, OptionalJson},
    parse_id, views, AppState,
};

/// Pressure at which new tasks are refused with 503.
const SATURATED: f64 = 1.0;

/// Most requests in one `POST /v1/tasks/batch`.
pub(crate) const MAX_BATCH: usize = 1000;

async fn task_view(state: &AppState, id: TaskId) -> Result<Value, tasker_store::StoreError> {
    let store = state.engine.store();
    let task = store.task_get(id).await?;
    let steps = store.step_list(id).await?;
    let edges = store.step_edges(id).await?;
    Ok(views::task(&task, &steps, &edges))
}

/// The view of a task a committed write returned: read back while storage allows, else the
/// row the write returned (without its steps, which the answer then says).
async fn committed_view(state: &AppState, task: &TaskRow) -> Value {
    match retry_while_unavailable(state.config.follow_up_patience, || {
        task_view(state, task.id)
    })
    .await
    {
        Ok(view) => view,
        Err(error) => {
            tracing::warn!(task_id = %task.id, %error, "answering a committed write without reading it back");
            let mut view = views::task_summary(task);
            view["steps"] = Value::Null;
            view["partial"] = json!(true);
            view
        }
    }
}

fn saturated() -> Response {
    let mut response = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "saturated",
        "the engine is saturated; retry later",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    response
}

/// `POST /v1/tasks`: 201 with the task; 200 with the existing task on an idempotent repeat;
/// 503 with `Retry-After` when the engine is saturated.
pub(crate) async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TaskRequest>,
) -> Result<Response, ApiError> {
    if state.engine.pressure() >= SATURATED {
        return Ok(saturated());
    }
    let created = state.engine.submit(&request).await?;
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(committed_view(&state, &created.task).await)).into_response())
}

/// The body of `POST /v1/tasks/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchRequest {
    tasks: Vec<TaskRequest>,
}

/// `POST /v1/tasks/batch`: up to [`MAX_BATCH`] task requests, each with its own idempotency
/// key and its own answer, in order: `{"results": [{"status": "created" | "existing" |
/// "error", "task": …} | {"status": "error", "error": {"code", "message"}}]}`. The requests
/// that pass validation are created in one transaction; a refused one does not stop the
/// others. 200 whatever each result, unless the whole call fails.
pub(crate) async fn create_batch(
    State(state): State<AppState>,
    ApiJson(batch): ApiJson<BatchRequest>,
) -> Result<Response, ApiError> {
    if batch.tasks.is_empty() || batch.tasks.len() > MAX_BATCH {
        return Err(ApiError::invalid(format!(
            "tasks: must hold between 1 and {MAX_BATCH} requests, not {}",
            batch.tasks.len()
        )));
    }
    if state.engine.pressure() >= SATURATED {
        return Ok(saturated());
    }
    let outcomes = state.engine.submit_each(&batch.tasks).await?;
    let results: Vec<Value> = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Ok(TaskCreated { task, created, .. }) => json!({
                "status": if created { "created" } else { "existing" },
                "task": views::task_summary(&task),
            }),
            Err(refused) => {
                let e = ApiError::from(refused);
                json!({"status": "error", "error": {"code": e.code, "message": e.message}})
            }
        })
        .collect();
    Ok(Json(json!({ "results": results })).into_response())
}

/// `GET /v1/tasks/{id}`: the task, its steps and its transitions.
pub(crate) async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = TaskId(parse_id(&id, "task")?);
    let mut view = task_view(&state, id).await?;
    let transitions = state.engine.store().transition_list(id).await?;
    view["transitions"] = transitions.iter().map(views::transition).collect();
    Ok(Json(view))
}

/// Filters of `GET /v1/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    state: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    /// Only tasks with a smaller id (the `next` cursor of the previous page).
    before: Option<i64>,
    /// Page size, 1–500 (default 50).
    limit: Option<u32>,
    /// Only tasks created at or after this RFC 3339 time.
    created_after: Option<String>,
    /// Only tasks created before this RFC 3339 time.
    created_before: Option<String>,
}

pub(crate) fn millis(field: &str, value: Option<String>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| {
            let t = humantime::parse_rfc3339_weak(&v)
                .map_err(|e| ApiError::invalid(format!("{field}: {e}")))?;
            let ms = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| ApiError::invalid(format!("{field}: before 1970")))?;
            i64::try_from(ms.as_millis())
                .map_err(|_| ApiError::invalid(format!("{field}: out of range")))
        })
        .transpose()
}

/// `GET /v1/tasks`: newest first, keyset-paginated; each task with its `progress` (steps
/// done and in all).
pub(crate) async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let task_state = q
        .state
        .map(|s| {
            s.parse::<TaskState>()
                .map_err(|e| ApiError::invalid(format!("state: {e}")))
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit: must be between 1 and 500"));
    }
    let tasks = state
        .engine
        .store()
        .task_list(&TaskListParams {
            created_after_ms: millis("created_after", q.created_after)?,
            created_before_ms: millis("created_before", q.created_before)?,
            state: task_state,
            namespace: q.namespace,
            name: q.name,
            before_id: q.before.map(TaskId),
            limit,
        })
        .await?;
    let next = (tasks.len() == limit as usize)
        .then(|| tasks.last().map(|t| t.id))
        .flatten();
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    let progress: std::collections::HashMap<TaskId, (u64, u64)> = state
        .engine
        .store()
        .step_progress_many(&ids)
        .await?
        .into_iter()
        .map(|p| (p.task_id, (p.done, p.total)))
        .collect();
    let views: Vec<Value> = tasks
        .iter()
        .map(|t| {
            let mut view = views::task_summary(t);
            let (done, total) = progress.get(&t.id).copied().unwrap_or((0, 0));
            view["progress"] = json!({"done": done, "total": total});
            view
        })
        .collect();
    Ok(Json(json!({"tasks": views, "next": next})))
}

/// Filters of `GET /v1/tasks/counts`: those of the list but the state and the page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CountQuery {
    namespace: Option<String>,
    name: Option<String>,
    created_after: Option<String>,
    created_before: Option<String>,
}

/// `GET /v1/tasks/counts`: `{"counts": {"<state>": n, …}, "total": n}`, every state listed.
pub(crate) async fn counts(
    State(state): State<AppState>,
    query: Result<Query<CountQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let counts = state
        .engine
        .store()
        .task_count(&TaskCountParams {
            created_after_ms: millis("created_after", q.created_after)?,
            created_before_ms: millis("created_before", q.created_before)?,
            namespace: q.namespace,
            name: q.name,
        })
        .await?;
    let by_state: serde_json::Map<String, Value> = TaskState::ALL
        .iter()
        .map(|s| {
            let n = counts.iter().find(|(c, _)| c == s).map_or(0, |(_, n)| *n);
            (s.as_str().to_owned(), json!(n))
        })
        .collect();
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    Ok(Json(json!({"counts": by_state, "total": total})))
}

/// `POST /v1/tasks/{id}/cancel`.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = TaskId(parse_id(&id, "task")?);
    let task = state.engine.cancel_task(id).await?;
    Ok(Json(committed_view(&state, &task).await))
}

/// `POST /v1/tasks/{id}/steps/{step}/retry`.
pub(crate) async fn retry_step(
    State(state): State<AppState>,
    Path((id, step)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = TaskId(parse_id(&id, "task")?);
    let step = state.engine.retry_step(id, &step).await?;
    Ok(Json(views::step(&step)))
}

/// The optional body of `POST /v1/tasks/{id}/steps/{step}/resolve`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Resolve {
    /// The step's result, as its children will see it.
    output: Option<Value>,
}

/// `POST /v1/tasks/{id}/steps/{step}/resolve`, with an optional `{"output": …}` body.
pub(crate) async fn resolve_step(
    State(state): State<AppState>,
    Path((id, step)): Path<(String, String)>,
    OptionalJson(body): OptionalJson<Resolve>,
) -> Result<Json<Value>, ApiError> {
    let id = TaskId(parse_id(&id, "task")?);
    let output = body.and_then(|b| b.output);
    let step = state.engine.resolve_step(id, &step, output).await?;
    Ok(Json(views::step(&step)))
}
