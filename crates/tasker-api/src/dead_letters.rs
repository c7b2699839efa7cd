//! Dead-letter routes: messages that used up their deliveries, to inspect, requeue or discard.

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tasker_store::DeadLetterListParams;
use tasker_types::DeadLetter;

use crate::{error::ApiError, parse_id, views, AppState};

/// Filters of `GET /v1/dead_letters`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Only this queue's.
    pub(crate) queue: Option<String>,
    /// Only dead letters with a larger id (the `next` cursor of the previous page).
    pub(crate) after: Option<i64>,
    /// Page size, 1–500 (default 50).
    pub(crate) limit: Option<u32>,
}

impl ListQuery {
    pub(crate) fn params(&self) -> Result<DeadLetterListParams, ApiError> {
        let limit = self.limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            return Err(ApiError::invalid("limit: must be between 1 and 500"));
        }
        Ok(DeadLetterListParams {
            queue: self.queue.clone().filter(|q| !q.is_empty()),
            after_id: self.after,
            limit,
        })
    }
}

pub(crate) fn view(d: &DeadLetter) -> Value {
    json!({
        "id": d.id,
        "queue": d.queue,
        "payload": d.payload,
        "deliveries": d.deliveries,
        "dead_at": views::timestamp(Some(d.dead_at_ms)),
    })
}

/// `GET /v1/dead_letters`: oldest first, keyset-paginated.
pub(crate) async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let params = q.params()?;
    let dead = state.engine.store().dead_letter_list(&params).await?;
    let next = (dead.len() == params.limit as usize)
        .then(|| dead.last().map(|d| d.id))
        .flatten();
    Ok(Json(
        json!({"dead_letters": dead.iter().map(view).collect::<Vec<_>>(), "next": next}),
    ))
}

/// `GET /v1/dead_letters/{id}`.
pub(crate) async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "dead letter")?;
    Ok(Json(view(&state.engine.store().dead_letter_get(id).await?)))
}

/// `POST /v1/dead_letters/{id}/requeue`: back in its queue as a new message, deliveries
/// counted from zero. 404 when it was requeued or discarded already.
pub(crate) async fn requeue(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "dead letter")?;
    let message_id = state.engine.store().dead_letter_requeue(id).await?;
    tracing::info!(dead_letter = id, message_id, "dead letter requeued");
    Ok(Json(json!({"requeued": id, "message_id": message_id})))
}

/// `DELETE /v1/dead_letters/{id}`: gone for good. 204; 404 when already gone.
pub(crate) async fn discard(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "dead letter")?;
    state.engine.store().dead_letter_discard(id).await?;
    tracing::info!(dead_letter = id, "dead letter discarded");
    Ok(StatusCode::NO_CONTENT)
}
