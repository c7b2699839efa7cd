//! PostgreSQL applies a batch of step results with its own two statements (`move_steps` and
//! `apply_effects` of its `Backend`); the portable statements every backend may use do the
//! same in several. This test runs random workflows with random outcomes, batches, duplicates,
//! stale results and batches that claim the steps they make ready (chaining) through both on
//! two fresh databases, the same calls in the same order, and compares every row they leave:
//! steps, tasks, the audit trail and the queues.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::{collections::HashSet, sync::Arc, time::Duration};

use proptest::{collection::vec, prelude::*, test_runner::TestRunner};
use sqlx::{pool::PoolConnection, postgres::PgRow, PgConnection, Postgres, Transaction};
use tasker_store::{
    conformance::template, Capabilities, ConnectionPoolStats, QueueAckParams, QueueDequeueParams,
    Result, StepApplyResultsParams, StepChain, StepClaimParams, StepClaimed, StepResultApply,
    StepRouting, Store, StoreError, TaskCreateParams, TemplateRegisterParams,
};
use tasker_store_postgres::{test_database::TestDatabase, PgBackend, PgStoreOptions};
use tasker_store_sql::{Backend, Conn, NewTransition, Outbox, Sql, SqlStore};
use tasker_types::{settle, QueueMessage, StepEvent};

/// PostgreSQL with the portable `move_steps` and `apply_effects` (the trait's defaults); every
/// other operation is PostgreSQL's own.
#[derive(Debug)]
struct Portable(PgBackend);

impl Backend for Portable {
    type Db = Postgres;
    type Row = PgRow;
    const NAME: &'static str = PgBackend::NAME;
    const NOW_MS: &'static str = PgBackend::NOW_MS;

    fn map_err(err: sqlx::Error) -> StoreError {
        PgBackend::map_err(err)
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn connection_pool(&self) -> ConnectionPoolStats {
        self.0.connection_pool()
    }
    async fn begin_write(&self) -> Result<Transaction<'_, Postgres>> {
        self.0.begin_write().await
    }
    async fn read(&self) -> Result<PoolConnection<Postgres>> {
        self.0.read().await
    }
    async fn write(&self) -> Result<PoolConnection<Postgres>> {
        self.0.write().await
    }
    async fn fetch_all(conn: &mut PgConnection, sql: &Sql<'_>) -> Result<Vec<PgRow>> {
        PgBackend::fetch_all(conn, sql).await
    }
    async fn execute(conn: &mut PgConnection, sql: &Sql<'_>) -> Result<u64> {
        PgBackend::execute(conn, sql).await
    }
    async fn lock_tasks(conn: &mut Conn<Self>, ids: &[i64]) -> Result<()> {
        PgBackend::lock_tasks(conn, ids).await
    }
    async fn limit_lock_wait(conn: &mut PgConnection, wait: Duration) -> Result<()> {
        PgBackend::limit_lock_wait(conn, wait).await
    }
    async fn announce_enqueued(conn: &mut PgConnection, queue: &str) -> Result<()> {
        PgBackend::announce_enqueued(conn, queue).await
    }
    async fn write_effects(
        conn: &mut PgConnection,
        transitions: &[NewTransition<'_>],
        outbox: &Outbox,
        consumed: &[QueueAckParams],
        announce: &[String],
    ) -> Result<()> {
        PgBackend::write_effects(conn, transitions, outbox, consumed, announce).await
    }
    async fn dequeue_leased(&self, params: &QueueDequeueParams) -> Result<Vec<QueueMessage>> {
        self.0.dequeue_leased(params).await
    }
    async fn claim_steps(&self, params: &StepClaimParams) -> Result<Vec<StepClaimed>> {
        self.0.claim_steps(params).await
    }
    async fn wakeup_subscribe(&self) -> Result<Option<tokio::sync::mpsc::Receiver<String>>> {
        self.0.wakeup_subscribe().await
    }
    async fn close(&self) {
        self.0.close().await;
    }
}

/// Workflows (per task, per step, its parents among the earlier steps), the outcome of each
/// attempt in turn, and the sizes of the result batches in turn.
#[derive(Debug, Clone)]
struct Scenario {
    dags: Vec<Vec<Vec<usize>>>,
    outcomes: Vec<u8>,
    batches: Vec<usize>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let dag = (1usize..=6).prop_flat_map(|n| {
        vec(any::<u8>(), n).prop_map(|masks| {
            masks
                .iter()
                .enumerate()
                .map(|(i, mask)| (0..i).filter(|p| mask >> p & 1 == 1).collect())
                .collect()
        })
    });
    (vec(dag, 1..=4), vec(0u8..10, 64), vec(1usize..=5, 64)).prop_map(
        |(dags, outcomes, batches)| Scenario {
            dags,
            outcomes,
            batches,
        },
    )
}

fn yaml(k: usize, dag: &[Vec<usize>]) -> String {
    let mut y = format!("namespace: diff\nname: t{k}\nversion: 1.0.0\nsteps:\n");
    for (i, parents) in dag.iter().enumerate() {
        let deps: Vec<String> = parents.iter().map(|p| format!("s{p}")).collect();
        y.push_str(&format!(
            "- {{name: s{i}, handler: noop, depends_on: [{}], retry: {{max_attempts: 2, base_ms: 1, max_ms: 1}}}}\n",
            deps.join(", ")
        ));
    }
    y
}

/// Runs the scenario through `store`: creates the tasks started, then in rounds claims every
/// waiting step (and those the last round's batches claimed) and applies their outcomes in
/// batches. Returns how many steps result batches claimed.
async fn drive(store: &dyn Store, sc: &Scenario) -> usize {
    let routing = StepRouting {
        local_queue: "steps".into(),
        local_handlers: Arc::new(HashSet::from(["noop".to_owned()])),
    };
    let mut requests = Vec::new();
    for (k, dag) in sc.dags.iter().enumerate() {
        let t = template(&yaml(k, dag));
        let record = store
            .template_register(&TemplateRegisterParams {
                template: t.to_definition(),
            })
            .await
            .unwrap();
        requests.push(TaskCreateParams {
            template_id: record.id,
            steps: t.step_specs(),
            context: serde_json::json!({}),
            idempotency_key: None,
            priority: 0,
            instance_id: "diff".into(),
            start: Some(routing.clone()),
        });
    }
    store.task_create_many(&requests).await.unwrap();
    let mut outcomes = sc.outcomes.iter().cycle();
    let mut sizes = sc.batches.iter().cycle();
    // Steps that result batches claimed for the caller (chained), run in the next round.
    let mut chained: Vec<StepClaimed> = Vec::new();
    let mut chained_count = 0;
    for _ in 0..20 {
        let mut claimed = store
            .step_claim(&StepClaimParams {
                queue: "steps".into(),
                max: 1000,
                lease: Duration::from_secs(300),
                handlers: None,
                instance_id: "diff".into(),
                holder: "diff".into(),
            })
            .await
            .unwrap();
        claimed.append(&mut chained);
        if claimed.is_empty() {
            break;
        }
        claimed.sort_by_key(|s| s.step.id.0);
        let mut pending: Vec<StepResultApply> = Vec::new();
        let mut again: Vec<StepResultApply> = Vec::new();
        for s in &claimed {
            let outcome = *outcomes.next().unwrap();
            let event = match outcome {
                0..=5 | 9 => StepEvent::Complete,
                6 | 7 => settle::failure_event(&s.step, true),
                _ => settle::failure_event(&s.step, false),
            };
            let result = StepResultApply {
                task_id: s.step.task_id,
                step_id: s.step.id,
                attempt: s.step.attempts,
                event,
                output: (event == StepEvent::Complete)
                    .then(|| serde_json::json!({ "step": s.step.id.0 })),
                error: (event != StepEvent::Complete).then(|| format!("boom {}", s.step.id)),
                backoff: (event != StepEvent::Complete).then_some(Duration::from_millis(1)),
                // Half the results are fenced by their lease as well as their attempt.
                lease_token: (outcome % 2 == 0).then(|| s.lease_token.clone()),
                unchosen: Vec::new(),
                instances: Vec::new(),
            };
            if outcome == 9 {
                // Delivered twice, and once for an attempt that is not running.
                again.push(result.clone());
                again.push(StepResultApply {
                    attempt: result.attempt + 1,
                    ..result.clone()
                });
            }
            pending.push(result);
        }
        while !pending.is_empty() {
            let size = *sizes.next().unwrap();
            let take = size.min(pending.len());
            let mut results: Vec<_> = pending.drain(..take).collect();
            results.append(&mut again);
            // Every other batch size claims up to that many of the steps it makes ready.
            let chain = (size % 2 == 0).then(|| StepChain {
                queue: "steps".into(),
                max: u32::try_from(size).unwrap(),
                lease: Duration::from_secs(300),
            });
            let applied = store
                .step_apply_results(&StepApplyResultsParams {
                    results,
                    consumed: Vec::new(),
                    routing: routing.clone(),
                    evaluate_queue: "finalize".into(),
                    instance_id: "diff".into(),
                    chain,
                    lock_wait: None,
                })
                .await
                .unwrap();
            chained_count += applied.claimed.len();
            chained.extend(applied.claimed);
        }
    }
    chained_count
}

/// Every row the scenario left, without ids that depend on insert order within a statement
/// and without clock readings (kept as whether they are set).
async fn rows(url: &str) -> serde_json::Value {
    use sqlx::Connection;
    let mut conn = PgConnection::connect(url).await.unwrap();
    let mut all = serde_json::Map::new();
    for (table, sql) in [
        (
            "steps",
            "SELECT jsonb_agg(jsonb_build_object('id', id, 'task', task_id, 'name', name, \
               'state', state, 'attempts', attempts, 'pending', pending_parents, \
               'result', result, 'error', last_error, 'retry', next_attempt_at_ms IS NOT NULL, \
               'finished', finished_at_ms IS NOT NULL, 'queue', queue, \
               'leased', lease_token IS NOT NULL, 'visible', visible_at_ms IS NOT NULL) \
               ORDER BY id) FROM steps",
        ),
        (
            "tasks",
            "SELECT jsonb_agg(jsonb_build_object('id', id, 'state', state, \
               'unfinished', unfinished_steps, 'finished', finished_at_ms IS NOT NULL) \
               ORDER BY id) FROM tasks",
        ),
        (
            // Each task's and step's own transitions in the order they were written.
            "transitions",
            "SELECT jsonb_agg(jsonb_build_object('entity', entity, 'task', task_id, \
               'step', step_id, 'from', from_state, 'to', to_state, 'event', event, \
               'reason', reason, 'instance', instance_id) \
               ORDER BY task_id, step_id NULLS FIRST, id) FROM transitions",
        ),
        (
            "queue_messages",
            "SELECT jsonb_agg(jsonb_build_object('queue', queue, 'payload', payload, \
               'deliveries', deliveries, 'leased', lease_token IS NOT NULL) \
               ORDER BY queue, payload::text, deliveries) FROM queue_messages",
        ),
    ] {
        let value: Option<serde_json::Value> =
            sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
        all.insert(table.into(), value.unwrap_or_default());
    }
    serde_json::Value::Object(all)
}

#[test]
fn both_result_paths_leave_the_same_rows() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let completed = AtomicUsize::new(0);
    let chained = AtomicUsize::new(0);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 12,
        ..ProptestConfig::default()
    });
    runner
        .run(&scenario(), |sc| {
            rt.block_on(async {
                let own_db = TestDatabase::create().await.unwrap();
                let portable_db = TestDatabase::create().await.unwrap();
                let own = PgStoreOptions::new(&own_db.url).connect().await.unwrap();
                let portable = SqlStore::new(Portable(
                    PgStoreOptions::new(&portable_db.url)
                        .connect()
                        .await
                        .unwrap()
                        .into_backend(),
                ));
                let claimed = drive(&own, &sc).await;
                prop_assert_eq!(claimed, drive(&portable, &sc).await);
                chained.fetch_add(claimed, Ordering::Relaxed);
                own.close().await;
                portable.close().await;
                let (a, b) = (rows(&own_db.url).await, rows(&portable_db.url).await);
                own_db.drop_database().await.unwrap();
                portable_db.drop_database().await.unwrap();
                if a["tasks"].to_string().contains("\"Complete\"") {
                    completed.fetch_add(1, Ordering::Relaxed);
                }
                prop_assert_eq!(a, b);
                Ok(())
            })
        })
        .unwrap();
    assert!(
        completed.load(Ordering::Relaxed) > 0,
        "no scenario completed a task: the comparison saw only failures"
    );
    assert!(
        chained.load(Ordering::Relaxed) > 0,
        "no result batch claimed a step: chaining went untested"
    );
}
