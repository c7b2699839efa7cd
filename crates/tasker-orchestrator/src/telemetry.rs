//! Where a step attempt's span sits in OpenTelemetry: one trace per task.
//!
//! A task's attempts run on any executor, batch or instance, at any time, so their spans share
//! no tracing parent. Instead each `step.attempt` span is parented on a *remote* span context
//! derived from the task id alone: the trace id and the parent span id are functions of the id,
//! so every process computes the same ones and no trace context is stored with the task. The
//! parent span itself is never exported; trace viewers show the attempts as the roots of the
//! task's trace (Jaeger notes the absent parent).
//!
//! Two deployments exporting to one collector number their tasks alike, so their task 42 would
//! share a trace. [`set_trace_seed`] separates them: `tasker run` on a temporary database seeds
//! it at random, since its task ids start at 1 every time.
//!
//! When no OpenTelemetry layer is installed this costs nothing beyond a disabled-span check.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tasker_types::TaskId;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static SEED: AtomicU64 = AtomicU64::new(0);

/// Mixes `seed` into every task's trace id and parent span id from now on, for this process.
/// Every process running steps of the same tasks must use the same seed (the default, 0, in
/// all of them). Set it before starting an engine.
pub fn set_trace_seed(seed: u64) {
    SEED.store(seed, Ordering::Relaxed);
}

/// The remote parent of every step attempt span of `task`: its trace id is the task's trace id.
/// Sampled, so parent-based samplers keep the attempts.
pub fn task_span_context(task: TaskId) -> SpanContext {
    seeded_context(task, SEED.load(Ordering::Relaxed))
}

fn seeded_context(task: TaskId, seed: u64) -> SpanContext {
    let id = u64::from_le_bytes(task.0.to_le_bytes()) ^ mix(seed);
    // `mix` is a bijection, so within one seed distinct task ids never share a trace id.
    let high = mix(id ^ 0x7461_736b_6572_0001);
    let low = mix(id ^ 0x7461_736b_6572_0002);
    let mut trace_id = (u128::from(high) << 64) | u128::from(low);
    if trace_id == 0 {
        trace_id = 1;
    }
    let span_id = mix(id ^ 0x7461_736b_6572_0003).max(1);
    SpanContext::new(
        TraceId::from(trace_id),
        SpanId::from(span_id),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    )
}

/// Puts `span` (an attempt of a step of `task`) in the task's trace. A no-op when the span is
/// disabled or no OpenTelemetry layer sees it.
pub(crate) fn join_task_trace(span: &tracing::Span, task: TaskId) {
    if span.is_disabled() {
        return;
    }
    let parent = opentelemetry::Context::new().with_remote_span_context(task_span_context(task));
    // Fails only when no OpenTelemetry layer sees the span: there is no trace to join then.
    let _ = span.set_parent(parent);
}

/// SplitMix64's finalizer: a bijection on `u64` that spreads every input bit over the output,
/// so trace ids look random (as ratio samplers assume) yet are reproducible.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_task_has_one_valid_sampled_remote_context_and_tasks_differ() {
        let a = task_span_context(TaskId(1));
        assert_eq!(a, task_span_context(TaskId(1)));
        assert!(a.is_valid() && a.is_sampled() && a.is_remote());
        let ids: HashSet<TraceId> = (-5..1000)
            .map(|i| task_span_context(TaskId(i)).trace_id())
            .collect();
        assert_eq!(ids.len(), 1005);
        assert!((-5..1000).all(|i| task_span_context(TaskId(i)).is_valid()));
    }

    #[test]
    fn the_seed_separates_deployments() {
        let unseeded = seeded_context(TaskId(42), 0);
        let seeded = seeded_context(TaskId(42), 7);
        assert_ne!(unseeded.trace_id(), seeded.trace_id());
        assert_ne!(unseeded.span_id(), seeded.span_id());
        assert_eq!(seeded, seeded_context(TaskId(42), 7));
    }
}
