//! The tasks page, a task's page with its live DAG, and a step's panel.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use maud::{html, Markup};
use serde::Deserialize;
use tasker_store::{StepProgress, TaskCountParams, TaskListParams};
use tasker_types::{StepRow, StepState, TaskId, TaskRow, TaskState, TransitionRow};

use super::{
    clock, encode_query, encode_segment, graph, json_block, now_ms, page, span, step_badge,
    task_badge, when, Nav, PageResult, Part,
};
use crate::{error::ApiError, parse_id, AppState};

/// Tasks per page.
const PAGE: u32 = 50;
/// Instances listed in a mapped step's panel; the counts cover all of them.
const INSTANCES_SHOWN: usize = 500;

/// Filters of the tasks page; empty form fields mean "any".
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    state: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    /// `1h`, `24h`, `7d`…: only tasks created this recently.
    since: Option<String>,
    created_after: Option<String>,
    created_before: Option<String>,
    before: Option<String>,
    part: Option<String>,
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl ListQuery {
    /// The query string of these filters, with `state` replaced and no page cursor.
    fn with_state(&self, state: Option<&str>) -> String {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = state {
            pairs.push(("state", s));
        }
        for (key, value) in [
            ("namespace", &self.namespace),
            ("name", &self.name),
            ("since", &self.since),
            ("created_after", &self.created_after),
            ("created_before", &self.created_before),
        ] {
            if let Some(v) = given(value) {
                pairs.push((key, v));
            }
        }
        encode_query(&pairs)
    }
}

/// `GET /`: counts per state and a page of tasks, newest first.
pub(crate) async fn list(State(state): State<AppState>, Query(q): Query<ListQuery>) -> PageResult {
    let part = Part {
        part: q.part.clone(),
    };
    let task_state = given(&q.state)
        .map(|s| {
            s.parse::<TaskState>()
                .map_err(|e| ApiError::invalid(format!("state: {e}")))
        })
        .transpose()?;
    let mut created_after_ms =
        crate::tasks::millis("created_after", given(&q.created_after).map(str::to_owned))?;
    if let (None, Some(since)) = (created_after_ms, given(&q.since)) {
        let d = humantime::parse_duration(since)
            .map_err(|e| ApiError::invalid(format!("since: {e}")))?;
        created_after_ms = Some(now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    }
    let created_before_ms = crate::tasks::millis(
        "created_before",
        given(&q.created_before).map(str::to_owned),
    )?;
    let before_id = given(&q.before)
        .map(|b| parse_id(b, "page").map(TaskId))
        .transpose()?;
    let store = state.engine.store();
    let tasks = store
        .task_list(&TaskListParams {
            state: task_state,
            namespace: given(&q.namespace).map(str::to_owned),
            name: given(&q.name).map(str::to_owned),
            before_id,
            created_after_ms,
            created_before_ms,
            limit: PAGE,
        })
        .await?;
    let counts = store
        .task_count(&TaskCountParams {
            namespace: given(&q.namespace).map(str::to_owned),
            name: given(&q.name).map(str::to_owned),
            created_after_ms,
            created_before_ms,
        })
        .await?;
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    let progress: HashMap<TaskId, StepProgress> = store
        .step_progress_many(&ids)
        .await?
        .into_iter()
        .map(|p| (p.task_id, p))
        .collect();
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let now = now_ms();
    let older = (tasks.len() == PAGE as usize)
        .then(|| tasks.last().map(|t| t.id.0))
        .flatten();
    let body = html! {
        section.counts aria-label="Tasks per state" {
            a.count href=(format!("/{}", q.with_state(None))) aria-current=[task_state.is_none().then_some("true")] {
                span.n { (total) } span.label { "all" }
            }
            @for s in TaskState::ALL {
                @let n = counts.iter().find(|(c, _)| c == s).map_or(0, |(_, n)| *n);
                a class=(format!("count state-{}", s.as_str())) href=(format!("/{}", q.with_state(Some(s.as_str()))))
                    aria-current=[(task_state == Some(*s)).then_some("true")] {
                    span.n { (n) } span.label { (task_badge(*s)) }
                }
            }
        }
        form.filters method="get" action="/" {
            label { "State "
                select name="state" {
                    option value="" { "any" }
                    @for s in TaskState::ALL {
                        option value=(s.as_str()) selected[task_state == Some(*s)] { (s.as_str()) }
                    }
                }
            }
            label { "Namespace " input name="namespace" value=[given(&q.namespace)] size="12"; }
            label { "Template " input name="name" value=[given(&q.name)] size="14"; }
            label { "Created within "
                select name="since" {
                    option value="" { "any time" }
                    @for (v, label) in [("1h", "the last hour"), ("24h", "the last day"), ("7d", "the last week"), ("30d", "the last 30 days")] {
                        option value=(v) selected[given(&q.since) == Some(v)] { (label) }
                    }
                }
            }
            label { "After " input name="created_after" value=[given(&q.created_after)] placeholder="2026-01-31T09:00:00Z" size="20"; }
            label { "Before " input name="created_before" value=[given(&q.created_before)] placeholder="RFC 3339" size="20"; }
            button type="submit" { "Filter" }
            a href="/" { "Clear" }
        }
        @if tasks.is_empty() {
            p.empty { "No tasks match." }
        } @else {
            table.tasks {
                thead { tr { th { "Task" } th { "Template" } th { "State" } th { "Progress" } th { "Age" } th { "Finished" } } }
                tbody {
                    @for t in &tasks {
                        @let p = progress.get(&t.id);
                        tr data-task=(t.id.0) {
                            td { a href=(format!("/tasks/{}", t.id.0)) { "#" (t.id.0) } }
                            td { span.ns { (t.namespace) "/" } (t.name) span.version { " " (t.version) } }
                            td { (task_badge(t.state)) }
                            td { (progress_bar(p)) }
                            td title=(when(Some(t.created_at_ms))) { (span(now - t.created_at_ms)) }
                            td { @if let Some(f) = t.finished_at_ms { span title=(when(Some(f))) { "after " (span(f - t.created_at_ms)) } } @else { "—" } }
                        }
                    }
                }
            }
        }
        nav.pager {
            @if before_id.is_some() {
                a href=(format!("/{}", q.with_state(task_state.map(|s| s.as_str())))) { "← Newest" }
            }
            @if let Some(older) = older {
                @let next = q.with_state(task_state.map(|s| s.as_str()));
                @let sep = if next.is_empty() { "?" } else { "&" };
                a href=(format!("/{next}{sep}before={older}")) rel="next" { "Older →" }
            }
        }
    };
    Ok(page(&part, "Tasks", Nav::Tasks, Some(5000), body))
}

fn progress_bar(p: Option<&StepProgress>) -> Markup {
    let (done, total) = p.map_or((0, 0), |p| (p.done, p.total));
    html! {
        span.progress {
            meter min="0" max=(total.max(1)) value=(done) {}
            " " (done) "/" (total)
        }
    }
}

async fn load(
    state: &AppState,
    id: TaskId,
) -> Result<
    (
        TaskRow,
        Vec<StepRow>,
        Vec<(tasker_types::StepId, tasker_types::StepId)>,
    ),
    ApiError,
> {
    let store = state.engine.store();
    let task = store.task_get(id).await?;
    let steps = store.step_list(id).await?;
    let edges = store.step_edges(id).await?;
    Ok((task, steps, edges))
}

/// `GET /tasks/{id}[?step=NAME]`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ShowQuery {
    part: Option<String>,
    /// The step whose panel is open.
    step: Option<String>,
}

/// `GET /tasks/{id}`: the task's head and DAG (refreshed live by the script from
/// `?part=live`), and the panel its steps open in (`?step=` opens one).
pub(crate) async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> PageResult {
    let part = Part { part: q.part };
    let id = TaskId(parse_id(&id, "task")?);
    let (task, steps, edges) = load(&state, id).await?;
    let live = live_part(&task, &steps, &edges);
    if part.is("live") {
        return Ok(live);
    }
    let selected = q.step.filter(|s| !s.is_empty());
    let panel = match &selected {
        Some(name) => Some(panel(&state, &task, &steps, name).await?),
        None => None,
    };
    let body = html! {
        div #task data-task-id=(task.id.0) data-selected=[selected.as_deref()] {
            (live)
            aside #step-panel aria-live="polite" {
                @if let Some(panel) = panel {
                    (panel)
                } @else {
                    p.hint { "Select a step to see its attempts, input, output, errors and transitions." }
                }
            }
        }
        details.context {
            summary { "Context" }
            (json_block(&task.context))
        }
    };
    Ok(page(
        &part,
        &format!("Task #{}", task.id.0),
        Nav::Tasks,
        None,
        body,
    ))
}

/// What changes while a task runs: its head and its graph.
fn live_part(
    task: &TaskRow,
    steps: &[StepRow],
    edges: &[(tasker_types::StepId, tasker_types::StepId)],
) -> Markup {
    let done = steps
        .iter()
        .filter(|s| s.state.releases_dependents())
        .count();
    let graph = graph::of_task(steps, edges);
    let finished_in = task.finished_at_ms.map(|f| span(f - task.created_at_ms));
    html! {
        div #task-live data-state=(task.state.as_str()) data-final=(task.state.is_final()) {
            header.task-head {
                h1 { "Task #" (task.id.0) " " (task_badge(task.state)) }
                dl.facts {
                    dt { "Template" } dd { (task.namespace) "/" (task.name) " " (task.version) }
                    dt { "Steps done" } dd { (done) " of " (steps.len()) }
                    dt { "Created" } dd { (when(Some(task.created_at_ms))) }
                    dt { "Finished" } dd { (when(task.finished_at_ms)) @if let Some(d) = finished_in { " (" (d) ")" } }
                    @if let Some(key) = &task.idempotency_key { dt { "Idempotency key" } dd { code { (key) } } }
                    dt { "Priority" } dd { (task.priority) }
                }
                @if !task.state.is_final() {
                    div.actions {
                        button.danger type="button" data-action="cancel"
                            data-url=(format!("/v1/tasks/{}/cancel", task.id.0)) data-method="POST"
                            data-confirm=(format!("Cancel task #{}? Its unfinished steps will not run.", task.id.0)) {
                            "Cancel task"
                        }
                    }
                }
            }
            div.graph-wrap { (graph::svg(&graph)) }
            (legend())
        }
    }
}

fn legend() -> Markup {
    html! {
        ul.legend aria-label="States" {
            @for s in StepState::ALL {
                li { (step_badge(*s)) }
            }
            li { span.badge.decision-key { "◇ decision" } }
            li { span.badge.mapped-key { "▦ mapped" } }
        }
    }
}

/// `GET /tasks/{id}/steps/{step}`: one step's panel (a fragment for the script).
pub(crate) async fn step_panel(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> PageResult {
    let id = TaskId(parse_id(&id, "task")?);
    let store = state.engine.store();
    let task = store.task_get(id).await?;
    let steps = store.step_list(id).await?;
    panel(&state, &task, &steps, &name).await
}

/// A step's panel: its facts, actions, input, output, error and transitions.
async fn panel(state: &AppState, task: &TaskRow, steps: &[StepRow], name: &str) -> PageResult {
    let id = task.id;
    let step = steps
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ApiError::not_found(format!("step {name:?} not found in task {}", id.0)))?;
    let transitions: Vec<TransitionRow> = state
        .engine
        .store()
        .transition_list(id)
        .await?
        .into_iter()
        .filter(|t| t.step_id == Some(step.id))
        .collect();
    let instances = graph::instances_by_map(steps)
        .remove(&step.id)
        .unwrap_or_default();
    let base = format!(
        "/v1/tasks/{}/steps/{}",
        task.id.0,
        encode_segment(&step.name)
    );
    let ran_for = match (step.started_at_ms, step.finished_at_ms) {
        (Some(s), Some(f)) => Some(span(f - s)),
        _ => None,
    };
    Ok(html! {
        div.step data-step=(step.name) data-state=(step.state.as_str()) {
            h2 { (step.name) " " (step_badge(step.state)) }
            @if step.state == StepState::Error && !task.state.is_final() {
                div.actions {
                    button type="button" data-action="retry" data-method="POST" data-url=(format!("{base}/retry"))
                        data-confirm=(format!("Run step {} again? Its attempts start over.", step.name)) {
                        "↻ Retry step"
                    }
                    button type="button" data-action="resolve" data-method="POST" data-url=(format!("{base}/resolve"))
                        data-confirm=(format!("Mark step {} as done by hand? Its children will run without its output.", step.name)) {
                        "☑ Resolve by hand"
                    }
                }
            }
            dl.facts {
                dt { "Handler" } dd { code { (step.handler) } }
                dt { "Attempts" } dd { (step.attempts) " of " (step.max_attempts) }
                dt { "Retry backoff" } dd { (span(i64::try_from(step.retry_base_ms).unwrap_or(i64::MAX))) " doubling to " (span(i64::try_from(step.retry_max_ms).unwrap_or(i64::MAX))) @if step.retry_jitter { ", jittered" } }
                dt { "Timeout" } dd { @if let Some(t) = step.timeout_ms { (span(i64::try_from(t).unwrap_or(i64::MAX))) } @else { "none" } }
                dt { "Started" } dd { (when(step.started_at_ms)) }
                dt { "Finished" } dd { (when(step.finished_at_ms)) @if let Some(d) = ran_for { " (" (d) ")" } }
                @if step.next_attempt_at_ms.is_some() { dt { "Next attempt" } dd { (when(step.next_attempt_at_ms)) } }
                @if let Some(q) = &step.queue { dt { "Queue" } dd { code { (q) } } }
            }
            @if let Some(branches) = &step.branches {
                h3 { "Decision" }
                p { "Chooses among: " @for (i, b) in branches.iter().enumerate() { @if i > 0 { ", " } code { (b) } } }
                @if let Some(next) = step.result.as_ref().and_then(|r| r.get("next")) {
                    p { "Chose: " code { (next) } }
                }
            }
            @if let Some(map) = &step.map {
                @if step.map_instance.is_none() {
                    h3 { "Map over " code { (map.over) } }
                    p {
                        (instances.len()) " instances: "
                        @for (i, (s, n)) in graph::instance_counts(instances.iter().copied()).iter().enumerate() {
                            @if i > 0 { ", " } (n) " " (step_badge(*s))
                        }
                    }
                    @if !instances.is_empty() {
                        table.instances {
                            thead { tr { th { "Instance" } th { "State" } th { "Attempts" } th { "Error" } } }
                            tbody {
                                @for i in instances.iter().take(INSTANCES_SHOWN) {
                                    tr {
                                        td { button.link type="button" data-open-step=(i.name) { (i.name) } }
                                        td { (step_badge(i.state)) }
                                        td { (i.attempts) }
                                        td.error { (i.last_error.as_deref().unwrap_or("")) }
                                    }
                                }
                            }
                        }
                        @if instances.len() > INSTANCES_SHOWN {
                            p.hint { "The first " (INSTANCES_SHOWN) " are listed; " code { "tasker status" } " lists all." }
                        }
                    }
                }
            }
            @if let Some(instance) = &step.map_instance {
                h3 { "Item" }
                (json_block(&instance.input))
            }
            @if !step.handler_config.is_null() {
                h3 { "Handler configuration" }
                (json_block(&step.handler_config))
            }
            @if let Some(result) = &step.result {
                h3 { "Output" }
                (json_block(result))
            }
            @if let Some(error) = &step.last_error {
                h3 { "Last error" }
                pre.error-text { (error) }
            }
            h3 { "Transitions" }
            table.transitions {
                thead { tr { th { "At" } th { "From" } th { "To" } th { "Event" } th { "Reason" } th { "Instance" } } }
                tbody {
                    @for t in &transitions {
                        tr {
                            td title=(when(Some(t.at_ms))) { (clock(t.at_ms)) }
                            td { (t.from_state.as_deref().unwrap_or("—")) }
                            td { (t.to_state) }
                            td { code { (t.event) } }
                            td { (t.reason.as_deref().unwrap_or("")) }
                            td { code { (t.instance_id) } }
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_carry_over_without_the_cursor() {
        let q = ListQuery {
            namespace: Some("etl".into()),
            name: Some(" ".into()),
            before: Some("9".into()),
            ..Default::default()
        };
        assert_eq!(q.with_state(Some("Error")), "?state=Error&namespace=etl");
        assert_eq!(ListQuery::default().with_state(None), "");
    }
}
