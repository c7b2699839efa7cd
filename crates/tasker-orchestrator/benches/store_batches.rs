//! Batched store operations on both backends, the statements the pipeline's hot path is made
//! of: enqueue 100 messages, lease and consume 100, create 100 tasks, claim 50 steps (their
//! attempts started), apply 50 results, each one call (one transaction).
//!
//! `cargo bench -p tasker-orchestrator --bench store_batches`; figures go to BENCHMARKS.md.
//! PostgreSQL runs need `TASKER_TEST_DATABASE_URL` (an admin URL, as for the tests) and are
//! skipped, saying so, without it.

// criterion_group! and criterion_main! generate undocumented items.
#![allow(missing_docs)]

use std::{collections::HashSet, sync::Arc, time::Duration};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;
use tasker_store::{
    QueueAckParams, QueueDequeueParams, QueueEnqueueManyParams, QueueForwardParams,
    StepApplyResultsParams, StepClaimParams, StepClaimed, StepResultApply, StepRouting, Store,
    TaskCreateParams, TemplateRegisterParams,
};
use tasker_store_postgres::{test_database::TestDatabase, PgStoreOptions};
use tasker_store_sqlite::SqliteStoreOptions;
use tasker_template::TaskTemplate;
use tasker_types::{QueueMessage, StepEvent};

const MESSAGES: usize = 100;
const TASKS: usize = 100;
const STEPS: usize = 50;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn routing() -> StepRouting {
    StepRouting {
        local_queue: "bench.local".into(),
        local_handlers: Arc::new(HashSet::from(["noop".to_owned()])),
    }
}

/// Registers the one-step template; returns the creation parameters of one task.
async fn task_params(store: &dyn Store) -> TaskCreateParams {
    let template = TaskTemplate::from_yaml_str(
        "namespace: bench\nname: single\nversion: 1.0.0\nsteps:\n- {name: only, handler: noop}\n",
        "bench",
    )
    .expect("bench template");
    let record = store
        .template_register(&TemplateRegisterParams {
            template: template.to_definition(),
        })
        .await
        .expect("register");
    TaskCreateParams {
        template_id: record.id,
        steps: template.step_specs(),
        context: json!({}),
        idempotency_key: None,
        priority: 0,
        instance_id: "bench".into(),
        start: Some(routing()),
    }
}

fn dequeue(max: usize) -> QueueDequeueParams {
    QueueDequeueParams {
        queue: "bench.messages".into(),
        max: u32::try_from(max).unwrap_or(u32::MAX),
        visibility_timeout: Duration::from_secs(300),
        max_deliveries: 5,
        holder: "conformance".into(),
    }
}

/// Deletes leased messages (`queue_forward` producing nothing).
async fn consume(store: &dyn Store, messages: &[QueueMessage]) {
    let consumed = messages
        .iter()
        .map(|m| QueueAckParams {
            id: m.id,
            lease_token: m.lease_token.clone(),
        })
        .collect();
    store
        .queue_forward(&QueueForwardParams {
            consumed,
            queue: "bench.sink".into(),
            payloads: Vec::new(),
            settled: Vec::new(),
            settle_within: Duration::ZERO,
        })
        .await
        .expect("consume");
}

/// Creates `n` started one-step tasks: their steps wait in `bench.local`.
async fn waiting_steps(store: &dyn Store, params: &TaskCreateParams, n: usize) {
    store
        .task_create_many(&vec![params.clone(); n])
        .await
        .expect("create");
}

/// Claims up to `n` steps of `bench.local`.
async fn claim(store: &dyn Store, n: usize) -> Vec<StepClaimed> {
    store
        .step_claim(&StepClaimParams {
            queue: "bench.local".into(),
            max: u32::try_from(n).expect("a small batch"),
            lease: Duration::from_secs(300),
            handlers: None,
            instance_id: "bench".into(),
            holder: "bench".into(),
        })
        .await
        .expect("claim")
}

fn bench_backend(c: &mut Criterion, rt: &tokio::runtime::Runtime, store: &Arc<dyn Store>) {
    let name = store.backend_name();
    let s = store.as_ref();
    let params = rt.block_on(task_params(s));
    let mut group = c.benchmark_group(format!("store_{name}"));
    group.sample_size(20);

    group.throughput(Throughput::Elements(MESSAGES as u64));
    let payloads: Vec<_> = (0..MESSAGES).map(|i| json!({ "i": i })).collect();
    group.bench_function("queue_enqueue_many_100", |b| {
        b.iter(|| {
            rt.block_on(s.queue_enqueue_many(&QueueEnqueueManyParams {
                queue: "bench.q".into(),
                payloads: payloads.clone(),
                delay: Duration::ZERO,
            }))
            .expect("enqueue")
        });
    });
    group.bench_function("queue_dequeue_and_consume_100", |b| {
        b.iter_batched(
            || {
                rt.block_on(s.queue_enqueue_many(&QueueEnqueueManyParams {
                    queue: "bench.messages".into(),
                    payloads: payloads.clone(),
                    delay: Duration::ZERO,
                }))
                .expect("enqueue")
            },
            |_| {
                rt.block_on(async {
                    let messages = s.queue_dequeue(&dequeue(MESSAGES)).await.expect("dequeue");
                    assert_eq!(messages.len(), MESSAGES);
                    consume(s, &messages).await;
                })
            },
            BatchSize::PerIteration,
        );
    });

    group.throughput(Throughput::Elements(STEPS as u64));
    group.bench_function("step_claim_50", |b| {
        b.iter_batched(
            || rt.block_on(waiting_steps(s, &params, STEPS)),
            |()| assert_eq!(rt.block_on(claim(s, STEPS)).len(), STEPS),
            BatchSize::PerIteration,
        );
    });
    group.bench_function("step_apply_results_50", |b| {
        b.iter_batched(
            || {
                rt.block_on(async {
                    waiting_steps(s, &params, STEPS).await;
                    claim(s, STEPS)
                        .await
                        .into_iter()
                        .map(|st| StepResultApply {
                            task_id: st.step.task_id,
                            step_id: st.step.id,
                            attempt: st.step.attempts,
                            event: StepEvent::Complete,
                            output: Some(json!({})),
                            error: None,
                            backoff: None,
                            lease_token: Some(st.lease_token),
                            unchosen: Vec::new(),
                            instances: Vec::new(),
                        })
                        .collect::<Vec<_>>()
                })
            },
            |results| {
                let applied = rt
                    .block_on(s.step_apply_results(&StepApplyResultsParams {
                        results,
                        consumed: Vec::new(),
                        routing: routing(),
                        evaluate_queue: "bench.evaluate".into(),
                        instance_id: "bench".into(),
                        chain: None,
                        lock_wait: None,
                    }))
                    .expect("apply");
                assert_eq!(applied.finished.len(), STEPS);
            },
            BatchSize::PerIteration,
        );
    });
    // Last: the steps of the tasks it creates stay queued.
    group.throughput(Throughput::Elements(TASKS as u64));
    let many = vec![params.clone(); TASKS];
    group.bench_function("task_create_many_100_started", |b| {
        b.iter(|| rt.block_on(s.task_create_many(&many)).expect("create"));
    });
    group.finish();
}

fn store_batches(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let sqlite: Arc<dyn Store> = Arc::new(
        rt.block_on(SqliteStoreOptions::new(dir.path().join("bench.db")).open())
            .expect("open SQLite"),
    );
    bench_backend(c, &rt, &sqlite);
    rt.block_on(sqlite.close());

    match rt.block_on(TestDatabase::create()) {
        Ok(db) => {
            let pg: Arc<dyn Store> = Arc::new(
                rt.block_on(PgStoreOptions::new(&db.url).connect())
                    .expect("connect PostgreSQL"),
            );
            bench_backend(c, &rt, &pg);
            rt.block_on(pg.close());
            rt.block_on(db.drop_database())
                .expect("drop the bench database");
        }
        Err(error) => eprintln!("skipping the PostgreSQL benchmarks: {error}"),
    }
}

criterion_group!(benches, store_batches);
criterion_main!(benches);
