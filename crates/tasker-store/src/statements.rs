//! Statement counting, from the driver's own events rather than a count at each call site.
//!
//! sqlx reports every statement it runs as a `tracing` event with target `sqlx::query`, once
//! the event's level is enabled. [`counter`] is a layer that counts those events, minus
//! transaction control (`BEGIN`, `COMMIT`, …) and SQLite's connection setup (`PRAGMA`, sent
//! whenever the pool opens a connection), into one process-wide total that [`executed`] reads. It is off until [`start_counting`]: left on, sqlx would format a summary of every
//! statement for nobody. The bench turns it on to report statements per step.
//!
//! The total is per process, not per store: a process that runs two stores counts both.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tracing::{field::Field, subscriber::Interest, Subscriber};
use tracing_subscriber::{
    filter::{dynamic_filter_fn, LevelFilter},
    layer::{Context, Filter, Layer},
};

/// The target of sqlx's per-statement events.
const SQLX_QUERY: &str = "sqlx::query";

static COUNTING: AtomicBool = AtomicBool::new(false);
static EXECUTED: AtomicU64 = AtomicU64::new(0);

/// Starts counting (see the module docs); the [`counter`] layer must be installed.
pub fn start_counting() {
    COUNTING.store(true, Ordering::Relaxed);
}

/// Statements counted in this process since [`start_counting`] (see the module docs).
pub fn executed() -> u64 {
    EXECUTED.load(Ordering::Relaxed)
}

/// The counting layer, filtered to sqlx's statement events while counting is on, so it enables
/// nothing for any other layer.
pub fn counter<S>() -> impl Layer<S> + Send + Sync
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    Counter.with_filter(statement_events())
}

/// Decided once per callsite wherever it can be: every callsite but sqlx's statement events is
/// never of interest, so this layer adds no per-event cost to the rest of the program's
/// logging. Statement events are asked about each time, since counting starts later.
fn statement_events<S>() -> impl Filter<S> + Send + Sync {
    dynamic_filter_fn(|meta, _| meta.target() == SQLX_QUERY && COUNTING.load(Ordering::Relaxed))
        .with_callsite_filter(|meta| {
            if meta.target() == SQLX_QUERY {
                Interest::sometimes()
            } else {
                Interest::never()
            }
        })
        // sqlx reports statements at DEBUG unless told otherwise.
        .with_max_level_hint(LevelFilter::DEBUG)
}

struct Counter;

impl<S: Subscriber> Layer<S> for Counter {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut summary = Summary(None);
        event.record(&mut summary);
        if !summary.is_overhead() {
            EXECUTED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The `summary` field of an sqlx statement event: its first words.
struct Summary(Option<String>);

impl Summary {
    /// Transaction control and connection setup: not the work being measured.
    fn is_overhead(&self) -> bool {
        let first = self
            .0
            .as_deref()
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("");
        [
            "BEGIN",
            "COMMIT",
            "ROLLBACK",
            "SAVEPOINT",
            "RELEASE",
            "PRAGMA",
        ]
        .iter()
        .any(|keyword| first.eq_ignore_ascii_case(keyword))
    }
}

impl tracing::field::Visit for Summary {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "summary" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "summary" {
            self.0 = Some(format!("{value:?}").trim_matches('"').to_owned());
        }
    }
}
