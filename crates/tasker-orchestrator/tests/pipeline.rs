//! The whole pipeline, end to end, on both backends: tasks go from request to `Complete` (or
//! `Error`) through the five executor pools and in-process workers.

mod support;

use std::{collections::HashMap, sync::Arc, time::Duration};

use support::{postgres, register};
use tasker_orchestrator::{
    handler::HandlerRegistry, pipeline::messages::TaskRequest, runtime::pool::PoolConfig, Engine,
    EngineConfig, EngineEvent, ExecutorType,
};
use tasker_store::Store;
use tasker_store_postgres::PgStoreOptions;
use tasker_types::{Entity, TaskId, TaskState};

const DIAMOND: &str = "namespace: demo\nname: diamond\nversion: 1.0.0\nsteps:\n\
    - {name: start, handler: noop}\n- {name: left, handler: noop, depends_on: [start]}\n\
    - {name: right, handler: noop, depends_on: [start]}\n\
    - {name: join, handler: noop, depends_on: [left, right]}\n";

const FLAKY: &str = "namespace: demo\nname: flaky\nversion: 1.0.0\nsteps:\n\
    - {name: first, handler: noop}\n\
    - name: flaky\n  handler: {name: fail, config: {times: 2, retryable: true}}\n  depends_on: [first]\n  retry: {max_attempts: 5, base_ms: 1, max_ms: 5, jitter: false}\n\
    - {name: doomed, handler: {name: fail, config: {retryable: false}}, depends_on: [flaky]}\n";

async fn engine(store: Arc<dyn Store>) -> Engine {
    for t in [DIAMOND, FLAKY] {
        register(store.as_ref(), t).await;
    }
    let config = EngineConfig {
        ..EngineConfig::default()
    }
    .with_pools(|p: &mut PoolConfig| {
        p.min_executors = 2;
        p.max_executors = 2;
        p.batch_size = 100;
    });
    Engine::start(store, config, HandlerRegistry::with_builtins())
        .await
        .unwrap()
}

fn request(name: &str, key: Option<String>) -> TaskRequest {
    TaskRequest {
        idempotency_key: key,
        ..TaskRequest::new("demo", name, serde_json::json!({}))
    }
}

/// Waits (by event, with a deadline) until every task in `ids` has finished.
async fn wait_finished(
    events: &mut tokio::sync::broadcast::Receiver<EngineEvent>,
    engine: &Engine,
    ids: &[TaskId],
) -> HashMap<TaskId, TaskState> {
    let mut finished = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while finished.len() < ids.len() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(EngineEvent::TaskFinished { task_id, state })) => {
                finished.insert(task_id, state);
            }
            Ok(Ok(_)) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                // Missed events: read the truth from the store.
                for id in ids {
                    let t = engine.store().task_get(*id).await.unwrap();
                    if t.state.is_terminal() {
                        finished.insert(*id, t.state);
                    }
                }
            }
            Ok(Err(e)) => panic!("event stream closed: {e}"),
            Err(_) => panic!(
                "only {} of {} tasks finished in time",
                finished.len(),
                ids.len()
            ),
        }
    }
    finished
}

async fn thousand_diamonds_complete(store: Arc<dyn Store>) {
    let engine = engine(store.clone()).await;
    let mut events = engine.subscribe();
    let mut ids = Vec::new();
    for i in 0..1_000 {
        let created = engine
            .submit(&request("diamond", Some(format!("d{i}"))))
            .await
            .unwrap();
        ids.push(created.task.id);
    }
    let finished = wait_finished(&mut events, &engine, &ids).await;
    assert!(
        finished.values().all(|s| *s == TaskState::Complete),
        "{finished:?}"
    );
    for id in &ids {
        let task = store.task_get(*id).await.unwrap();
        assert_eq!(task.state, TaskState::Complete);
        let steps = store.step_list(*id).await.unwrap();
        assert!(steps
            .iter()
            .all(|s| s.state == tasker_types::StepState::Complete && s.attempts == 1));
        let log = store.transition_list(*id).await.unwrap();
        for step in &steps {
            let completes = log
                .iter()
                .filter(|t| {
                    t.entity == Entity::Step
                        && t.step_id == Some(step.id)
                        && t.to_state == "Complete"
                })
                .count();
            assert_eq!(completes, 1, "step {} of task {id}", step.name);
        }
    }
    engine.shutdown().await;
}

async fn retries_then_errors(store: Arc<dyn Store>) {
    let engine = engine(store.clone()).await;
    let mut events = engine.subscribe();
    let task = engine.submit(&request("flaky", None)).await.unwrap().task;
    let finished = wait_finished(&mut events, &engine, &[task.id]).await;
    assert_eq!(finished[&task.id], TaskState::Error);
    let steps: HashMap<String, _> = store
        .step_list(task.id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let flaky = &steps["flaky"];
    assert_eq!(
        (flaky.state, flaky.attempts),
        (tasker_types::StepState::Complete, 3)
    );
    assert_eq!(
        flaky.result,
        Some(serde_json::json!({"succeeded_on_attempt": 3}))
    );
    assert_eq!(
        (steps["doomed"].state, steps["doomed"].attempts),
        (tasker_types::StepState::Error, 1)
    );
    let waits = store
        .transition_list(task.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.step_id == Some(flaky.id) && t.to_state == "WaitingForRetry")
        .count();
    assert_eq!(waits, 2);
    engine.shutdown().await;
}

async fn queued_requests_are_processed(store: Arc<dyn Store>) {
    let engine = engine(store.clone()).await;
    let mut events = engine.subscribe();
    engine
        .enqueue_request(&request("diamond", Some("queued".into())))
        .await
        .unwrap();
    let finished = loop {
        match tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            EngineEvent::TaskFinished { task_id, state } => break (task_id, state),
            _ => continue,
        }
    };
    assert_eq!(finished.1, TaskState::Complete);
    let task = store.task_get(finished.0).await.unwrap();
    assert_eq!(task.idempotency_key.as_deref(), Some("queued"));
    engine.shutdown().await;
}

/// A step running far longer than the visibility timeout and the heartbeat timeout keeps its
/// lease and its worker: it completes in one attempt and nobody is replaced.
async fn long_steps_keep_their_lease(store: Arc<dyn Store>) {
    let slow = "namespace: demo\nname: slow\nversion: 1.0.0\nsteps:\n\
        - {name: wait, handler: {name: sleep, config: {ms: 1500}}}\n";
    register(store.as_ref(), slow).await;
    let mut config = EngineConfig {
        visibility_timeout: Duration::from_millis(300),
        ..EngineConfig::default()
    };
    config.coordinator.heartbeat_timeout = Duration::from_millis(500);
    config.coordinator.scaling.interval = Duration::from_millis(100);
    let engine = Engine::start(store.clone(), config, HandlerRegistry::with_builtins())
        .await
        .unwrap();
    let mut events = engine.subscribe();
    let task = engine.submit(&request("slow", None)).await.unwrap().task;
    let finished = wait_finished(&mut events, &engine, &[task.id]).await;
    assert_eq!(finished[&task.id], TaskState::Complete);
    let step = &store.step_list(task.id).await.unwrap()[0];
    assert_eq!(step.attempts, 1, "the lease held: no second attempt");
    engine.monitor_tick().await;
    let snapshot = engine.snapshot();
    assert_eq!(
        snapshot.pools[&ExecutorType::InProcessWorker].replaced,
        0,
        "a busy worker is not a dead one"
    );
    engine.shutdown().await;
}

on_both_backends!(
    thousand_diamonds_complete,
    retries_then_errors,
    queued_requests_are_processed,
    long_steps_keep_their_lease
);

/// PostgreSQL only (SQLite has no cross-process announcements, see `Capabilities`): a request
/// queued through a *different* connection pool, as another instance would, wakes this
/// engine's pools through LISTEN/NOTIFY long before their one-minute polling fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notify_wakes_pools_of_another_process() {
    let (store, db) = postgres().await;
    let config = EngineConfig {
        ..EngineConfig::default()
    }
    .with_pools(|p: &mut PoolConfig| p.polling_interval = Duration::from_secs(60));
    for t in [DIAMOND, FLAKY] {
        register(store.as_ref(), t).await;
    }
    let engine = Engine::start(store.clone(), config, HandlerRegistry::with_builtins())
        .await
        .unwrap();
    // Let every pool run its first batch and go to sleep on its 60 s poll.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut events = engine.subscribe();

    let other = PgStoreOptions::new(&db.url).connect().await.unwrap();
    let other: Arc<dyn Store> = Arc::new(other);
    other
        .queue_enqueue_many(&tasker_store::QueueEnqueueManyParams {
            queue: tasker_orchestrator::pipeline::messages::TASK_REQUESTS.into(),
            payloads: vec![
                serde_json::to_value(request("diamond", Some("remote".into()))).unwrap(),
            ],
            delay: Duration::ZERO,
        })
        .await
        .unwrap();
    let finished = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(EngineEvent::TaskFinished { state, .. }) = events.recv().await {
                return state;
            }
        }
    })
    .await
    .expect("woken by NOTIFY, not by the 60 s poll");
    assert_eq!(finished, TaskState::Complete);
    engine.shutdown().await;
    other.close().await;
    store.close().await;
    db.drop_database().await.unwrap();
}

/// PostgreSQL only (SQLite is one process by design): two engines, as two instances, share one
/// database. Tasks submitted to both all complete; every step ran exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_work_without_doubling_it() {
    let (store, db) = postgres().await;
    let first = engine(store.clone()).await;
    let second_store: Arc<dyn Store> =
        Arc::new(PgStoreOptions::new(&db.url).connect().await.unwrap());
    let second = engine(second_store.clone()).await;
    let mut events = first.subscribe();
    let mut ids = Vec::new();
    for i in 0..100 {
        let engine = if i % 2 == 0 { &first } else { &second };
        ids.push(
            engine
                .submit(&request("diamond", Some(format!("x{i}"))))
                .await
                .unwrap()
                .task
                .id,
        );
    }
    // Events reach only the instance that finalized a task: poll the store as the truth.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let done = store
            .task_list(&tasker_store::TaskListParams {
                state: Some(TaskState::Complete),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .len();
        if done == ids.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{done} of {} complete",
            ids.len()
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), events.recv()).await;
    }
    for id in &ids {
        let steps = store.step_list(*id).await.unwrap();
        assert!(
            steps.iter().all(|s| s.attempts == 1),
            "a step ran twice in task {id}"
        );
        let starts = store
            .transition_list(*id)
            .await
            .unwrap()
            .into_iter()
            .filter(|t| t.event == "start")
            .count();
        assert_eq!(starts, 4, "task {id}");
    }
    // Both instances did part of the work.
    let mut instances = std::collections::HashSet::new();
    for id in &ids {
        for t in store.transition_list(*id).await.unwrap() {
            instances.insert(t.instance_id);
        }
    }
    assert_eq!(instances.len(), 2, "{instances:?}");
    first.shutdown().await;
    second.shutdown().await;
    second_store.close().await;
    store.close().await;
    db.drop_database().await.unwrap();
}
