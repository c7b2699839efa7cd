//! Executor metrics: counters, latency histograms, a recent time series and a snapshot API.
//!
//! | name | type | labels | unit |
//! |---|---|---|---|
//! | `tasker_executor_batches_total` | counter | `executor_type` | batches |
//! | `tasker_executor_items_total` | counter | `executor_type` | items (messages, claims) |
//! | `tasker_executor_errors_total` | counter | `executor_type` | failed batches |
//! | `tasker_executor_busy_seconds_total` | counter | `executor_type` | seconds inside `process_batch` |
//! | `tasker_executor_batch_duration_seconds` | summary (p50, p95, p99, max) | `executor_type` | seconds |
//! | `tasker_executor_health_transitions_total` | counter | `from`, `to` | transitions |
//! | `tasker_pool_scaling_decisions_total` | counter | `executor_type`, `direction` | decisions |
//! | `tasker_pool_executors` | gauge | `executor_type` | executors |
//! | `tasker_pool_utilization_ratio` | gauge | `executor_type` | busy time over wall time |
//! | `tasker_circuit_breaker_state` | gauge (0 closed, 1 half-open, 2 open) | `executor_type` | state |
//! | `tasker_backpressure_factor` | gauge | — | 0..1 |
//!
//! # Locks
//!
//! Counters are atomics. Each executor records batch latencies into its *own* histogram behind
//! its own mutex: only that executor's loop and an occasional snapshot ever take it, so no lock
//! is shared between executors on the hot path. A snapshot merges the histograms of a pool.
//! The `metrics/lock_choice` group of `benches/hot_paths.rs` measures this against one set of
//! metrics shared by every executor.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, OnceLock, PoisonError,
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::runtime::health::ExecutorHealth;

/// Largest latency tracked exactly: one hour, in microseconds.
const MAX_LATENCY_MICROS: u64 = 3_600_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
        .expect("constant histogram bounds are valid")
}

/// The metrics of one executor, written only by its own loop.
#[derive(Debug)]
pub struct ExecutorMetrics {
    batches: AtomicU64,
    items: AtomicU64,
    errors: AtomicU64,
    busy_nanos: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

impl Default for ExecutorMetrics {
    fn default() -> Self {
        Self {
            batches: AtomicU64::new(0),
            items: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
            latency: Mutex::new(new_histogram()),
        }
    }
}

impl ExecutorMetrics {
    /// Records one batch that took `elapsed` and processed `items` (or failed).
    pub fn record_batch(&self, elapsed: Duration, items: usize, failed: bool) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.items
            .fetch_add(u64::try_from(items).unwrap_or(u64::MAX), Ordering::Relaxed);
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
    }

    /// Adds `totals` into these metrics (a pool keeps its removed executors' figures this way).
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

/// Process-wide counters that are not per executor.
#[derive(Debug, Default)]
pub struct GlobalMetrics {
    health: [[AtomicU64; 5]; 5],
    scaling: Mutex<std::collections::BTreeMap<(String, &'static str), u64>>,
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

impl GlobalMetrics {
    /// Counts one health transition.
    pub fn record_health_transition(&self, from: ExecutorHealth, to: ExecutorHealth) {
        self.health[health_index(from)][health_index(to)].fetch_add(1, Ordering::Relaxed);
    }

    /// Health transitions counted so far from `from` to `to`.
    pub fn health_transitions(&self, from: ExecutorHealth, to: ExecutorHealth) -> u64 {
        self.health[health_index(from)][health_index(to)].load(Ordering::Relaxed)
    }

    /// Counts one scaling decision (`up`, `down` or `hold`) of a pool. Decisions happen once
    /// per scaling interval per pool, far from any hot path.
    pub fn record_scaling(&self, pool: &str, direction: &'static str) {
        *self
            .scaling
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((pool.to_owned(), direction))
            .or_default() += 1;
    }

    /// Every scaling counter: `((pool, direction), count)`.
    pub fn scaling_decisions_all(&self) -> Vec<((String, &'static str), u64)> {
        self.scaling
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Scaling decisions counted for `pool` in `direction`.
    pub fn scaling_decisions(&self, pool: &str, direction: &'static str) -> u64 {
        self.scaling
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(pool.to_owned(), direction))
            .copied()
            .unwrap_or(0)
    }
}

/// The process-wide counters.
pub fn global() -> &'static GlobalMetrics {
    static GLOBAL: OnceLock<GlobalMetrics> = OnceLock::new();
    GLOBAL.get_or_init(GlobalMetrics::default)
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
