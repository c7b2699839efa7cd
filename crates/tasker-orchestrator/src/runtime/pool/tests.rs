use std::sync::atomic::AtomicUsize;

use async_trait::async_trait;

use super::*;
use crate::pipeline::executor::ExecutorError;
use crate::{runtime::backpressure::PressureGauge, runtime::circuit_breaker::CircuitBreakerConfig};

/// A scriptable executor: each batch takes `batch_time` (or never ends when `None`), and
/// fails with a storage outage when `fail` is set.
#[derive(Debug)]
struct Fake {
    batch_time: Option<Duration>,
    batches: Arc<AtomicUsize>,
    fail: bool,
}

#[async_trait]
impl OrchestrationExecutor for Fake {
    fn executor_type(&self) -> ExecutorType {
        ExecutorType::TaskClaimer
    }

    async fn process_batch(&self, _batch_size: u32) -> Result<usize, ExecutorError> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        match self.batch_time {
            Some(t) => {
                tokio::time::sleep(t).await;
                if self.fail {
                    Err(ExecutorError::Store(tasker_store::StoreError::unavailable(
                        "database down",
                    )))
                } else {
                    Ok(0)
                }
            }
            None => std::future::pending().await,
        }
    }
}

fn pool(batch_time: Option<Duration>, config: PoolConfig) -> (ExecutorPool, Arc<AtomicUsize>) {
    failing_pool(batch_time, config, false)
}

fn failing_pool(
    batch_time: Option<Duration>,
    config: PoolConfig,
    fail: bool,
) -> (ExecutorPool, Arc<AtomicUsize>) {
    let batches = Arc::new(AtomicUsize::new(0));
    let counter = batches.clone();
    let factory: ExecutorFactory = Arc::new(move || {
        Arc::new(Fake {
            batch_time,
            batches: counter.clone(),
            fail,
        }) as Arc<dyn OrchestrationExecutor>
    });
    (
        ExecutorPool::new(
            ExecutorType::TaskClaimer,
            factory,
            config,
            Arc::new(Notify::new()),
            PressureGauge::default(),
            PoolMetrics::detached(),
        ),
        batches,
    )
}

fn config(min: usize, max: usize) -> PoolConfig {
    PoolConfig {
        min_executors: min,
        max_executors: max,
        batch_size: 10,
        polling_interval: Duration::from_millis(10),
        stop_timeout: Duration::from_millis(200),
        ..PoolConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn removed_executor_cannot_be_upgraded_and_its_loop_ends() {
    let (mut p, _) = pool(Some(Duration::from_millis(1)), config(0, 2));
    p.add_executor();
    let weak = Arc::downgrade(&p.executors[0].executor);
    assert!(weak.upgrade().is_some());
    let report = p.stop_all().await;
    assert_eq!(
        report,
        RemovalReport {
            graceful: 1,
            aborted: 0
        }
    );
    assert!(
        weak.upgrade().is_none(),
        "nothing but the pool held the executor"
    );
    assert_eq!(p.live_tasks(), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_executor_ends_the_loop_without_a_cancel() {
    let (mut p, batches) = pool(Some(Duration::from_millis(1)), config(0, 1));
    p.add_executor();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let running = p.executors.pop().unwrap();
    drop(running.executor);
    // The loop's next upgrade fails; the task finishes on its own.
    tokio::time::timeout(Duration::from_secs(1), running.task)
        .await
        .unwrap()
        .unwrap();
    assert!(batches.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(start_paused = true)]
async fn graceful_stop_waits_for_the_batch_in_flight() {
    let (mut p, batches) = pool(Some(Duration::from_millis(50)), config(0, 3));
    for _ in 0..3 {
        p.add_executor();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let report = p.remove_executors(2).await;
    assert_eq!(
        report,
        RemovalReport {
            graceful: 2,
            aborted: 0
        }
    );
    assert_eq!((p.len(), p.live_tasks()), (1, 1));
    assert!(batches.load(Ordering::Relaxed) >= 3);
}

#[tokio::test(start_paused = true)]
async fn a_stuck_executor_is_aborted_after_the_stop_timeout() {
    let (mut p, _) = pool(None, config(0, 2));
    p.add_executor();
    p.add_executor();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let started = Instant::now();
    let report = p.stop_all().await;
    assert_eq!(
        report,
        RemovalReport {
            graceful: 0,
            aborted: 2
        }
    );
    // Cancelled together, they share one stop timeout (200 ms), not one each in turn.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_millis(400),
        "{waited:?}"
    );
    assert_eq!(p.live_tasks(), 0);
}

#[tokio::test(start_paused = true)]
async fn at_shutdown_the_deadline_replaces_the_stop_timeout() {
    let (mut p, _) = pool(None, config(0, 2));
    p.add_executor();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let started = Instant::now();
    let report = p
        .stop_all_by(tokio::time::Instant::now() + Duration::from_millis(50))
        .await;
    assert_eq!(report.aborted, 1);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(50) && waited < Duration::from_millis(200),
        "the deadline, not the 200 ms stop timeout: {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn rapid_scaling_leaves_exactly_the_expected_tasks() {
    let (mut p, _) = pool(Some(Duration::from_millis(1)), config(1, 8));
    let mut expected = 0;
    let mut seed: u64 = 42;
    for _ in 0..400 {
        // A small LCG: a deterministic spread of targets, including out-of-bounds ones.
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let target = usize::try_from(seed >> 60).unwrap();
        p.scale_to(target).await;
        expected = target.clamp(1, 8);
        assert_eq!(p.len(), expected);
    }
    tokio::task::yield_now().await;
    assert_eq!(p.live_tasks(), expected);
    let report = p.stop_all().await;
    assert_eq!(report.graceful + report.aborted, expected);
    assert_eq!(p.live_tasks(), 0);
    assert!(p.totals().batches > 0);
}

#[tokio::test(start_paused = true)]
async fn storage_failures_open_the_breaker_and_unhealthy_executors_are_replaced() {
    let config = PoolConfig {
        circuit_breaker: CircuitBreakerConfig {
            failure_threshold: 3,
            open_timeout: Duration::from_secs(60),
            success_threshold: 1,
        },
        unhealthy_after_errors: 3,
        ..config(1, 1)
    };
    let (mut p, batches) = failing_pool(Some(Duration::from_millis(1)), config, true);
    p.add_executor();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(p.circuit_state(), CircuitState::Open);
    // Open: no more batches run while it stays open.
    let ran = batches.load(Ordering::Relaxed);
    assert_eq!(ran, 3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(batches.load(Ordering::Relaxed), ran);
    let snap = p.snapshot();
    assert_eq!((snap.errors, snap.circuit_breaker_trips), (3, 1));
    assert_eq!(snap.executors[0].health, ExecutorHealth::Unhealthy);
    let path: Vec<_> = snap.executors[0]
        .health_history
        .iter()
        .map(|t| t.to)
        .collect();
    assert_eq!(path, [ExecutorHealth::Degraded, ExecutorHealth::Unhealthy]);

    let report = p.replace_unhealthy(Duration::from_secs(3600)).await;
    assert_eq!(report.graceful + report.aborted, 1);
    let snap = p.snapshot();
    assert_eq!((snap.replaced, snap.executors.len()), (1, 1));
    assert_ne!(
        snap.executors[0].health,
        ExecutorHealth::Unhealthy,
        "a fresh executor took its place"
    );
    assert_eq!(snap.errors, 3, "the replaced executor's figures are kept");
}

#[tokio::test(start_paused = true)]
async fn a_silent_executor_is_marked_unhealthy_and_replaced() {
    // A batch that never returns: no heartbeat.
    let (mut p, _) = pool(None, config(1, 1));
    p.add_executor();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        p.replace_unhealthy(Duration::from_secs(30)).await,
        RemovalReport::default()
    );
    tokio::time::sleep(Duration::from_secs(31)).await;
    let report = p.replace_unhealthy(Duration::from_secs(30)).await;
    assert_eq!(
        report,
        RemovalReport {
            graceful: 0,
            aborted: 1
        }
    );
    assert_eq!((p.len(), p.live_tasks(), p.snapshot().replaced), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn backpressure_shrinks_batches_by_the_pool_weight() {
    #[derive(Debug)]
    struct Recorder(Arc<Mutex<Vec<u32>>>);
    #[async_trait]
    impl OrchestrationExecutor for Recorder {
        fn executor_type(&self) -> ExecutorType {
            ExecutorType::TaskClaimer
        }
        async fn process_batch(&self, batch_size: u32) -> Result<usize, ExecutorError> {
            self.0.lock().unwrap().push(batch_size);
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(0)
        }
    }
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = sizes.clone();
    let factory: ExecutorFactory =
        Arc::new(move || Arc::new(Recorder(seen.clone())) as Arc<dyn OrchestrationExecutor>);
    let gauge = PressureGauge::default();
    let config = PoolConfig {
        batch_size: 100,
        backpressure_weight_permille: 500,
        ..config(1, 1)
    };
    let mut p = ExecutorPool::new(
        ExecutorType::TaskClaimer,
        factory,
        config,
        Arc::new(Notify::new()),
        gauge.clone(),
        PoolMetrics::detached(),
    );
    p.add_executor();
    tokio::time::sleep(Duration::from_millis(5)).await;
    gauge.set_permille_for_tests(1000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    p.stop_all().await;
    let sizes = sizes.lock().unwrap();
    assert_eq!(sizes.first(), Some(&100));
    assert_eq!(sizes.last(), Some(&50));
}

/// A batch that came back short drained its queue: the loop waits for a wake-up (or the
/// polling interval) instead of polling an empty queue again; a wake-up sent during the batch
/// is not lost.
#[tokio::test(start_paused = true)]
async fn a_partial_batch_waits_for_a_wakeup_instead_of_polling_again() {
    #[derive(Debug)]
    struct Short(Arc<AtomicUsize>, Arc<Notify>);
    #[async_trait]
    impl OrchestrationExecutor for Short {
        fn executor_type(&self) -> ExecutorType {
            ExecutorType::StepResultProcessor
        }
        async fn process_batch(&self, _batch_size: u32) -> Result<usize, ExecutorError> {
            if self.0.fetch_add(1, Ordering::Relaxed) == 1 {
                // Work arrives while the second batch runs.
                self.1.notify_one();
            }
            Ok(1)
        }
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let wake = Arc::new(Notify::new());
    let (c, w) = (calls.clone(), wake.clone());
    let factory: ExecutorFactory =
        Arc::new(move || Arc::new(Short(c.clone(), w.clone())) as Arc<dyn OrchestrationExecutor>);
    let config = PoolConfig {
        polling_interval: Duration::from_secs(10),
        ..config(1, 1)
    };
    let mut p = ExecutorPool::new(
        ExecutorType::StepResultProcessor,
        factory,
        config,
        wake.clone(),
        PressureGauge::default(),
        PoolMetrics::detached(),
    );
    p.add_executor();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        calls.load(Ordering::Relaxed),
        1,
        "no second poll without a wake-up"
    );
    wake.notify_one();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        calls.load(Ordering::Relaxed),
        3,
        "the wake-up ran a batch, and the one sent during it another"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(calls.load(Ordering::Relaxed), 3);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        calls.load(Ordering::Relaxed),
        4,
        "the polling interval still polls"
    );
    p.stop_all().await;
}

#[tokio::test(start_paused = true)]
async fn an_executor_that_stops_wanting_work_ends_its_loop() {
    #[derive(Debug)]
    struct Finite(AtomicUsize);
    #[async_trait]
    impl OrchestrationExecutor for Finite {
        fn executor_type(&self) -> ExecutorType {
            ExecutorType::TaskClaimer
        }
        async fn process_batch(&self, batch_size: u32) -> Result<usize, ExecutorError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            // Full batches: the loop goes again without waiting.
            Ok(batch_size as usize)
        }
        fn should_continue(&self) -> bool {
            self.0.load(Ordering::Relaxed) < 3
        }
    }
    let factory: ExecutorFactory =
        Arc::new(|| Arc::new(Finite(AtomicUsize::new(0))) as Arc<dyn OrchestrationExecutor>);
    let mut p = ExecutorPool::new(
        ExecutorType::TaskClaimer,
        factory,
        config(1, 1),
        Arc::new(Notify::new()),
        PressureGauge::default(),
        PoolMetrics::detached(),
    );
    p.add_executor();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        (p.len(), p.live_tasks()),
        (1, 0),
        "loop ended; the pool still accounts for it"
    );
    assert_eq!(p.totals().batches, 3);
    assert_eq!(
        p.stop_all().await,
        RemovalReport {
            graceful: 1,
            aborted: 0
        }
    );
}

/// The pool's totals and its exported metrics are written by the same call: after executors
/// ran and were removed both still agree, and their health changes were exported.
#[tokio::test(start_paused = true)]
async fn exported_metrics_agree_with_the_pool_totals_across_removals() {
    let engine = crate::runtime::metrics::EngineMetrics::new();
    let factory: ExecutorFactory = Arc::new(|| {
        Arc::new(Fake {
            batch_time: Some(Duration::from_millis(1)),
            batches: Arc::new(AtomicUsize::new(0)),
            fail: false,
        }) as Arc<dyn OrchestrationExecutor>
    });
    let mut p = ExecutorPool::new(
        ExecutorType::TaskClaimer,
        factory,
        config(0, 2),
        Arc::new(Notify::new()),
        PressureGauge::default(),
        engine.pool(ExecutorType::TaskClaimer),
    );
    p.add_executor();
    p.add_executor();
    tokio::time::sleep(Duration::from_millis(50)).await;
    p.stop_all().await;
    let totals = p.totals();
    assert!(totals.batches >= 4, "{totals:?}");
    let text = engine.render();
    let sample = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    let pool = r#"{executor_type="task_claimer"}"#;
    assert_eq!(
        sample(&format!("tasker_executor_batches_total{pool}")),
        totals.batches as f64
    );
    assert_eq!(
        sample(&format!(
            "tasker_executor_batch_duration_seconds_count{pool}"
        )),
        totals.batches as f64
    );
    assert_eq!(sample(&format!("tasker_executor_errors_total{pool}")), 0.0);
    for (from, to) in [("Starting", "Healthy"), ("Healthy", "Stopping")] {
        assert_eq!(
            sample(&format!(
                r#"tasker_executor_health_transitions_total{{from="{from}",to="{to}"}}"#
            )),
            2.0,
            "{from} -> {to}"
        );
    }
}
