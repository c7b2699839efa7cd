//! Template routes.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{header, HeaderMap, StatusCode},
    Json,
};
use serde_json::{json, Value};
use tasker_orchestrator::engine::handler_config_problems;
use tasker_store::{TemplateGetParams, TemplateRegisterParams};
use tasker_template::TaskTemplate;
use tasker_types::TemplateRecord;

use crate::{error::ApiError, AppState};

fn record_json(r: &TemplateRecord) -> Value {
    json!({
        "namespace": r.namespace,
        "name": r.name,
        "version": r.version,
        "definition": r.definition,
        "created_at": crate::views::timestamp(Some(r.created_at_ms)),
    })
}

/// `POST /v1/templates`: a template as YAML (`application/yaml`) or JSON. 201 with its key.
pub(crate) async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let parsed = if content_type.contains("yaml") {
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::bad_request("template body is not UTF-8"))?;
        TaskTemplate::from_yaml_str(text, "request body")
    } else {
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
        TaskTemplate::from_json_value(value, "request body")
    };
    let template = parsed.map_err(|e| ApiError::invalid(e.problems_lines().join("; ")))?;
    let definition =
        serde_json::to_value(&template).map_err(|e| ApiError::invalid(format!("template: {e}")))?;
    crate::extract::reject_nul(&definition)?;
    // Handlers this process has check their own configuration now, not at run time.
    let problems = handler_config_problems(state.engine.handlers(), &template);
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems.join("; ")));
    }
    let record = state
        .engine
        .store()
        .template_register(&TemplateRegisterParams {
            template: template.to_definition(),
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"namespace": record.namespace, "name": record.name, "version": record.version}),
        ),
    ))
}

/// `GET /v1/templates`.
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let records = state.engine.store().template_list().await?;
    Ok(Json(
        json!({"templates": records.iter().map(record_json).collect::<Vec<_>>()}),
    ))
}

async fn get(
    state: &AppState,
    namespace: String,
    name: String,
    version: Option<String>,
) -> Result<Json<Value>, ApiError> {
    let record = state
        .engine
        .store()
        .template_get(&TemplateGetParams {
            namespace,
            name,
            version,
        })
        .await?;
    Ok(Json(record_json(&record)))
}

/// `GET /v1/templates/{namespace}/{name}`: the latest version.
pub(crate) async fn latest(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    get(&state, namespace, name, None).await
}

/// `GET /v1/templates/{namespace}/{name}/{version}`.
pub(crate) async fn version(
    State(state): State<AppState>,
    Path((namespace, name, version)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    get(&state, namespace, name, Some(version)).await
}
