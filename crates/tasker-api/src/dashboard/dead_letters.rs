//! The dead letters page and one dead letter's page, with requeue and discard.

use axum::extract::{Path, Query, State};
use maud::html;
use serde::Deserialize;
use tasker_orchestrator::pipeline::messages::QUEUES;
use tasker_store::DeadLetterListParams;

use super::{encode_query, json_block, page, when, Nav, PageResult, Part};
use crate::{parse_id, AppState};

/// Dead letters per page.
const PAGE: u32 = 50;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    queue: Option<String>,
    after: Option<String>,
    part: Option<String>,
}

/// `GET /dead-letters`.
pub(crate) async fn list(State(state): State<AppState>, Query(q): Query<ListQuery>) -> PageResult {
    let part = Part {
        part: q.part.clone(),
    };
    let queue = q.queue.clone().filter(|v| !v.is_empty());
    let after_id = q
        .after
        .as_deref()
        .filter(|v| !v.is_empty())
        .map(|a| parse_id(a, "page"))
        .transpose()?;
    let dead = state
        .engine
        .store()
        .dead_letter_list(&DeadLetterListParams {
            queue: queue.clone(),
            after_id,
            limit: PAGE,
        })
        .await?;
    let next = (dead.len() == PAGE as usize)
        .then(|| dead.last().map(|d| d.id))
        .flatten();
    let link = |after: Option<i64>| {
        let after = after.map(|a| a.to_string());
        let mut pairs = Vec::new();
        if let Some(q) = queue.as_deref() {
            pairs.push(("queue", q));
        }
        if let Some(a) = after.as_deref() {
            pairs.push(("after", a));
        }
        format!("/dead-letters{}", encode_query(&pairs))
    };
    let body = html! {
        h1 { "Dead letters" }
        p.hint {
            "Messages of the engine's queues that were delivered too many times without being handled. "
            "Requeue one once its cause is fixed; discard what should never run."
        }
        form.filters method="get" action="/dead-letters" {
            label { "Queue "
                select name="queue" {
                    option value="" { "any" }
                    @for q in QUEUES {
                        option value=(q) selected[queue.as_deref() == Some(q)] { (q) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        @if dead.is_empty() {
            p.empty { "No dead letters." }
        } @else {
            table.dead-letters {
                thead { tr { th { "Id" } th { "Queue" } th { "Deliveries" } th { "Dead since" } th { "Payload" } th {} } }
                tbody {
                    @for d in &dead {
                        @let preview: String = d.payload.to_string().chars().take(80).collect();
                        tr data-dead-letter=(d.id) {
                            td { a href=(format!("/dead-letters/{}", d.id)) { "#" (d.id) } }
                            td { code { (d.queue) } }
                            td { (d.deliveries) }
                            td { (when(Some(d.dead_at_ms))) }
                            td { code.preview { (preview) } }
                            td.actions {
                                button type="button" data-action="requeue" data-method="POST"
                                    data-url=(format!("/v1/dead_letters/{}/requeue", d.id))
                                    data-confirm=(format!("Put dead letter #{} back in {}?", d.id, d.queue)) { "Requeue" }
                                button.danger type="button" data-action="discard" data-method="DELETE"
                                    data-url=(format!("/v1/dead_letters/{}", d.id))
                                    data-confirm=(format!("Discard dead letter #{} for good?", d.id)) { "Discard" }
                            }
                        }
                    }
                }
            }
        }
        nav.pager {
            @if after_id.is_some() { a href=(link(None)) { "← First" } }
            @if let Some(next) = next { a href=(link(Some(next))) rel="next" { "Next →" } }
        }
    };
    Ok(page(&part, "Dead letters", Nav::DeadLetters, None, body))
}

/// `GET /dead-letters/{id}`.
pub(crate) async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(part): Query<Part>,
) -> PageResult {
    let id = parse_id(&id, "dead letter")?;
    let d = state.engine.store().dead_letter_get(id).await?;
    let body = html! {
        h1 { "Dead letter #" (d.id) }
        dl.facts {
            dt { "Queue" } dd { code { (d.queue) } }
            dt { "Deliveries" } dd { (d.deliveries) }
            dt { "Dead since" } dd { (when(Some(d.dead_at_ms))) }
        }
        div.actions {
            button type="button" data-action="requeue" data-method="POST" data-then="/dead-letters"
                data-url=(format!("/v1/dead_letters/{}/requeue", d.id))
                data-confirm=(format!("Put dead letter #{} back in {}?", d.id, d.queue)) { "Requeue" }
            button.danger type="button" data-action="discard" data-method="DELETE" data-then="/dead-letters"
                data-url=(format!("/v1/dead_letters/{}", d.id))
                data-confirm=(format!("Discard dead letter #{} for good?", d.id)) { "Discard" }
        }
        h2 { "Payload" }
        (json_block(&d.payload))
    };
    Ok(page(
        &part,
        &format!("Dead letter #{id}"),
        Nav::DeadLetters,
        None,
        body,
    ))
}
