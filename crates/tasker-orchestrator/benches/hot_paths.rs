//! Hot paths of the executor system: metric recording (and the lock choice behind it), the
//! backoff function, the finalizer's verdict and a state transition.
//!
//! `cargo bench -p tasker-orchestrator --bench hot_paths`; figures go to BENCHMARKS.md.

// criterion_group! and criterion_main! generate undocumented items.
#![allow(missing_docs)]

use std::{hint::black_box, sync::Arc, time::Duration};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tasker_orchestrator::{pipeline::backoff, runtime::metrics::ExecutorMetrics};
use tasker_types::{settle::verdict, StepEvent, StepId, StepRow, StepState, TaskId};

const RECORDS_PER_THREAD: u64 = 20_000;

/// `threads` threads each record `RECORDS_PER_THREAD` batches, into their own metrics
/// (`shared == false`, the design) or into one set shared by all (`shared == true`, one lock
/// for everybody).
fn record_concurrently(threads: usize, shared: bool) {
    let common = Arc::new(ExecutorMetrics::default());
    std::thread::scope(|scope| {
        for t in 0..threads {
            let metrics = if shared {
                common.clone()
            } else {
                Arc::new(ExecutorMetrics::default())
            };
            scope.spawn(move || {
                for i in 0..RECORDS_PER_THREAD {
                    metrics.record_batch(
                        Duration::from_micros(50 + (i % 500) + t as u64),
                        10,
                        false,
                    );
                }
            });
        }
    });
}

fn metrics(c: &mut Criterion) {
    let single = ExecutorMetrics::default();
    c.bench_function("metrics/record_batch", |b| {
        let mut i = 0_u64;
        b.iter(|| {
            i = i.wrapping_add(1);
            single.record_batch(Duration::from_micros(black_box(100 + i % 1000)), 10, false);
        });
    });

    let mut group = c.benchmark_group("metrics/lock_choice");
    group.sample_size(20);
    for threads in [2_usize, 4] {
        group.throughput(Throughput::Elements(RECORDS_PER_THREAD * threads as u64));
        group.bench_with_input(
            BenchmarkId::new("per_executor", threads),
            &threads,
            |b, &n| {
                b.iter(|| record_concurrently(n, false));
            },
        );
        group.bench_with_input(
            BenchmarkId::new("one_shared", threads),
            &threads,
            |b, &n| {
                b.iter(|| record_concurrently(n, true));
            },
        );
    }
    group.finish();
}

fn policies(c: &mut Criterion) {
    c.bench_function("backoff/delay", |b| {
        b.iter(|| {
            backoff::delay(
                black_box(7),
                Duration::from_millis(100),
                Duration::from_secs(30),
                true,
                black_box(0.37),
            )
        });
    });
    c.bench_function("state/step_transition", |b| {
        b.iter(|| {
            black_box(StepState::InProgress)
                .transition(black_box(StepEvent::Fail { will_retry: true }))
        });
    });
    let steps: Vec<StepRow> = (0..100)
        .map(|i| StepRow {
            id: StepId(i),
            task_id: TaskId(1),
            name: format!("s{i}"),
            handler: "noop".into(),
            handler_config: serde_json::Value::Null,
            state: if i < 60 {
                StepState::Complete
            } else if i < 70 {
                StepState::InProgress
            } else {
                StepState::Pending
            },
            queue: None,
            attempts: 1,
            max_attempts: 3,
            retry_base_ms: 100,
            retry_max_ms: 1000,
            retry_jitter: true,
            pending_parents: u32::from(i >= 75),
            live_parents: 0,
            branches: None,
            map: None,
            map_instance: None,
            next_attempt_at_ms: None,
            timeout_ms: None,
            result: None,
            last_error: None,
            started_at_ms: None,
            finished_at_ms: None,
        })
        .collect();
    c.bench_function("finalizer/verdict_100_steps", |b| {
        b.iter(|| verdict(black_box(&steps)))
    });
}

criterion_group!(benches, metrics, policies);
criterion_main!(benches);
