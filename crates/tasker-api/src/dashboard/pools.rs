//! The executor pools page: each pool's executors and health, utilization, latency and
//! breaker; the pipeline's queues; the global backpressure and its recent history; and the
//! cluster's instances with the leader. The pools and the cluster are the engine's own
//! snapshot and view, the ones `GET /v1/health/pools` and `GET /v1/cluster` answer with; the
//! queue depths are the store's counts.

use axum::extract::{Query, State};
use maud::{html, Markup};
use tasker_orchestrator::{
    pipeline::messages::QUEUES,
    runtime::{backpressure::PressurePoint, circuit_breaker::CircuitState, health::ExecutorHealth},
};

use super::{encode_query, page, span, Nav, PageResult, Part};
use crate::AppState;

/// How often the script refreshes the page.
const REFRESH_MS: u64 = 2000;

fn health_badge(health: ExecutorHealth) -> Markup {
    let (symbol, tone) = match health {
        ExecutorHealth::Starting => ("○", "idle"),
        ExecutorHealth::Healthy => ("✓", "ok"),
        ExecutorHealth::Degraded => ("!", "retry"),
        ExecutorHealth::Unhealthy => ("✗", "bad"),
        ExecutorHealth::Stopping => ("⊘", "muted"),
    };
    html! { span class=(format!("badge {tone}")) { span aria-hidden="true" { (symbol) } " " (format!("{health:?}")) } }
}

fn breaker_badge(state: CircuitState) -> Markup {
    let (symbol, tone, word) = match state {
        CircuitState::Closed => ("●", "ok", "closed"),
        CircuitState::HalfOpen => ("◐", "retry", "half-open"),
        CircuitState::Open => ("○", "bad", "open"),
    };
    html! { span class=(format!("badge {tone}")) { span aria-hidden="true" { (symbol) } " breaker " (word) } }
}

/// A small line chart of the applied backpressure (0 to 1) over the recorded points.
fn pressure_chart(points: &[PressurePoint]) -> Markup {
    const W: f64 = 480.0;
    const H: f64 = 80.0;
    let n = points.len();
    let coords: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let x = if n > 1 {
                i as f64 * W / (n - 1) as f64
            } else {
                0.0
            };
            let y = H - p.applied.clamp(0.0, 1.0) * H;
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let peak = points.iter().map(|p| p.applied).fold(0.0, f64::max);
    html! {
        figure.chart {
            svg xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {W} {H}")) width=(W) height=(H)
                role="img" aria-label=(format!("Backpressure over the last {n} observations, peak {:.0}%", peak * 100.0)) {
                line.grid x1="0" y1=(H / 2.0) x2=(W) y2=(H / 2.0) {}
                @if !coords.is_empty() {
                    polyline.pressure points=(coords.join(" ")) {}
                }
            }
            figcaption { "Applied backpressure, last " (n) " observations (top = 100%); peak " (format!("{:.0}%", peak * 100.0)) }
        }
    }
}

/// `GET /pools`.
pub(crate) async fn show(State(state): State<AppState>, Query(part): Query<Part>) -> PageResult {
    let engine = &state.engine;
    let snapshot = engine.snapshot();
    let store = engine.store();
    let mut queues = Vec::new();
    for queue in QUEUES {
        queues.push((queue, store.queue_depth(queue).await?));
    }
    let cluster = engine.cluster().await?;
    let body = html! {
        h1 { "Executor pools" }
        p.meta { "Instance " code { (engine.instance_id()) } " · backend " (store.backend_name()) }
        section.pressure {
            h2 { "Backpressure " span.big { (format!("{:.0}%", snapshot.backpressure * 100.0)) } }
            (pressure_chart(&snapshot.pressure_history))
        }
        div.pools {
            @for (kind, pool) in &snapshot.pools {
                @let last = snapshot.series.get(kind).and_then(|s| s.last());
                section.pool data-executor-type=(kind.as_str()) {
                    h2 { (kind.as_str()) }
                    p {
                        (breaker_badge(pool.circuit_breaker))
                        @if pool.circuit_breaker_trips > 0 { " tripped " (pool.circuit_breaker_trips) "×" }
                    }
                    dl.facts {
                        dt { "Executors" } dd { (pool.executors.len()) " (min " (pool.min_executors) ", max " (pool.max_executors) ")" }
                        dt { "Utilization" } dd { @if let Some(p) = last { (format!("{:.0}%", p.utilization * 100.0)) } @else { "—" } }
                        dt { "Throughput" } dd { @if let Some(p) = last { (format!("{:.1}/s", p.throughput)) } @else { "—" } }
                        dt { "Batch latency" } dd {
                            "p50 " (format!("{:.1}", pool.latency.p50_ms)) " · p95 " (format!("{:.1}", pool.latency.p95_ms))
                            " · p99 " (format!("{:.1}", pool.latency.p99_ms)) " ms"
                        }
                        dt { "Batches" } dd { (pool.batches) " (" (pool.items) " items, " (pool.errors) " failed)" }
                        dt { "Replaced" } dd { (pool.replaced) }
                    }
                    table.executors {
                        thead { tr { th { "Executor" } th { "Health" } th { "In state" } th { "Heartbeat" } } }
                        tbody {
                            @for e in &pool.executors {
                                tr {
                                    td { "#" (e.id) }
                                    td { (health_badge(e.health)) }
                                    td { (span(i64::try_from(e.time_in_state.as_millis()).unwrap_or(i64::MAX))) }
                                    td { (span(i64::try_from(e.heartbeat_age_ms).unwrap_or(i64::MAX))) " ago" }
                                }
                            }
                        }
                    }
                }
            }
        }
        section.queues {
            h2 { "Queues" }
            table {
                thead { tr { th { "Queue" } th { "Ready" } th { "Leased or delayed" } th { "Dead letters" } } }
                tbody {
                    @for (queue, depth) in &queues {
                        tr {
                            td { code { (queue) } }
                            td { (depth.ready) }
                            td { (depth.invisible) }
                            td { @if depth.dead > 0 { a href=(format!("/dead-letters{}", encode_query(&[("queue", queue)]))) { (depth.dead) } } @else { "0" } }
                        }
                    }
                }
            }
        }
        section.cluster {
            h2 { "Cluster" }
            p {
                "Leader: "
                @if let Some(leader) = &cluster.leader { code { (leader) } " (epoch " (cluster.leader_epoch) ")" } @else { "none" }
                " · an instance is dead after " (span(i64::try_from(cluster.dead_after_ms).unwrap_or(i64::MAX))) " without a heartbeat"
            }
            table.instances {
                thead { tr { th { "Instance" } th { "Host" } th { "State" } th { "Heartbeat" } th { "Leases" } th { "Connections" } th { "Version" } } }
                tbody {
                    @for i in &cluster.instances {
                        tr.this[i.this] {
                            td {
                                code { (i.row.id) }
                                @if cluster.leader.as_deref() == Some(i.row.id.as_str()) { " " span.badge.ok { "★ leader" } }
                                @if i.this { " " span.badge.idle { "this one" } }
                            }
                            td { (i.row.host) " (pid " (i.row.pid) ")" }
                            td {
                                @if i.alive {
                                    span.badge.ok { "✓ " (i.row.state.as_str()) }
                                } @else {
                                    span.badge.bad { "✗ dead" }
                                }
                            }
                            td { (span(i.heartbeat_age_ms)) " ago" }
                            td { (i.row.leases) }
                            td { (i.row.connections) }
                            td { (i.row.version) }
                        }
                    }
                }
            }
        }
    };
    Ok(page(
        &part,
        "Executor pools",
        Nav::Pools,
        Some(REFRESH_MS),
        body,
    ))
}
