//! Executor metrics: each engine's own Prometheus recorder and the handles registered on it,
//! the per-executor totals the monitor and the health view read, and the recent time series.
//!
//! | name | type | labels | unit |
//! |---|---|---|---|
//! | `tasker_executor_batches_total` | counter | `executor_type` | batches |
//! | `tasker_executor_items_total` | counter | `executor_type` | items (messages, claims) |
//! | `tasker_executor_errors_total` | counter | `executor_type` | failed batches |
//! | `tasker_executor_batch_duration_seconds` | histogram (`_bucket{le}`, `_sum`, `_count`; [`BATCH_DURATION_BUCKETS`]) | `executor_type` | seconds; `_sum` is the time spent inside `process_batch` |
//! | `tasker_executor_health_transitions_total` | counter | `from`, `to` | transitions |
//! | `tasker_pool_scaling_decisions_total` | counter | `executor_type`, `direction` | decisions |
//! | `tasker_pool_executors` | gauge | `executor_type` | executors |
//! | `tasker_pool_utilization_ratio` | gauge | `executor_type` | busy time over wall time |
//! | `tasker_circuit_breaker_state` | gauge (0 closed, 1 half-open, 2 open) | `executor_type` | state |
//! | `tasker_backpressure_factor` | gauge | — | 0..1 |
//! | `tasker_cluster_leader` | gauge (1 leading, 0 not) | — | this instance's leadership at its last heartbeat |
//! | `tasker_cluster_leader_epoch` | gauge | — | the epoch this instance last led with |
//! | `tasker_cluster_instances_failed_over_total` | counter | — | instances this instance, leading, declared dead |
//! | `tasker_cluster_leases_released_total` | counter | — | leases (steps, message deliveries, task claims) those failovers ended |
//! | `tasker_retention_deleted_total` | counter | `kind` (`tasks`, `dead_letters`) | rows retention deleted |
//!
//! # Per engine
//!
//! [`EngineMetrics`] owns a `PrometheusRecorder` that is never installed as the process's global
//! recorder: two engines in one process (tests, tools) keep separate figures, and `/metrics`
//! renders the engine's own handle. Counters and the histogram are registered on it up front
//! ([`PoolMetrics`] per pool, the health-transition counters per engine), so recording is a
//! handle update with no lookup. Gauges are set from the coordinator's snapshot when the monitor
//! publishes it, once per pool per round.
//!
//! # Two records of a batch
//!
//! The facade's handles can only be written, never read, yet the monitor reads each pool's
//! totals every round (scaling, backpressure) and the health view shows p50/p95/p99, which
//! buckets only approximate. So an executor keeps its own atomics and latency histogram
//! ([`ExecutorMetrics`]) for the engine to read, and updates the exported handles for
//! Prometheus to scrape. Both are written in the same call, so once it returns they agree.
//!
//! # Locks
//!
//! Counters are atomics. Each executor records batch latencies into its *own* histogram behind
//! its own mutex: only that executor's loop and an occasional snapshot ever take it, so no lock
//! is shared between executors on the hot path. A snapshot merges the histograms of a pool.
//! The exported handles are per pool, lock-free atomics and a lock-free sample buffer shared by
//! the pool's executors, drained into buckets at every monitor round and every render.
//! The `metrics/lock_choice` group of `benches/hot_paths.rs` measures the per-executor
//! histograms against one set of metrics shared by every executor.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use metrics::{Counter, Gauge, Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use serde::Serialize;

use crate::{
    pipeline::executor::ExecutorType, runtime::circuit_breaker::CircuitState,
    runtime::health::ExecutorHealth, runtime::scaling::ScalingDecision,
};

/// Largest latency tracked exactly: one hour, in microseconds.
const MAX_LATENCY_MICROS: u64 = 3_600_000_000;

/// Upper bounds, in seconds, of the `tasker_executor_batch_duration_seconds` buckets: from an
/// in-memory batch (half a millisecond) to a batch of slow handlers.
pub const BATCH_DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const BATCHES: &str = "tasker_executor_batches_total";
const ITEMS: &str = "tasker_executor_items_total";
const ERRORS: &str = "tasker_executor_errors_total";
const BATCH_DURATION: &str = "tasker_executor_batch_duration_seconds";
const HEALTH_TRANSITIONS: &str = "tasker_executor_health_transitions_total";
const SCALING_DECISIONS: &str = "tasker_pool_scaling_decisions_total";
const POOL_EXECUTORS: &str = "tasker_pool_executors";
const POOL_UTILIZATION: &str = "tasker_pool_utilization_ratio";
const BREAKER_STATE: &str = "tasker_circuit_breaker_state";
const BACKPRESSURE: &str = "tasker_backpressure_factor";
const LEADER: &str = "tasker_cluster_leader";
const LEADER_EPOCH: &str = "tasker_cluster_leader_epoch";
const FAILED_OVER: &str = "tasker_cluster_instances_failed_over_total";
const LEASES_RELEASED: &str = "tasker_cluster_leases_released_total";
const RETENTION_DELETED: &str = "tasker_retention_deleted_total";

/// Every metric with its kind and HELP text, for the recorder's descriptions.
const CATALOGUE: [(&str, Kind, &str); 15] = [
    (BATCHES, Kind::Counter, "Batches run."),
    (ITEMS, Kind::Counter, "Items processed."),
    (ERRORS, Kind::Counter, "Failed batches."),
    (BATCH_DURATION, Kind::Histogram, "Batch latency."),
    (
        HEALTH_TRANSITIONS,
        Kind::Counter,
        "Executor health changes.",
    ),
    (SCALING_DECISIONS, Kind::Counter, "Scaling decisions."),
    (POOL_EXECUTORS, Kind::Gauge, "Executors in the pool."),
    (
        POOL_UTILIZATION,
        Kind::Gauge,
        "Busy time over wall time in the last monitor interval.",
    ),
    (BREAKER_STATE, Kind::Gauge, "0 closed, 1 half-open, 2 open."),
    (BACKPRESSURE, Kind::Gauge, "Applied backpressure, 0 to 1."),
    (
        LEADER,
        Kind::Gauge,
        "1 when this instance led the cluster at its last heartbeat.",
    ),
    (
        LEADER_EPOCH,
        Kind::Gauge,
        "The leadership epoch this instance last led with.",
    ),
    (
        FAILED_OVER,
        Kind::Counter,
        "Instances this instance, leading, declared dead.",
    ),
    (
        LEASES_RELEASED,
        Kind::Counter,
        "Leases (steps, message deliveries, task claims) ended by failing dead instances over.",
    ),
    (
        RETENTION_DELETED,
        Kind::Counter,
        "Rows deleted by retention: finished tasks (with their steps), dead letters.",
    ),
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Metadata handed to the recorder on registration (the Prometheus recorder ignores it).
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|&(k, v)| Label::new(k, v))
            .collect::<Vec<_>>(),
    )
}

fn health_index(h: ExecutorHealth) -> usize {
    match h {
        ExecutorHealth::Starting => 0,
        ExecutorHealth::Healthy => 1,
        ExecutorHealth::Degraded => 2,
        ExecutorHealth::Unhealthy => 3,
        ExecutorHealth::Stopping => 4,
    }
}

fn health_label(h: ExecutorHealth) -> &'static str {
    match h {
        ExecutorHealth::Starting => "Starting",
        ExecutorHealth::Healthy => "Healthy",
        ExecutorHealth::Degraded => "Degraded",
        ExecutorHealth::Unhealthy => "Unhealthy",
        ExecutorHealth::Stopping => "Stopping",
    }
}

/// One counter per `(from, to)` health transition, indexed by [`health_index`]. Only legal
/// transitions are registered (and so exported, from zero); the others stay no-op handles the
/// state machine never reaches.
type HealthCounters = [[Counter; 5]; 5];

/// The metrics of one engine: its own Prometheus recorder (never installed globally) and the
/// handle that renders it.
#[derive(Debug, Clone)]
pub struct EngineMetrics {
    inner: Arc<EngineRecorder>,
}

#[derive(Debug)]
struct EngineRecorder {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    health: Arc<HealthCounters>,
    backpressure: Gauge,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl EngineMetrics {
    /// A recorder of its own, with the batch-duration histogram's buckets and every metric's
    /// description.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(BATCH_DURATION.to_owned()),
                &BATCH_DURATION_BUCKETS,
            )
            .expect("the bucket list is not empty")
            .build_recorder();
        for (name, kind, help) in CATALOGUE {
            let (name, help) = (KeyName::from_const_str(name), SharedString::const_str(help));
            match kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram => recorder.describe_histogram(name, None, help),
            }
        }
        let health = std::array::from_fn(|from| {
            std::array::from_fn(|to| {
                let (from, to) = (ExecutorHealth::ALL[from], ExecutorHealth::ALL[to]);
                if from.can_become(to) {
                    recorder.register_counter(
                        &key(
                            HEALTH_TRANSITIONS,
                            &[("from", health_label(from)), ("to", health_label(to))],
                        ),
                        &METADATA,
                    )
                } else {
                    Counter::noop()
                }
            })
        });
        let backpressure = recorder.register_gauge(&key(BACKPRESSURE, &[]), &METADATA);
        Self {
            inner: Arc::new(EngineRecorder {
                handle: recorder.handle(),
                recorder,
                health: Arc::new(health),
                backpressure,
            }),
        }
    }

    /// Registers the metrics of the pool of `executor_type` and returns their handles.
    pub fn pool(&self, executor_type: ExecutorType) -> PoolMetrics {
        let r = &self.inner.recorder;
        let pool = [("executor_type", executor_type.as_str())];
        let scaling = |direction| {
            r.register_counter(
                &key(SCALING_DECISIONS, &[pool[0], ("direction", direction)]),
                &METADATA,
            )
        };
        PoolMetrics {
            batches: r.register_counter(&key(BATCHES, &pool), &METADATA),
            items: r.register_counter(&key(ITEMS, &pool), &METADATA),
            errors: r.register_counter(&key(ERRORS, &pool), &METADATA),
            batch_duration: r.register_histogram(&key(BATCH_DURATION, &pool), &METADATA),
            scaling: [scaling("up"), scaling("down"), scaling("hold")],
            health: self.inner.health.clone(),
        }
    }

    /// Sets the gauges of the pool of `executor_type`; `utilization` is absent until the
    /// monitor has measured a full round. Called when the monitor publishes its snapshot, so
    /// the lookup here is once per pool per round.
    pub fn set_pool_gauges(
        &self,
        executor_type: ExecutorType,
        executors: usize,
        breaker: CircuitState,
        utilization: Option<f64>,
    ) {
        let r = &self.inner.recorder;
        let pool = [("executor_type", executor_type.as_str())];
        r.register_gauge(&key(POOL_EXECUTORS, &pool), &METADATA)
            .set(executors as f64);
        r.register_gauge(&key(BREAKER_STATE, &pool), &METADATA)
            .set(f64::from(breaker.as_gauge()));
        if let Some(utilization) = utilization {
            r.register_gauge(&key(POOL_UTILIZATION, &pool), &METADATA)
                .set(utilization);
        }
    }

    /// Registers the cluster metrics (leadership, failover, retention) and returns their handles.
    pub fn cluster(&self) -> ClusterMetrics {
        let r = &self.inner.recorder;
        let deleted =
            |kind| r.register_counter(&key(RETENTION_DELETED, &[("kind", kind)]), &METADATA);
        ClusterMetrics {
            leader: r.register_gauge(&key(LEADER, &[]), &METADATA),
            leader_epoch: r.register_gauge(&key(LEADER_EPOCH, &[]), &METADATA),
            failed_over: r.register_counter(&key(FAILED_OVER, &[]), &METADATA),
            leases_released: r.register_counter(&key(LEASES_RELEASED, &[]), &METADATA),
            deleted_tasks: deleted("tasks"),
            deleted_dead_letters: deleted("dead_letters"),
        }
    }

    /// Sets the applied backpressure factor.
    pub fn set_backpressure(&self, factor: f64) {
        self.inner.backpressure.set(factor);
    }

    /// Moves the latency samples waiting in the recorder into their buckets. Samples wait
    /// there until drained, so the monitor calls this every round: an engine nobody scrapes
    /// must not grow.
    pub fn run_upkeep(&self) {
        self.inner.handle.run_upkeep();
    }

    /// Every metric of this engine in the Prometheus text format.
    pub fn render(&self) -> String {
        self.inner.handle.render()
    }
}

/// The handles of one pool's metrics on its engine's recorder, shared by the pool's executors.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    batches: Counter,
    items: Counter,
    errors: Counter,
    batch_duration: metrics::Histogram,
    /// Up, down, hold.
    scaling: [Counter; 3],
    health: Arc<HealthCounters>,
}

impl PoolMetrics {
    /// Handles that record nowhere, for a pool outside any engine (tests, benchmarks): its
    /// [`ExecutorMetrics`] still keep the totals the pool reports.
    pub fn detached() -> Self {
        Self {
            batches: Counter::noop(),
            items: Counter::noop(),
            errors: Counter::noop(),
            batch_duration: metrics::Histogram::noop(),
            scaling: [Counter::noop(), Counter::noop(), Counter::noop()],
            health: Arc::new(std::array::from_fn(|_| {
                std::array::from_fn(|_| Counter::noop())
            })),
        }
    }

    fn record_batch(&self, elapsed: Duration, items: u64, failed: bool) {
        self.batches.increment(1);
        self.items.increment(items);
        if failed {
            self.errors.increment(1);
        }
        self.batch_duration.record(elapsed.as_secs_f64());
    }

    /// Counts one scaling decision of the pool. Decisions happen once per scaling interval.
    pub fn record_scaling(&self, decision: ScalingDecision) {
        let direction = match decision {
            ScalingDecision::Up(_) => 0,
            ScalingDecision::Down(_) => 1,
            ScalingDecision::Hold(_) => 2,
        };
        self.scaling[direction].increment(1);
    }

    /// Counts one health transition of one of the pool's executors.
    pub fn record_health_transition(&self, from: ExecutorHealth, to: ExecutorHealth) {
        self.health[health_index(from)][health_index(to)].increment(1);
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
        .expect("constant histogram bounds are valid")
}

/// The metrics of one executor, written only by its own loop: totals the engine reads, and the
/// pool's exported handles (see "Two records of a batch" above).
#[derive(Debug)]
pub struct ExecutorMetrics {
    batches: AtomicU64,
    items: AtomicU64,
    errors: AtomicU64,
    busy_nanos: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    export: PoolMetrics,
}

impl Default for ExecutorMetrics {
    /// Totals only, exported nowhere.
    fn default() -> Self {
        Self::new(PoolMetrics::detached())
    }
}

impl ExecutorMetrics {
    /// Metrics of an executor of the pool whose handles are `export`.
    pub fn new(export: PoolMetrics) -> Self {
        Self {
            batches: AtomicU64::new(0),
            items: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
            latency: Mutex::new(new_histogram()),
            export,
        }
    }

    /// Records one batch that took `elapsed` and processed `items` (or failed).
    pub fn record_batch(&self, elapsed: Duration, items: usize, failed: bool) {
        let items = u64::try_from(items).unwrap_or(u64::MAX);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.items.fetch_add(items, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.busy_nanos.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let micros = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LATENCY_MICROS);
        // This executor's own lock: uncontended except during a snapshot.
        self.latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .saturating_record(micros);
        self.export.record_batch(elapsed, items, failed);
    }

    /// Counts one health transition of this executor.
    pub fn record_health_transition(&self, from: ExecutorHealth, to: ExecutorHealth) {
        self.export.record_health_transition(from, to);
    }

    /// Adds `totals` into these metrics (a pool keeps its removed executors' figures this way).
    /// Only the totals: the exported handles counted those batches when they ran.
    pub fn absorb(&self, totals: &MetricsTotals) {
        self.batches.fetch_add(totals.batches, Ordering::Relaxed);
        self.items.fetch_add(totals.items, Ordering::Relaxed);
        self.errors.fetch_add(totals.errors, Ordering::Relaxed);
        self.busy_nanos.fetch_add(
            u64::try_from(totals.busy.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let mut hist = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = hist.add(&totals.latency);
    }

    /// Adds this executor's figures into `into`.
    pub fn merge_into(&self, into: &mut MetricsTotals) {
        into.batches += self.batches.load(Ordering::Relaxed);
        into.items += self.items.load(Ordering::Relaxed);
        into.errors += self.errors.load(Ordering::Relaxed);
        into.busy += Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed));
        let hist = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
        // Same bounds on both sides: adding cannot fail.
        let _ = into.latency.add(&*hist);
    }
}

/// Summed metrics of several executors.
#[derive(Debug, Clone)]
pub struct MetricsTotals {
    /// Batches.
    pub batches: u64,
    /// Items.
    pub items: u64,
    /// Failed batches.
    pub errors: u64,
    /// Time inside `process_batch`.
    pub busy: Duration,
    /// Batch latencies in microseconds.
    pub latency: Histogram<u64>,
}

impl Default for MetricsTotals {
    fn default() -> Self {
        Self {
            batches: 0,
            items: 0,
            errors: 0,
            busy: Duration::ZERO,
            latency: new_histogram(),
        }
    }
}

/// Latency percentiles.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile, milliseconds.
    pub p95_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Largest, milliseconds.
    pub max_ms: f64,
}

impl MetricsTotals {
    /// Percentiles of the batch latency.
    pub fn latency_summary(&self) -> LatencySummary {
        let ms = |micros: u64| Duration::from_micros(micros).as_secs_f64() * 1000.0;
        LatencySummary {
            count: self.latency.len(),
            p50_ms: ms(self.latency.value_at_quantile(0.50)),
            p95_ms: ms(self.latency.value_at_quantile(0.95)),
            p99_ms: ms(self.latency.value_at_quantile(0.99)),
            max_ms: ms(self.latency.max()),
        }
    }
}

/// One point of a pool's recent time series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// Milliseconds since the coordinator started.
    pub at_ms: u64,
    /// Items per second over the interval.
    pub throughput: f64,
    /// p99 batch latency so far, milliseconds.
    pub p99_ms: f64,
    /// Busy time over wall time over the interval.
    pub utilization: f64,
    /// Executors at the end of the interval.
    pub executors: usize,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn sixteen_concurrent_writers_lose_nothing() {
        // One executor's metrics hammered from 16 threads: counters and histogram stay exact.
        let m = Arc::new(ExecutorMetrics::default());
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000_u64 {
                        m.record_batch(Duration::from_micros(1 + (i % 1000) + t), 3, i % 10 == 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut totals = MetricsTotals::default();
        m.merge_into(&mut totals);
        assert_eq!(totals.batches, 160_000);
        assert_eq!(totals.items, 480_000);
        assert_eq!(totals.errors, 16_000);
        assert_eq!(totals.latency.len(), 160_000);
        let expected_busy: u64 = (0..16_u64)
            .map(|t| (0..10_000_u64).map(|i| 1 + (i % 1000) + t).sum::<u64>())
            .sum();
        assert_eq!(totals.busy, Duration::from_micros(expected_busy));
    }

    /// The value of the sample `series` (name and labels, as rendered) in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn two_engines_keep_separate_counters() {
        let (a, b) = (EngineMetrics::new(), EngineMetrics::new());
        let on_a = ExecutorMetrics::new(a.pool(ExecutorType::TaskClaimer));
        let _on_b = ExecutorMetrics::new(b.pool(ExecutorType::TaskClaimer));
        for _ in 0..3 {
            on_a.record_batch(Duration::from_millis(2), 5, false);
        }
        on_a.record_health_transition(ExecutorHealth::Starting, ExecutorHealth::Healthy);
        a.pool(ExecutorType::TaskClaimer)
            .record_scaling(ScalingDecision::Up(1));
        let (text_a, text_b) = (a.render(), b.render());
        for (series, on_a, on_b) in [
            (
                r#"tasker_executor_batches_total{executor_type="task_claimer"}"#,
                3.0,
                0.0,
            ),
            (
                r#"tasker_executor_items_total{executor_type="task_claimer"}"#,
                15.0,
                0.0,
            ),
            (
                r#"tasker_executor_batch_duration_seconds_count{executor_type="task_claimer"}"#,
                3.0,
                0.0,
            ),
            (
                r#"tasker_executor_health_transitions_total{from="Starting",to="Healthy"}"#,
                1.0,
                0.0,
            ),
            (
                r#"tasker_pool_scaling_decisions_total{executor_type="task_claimer",direction="up"}"#,
                1.0,
                0.0,
            ),
        ] {
            assert_eq!(sample(&text_a, series), Some(on_a), "{series} in\n{text_a}");
            assert_eq!(sample(&text_b, series), Some(on_b), "{series} in\n{text_b}");
        }
    }

    #[test]
    fn batch_latency_is_a_histogram_with_buckets_and_matches_the_totals() {
        let m = EngineMetrics::new();
        let e = ExecutorMetrics::new(m.pool(ExecutorType::TaskClaimer));
        e.record_batch(Duration::from_micros(800), 1, false);
        e.record_batch(Duration::from_millis(20), 1, false);
        e.record_batch(Duration::from_secs(2), 0, true);
        // Samples drained by upkeep stay counted at the next render.
        m.run_upkeep();
        let text = m.render();
        assert!(
            text.contains("# TYPE tasker_executor_batch_duration_seconds histogram"),
            "{text}"
        );
        assert!(!text.contains("quantile="), "no summaries: {text}");
        let bucket = |le: &str| {
            sample(
                &text,
                &format!(
                    r#"tasker_executor_batch_duration_seconds_bucket{{executor_type="task_claimer",le="{le}"}}"#
                ),
            )
        };
        // Cumulative: each bucket counts the batches at or under its bound.
        let expected = |bound: f64| match bound {
            b if b < 0.0008 => 0.0,
            b if b < 0.02 => 1.0,
            b if b < 2.0 => 2.0,
            _ => 3.0,
        };
        for bound in BATCH_DURATION_BUCKETS {
            assert_eq!(
                bucket(&bound.to_string()),
                Some(expected(bound)),
                "le={bound}"
            );
        }
        assert_eq!(bucket("+Inf"), Some(3.0));
        let pool = r#"{executor_type="task_claimer"}"#;
        let sum = sample(
            &text,
            &format!("tasker_executor_batch_duration_seconds_sum{pool}"),
        )
        .unwrap();
        let mut totals = MetricsTotals::default();
        e.merge_into(&mut totals);
        assert!((sum - totals.busy.as_secs_f64()).abs() < 1e-9, "{sum}");
        assert_eq!(
            sample(&text, &format!("tasker_executor_errors_total{pool}")),
            Some(1.0)
        );
        assert_eq!(totals.batches, 3);
    }

    #[test]
    fn only_legal_health_transitions_are_exported() {
        let text = EngineMetrics::new().render();
        for from in ExecutorHealth::ALL {
            for to in ExecutorHealth::ALL {
                let series = format!(
                    r#"tasker_executor_health_transitions_total{{from="{from}",to="{to}"}}"#
                );
                let expected = from.can_become(to).then_some(0.0);
                assert_eq!(sample(&text, &series), expected, "{series}");
            }
        }
    }

    #[test]
    fn percentiles_come_from_the_merged_histograms() {
        let a = ExecutorMetrics::default();
        let b = ExecutorMetrics::default();
        for ms in 1..=100 {
            a.record_batch(Duration::from_millis(ms), 1, false);
        }
        b.record_batch(Duration::from_secs(2), 1, true);
        let mut t = MetricsTotals::default();
        a.merge_into(&mut t);
        b.merge_into(&mut t);
        let s = t.latency_summary();
        assert_eq!(s.count, 101);
        assert!((49.0..=51.5).contains(&s.p50_ms), "{s:?}");
        assert!((98.0..=101.0).contains(&s.p99_ms), "{s:?}");
        assert!((1999.0..=2002.0).contains(&s.max_ms), "{s:?}");
    }
}

/// The handles of the cluster metrics, written by the membership heartbeat.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    leader: Gauge,
    leader_epoch: Gauge,
    failed_over: Counter,
    leases_released: Counter,
    deleted_tasks: Counter,
    deleted_dead_letters: Counter,
}

impl ClusterMetrics {
    /// Handles that record nowhere, for a heartbeat outside any engine.
    pub fn detached() -> Self {
        Self {
            leader: Gauge::noop(),
            leader_epoch: Gauge::noop(),
            failed_over: Counter::noop(),
            leases_released: Counter::noop(),
            deleted_tasks: Counter::noop(),
            deleted_dead_letters: Counter::noop(),
        }
    }

    /// Records this instance's leadership after a heartbeat: the epoch it leads with, or none.
    pub fn record_leadership(&self, epoch: Option<i64>) {
        self.leader.set(if epoch.is_some() { 1.0 } else { 0.0 });
        if let Some(epoch) = epoch {
            // Epochs count leaderships; f64 holds them exactly far beyond any real cluster.
            #[allow(clippy::cast_precision_loss)]
            self.leader_epoch.set(epoch as f64);
        }
    }

    /// Counts one instance declared dead and the leases its failover ended.
    pub fn record_failover(&self, released: u64) {
        self.failed_over.increment(1);
        self.leases_released.increment(released);
    }

    /// Counts what one retention sweep deleted.
    pub fn record_retention(&self, tasks: u64, dead_letters: u64) {
        self.deleted_tasks.increment(tasks);
        self.deleted_dead_letters.increment(dead_letters);
    }
}
