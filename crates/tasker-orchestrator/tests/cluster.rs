//! Instances sharing one database, through a real engine on both backends: an engine
//! registers and heartbeats, fails a silent instance over (its leases end at once, so its
//! running steps run elsewhere, each lost attempt settled by the retry policy), and leaves the
//! cluster when it stops.

mod support;

use std::{collections::HashSet, sync::Arc, time::Duration};

use tasker_orchestrator::{
    handler::{HandlerRegistry, StepFailure, StepHandler, StepInput},
    pipeline::messages::{TaskRequest, LOCAL_STEPS},
    runtime::membership::{ClusterConfig, RetentionConfig},
    Engine, EngineConfig,
};
use tasker_store::{
    InstanceRegisterParams, StepClaimParams, StepRouting, Store, TaskCreateParams,
    TemplateRegisterParams,
};
use tasker_template::TaskTemplate;
use tasker_types::{InstanceState, StepState, TaskState};

/// Long enough for anything here to happen on a slow machine; reaching it fails the test.
const PATIENCE: Duration = Duration::from_secs(30);

/// Heartbeats every 100 ms, dead after 500 ms: a cluster that heals within a test.
fn fast_cluster() -> ClusterConfig {
    ClusterConfig {
        heartbeat: Duration::from_millis(100),
        dead_after: Duration::from_millis(500),
        ..ClusterConfig::default()
    }
}

/// A step held by an instance that stopped heartbeating runs again on another instance soon
/// after the silent one is declared dead, not after its lease (ten minutes here).
async fn a_silent_instance_is_failed_over_and_its_steps_run_elsewhere(store: Arc<dyn Store>) {
    let template = TaskTemplate::from_yaml_str(
        "namespace: cluster\nname: failover\nversion: 1.0.0\nsteps:\n\
         - {name: only, handler: noop, retry: {max_attempts: 3, base_ms: 10, max_ms: 10}}\n",
        "test",
    )
    .unwrap();
    let record = store
        .template_register(&TemplateRegisterParams {
            template: template.to_definition(),
        })
        .await
        .unwrap();
    let task = store
        .task_create(&TaskCreateParams {
            template_id: record.id,
            steps: template.step_specs(),
            context: serde_json::json!({}),
            idempotency_key: None,
            priority: 0,
            instance_id: "ghost".into(),
            start: Some(StepRouting {
                local_queue: LOCAL_STEPS.into(),
                local_handlers: Arc::new(HashSet::from(["noop".to_owned()])),
            }),
        })
        .await
        .unwrap()
        .task;
    // The ghost registers, claims the step for ten minutes, and falls silent.
    store
        .instance_register(&InstanceRegisterParams {
            id: "ghost".into(),
            host: "elsewhere".into(),
            pid: 1,
            version: "0.0.0".into(),
            connections: 0,
        })
        .await
        .unwrap();
    let held = store
        .step_claim(&StepClaimParams {
            queue: LOCAL_STEPS.into(),
            max: 1,
            lease: Duration::from_secs(600),
            handlers: None,
            instance_id: "ghost".into(),
            holder: "ghost".into(),
        })
        .await
        .unwrap();
    assert_eq!(held.len(), 1);

    let config = EngineConfig {
        cluster: fast_cluster(),
        ..EngineConfig::default()
    };
    let started = tokio::time::Instant::now();
    let engine = Engine::start(store.clone(), config, HandlerRegistry::with_builtins())
        .await
        .unwrap();
    let own = store.instance_list().await.unwrap();
    assert!(
        own.iter()
            .any(|i| i.state == InstanceState::Running && i.id != "ghost"),
        "the engine registered: {own:?}"
    );
    loop {
        let state = store.task_get(task.id).await.unwrap().state;
        if state.is_terminal() {
            assert_eq!(state, TaskState::Complete);
            break;
        }
        assert!(started.elapsed() < PATIENCE, "task still {state}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failover = started.elapsed();
    assert!(
        failover < Duration::from_secs(10),
        "the step ran again {failover:?} after the engine started"
    );
    let step = &store.step_list(task.id).await.unwrap()[0];
    assert_eq!((step.state, step.attempts), (StepState::Complete, 2));
    let events: Vec<String> = store
        .transition_list(task.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.step_id == Some(step.id))
        .map(|t| t.event)
        .collect();
    assert_eq!(
        events,
        [
            "create",
            "enqueue",
            "start",
            "fail_retryable",
            "enqueue",
            "start",
            "complete"
        ],
        "the ghost's attempt reported lost, then run again"
    );
    let ids: Vec<String> = store
        .instance_list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert!(
        !ids.iter().any(|id| id == "ghost"),
        "the ghost was declared dead: {ids:?}"
    );
    assert_eq!(ids.len(), 1);

    engine.shutdown().await;
    assert!(
        store.instance_list().await.unwrap().is_empty(),
        "a stopped engine leaves the cluster"
    );
}

/// Two engines on one database: exactly one leads at every sampled moment; when the leader
/// stops, the other takes over with the next epoch within a few heartbeats.
async fn one_leader_at_a_time_and_a_takeover_when_it_stops(store: Arc<dyn Store>) {
    let config = EngineConfig {
        cluster: fast_cluster(),
        ..EngineConfig::default()
    };
    // Each its own instance (a configuration's default id is made once).
    let start = |id: &str| {
        let config = EngineConfig {
            instance_id: id.to_owned(),
            ..config.clone()
        };
        Engine::start(store.clone(), config, HandlerRegistry::with_builtins())
    };
    let engines = [
        start("instance-1").await.unwrap(),
        start("instance-2").await.unwrap(),
    ];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let (leader, epoch) = loop {
        let view = engines[0].cluster().await.unwrap();
        if let Some(leader) = view.leader {
            break (leader, view.leader_epoch);
        }
        assert!(tokio::time::Instant::now() < deadline, "nobody leads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // What each instance believes, as its metrics say: 1 leading, 0 not.
    let leads = |engine: &Engine| {
        let metrics = engine.metrics().render();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("tasker_cluster_leader "))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no leader gauge: {metrics}"))
    };
    for _ in 0..10 {
        for engine in &engines {
            let view = engine.cluster().await.unwrap();
            assert_eq!(view.leader.as_deref(), Some(leader.as_str()), "one leader");
            assert_eq!(view.leader_epoch, epoch);
            let believed = if engine.instance_id() == leader {
                "1"
            } else {
                "0"
            };
            assert_eq!(leads(engine), believed, "{}", engine.instance_id());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (leading, other): (Vec<&Engine>, Vec<&Engine>) =
        engines.iter().partition(|e| e.instance_id() == leader);
    leading[0].shutdown().await;
    let stopped = tokio::time::Instant::now();
    loop {
        let view = other[0].cluster().await.unwrap();
        if view.leader.as_deref() == Some(other[0].instance_id()) {
            assert!(view.leader_epoch > epoch, "a new epoch: {view:?}");
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "no takeover: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    other[0].shutdown().await;
}

/// A step handler that waits until the test opens it.
#[derive(Debug)]
struct Gate(tokio::sync::watch::Sender<bool>);

#[async_trait::async_trait]
impl StepHandler for Gate {
    async fn call(&self, _input: StepInput) -> Result<serde_json::Value, StepFailure> {
        let mut open = self.0.subscribe();
        open.wait_for(|o| *o)
            .await
            .map_err(|_| StepFailure::permanent("gate dropped"))?;
        Ok(serde_json::json!({}))
    }
}

/// Starts an engine of `config` with a `gate` handler, submits a task of one gated step
/// (template `cluster/<name>`), and waits until the step runs, held at the gate.
async fn a_gated_step_running(
    store: &Arc<dyn Store>,
    name: &str,
    config: EngineConfig,
) -> (Engine, Arc<Gate>, tasker_types::TaskId) {
    support::register(
        store.as_ref(),
        &format!(
            "namespace: cluster\nname: {name}\nversion: 1.0.0\nsteps:\n\
             - {{name: held, handler: gate}}\n"
        ),
    )
    .await;
    let gate = Arc::new(Gate(tokio::sync::watch::Sender::new(false)));
    let mut handlers = HandlerRegistry::with_builtins();
    handlers.register("gate", gate.clone());
    let engine = Engine::start(store.clone(), config, handlers)
        .await
        .unwrap();
    let task = engine
        .submit(&TaskRequest::new("cluster", name, serde_json::json!({})))
        .await
        .unwrap()
        .task;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while store.step_list(task.id).await.unwrap()[0].state != StepState::InProgress {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the step never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (engine, gate, task.id)
}

/// A stopping engine reports `Draining` (heartbeating on) while its in-flight step finishes,
/// then completes it and leaves the cluster.
async fn a_stopping_instance_drains_then_leaves(store: Arc<dyn Store>) {
    let config = EngineConfig {
        cluster: fast_cluster(),
        ..EngineConfig::default()
    };
    let (engine, gate, task_id) = a_gated_step_running(&store, "drain", config).await;
    let engine = Arc::new(engine);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let stopping = tokio::spawn({
        let engine = engine.clone();
        async move { engine.shutdown().await }
    });
    loop {
        let instances = store.instance_list().await.unwrap();
        if instances.first().map(|i| i.state) == Some(InstanceState::Draining) {
            // Heartbeats go on while it drains: it is not declared dead.
            tokio::time::sleep(Duration::from_millis(700)).await;
            let still = store.instance_list().await.unwrap();
            assert_eq!(still.len(), 1, "draining, not dead: {still:?}");
            assert_eq!(still[0].state, InstanceState::Draining);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never draining: {instances:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.0.send_replace(true);
    stopping.await.unwrap();
    assert_eq!(
        store.task_get(task_id).await.unwrap().state,
        TaskState::Complete,
        "the in-flight step finished before the instance left"
    );
    assert!(store.instance_list().await.unwrap().is_empty(), "it left");
}

/// A step that outlasts the shutdown grace is aborted when the grace runs out, whatever the
/// pools' own stop timeout, and its lease is released on the way out: the next claimer has it
/// at once, reporting the attempt lost.
async fn a_stopping_instance_aborts_what_outlasts_its_grace(store: Arc<dyn Store>) {
    let config = EngineConfig {
        cluster: fast_cluster(),
        shutdown_grace: Duration::from_millis(300),
        ..EngineConfig::default()
    }
    .with_pools(|p| p.stop_timeout = Duration::from_secs(60));
    let (engine, gate, _) = a_gated_step_running(&store, "stuck", config).await;
    let stopping = tokio::time::Instant::now();
    engine.shutdown().await;
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the grace, not the 60 s stop timeout, bounded the drain: {took:?}"
    );
    let claimed = store
        .step_claim(&StepClaimParams {
            queue: LOCAL_STEPS.into(),
            max: 1,
            lease: Duration::from_secs(60),
            handlers: None,
            instance_id: "next".into(),
            holder: "next".into(),
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "the lease was released");
    assert!(claimed[0].lease_ran_out, "its attempt is reported lost");
    drop(gate);
}

/// The leader deletes finished tasks once retention keeps them no longer, on its heartbeats.
async fn the_leader_deletes_finished_tasks_after_their_retention(store: Arc<dyn Store>) {
    support::register(
        store.as_ref(),
        "namespace: cluster\nname: brief\nversion: 1.0.0\nsteps:\n- {name: only, handler: noop}\n",
    )
    .await;
    let config = EngineConfig {
        cluster: ClusterConfig {
            retention: RetentionConfig {
                complete: Some(Duration::from_millis(200)),
                every_beats: 1,
                ..RetentionConfig::default()
            },
            ..fast_cluster()
        },
        ..EngineConfig::default()
    };
    let engine = Engine::start(store.clone(), config, HandlerRegistry::with_builtins())
        .await
        .unwrap();
    let task = engine
        .submit(&TaskRequest::new("cluster", "brief", serde_json::json!({})))
        .await
        .unwrap()
        .task;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut seen_complete = false;
    loop {
        match store.task_get(task.id).await {
            Ok(t) => seen_complete |= t.state == TaskState::Complete,
            Err(tasker_store::StoreError::NotFound { .. }) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "the task was kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen_complete, "it completed before it went");
    assert!(store.transition_list(task.id).await.unwrap().is_empty());
    assert!(store.step_list(task.id).await.unwrap().is_empty());
    let metrics = engine.metrics().render();
    assert!(
        metrics.contains("tasker_retention_deleted_total{kind=\"tasks\"} 1\n"),
        "the deletion is counted: {metrics}"
    );
    assert!(
        metrics.contains("tasker_retention_deleted_total{kind=\"dead_letters\"} 0\n"),
        "{metrics}"
    );
    engine.shutdown().await;
}

/// Instances whose pools would exceed the server's connections: a new one refuses to start in
/// `fail_fast` mode, saying the numbers, and starts with smaller executor pools in `degraded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clusters_pools_must_fit_the_servers_connections() {
    let (store, db) = support::postgres().await;
    let limit = store.server_connection_limit().await.unwrap().unwrap();
    let own = store.connection_pool().max_connections;
    // Live instances holding all but twenty of the server's connections: room for this
    // instance's minimum executors, not for its whole pool.
    let others = limit - 20;
    for (id, connections) in [("big-1", others / 2), ("big-2", others - others / 2)] {
        store
            .instance_register(&InstanceRegisterParams {
                id: id.into(),
                host: "elsewhere".into(),
                pid: 1,
                version: "0.0.0".into(),
                connections,
            })
            .await
            .unwrap();
    }
    let refused = Engine::start(
        store.clone(),
        EngineConfig::default(),
        HandlerRegistry::with_builtins(),
    )
    .await
    .unwrap_err()
    .to_string();
    for said in [
        format!("open {}", others + own),
        format!("allows {limit}"),
        format!("this instance {own}"),
        "big-1".to_owned(),
    ] {
        assert!(refused.contains(&said), "{said}: {refused}");
    }
    let degraded = Engine::start(
        store.clone(),
        EngineConfig {
            failure_mode: tasker_orchestrator::runtime::resources::FailureMode::Degraded,
            ..EngineConfig::default()
        },
        HandlerRegistry::with_builtins(),
    )
    .await
    .unwrap();
    assert_eq!(
        degraded.resources().database_pool,
        20,
        "sized to what the others leave"
    );
    degraded.shutdown().await;
    store.close().await;
    db.drop_database().await.unwrap();
}

on_both_backends!(
    the_leader_deletes_finished_tasks_after_their_retention,
    a_silent_instance_is_failed_over_and_its_steps_run_elsewhere,
    one_leader_at_a_time_and_a_takeover_when_it_stops,
    a_stopping_instance_drains_then_leaves,
    a_stopping_instance_aborts_what_outlasts_its_grace
);
