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
    runtime::metrics::{self, SeriesPoint},
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

    /// Stops the pools in the order given (those not listed last), each with two-phase removal.
    pub async fn stop(&mut self, order: &[ExecutorType]) -> RemovalReport {
        let mut total = RemovalReport::default();
        let rest: Vec<ExecutorType> = self
            .pools
            .keys()
            .filter(|k| !order.contains(k))
            .copied()
            .collect();
        for executor_type in order.iter().copied().chain(rest) {
            if let Some(m) = self.pools.get_mut(&executor_type) {
                let r = m.pool.stop_all().await;
                total.graceful += r.graceful;
                total.aborted += r.aborted;
            }
        }
        tracing::info!(
            graceful = total.graceful,
            aborted = total.aborted,
            "executor pools stopped"
        );
        total
    }

    /// One round of the monitor: scale, heal, measure pressure, record.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled tick may leave a pool mid-resize (every executor is still
    /// owned by the pool and stopped with it).
    pub async fn tick(&mut self, store: &dyn Store) {
        let now = Instant::now();
        let at_ms = u64::try_from(now.duration_since(self.started).as_millis()).unwrap_or(u64::MAX);
        let (mut d_batches, mut d_errors, mut d_busy, mut ready) =
            (0_u64, 0_u64, Duration::ZERO, 0_u64);
        for (name, m) in &mut self.pools {
            let totals = m.pool.totals();
            let wall = now.duration_since(m.last_at);
            let executors = m.pool.len();
            let busy = totals.busy.saturating_sub(m.last_busy);
            let utilization = if wall.is_zero() || executors == 0 {
                0.0
            } else {
                (busy.as_secs_f64() / (wall.as_secs_f64() * executors as f64)).min(1.0)
            };
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
            let input = ScalingInput {
                executors,
                min_executors: m.pool.config().min_executors,
                max_executors: m.pool.config().max_executors,
                utilization,
                queue_depth,
                since_last_change: m.last_change.map(|t| now.duration_since(t)),
            };
            let decision = scaling::decide(&input, &self.config.scaling);
            metrics::global().record_scaling(name.as_str(), decision.direction());
            let target = match decision {
                ScalingDecision::Up(n) => Some(executors + n),
                ScalingDecision::Down(n) => Some(executors.saturating_sub(n)),
                ScalingDecision::Hold(reason) => {
                    tracing::debug!(pool = %name, ?reason, utilization, queue_depth, "scaling: hold");
                    None
                }
            };
            if let Some(target) = target {
                tracing::info!(pool = %name, from = executors, to = target, utilization, queue_depth, "scaling pool");
                m.pool.scale_to(target).await;
                m.last_change = Some(now);
                if self.scaling_log.len() == SCALING_LOG {
                    self.scaling_log.pop_front();
                }
                self.scaling_log.push_back(ScalingRecord {
                    at_ms,
                    pool: *name,
                    decision,
                    utilization,
                    queue_depth,
                });
            }
            m.pool
                .replace_unhealthy(self.config.heartbeat_timeout)
                .await;

            let items = totals.items.saturating_sub(m.last_items);
            let point = SeriesPoint {
                at_ms,
                throughput: if wall.is_zero() {
                    0.0
                } else {
                    items as f64 / wall.as_secs_f64()
                },
                p99_ms: totals.latency_summary().p99_ms,
                utilization,
                executors: m.pool.len(),
            };
            if m.series.len() == self.config.series_len.max(1) {
                m.series.pop_front();
            }
            m.series.push_back(point);

            d_batches += totals.batches.saturating_sub(m.last_batches);
            d_errors += totals.errors.saturating_sub(m.last_errors);
            d_busy += busy;
            ready += queue_depth;
            m.last_busy = totals.busy;
            m.last_batches = totals.batches;
            m.last_errors = totals.errors;
            m.last_items = totals.items;
            m.last_at = now;
        }
        let ratio = |num: f64, den: f64| if den > 0.0 { (num / den).min(1.0) } else { 0.0 };
        let signals = PressureSignals {
            db_pool: crate::runtime::backpressure::pool_pressure(
                store.connection_pool().utilization(),
            ),
            memory: signals::resident_bytes().map_or(0.0, |rss| {
                ratio(rss as f64, self.config.memory_budget_bytes as f64)
            }),
            queue_depth: ratio(ready as f64, self.config.queue_high_watermark as f64),
            error_rate: ratio(d_errors as f64, d_batches as f64),
            latency: if d_batches == 0 {
                0.0
            } else {
                ratio(
                    d_busy.as_secs_f64() / d_batches as f64,
                    self.config.latency_target.as_secs_f64(),
                )
            },
        };
        let before = self.backpressure.applied();
        let applied = self.backpressure.observe(signals, now);
        if applied != before {
            tracing::info!(
                from = before,
                to = applied,
                ?signals,
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
