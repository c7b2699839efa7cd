//! The templates page and a template's page: its DAG and each step's handler, retry policy
//! and timeout.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use maud::html;
use serde::Deserialize;
use tasker_store::TemplateGetParams;
use tasker_template::TaskTemplate;
use tasker_types::TemplateRecord;

use super::{
    encode_query, encode_segment, graph, json_block, page, span, when, Nav, PageResult, Part,
};
use crate::{error::ApiError, AppState};

/// `GET /templates`: each template once, at its latest version.
pub(crate) async fn list(State(state): State<AppState>, Query(part): Query<Part>) -> PageResult {
    let records = state.engine.store().template_list().await?;
    let mut by_key: BTreeMap<(String, String), Vec<&TemplateRecord>> = BTreeMap::new();
    for r in &records {
        by_key
            .entry((r.namespace.clone(), r.name.clone()))
            .or_default()
            .push(r);
    }
    let body = html! {
        h1 { "Templates" }
        @if by_key.is_empty() {
            p.empty { "No template is registered yet: " code { "tasker template register FILE" } "." }
        } @else {
            table.templates {
                thead { tr { th { "Namespace" } th { "Name" } th { "Latest version" } th { "Versions" } th { "Steps" } th { "Registered" } } }
                tbody {
                    @for ((namespace, name), versions) in &by_key {
                        @let latest = versions.iter().max_by_key(|r| r.id).copied();
                        tr {
                            td { (namespace) }
                            td { a href=(format!("/templates/{}/{}", encode_segment(namespace), encode_segment(name))) { (name) } }
                            td { @if let Some(l) = latest { (l.version) } }
                            td { (versions.len()) }
                            td { @if let Some(l) = latest { (l.definition.get("steps").and_then(|s| s.as_array()).map_or(0, Vec::len)) } }
                            td { @if let Some(l) = latest { (when(Some(l.created_at_ms))) } }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&part, "Templates", Nav::Templates, None, body))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ShowQuery {
    version: Option<String>,
    part: Option<String>,
}

fn ms(v: u64) -> String {
    span(i64::try_from(v).unwrap_or(i64::MAX))
}

/// `GET /templates/{namespace}/{name}[?version=]`.
pub(crate) async fn show(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<ShowQuery>,
) -> PageResult {
    let part = Part {
        part: q.part.clone(),
    };
    let record = state
        .engine
        .store()
        .template_get(&TemplateGetParams {
            namespace: namespace.clone(),
            name: name.clone(),
            version: q.version.clone().filter(|v| !v.is_empty()),
        })
        .await?;
    let versions: Vec<String> = state
        .engine
        .store()
        .template_list()
        .await?
        .into_iter()
        .filter(|r| r.namespace == namespace && r.name == name)
        .map(|r| r.version)
        .collect();
    let template = TaskTemplate::from_json_value(record.definition.clone(), "stored template")
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("stored template: {}", e.problems_lines().join("; ")),
            )
        })?;
    let specs = template.step_specs();
    let graph = graph::of_template(&specs);
    let body = html! {
        h1 { (record.namespace) "/" (record.name) " " span.version { (record.version) } }
        @if versions.len() > 1 {
            p { "Versions: "
                @for (i, v) in versions.iter().enumerate() {
                    @if i > 0 { ", " }
                    @if *v == record.version { strong { (v) } } @else { a href=(format!("/templates/{}/{}{}", encode_segment(&namespace), encode_segment(&name), encode_query(&[("version", v)]))) { (v) } }
                }
            }
        }
        div.graph-wrap { (graph::svg(&graph)) }
        table.steps {
            thead { tr { th { "Step" } th { "Handler" } th { "Depends on" } th { "Attempts" } th { "Backoff" } th { "Timeout" } th { "Kind" } } }
            tbody {
                @for s in &specs {
                    tr data-step=(s.name) {
                        td { (s.name) }
                        td { code { (s.handler) } }
                        td { (s.depends_on.join(", ")) }
                        td { (s.max_attempts) }
                        td { (ms(s.retry_base_ms)) " → " (ms(s.retry_max_ms)) @if s.retry_jitter { ", jittered" } }
                        td { @if let Some(t) = s.timeout_ms { (ms(t)) } @else { "none" } }
                        td {
                            @if s.decision { "◇ decision" }
                            @if let Some(map) = &s.map { "▦ map over " code { (map.over) } }
                        }
                    }
                }
            }
        }
        details {
            summary { "Definition" }
            (json_block(&record.definition))
        }
    };
    Ok(page(
        &part,
        &format!("{namespace}/{name}"),
        Nav::Templates,
        None,
        body,
    ))
}
