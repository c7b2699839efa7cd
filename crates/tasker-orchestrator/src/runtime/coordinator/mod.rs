//! `OrchestrationLoopCoordinator`: one [`ExecutorPool`] per executor type (the in-process
//! worker pool among them), and the monitor that, every scaling interval:
//!
//! 1. measures each pool's utilization (busy time over wall time) and queue depth and scales it
//!    by [`crate::runtime::scaling::decide`], with cooldown, logging and counting every decision;
//! 2. marks executors without a heartbeat unhealthy and replaces unhealthy executors;
//! 3. feeds the [`GlobalBackpressureController`] (database pool, memory, queue depth, error
//!    rate, latency), whose factor every pool loop reads;
//! 4. appends each pool's point to its recent time series.

mod signals;

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use serde::Serialize;
use tasker_store::Store;
use tokio::time::Instant;

use crate::{
    pipeline::executor::ExecutorType,
    runtime::backpressure::{
        BackpressureConfig, GlobalBackpressureController, PressurePoint, PressureSignals,
    },
    runtime::metrics::SeriesPoint,
    runtime::pool::{ExecutorPool, PoolSnapshot, RemovalReport},
    runtime::scaling::{self, ScalingConfig, ScalingDecision, ScalingInput},
};

/// Coordinator settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoordinatorConfig {
    /// Scaling policy and monitor interval.
    pub scaling: ScalingConfig,
    /// An executor silent for longer is unhealthy and replaced.
    pub heartbeat_timeout: Duration,
    /// Backpressure controller settings.
    pub backpressure: BackpressureConfig,
    /// Resident memory at which the memory signal reads 1.
    pub memory_budget_bytes: u64,
    /// Ready messages (all pools together) at which the queue signal reads 1.
    pub queue_high_watermark: u64,
    /// Mean batch latency at which the latency signal reads 1.
    pub latency_target: Duration,
    /// Points kept in each pool's time series.
    pub series_len: usize,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            scaling: ScalingConfig::default(),
            heartbeat_timeout: Duration::from_secs(60),
            backpressure: BackpressureConfig::default(),
            memory_budget_bytes: 2 * 1024 * 1024 * 1024,
            queue_high_watermark: 100_000,
            latency_target: Duration::from_secs(1),
            series_len: 300,
        }
    }
}

/// Where a pool's waiting work is counted.
#[derive(Clone)]
pub enum WorkSource {
    /// A durable queue of the store.
    Queue(String),
    /// An in-memory channel; the closure reports its length.
    Channel(Arc<dyn Fn() -> u64 + Send + Sync>),
}

impl std::fmt::Debug for WorkSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkSource::Queue(q) => f.debug_tuple("Queue").field(q).finish(),
            WorkSource::Channel(_) => f.write_str("Channel"),
        }
    }
}

#[derive(Debug)]
struct ManagedPool {
    pool: ExecutorPool,
    source: WorkSource,
    last_busy: Duration,
    last_batches: u64,
    last_errors: u64,
    last_at: Instant,
    last_items: u64,
    last_change: Option<Instant>,
    series: VecDeque<SeriesPoint>,
}

/// One scaling decision, kept for the health view.
#[derive(Debug, Clone, Serialize)]
pub struct ScalingRecord {
    /// Milliseconds since the coordinator started.
    pub at_ms: u64,
    /// The pool.
    pub pool: ExecutorType,
    /// What was decided.
    pub decision: ScalingDecision,
    /// Utilization that led to it.
    pub utilization: f64,
    /// Queue depth that led to it.
    pub queue_depth: u64,
}

/// Everything the health view shows.
#[derive(Debug, Clone, Serialize)]
pub struct CoordinatorSnapshot {
    /// Each pool, by its executors' type.
    pub pools: BTreeMap<ExecutorType, PoolSnapshot>,
    /// Each pool's recent time series.
    pub series: BTreeMap<ExecutorType, Vec<SeriesPoint>>,
    /// The applied backpressure factor.
    pub backpressure: f64,
    /// Recent pressure observations.
    pub pressure_history: Vec<PressurePoint>,
    /// Recent scaling decisions that changed something.
    pub scaling: Vec<ScalingRecord>,
}

/// Owns the pools and runs the monitor's ticks.
#[derive(Debug)]
pub struct OrchestrationLoopCoordinator {
    pools: BTreeMap<ExecutorType, ManagedPool>,
    config: CoordinatorConfig,
    backpressure: GlobalBackpressureController,
    started: Instant,
    scaling_log: VecDeque<ScalingRecord>,
}

/// Scaling decisions that changed something, kept for the health view.
const SCALING_LOG: usize = 100;

impl OrchestrationLoopCoordinator {
    /// A coordinator with no pools yet.
    pub fn new(config: CoordinatorConfig) -> Self {
        Self {
            backpressure: GlobalBackpressureController::new(config.backpressure.clone()),
            pools: BTreeMap::new(),
            config,
            started: Instant::now(),
            scaling_log: VecDeque::new(),
        }
    }

    /// The controller's gauge, to hand to pools.
    pub fn pressure_gauge(&self) -> crate::runtime::backpressure::PressureGauge {
        self.backpressure.gauge()
    }

    /// Adds a pool, keyed by its executors' type, whose waiting work is counted at `source`,
    /// and starts it at its minimum size.
    pub async fn add_pool(&mut self, mut pool: ExecutorPool, source: WorkSource) {
        let min = pool.config().min_executors;
        pool.scale_to(min).await;
        let totals = pool.totals();
        self.pools.insert(
            pool.executor_type(),
            ManagedPool {
                pool,
                source,
                last_busy: totals.busy,
                last_batches: totals.batches,
                last_errors: totals.errors,
                last_items: totals.items,
                last_at: Instant::now(),
                last_change: None,
                series: VecDeque::new(),
            },
        );
    }

    /// The pool of `executor_type`.
    pub fn pool(&self, executor_type: ExecutorType) -> Option<&ExecutorPool> {
        self.pools.get(&executor_type).map(|m| &m.pool)
    }

    /// The pool of `executor_type`, mutably.
    pub fn pool_mut(&mut self, executor_type: ExecutorType) -> Option<&mut ExecutorPool> {
        self.pools.get_mut(&executor_type).map(|m| &mut m.pool)
    }

    /// Stops every pool (those stopped before have nothing left), aborting what still runs at
    /// `deadline`.
    pub async fn stop_all(&mut self, deadline: tokio::time::Instant) -> RemovalReport {
        let all: Vec<ExecutorType> = self.pools.keys().copied().collect();
        self.stop(&all, deadline).await
    }

    /// Stops the pools listed, in that order, each with two-phase removal, aborting what still
    /// runs at `deadline`. A pool stopped before has nothing left to stop.
    pub async fn stop(
        &mut self,
        order: &[ExecutorType],
        deadline: tokio::time::Instant,
    ) -> RemovalReport {
        let mut total = RemovalReport::default();
        for &executor_type in order {
            if let Some(m) = self.pools.get_mut(&executor_type) {
                total.add(m.pool.stop_all_by(deadline).await);
            }
        }
        tracing::info!(
            graceful = total.graceful,
            aborted = total.aborted,
            "executor pools stopped"
        );
        total
    }

    /// One round of the monitor, in three parts: [`Self::measure`] reads the pools, the
    /// queues and the process (the only I/O), [`decide`] turns that into scaling decisions
    /// and pressure signals (pure), [`Self::act`] applies them: scales, replaces unhealthy
    /// executors, records the series and feeds the backpressure controller.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled tick may leave a pool mid-resize (every executor is still
    /// owned by the pool and stopped with it).
    pub async fn tick(&mut self, store: &dyn Store) {
        let now = Instant::now();
        let measured = self.measure(store, now).await;
        let decided = decide(&measured, &self.config);
        self.act(measured, decided, now).await;
    }

    /// Reads what the round decides on: each pool's counters since the last round, its queue
    /// depth, the database pool and the process's memory.
    async fn measure(&self, store: &dyn Store, now: Instant) -> Measured {
        let mut pools = Vec::with_capacity(self.pools.len());
        for (&executor_type, m) in &self.pools {
            let totals = m.pool.totals();
            let queue_depth = match &m.source {
                WorkSource::Queue(q) => match store.queue_depth(q).await {
                    Ok(d) => d.ready,
                    Err(error) => {
                        tracing::warn!(%error, queue = %q, "queue depth unavailable");
                        0
                    }
                },
                WorkSource::Channel(len) => len(),
            };
            pools.push(PoolMeasure {
                executor_type,
                executors: m.pool.len(),
                min_executors: m.pool.config().min_executors,
                max_executors: m.pool.config().max_executors,
                wall: now.duration_since(m.last_at),
                busy: totals.busy.saturating_sub(m.last_busy),
                batches: totals.batches.saturating_sub(m.last_batches),
                errors: totals.errors.saturating_sub(m.last_errors),
                items: totals.items.saturating_sub(m.last_items),
                queue_depth,
                since_last_change: m.last_change.map(|t| now.duration_since(t)),
                p99_ms: totals.latency_summary().p99_ms,
                totals: Totals {
                    busy: totals.busy,
                    batches: totals.batches,
                    errors: totals.errors,
                    items: totals.items,
                },
            });
        }
        Measured {
            pools,
            db_pool_utilization: store.connection_pool().utilization(),
            resident_bytes: signals::resident_bytes(),
        }
    }

    /// Applies what [`decide`] concluded.
    async fn act(&mut self, measured: Measured, decided: Decided, now: Instant) {
        let at_ms = u64::try_from(now.duration_since(self.started).as_millis()).unwrap_or(u64::MAX);
        for (measure, pool) in measured.pools.iter().zip(&decided.pools) {
            let Some(m) = self.pools.get_mut(&measure.executor_type) else {
                continue;
            };
            let name = measure.executor_type;
            let (utilization, queue_depth) = (pool.utilization, measure.queue_depth);
            m.pool.metrics().record_scaling(pool.decision);
            match pool.target {
                None => {
                    tracing::debug!(pool = %name, reason = ?pool.decision, utilization, queue_depth, "scaling: hold");
                }
                Some(target) => {
                    tracing::info!(pool = %name, from = measure.executors, to = target, utilization, queue_depth, "scaling pool");
                    m.pool.scale_to(target).await;
                    m.last_change = Some(now);
                    if self.scaling_log.len() == SCALING_LOG {
                        self.scaling_log.pop_front();
                    }
                    self.scaling_log.push_back(ScalingRecord {
                        at_ms,
                        pool: name,
                        decision: pool.decision,
                        utilization,
                        queue_depth,
                    });
                }
            }
            m.pool
                .replace_unhealthy(self.config.heartbeat_timeout)
                .await;

            if m.series.len() == self.config.series_len.max(1) {
                m.series.pop_front();
            }
            m.series.push_back(SeriesPoint {
                at_ms,
                throughput: pool.throughput,
                p99_ms: measure.p99_ms,
                utilization,
                executors: m.pool.len(),
            });
            m.last_busy = measure.totals.busy;
            m.last_batches = measure.totals.batches;
            m.last_errors = measure.totals.errors;
            m.last_items = measure.totals.items;
            m.last_at = now;
        }
        let before = self.backpressure.applied();
        let applied = self.backpressure.observe(decided.signals, now);
        if applied != before {
            tracing::info!(
                from = before,
                to = applied,
                signals = ?decided.signals,
                "backpressure factor changed"
            );
        }
    }

    /// Everything the health view shows.
    pub fn snapshot(&self) -> CoordinatorSnapshot {
        CoordinatorSnapshot {
            pools: self
                .pools
                .iter()
                .map(|(n, m)| (*n, m.pool.snapshot()))
                .collect(),
            series: self
                .pools
                .iter()
                .map(|(n, m)| (*n, m.series.iter().copied().collect()))
                .collect(),
            backpressure: self.backpressure.applied(),
            pressure_history: self.backpressure.history().cloned().collect(),
            scaling: self.scaling_log.iter().cloned().collect(),
        }
    }
}

/// A pool's counters as of a monitor round.
#[derive(Debug, Clone, Copy)]
struct Totals {
    busy: Duration,
    batches: u64,
    errors: u64,
    items: u64,
}

/// What a monitor round read of one pool; counts are since the previous round.
#[derive(Debug, Clone, Copy)]
struct PoolMeasure {
    executor_type: ExecutorType,
    executors: usize,
    min_executors: usize,
    max_executors: usize,
    wall: Duration,
    busy: Duration,
    batches: u64,
    errors: u64,
    items: u64,
    queue_depth: u64,
    since_last_change: Option<Duration>,
    p99_ms: f64,
    totals: Totals,
}

/// Everything a monitor round read.
#[derive(Debug, Clone)]
struct Measured {
    pools: Vec<PoolMeasure>,
    db_pool_utilization: f64,
    resident_bytes: Option<u64>,
}

/// What a round concluded for one pool, in the order of [`Measured::pools`].
#[derive(Debug, Clone, Copy)]
struct PoolDecision {
    utilization: f64,
    throughput: f64,
    decision: ScalingDecision,
    /// The size to scale to, when the decision changes it.
    target: Option<usize>,
}

/// What a round concluded.
#[derive(Debug, Clone)]
struct Decided {
    pools: Vec<PoolDecision>,
    signals: PressureSignals,
}

/// The monitor's decisions, from its measurements alone: each pool's utilization (busy time
/// over wall time across its executors) and scaling decision, and the backpressure signals.
fn decide(measured: &Measured, config: &CoordinatorConfig) -> Decided {
    let ratio = |num: f64, den: f64| if den > 0.0 { (num / den).min(1.0) } else { 0.0 };
    let pools = measured
        .pools
        .iter()
        .map(|p| {
            let utilization = if p.wall.is_zero() || p.executors == 0 {
                0.0
            } else {
                (p.busy.as_secs_f64() / (p.wall.as_secs_f64() * p.executors as f64)).min(1.0)
            };
            let decision = scaling::decide(
                &ScalingInput {
                    executors: p.executors,
                    min_executors: p.min_executors,
                    max_executors: p.max_executors,
                    utilization,
                    queue_depth: p.queue_depth,
                    since_last_change: p.since_last_change,
                },
                &config.scaling,
            );
            let target = match decision {
                ScalingDecision::Up(n) => Some(p.executors + n),
                ScalingDecision::Down(n) => Some(p.executors.saturating_sub(n)),
                ScalingDecision::Hold(_) => None,
            };
            PoolDecision {
                utilization,
                throughput: if p.wall.is_zero() {
                    0.0
                } else {
                    p.items as f64 / p.wall.as_secs_f64()
                },
                decision,
                target,
            }
        })
        .collect();
    let batches: u64 = measured.pools.iter().map(|p| p.batches).sum();
    let errors: u64 = measured.pools.iter().map(|p| p.errors).sum();
    let busy: Duration = measured.pools.iter().map(|p| p.busy).sum();
    let ready: u64 = measured.pools.iter().map(|p| p.queue_depth).sum();
    let signals = PressureSignals {
        db_pool: crate::runtime::backpressure::pool_pressure(measured.db_pool_utilization),
        memory: measured.resident_bytes.map_or(0.0, |rss| {
            ratio(rss as f64, config.memory_budget_bytes as f64)
        }),
        queue_depth: ratio(ready as f64, config.queue_high_watermark as f64),
        error_rate: ratio(errors as f64, batches as f64),
        latency: if batches == 0 {
            0.0
        } else {
            ratio(
                busy.as_secs_f64() / batches as f64,
                config.latency_target.as_secs_f64(),
            )
        },
    };
    Decided { pools, signals }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measure(executor_type: ExecutorType, busy_ms: u64, queue_depth: u64) -> PoolMeasure {
        PoolMeasure {
            executor_type,
            executors: 2,
            min_executors: 1,
            max_executors: 4,
            wall: Duration::from_secs(1),
            busy: Duration::from_millis(busy_ms),
            batches: 10,
            errors: 0,
            items: 50,
            queue_depth,
            since_last_change: None,
            p99_ms: 1.0,
            totals: Totals {
                busy: Duration::ZERO,
                batches: 0,
                errors: 0,
                items: 0,
            },
        }
    }

    #[test]
    fn decisions_follow_from_the_measurements_alone() {
        let mut busy = measure(ExecutorType::StepResultProcessor, 2000, 1000);
        busy.errors = 5;
        let measured = Measured {
            pools: vec![busy, measure(ExecutorType::TaskClaimer, 0, 0)],
            db_pool_utilization: 0.2,
            resident_bytes: Some(0),
        };
        let decided = decide(&measured, &CoordinatorConfig::default());
        let (hot, idle) = (&decided.pools[0], &decided.pools[1]);
        assert_eq!(hot.utilization, 1.0, "2 s busy over 1 s of 2 executors");
        assert!(matches!(hot.decision, ScalingDecision::Up(_)), "{hot:?}");
        assert!(hot.target.is_some_and(|t| t > 2));
        assert_eq!(hot.throughput, 50.0);
        assert_eq!(idle.utilization, 0.0);
        assert!(
            matches!(idle.decision, ScalingDecision::Down(_)),
            "{idle:?}"
        );
        assert_eq!(decided.signals.db_pool, 0.0, "polling is not pressure");
        assert_eq!(decided.signals.error_rate, 5.0 / 20.0);
        assert_eq!(decided.signals.queue_depth, 1000.0 / 100_000.0);
        // Mean batch latency: 2 s busy over 20 batches, against a 1 s target.
        assert!((decided.signals.latency - 0.1).abs() < 1e-9);
    }
}
