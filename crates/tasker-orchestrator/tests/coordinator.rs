//! The coordinator with real work flowing: scaling on measured signals, the health view, and
//! resource validation at start.

use std::{sync::Arc, time::Duration};

use tasker_orchestrator::{
    engine::EngineError, handler::HandlerRegistry, pipeline::messages::TaskRequest,
    runtime::pool::PoolConfig, runtime::resources::FailureMode, runtime::scaling::ScalingConfig,
    Engine, EngineConfig, EngineEvent, ExecutorType,
};
use tasker_store::{Store, TemplateRegisterParams, TemplateStore};
use tasker_store_postgres::{test_database::TestDatabase, PgStoreOptions};
use tasker_store_sqlite::SqliteStoreOptions;
use tasker_template::TaskTemplate;
use tasker_types::TaskState;

const LINEAR: &str = "namespace: demo\nname: linear\nversion: 1.0.0\nsteps:\n\
    - {name: a, handler: noop}\n- {name: b, handler: noop, depends_on: [a]}\n";

async fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStoreOptions::new(dir.path().join("t.db"))
        .open()
        .await
        .unwrap();
    store
        .template_register(&TemplateRegisterParams {
            template: TaskTemplate::from_yaml_str(LINEAR, "t")
                .unwrap()
                .to_definition(),
        })
        .await
        .unwrap();
    (Arc::new(store), dir)
}

/// The value of one sample (`name{labels}`, as rendered) in `engine`'s Prometheus exposition.
fn sample(engine: &Engine, series: &str) -> f64 {
    let text = engine.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// The scaling decisions `engine` has exported for `pool` in `direction`.
fn decisions(engine: &Engine, pool: ExecutorType, direction: &str) -> f64 {
    sample(
        engine,
        &format!(
            r#"tasker_pool_scaling_decisions_total{{executor_type="{pool}",direction="{direction}"}}"#
        ),
    )
}

fn request(i: usize) -> TaskRequest {
    TaskRequest::new("demo", "linear", serde_json::json!({"i": i}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_scales_the_request_pool_up_and_idleness_scales_it_down() {
    let (store, _dir) = sqlite().await;
    let mut config = EngineConfig {
        ..EngineConfig::default()
    }
    .with_pools(|p: &mut PoolConfig| {
        p.min_executors = 1;
        p.max_executors = 3;
    });
    config.coordinator.scaling = ScalingConfig {
        queue_depth_per_executor: 10,
        cooldown: Duration::ZERO,
        // The test drives the monitor by hand.
        interval: Duration::from_secs(3600),
        ..ScalingConfig::default()
    };
    let engine = Engine::start(store.clone(), config, HandlerRegistry::with_builtins())
        .await
        .unwrap();
    let name = ExecutorType::TaskRequestProcessor;
    // The engine's own recorder: nothing counted before its first round.
    assert_eq!(decisions(&engine, name, "up"), 0.0);

    // Hold the request processors back (no executors) so the backlog is still there when the
    // monitor measures it.
    engine
        .with_coordinator(move |c| {
            Box::pin(async move {
                let pool = c.pool_mut(name).unwrap();
                pool.set_bounds(0, 3);
                pool.scale_to(0).await;
            })
        })
        .await
        .expect("the monitor runs");
    let mut events = engine.subscribe();
    for i in 0..200 {
        engine.enqueue_request(&request(i)).await.unwrap();
    }
    engine.monitor_tick().await;
    let snapshot = engine.snapshot();
    assert_eq!(
        snapshot.pools[&name].executors.len(),
        1,
        "grew from 0 under a backlog of 200"
    );
    assert_eq!(decisions(&engine, name, "up"), 1.0);
    let record = snapshot.scaling.iter().find(|r| r.pool == name).unwrap();
    assert_eq!(record.queue_depth, 200);

    // All 200 tasks finish.
    let mut done = 0;
    while done < 200 {
        match tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .unwrap()
        {
            Ok(EngineEvent::TaskFinished { state, .. }) => {
                assert_eq!(state, TaskState::Complete);
                done += 1;
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                let list = store
                    .task_list(&tasker_store::TaskListParams {
                        state: Some(TaskState::Complete),
                        limit: 1000,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                done = list.len();
            }
            Err(e) => panic!("{e}"),
        }
    }
    // Idle now: ticks bring the pool back to its minimum.
    assert_eq!(decisions(&engine, name, "down"), 0.0);
    for _ in 0..5 {
        engine.monitor_tick().await;
    }
    let snapshot = engine.snapshot();
    assert_eq!(snapshot.pools[&name].executors.len(), 0);
    assert!(decisions(&engine, name, "down") >= 1.0);
    // One decision per pool per round: six rounds so far.
    let rounds: f64 = ["up", "down", "hold"]
        .into_iter()
        .map(|d| decisions(&engine, name, d))
        .sum();
    assert_eq!(rounds, 6.0);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_view_shows_every_pool_with_real_figures() {
    let (store, _dir) = sqlite().await;
    // Fixed pool sizes: a round that scaled a pool up would show its new executor `Starting`.
    let config = EngineConfig::default().with_pools(|p| p.max_executors = p.min_executors);
    let engine = Engine::start(store, config, HandlerRegistry::with_builtins())
        .await
        .unwrap();
    let mut events = engine.subscribe();
    let task = engine.submit(&request(0)).await.unwrap().task;
    loop {
        if let EngineEvent::TaskFinished { task_id, .. } = events.recv().await.unwrap() {
            if task_id == task.id {
                break;
            }
        }
    }
    engine.monitor_tick().await;
    let snapshot = engine.snapshot();
    assert_eq!(
        snapshot.pools.len(),
        6,
        "five executor types and one worker pool"
    );
    for (name, pool) in &snapshot.pools {
        assert!(!pool.executors.is_empty(), "{name}");
        assert!(
            pool.batches > 0 && pool.latency.count == pool.batches,
            "{name}: {pool:?}"
        );
        assert_eq!(
            pool.circuit_breaker,
            tasker_orchestrator::runtime::circuit_breaker::CircuitState::Closed
        );
        assert!(
            pool.executors
                .iter()
                .all(|e| e.health == tasker_orchestrator::runtime::health::ExecutorHealth::Healthy),
            "{name}: {:?}",
            pool.executors
        );
        assert_eq!(snapshot.series[name].len(), 1);
    }
    assert!(snapshot.pools[&ExecutorType::InProcessWorker].items >= 2);
    assert_eq!(snapshot.pressure_history.len(), 1);
    assert_eq!(snapshot.backpressure, 0.0);
    engine.shutdown().await;
}

/// Each engine renders its own recorder: work and monitor rounds on one move none of the
/// other's counters, and the gauges follow the published snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_in_one_process_keep_separate_metrics() {
    let manual = || {
        let mut config = EngineConfig::default();
        // The test drives the monitors by hand.
        config.coordinator.scaling.interval = Duration::from_secs(3600);
        config
    };
    let (store_a, _dir_a) = sqlite().await;
    let (store_b, _dir_b) = sqlite().await;
    let a = Engine::start(store_a, manual(), HandlerRegistry::with_builtins())
        .await
        .unwrap();
    let b = Engine::start(store_b, manual(), HandlerRegistry::with_builtins())
        .await
        .unwrap();
    let mut events = a.subscribe();
    for i in 0..3 {
        a.enqueue_request(&request(i)).await.unwrap();
    }
    let mut finished = 0;
    while finished < 3 {
        let event = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .unwrap()
            .unwrap();
        if matches!(event, EngineEvent::TaskFinished { .. }) {
            finished += 1;
        }
    }
    a.monitor_tick().await;
    a.monitor_tick().await;

    let items = |engine: &Engine, pool: ExecutorType| {
        sample(
            engine,
            &format!(r#"tasker_executor_items_total{{executor_type="{pool}"}}"#),
        )
    };
    let requests = ExecutorType::TaskRequestProcessor;
    assert_eq!(items(&a, requests), 3.0, "each request once");
    assert!(
        items(&a, ExecutorType::InProcessWorker) >= 6.0,
        "two steps a task"
    );
    let pools = ExecutorType::ALL
        .into_iter()
        .chain([ExecutorType::InProcessWorker]);
    for pool in pools {
        assert_eq!(items(&b, pool), 0.0, "{pool}: b had no work");
        let rounds = |engine: &Engine| -> f64 {
            ["up", "down", "hold"]
                .into_iter()
                .map(|d| decisions(engine, pool, d))
                .sum()
        };
        assert_eq!((rounds(&a), rounds(&b)), (2.0, 0.0), "{pool}");
        // The gauge is what the published snapshot says.
        assert_eq!(
            sample(
                &a,
                &format!(r#"tasker_pool_executors{{executor_type="{pool}"}}"#)
            ),
            a.snapshot().pools[&pool].executors.len() as f64,
            "{pool}"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_validation_fails_fast_or_degrades_on_a_small_database_pool() {
    let db = TestDatabase::create().await.unwrap();
    let small = PgStoreOptions {
        max_connections: 10,
        ..PgStoreOptions::new(&db.url)
    };
    let store: Arc<dyn Store> = Arc::new(small.connect().await.unwrap());

    let fail_fast = EngineConfig {
        failure_mode: FailureMode::FailFast,
        ..EngineConfig::default()
    };
    let err = Engine::start(store.clone(), fail_fast, HandlerRegistry::with_builtins())
        .await
        .unwrap_err();
    let EngineError::Resources(report) = &err else {
        panic!("{err}")
    };
    assert_eq!(
        (
            report.database_pool,
            report.reserved,
            report.requested_executors
        ),
        (10, 2, 24)
    );
    assert!(
        err.to_string()
            .contains("raise database.max_connections to at least 26"),
        "{err}"
    );

    let degraded = EngineConfig {
        failure_mode: FailureMode::Degraded,
        ..EngineConfig::default()
    };
    let engine = Engine::start(store.clone(), degraded, HandlerRegistry::with_builtins())
        .await
        .unwrap();
    let maxima: usize = engine
        .resources()
        .pools
        .values()
        .map(|p| p.max_executors)
        .sum();
    assert_eq!(maxima, 8);
    let snapshot = engine.snapshot();
    assert_eq!(
        snapshot
            .pools
            .values()
            .map(|p| p.max_executors)
            .sum::<usize>(),
        8
    );
    assert!(engine
        .resources()
        .warnings
        .iter()
        .any(|w| w.contains("shrunk")));
    engine.shutdown().await;

    let best = EngineConfig {
        failure_mode: FailureMode::BestEffort,
        ..EngineConfig::default()
    };
    let engine = Engine::start(store.clone(), best, HandlerRegistry::with_builtins())
        .await
        .unwrap();
    assert_eq!(engine.resources().requested_executors, 24);
    engine.shutdown().await;
    store.close().await;
    db.drop_database().await.unwrap();
}

/// An idle engine measures no pressure: polling for work that is not there is neither load on
/// the database pool nor batch latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_engine_reports_no_backpressure() {
    let (store, _dir) = sqlite().await;
    let engine = Engine::start(
        store,
        EngineConfig::default(),
        HandlerRegistry::with_builtins(),
    )
    .await
    .unwrap();
    // The monitor observes once a second, in step with the pools' idle polls.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let snapshot = engine.snapshot();
    assert!(
        snapshot.pressure_history.len() >= 4,
        "{:?}",
        snapshot.pressure_history
    );
    for point in &snapshot.pressure_history {
        assert!(point.smoothed < 0.1, "{point:?}");
        assert_eq!(point.applied, 0.0, "{point:?}");
    }
    // Polls may hold a connection or three at an unlucky instant on a busy machine, but an idle
    // pool is not a pressed one: typically its signal is 0 (it read 0.2 at every tick before).
    let mut db_pool: Vec<f64> = snapshot
        .pressure_history
        .iter()
        .map(|p| p.signals.db_pool)
        .collect();
    db_pool.sort_by(f64::total_cmp);
    assert_eq!(db_pool[db_pool.len() / 2], 0.0, "{db_pool:?}");
    assert_eq!(snapshot.backpressure, 0.0);
    engine.shutdown().await;
}
