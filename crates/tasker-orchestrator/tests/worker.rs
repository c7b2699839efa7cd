//! The in-process worker, through a real engine on both backends: handlers run on tasks of
//! their own, so a slow handler keeps its lease and does not hold back the results of the fast
//! ones, and a handler that panics fails its step instead of taking the worker down.

mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use serde_json::Value;
use support::register;
use tasker_orchestrator::{
    handler::{HandlerRegistry, StepFailure, StepHandler, StepInput},
    pipeline::messages::{TaskRequest, LOCAL_STEPS},
    Engine, EngineConfig, ExecutorType,
};
use tasker_store::Store;
use tasker_types::{StepRow, StepState, TaskId, TaskState};
use tokio::sync::watch;

/// Long enough for anything here to happen on a slow machine; reaching it fails the test.
const PATIENCE: Duration = Duration::from_secs(30);

/// A handler that holds its attempt until the test opens it, telling when it started.
#[derive(Debug)]
struct Gate {
    started: watch::Sender<bool>,
    open: watch::Sender<bool>,
    calls: AtomicUsize,
}

impl Gate {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            started: watch::Sender::new(false),
            open: watch::Sender::new(false),
            calls: AtomicUsize::new(0),
        })
    }

    async fn wait_started(&self) {
        let mut started = self.started.subscribe();
        tokio::time::timeout(PATIENCE, started.wait_for(|s| *s))
            .await
            .expect("the gated handler never started")
            .unwrap();
    }

    fn open(&self) {
        self.open.send_replace(true);
    }
}

#[async_trait]
impl StepHandler for Gate {
    async fn call(&self, _input: StepInput) -> Result<Value, StepFailure> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.started.send_replace(true);
        let mut open = self.open.subscribe();
        open.wait_for(|o| *o)
            .await
            .map_err(|_| StepFailure::permanent("gate dropped"))?;
        Ok(serde_json::json!({"gated": true}))
    }
}

/// A handler that returns only once the gate's handler is running: its step and the gated one
/// run at the same time, so with one worker executor they are in one batch.
#[derive(Debug)]
struct AlongsideGate(Arc<Gate>);

#[async_trait]
impl StepHandler for AlongsideGate {
    async fn call(&self, _input: StepInput) -> Result<Value, StepFailure> {
        let mut started = self.0.started.subscribe();
        let alongside = tokio::time::timeout(PATIENCE, started.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok());
        if alongside {
            Ok(serde_json::json!({"fast": true}))
        } else {
            Err(StepFailure::permanent("the gated step never ran alongside"))
        }
    }
}

/// A handler that panics.
#[derive(Debug)]
struct Panics;

#[async_trait]
impl StepHandler for Panics {
    async fn call(&self, _input: StepInput) -> Result<Value, StepFailure> {
        panic!("boom in a handler");
    }
}

fn registry(gate: &Arc<Gate>) -> HandlerRegistry {
    let mut handlers = HandlerRegistry::with_builtins();
    handlers.register("gate", gate.clone());
    handlers.register("alongside_gate", Arc::new(AlongsideGate(gate.clone())));
    handlers.register("panics", Arc::new(Panics));
    handlers
}

/// An engine with `workers` in-process worker executors that poll often, so a message whose
/// lease lapsed would soon be taken by another one.
async fn engine(
    store: &Arc<dyn Store>,
    gate: &Arc<Gate>,
    workers: usize,
    visibility_timeout: Duration,
) -> Engine {
    let mut config = EngineConfig {
        visibility_timeout,
        ..EngineConfig::default()
    };
    config.worker_pool.min_executors = workers;
    config.worker_pool.max_executors = workers;
    config.worker_pool.polling_interval = Duration::from_millis(20);
    // A worker whose loop died would be replaced only after this: far beyond these tests.
    config.coordinator.heartbeat_timeout = Duration::from_secs(600);
    Engine::start(store.clone(), config, registry(gate))
        .await
        .unwrap()
}

async fn submit(engine: &Engine, name: &str) -> TaskId {
    engine
        .submit(&TaskRequest::new("workers", name, serde_json::json!({})))
        .await
        .unwrap()
        .task
        .id
}

/// Polls the store until `done` holds for the task's steps.
async fn wait_steps(
    store: &Arc<dyn Store>,
    task: TaskId,
    what: &str,
    done: impl Fn(&[StepRow]) -> bool,
) -> Vec<StepRow> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let steps = store.step_list(task).await.unwrap();
        if done(&steps) {
            return steps;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not in time; steps: {:?}",
            steps.iter().map(|s| (&s.name, s.state)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_task(store: &Arc<dyn Store>, task: TaskId) -> TaskState {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let state = store.task_get(task).await.unwrap().state;
        if state.is_terminal() {
            return state;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {task} still {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Transitions of one step whose event is `event`.
async fn events_of(store: &Arc<dyn Store>, step: &StepRow, event: &str) -> usize {
    store
        .transition_list(step.task_id)
        .await
        .unwrap()
        .iter()
        .filter(|t| t.step_id == Some(step.id) && t.event == event)
        .count()
}

/// Three steps of one batch held far past the visibility timeout keep their leases (extended,
/// never claimable by the other worker executor) and each completes after exactly one
/// attempt.
async fn held_steps_keep_their_leases(store: Arc<dyn Store>) {
    register(
        store.as_ref(),
        "namespace: workers\nname: held\nversion: 1.0.0\nsteps:\n\
         - {name: a, handler: gate}\n- {name: b, handler: gate}\n- {name: c, handler: gate}\n",
    )
    .await;
    let gate = Gate::new();
    // Extended every third of it; short enough to lapse several times while held, long enough
    // that a busy test machine does not make an extension late.
    let visibility = Duration::from_secs(1);
    let engine = engine(&store, &gate, 2, visibility).await;
    let task = submit(&engine, "held").await;
    wait_steps(&store, task, "all three running", |steps| {
        steps.iter().all(|s| s.state == StepState::InProgress)
    })
    .await;
    gate.wait_started().await;
    // Three visibility timeouts: without extensions the messages would be visible again and
    // the other executor (polling every 20 ms) would start second attempts.
    for check in 0..12 {
        tokio::time::sleep(visibility / 4).await;
        let depth = store.queue_depth(LOCAL_STEPS).await.unwrap();
        assert_eq!(
            (depth.ready, depth.invisible),
            (0, 3),
            "every message stays leased (check {check})"
        );
    }
    assert_eq!(gate.calls.load(Ordering::SeqCst), 3, "one call per step");
    gate.open();
    assert_eq!(wait_task(&store, task).await, TaskState::Complete);
    for step in store.step_list(task).await.unwrap() {
        assert_eq!((step.state, step.attempts), (StepState::Complete, 1));
        assert_eq!(events_of(&store, &step, "start").await, 1, "{}", step.name);
        assert_eq!(
            events_of(&store, &step, "fail_retryable").await,
            0,
            "no attempt reported lost: {}",
            step.name
        );
    }
    assert_eq!(gate.calls.load(Ordering::SeqCst), 3, "no step ran twice");
    let depth = store.queue_depth(LOCAL_STEPS).await.unwrap();
    assert_eq!((depth.ready, depth.invisible, depth.dead), (0, 0, 0));
    engine.shutdown().await;
}

/// With one worker executor, a slow step and three fast ones run in one batch; the fast
/// results are applied (Complete in the store) while the slow handler still runs, and the slow
/// step then completes too, once.
async fn fast_results_do_not_wait_for_a_slow_handler(store: Arc<dyn Store>) {
    register(
        store.as_ref(),
        "namespace: workers\nname: mixed\nversion: 1.0.0\nsteps:\n\
         - {name: slow, handler: gate}\n- {name: fast_a, handler: alongside_gate}\n\
         - {name: fast_b, handler: alongside_gate}\n- {name: fast_c, handler: alongside_gate}\n",
    )
    .await;
    let gate = Gate::new();
    let engine = engine(&store, &gate, 1, Duration::from_secs(30)).await;
    let task = submit(&engine, "mixed").await;
    let steps = wait_steps(&store, task, "fast steps applied", |steps| {
        steps
            .iter()
            .filter(|s| s.name != "slow")
            .all(|s| s.state == StepState::Complete)
    })
    .await;
    let slow = steps.iter().find(|s| s.name == "slow").unwrap();
    assert_eq!(
        slow.state,
        StepState::InProgress,
        "the slow handler still runs"
    );
    assert!(
        !*gate.open.borrow(),
        "the fast results were applied before the slow handler was let go"
    );
    gate.open();
    assert_eq!(wait_task(&store, task).await, TaskState::Complete);
    for step in store.step_list(task).await.unwrap() {
        assert_eq!(
            (step.state, step.attempts),
            (StepState::Complete, 1),
            "{}",
            step.name
        );
        assert_eq!(events_of(&store, &step, "start").await, 1, "{}", step.name);
    }
    assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
    engine.shutdown().await;
}

/// A handler that panics fails its attempt with an error naming the panic (retried by its
/// policy, then `Error`), and the one worker executor goes on to run the next task.
async fn a_panicking_handler_fails_its_step(store: Arc<dyn Store>) {
    register(
        store.as_ref(),
        "namespace: workers\nname: panics\nversion: 1.0.0\nsteps:\n\
         - {name: boom, handler: panics, retry: {max_attempts: 2, base_ms: 1, max_ms: 1, jitter: false}}\n",
    )
    .await;
    register(
        store.as_ref(),
        "namespace: workers\nname: after\nversion: 1.0.0\nsteps:\n\
         - {name: one, handler: noop}\n- {name: two, handler: noop, depends_on: [one]}\n",
    )
    .await;
    let gate = Gate::new();
    let engine = engine(&store, &gate, 1, Duration::from_secs(30)).await;
    let task = submit(&engine, "panics").await;
    assert_eq!(wait_task(&store, task).await, TaskState::Error);
    let step = &store.step_list(task).await.unwrap()[0];
    assert_eq!((step.state, step.attempts), (StepState::Error, 2));
    let error = step.last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("panicked") && error.contains("boom in a handler"),
        "{error:?}"
    );
    assert_eq!(events_of(&store, step, "start").await, 2);
    // The same (only) worker executor runs the next task.
    let next = submit(&engine, "after").await;
    assert_eq!(wait_task(&store, next).await, TaskState::Complete);
    engine.monitor_tick().await;
    let workers = &engine.snapshot().pools[&ExecutorType::InProcessWorker];
    assert_eq!(
        (workers.replaced, workers.errors),
        (0, 0),
        "no worker died or failed a batch"
    );
    assert_eq!(
        workers.executors.iter().map(|e| e.id).collect::<Vec<_>>(),
        [1]
    );
    let depth = store.queue_depth(LOCAL_STEPS).await.unwrap();
    assert_eq!(
        (depth.ready, depth.invisible, depth.dead),
        (0, 0, 0),
        "every message acknowledged"
    );
    engine.shutdown().await;
}

on_both_backends!(
    held_steps_keep_their_leases,
    fast_results_do_not_wait_for_a_slow_handler,
    a_panicking_handler_fails_its_step
);
