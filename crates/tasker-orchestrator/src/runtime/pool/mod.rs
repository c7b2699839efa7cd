//! `ExecutorPool`: the running executors of one type, and the loop that drives each of them.
//!
//! # The loop holds no strong reference
//!
//! The pool owns each executor (`Arc`); its loop task gets only a `Weak`, upgraded for the
//! length of one batch. Dropping the executor therefore ends its loop at the next batch
//! boundary, and stopping it cancels the loop's token. Nothing keeps an executor alive but the
//! pool.
//!
//! # Two-phase removal
//!
//! Removing executors first cancels them and waits up to `stop_timeout` (at shutdown: until the
//! engine's grace runs out) for the in-flight batch to finish; a loop still running then is
//! aborted (`JoinHandle::abort`) and awaited. Every removal is accounted as graceful or
//! aborted; no task is left detached.

use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, PoisonError, Weak,
    },
    time::Duration,
};

use serde::Serialize;
use tokio::{sync::Notify, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    pipeline::executor::{ExecutorType, OrchestrationExecutor},
    runtime::backpressure::PressureGauge,
    runtime::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitState},
    runtime::health::{ExecutorHealth, HealthStateMachine, HealthTransition},
    runtime::metrics::{ExecutorMetrics, LatencySummary, MetricsTotals, PoolMetrics},
};

/// Builds a new executor of the pool's type.
pub type ExecutorFactory = Arc<dyn Fn() -> Arc<dyn OrchestrationExecutor> + Send + Sync>;

/// Settings of one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Fewest executors.
    pub min_executors: usize,
    /// Most executors.
    pub max_executors: usize,
    /// Items per batch (before backpressure).
    pub batch_size: u32,
    /// Fallback sleep when a batch found no work and no wake-up came (before backpressure).
    pub polling_interval: Duration,
    /// How long an executor removed while the pool runs (scaling down, replaced as unhealthy)
    /// may take to finish its batch before it is aborted. At shutdown the engine's
    /// `shutdown_grace` bounds the whole drain instead.
    pub stop_timeout: Duration,
    /// The pool's circuit breaker around its batches.
    pub circuit_breaker: CircuitBreakerConfig,
    /// How strongly the pool gives way to backpressure, in thousandths.
    pub backpressure_weight_permille: u32,
    /// Consecutive failed batches after which an executor is `Unhealthy` (and replaced).
    pub unhealthy_after_errors: u32,
    /// Keep heartbeating while a batch runs. For worker pools: their batches run user handlers
    /// for as long as the steps' own timeouts allow, and a long handler is not a dead executor.
    /// Orchestration pools leave it off, so a batch stuck in storage shows as silence.
    pub heartbeat_during_batch: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            min_executors: 1,
            max_executors: 4,
            batch_size: 50,
            polling_interval: Duration::from_millis(100),
            stop_timeout: Duration::from_secs(5),
            circuit_breaker: CircuitBreakerConfig::default(),
            backpressure_weight_permille: 500,
            unhealthy_after_errors: 10,
            heartbeat_during_batch: false,
        }
    }
}

/// What one executor's loop shares with its pool. The loop writes; the pool and monitors read.
#[derive(Debug)]
pub struct ExecutorState {
    /// Its metrics.
    pub metrics: ExecutorMetrics,
    health: Mutex<HealthStateMachine>,
    /// Milliseconds after the pool's epoch of the last sign of life.
    heartbeat_ms: AtomicU64,
    consecutive_errors: AtomicU32,
}

impl ExecutorState {
    fn new(name: String, metrics: ExecutorMetrics) -> Self {
        Self {
            metrics,
            health: Mutex::new(HealthStateMachine::new(name)),
            heartbeat_ms: AtomicU64::new(0),
            consecutive_errors: AtomicU32::new(0),
        }
    }

    /// Current health.
    pub fn health(&self) -> ExecutorHealth {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state()
    }

    /// Moves health along a path of legal steps toward `to` (e.g. `Healthy` to `Unhealthy`
    /// passes through `Degraded`); steps the machine refuses end the walk.
    fn move_toward(&self, to: ExecutorHealth, reason: &str) {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let path: &[ExecutorHealth] = match (h.state(), to) {
            (ExecutorHealth::Healthy | ExecutorHealth::Starting, ExecutorHealth::Unhealthy) => {
                &[ExecutorHealth::Degraded, ExecutorHealth::Unhealthy]
            }
            _ => std::slice::from_ref(&to),
        };
        for &step in path {
            let from = h.state();
            match h.transition_to(step, reason) {
                Ok(true) => self.metrics.record_health_transition(from, step),
                Ok(false) => {}
                Err(_) => break,
            }
        }
    }
}

/// What all loops of one pool share.
#[derive(Debug)]
struct PoolShared {
    breaker: Mutex<CircuitBreaker>,
    gauge: PressureGauge,
    epoch: Instant,
}

impl PoolShared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, CircuitBreaker> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct RunningExecutor {
    id: u64,
    executor: Arc<dyn OrchestrationExecutor>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    state: Arc<ExecutorState>,
}

/// How a removal went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RemovalReport {
    /// Executors that finished their batch and stopped in time.
    pub graceful: usize,
    /// Executors aborted after the stop timeout.
    pub aborted: usize,
}

impl RemovalReport {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: RemovalReport) {
        self.graceful += other.graceful;
        self.aborted += other.aborted;
    }
}

/// One executor, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutorSnapshot {
    /// Its id within the pool.
    pub id: u64,
    /// Health.
    pub health: ExecutorHealth,
    /// Time in the current health state.
    pub time_in_state: Duration,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: u64,
    /// Recent health changes.
    pub health_history: Vec<HealthTransition>,
}

/// A pool, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct PoolSnapshot {
    /// Executor type.
    pub executor_type: ExecutorType,
    /// Running executors.
    pub executors: Vec<ExecutorSnapshot>,
    /// Lower bound.
    pub min_executors: usize,
    /// Upper bound.
    pub max_executors: usize,
    /// Batches over the pool's life.
    pub batches: u64,
    /// Items processed.
    pub items: u64,
    /// Failed batches.
    pub errors: u64,
    /// Time spent in batches.
    pub busy: Duration,
    /// Batch latency percentiles.
    pub latency: LatencySummary,
    /// Circuit breaker state.
    pub circuit_breaker: CircuitState,
    /// Times the breaker opened.
    pub circuit_breaker_trips: u64,
    /// Executors replaced for being unhealthy.
    pub replaced: u64,
}

/// The executors of one type.
pub struct ExecutorPool {
    executor_type: ExecutorType,
    factory: ExecutorFactory,
    config: PoolConfig,
    wake: Arc<Notify>,
    shared: Arc<PoolShared>,
    executors: Vec<RunningExecutor>,
    next_id: u64,
    replaced: u64,
    /// The pool's handles on its engine's recorder, shared by its executors.
    metrics: PoolMetrics,
    /// Totals of executors already removed, so pool totals never go backwards.
    retired: ExecutorMetrics,
}

impl std::fmt::Debug for ExecutorPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorPool")
            .field("executor_type", &self.executor_type)
            .field("executors", &self.executors.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ExecutorPool {
    /// An empty pool. Its loops wait on `wake` between empty batches, read backpressure from
    /// `gauge` and export what they do through `metrics`.
    pub fn new(
        executor_type: ExecutorType,
        factory: ExecutorFactory,
        config: PoolConfig,
        wake: Arc<Notify>,
        gauge: PressureGauge,
        metrics: PoolMetrics,
    ) -> Self {
        let shared = Arc::new(PoolShared {
            breaker: Mutex::new(CircuitBreaker::new(config.circuit_breaker)),
            gauge,
            epoch: Instant::now(),
        });
        Self {
            executor_type,
            factory,
            config,
            wake,
            shared,
            executors: Vec::new(),
            next_id: 0,
            replaced: 0,
            metrics,
            // Only ever absorbs totals: its executors exported their batches as they ran.
            retired: ExecutorMetrics::default(),
        }
    }

    /// The pool's type.
    pub fn executor_type(&self) -> ExecutorType {
        self.executor_type
    }

    /// Its settings.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Changes its bounds (resource validation may shrink them).
    pub fn set_bounds(&mut self, min_executors: usize, max_executors: usize) {
        self.config.min_executors = min_executors;
        self.config.max_executors = max_executors.max(min_executors);
    }

    /// Executors currently in the pool.
    pub fn len(&self) -> usize {
        self.executors.len()
    }

    /// No executor is running.
    pub fn is_empty(&self) -> bool {
        self.executors.is_empty()
    }

    /// Loop tasks of this pool that have not finished (equals [`len`](Self::len) unless a loop
    /// ended on its own).
    pub fn live_tasks(&self) -> usize {
        self.executors
            .iter()
            .filter(|e| !e.task.is_finished())
            .count()
    }

    /// The pool's exported metrics.
    pub fn metrics(&self) -> &PoolMetrics {
        &self.metrics
    }

    /// Circuit breaker state.
    pub fn circuit_state(&self) -> CircuitState {
        self.shared.breaker().state()
    }

    /// Starts one more executor.
    pub fn add_executor(&mut self) {
        let executor = (self.factory)();
        self.next_id += 1;
        let state = Arc::new(ExecutorState::new(
            format!("{}-{}", self.executor_type.as_str(), self.next_id),
            ExecutorMetrics::new(self.metrics.clone()),
        ));
        state
            .heartbeat_ms
            .store(self.shared.now_ms(), Ordering::Relaxed);
        let cancel = CancellationToken::new();
        // Everything an executor logs carries its kind and id.
        let span = tracing::info_span!(
            "executor",
            executor.kind = self.executor_type.as_str(),
            executor.id = self.next_id
        );
        let task = tokio::spawn(
            run_loop(
                Arc::downgrade(&executor),
                state.clone(),
                self.shared.clone(),
                cancel.clone(),
                self.wake.clone(),
                self.config.clone(),
            )
            .instrument(span),
        );
        tracing::debug!(
            executor_type = self.executor_type.as_str(),
            executor_id = self.next_id,
            "executor started"
        );
        self.executors.push(RunningExecutor {
            id: self.next_id,
            executor,
            cancel,
            task,
            state,
        });
    }

    /// Grows or shrinks the pool to `target`, clamped to its bounds.
    pub async fn scale_to(&mut self, target: usize) -> RemovalReport {
        let target = target.clamp(self.config.min_executors, self.config.max_executors);
        while self.executors.len() < target {
            self.add_executor();
        }
        let excess = self.executors.len() - target;
        self.remove_executors(excess).await
    }

    /// Removes `count` executors (newest first) in two phases: cancel and wait up to the stop
    /// timeout, then abort what is still running.
    pub async fn remove_executors(&mut self, count: usize) -> RemovalReport {
        let count = count.min(self.executors.len());
        let leaving = self.executors.split_off(self.executors.len() - count);
        self.stop_executors(leaving, None).await
    }

    /// Stops every executor (two-phase).
    pub async fn stop_all(&mut self) -> RemovalReport {
        let leaving = std::mem::take(&mut self.executors);
        self.stop_executors(leaving, None).await
    }

    /// [`Self::stop_all`] at shutdown: what still runs at `deadline` is aborted (the pool's
    /// `stop_timeout` does not apply; the engine's shutdown grace does).
    pub async fn stop_all_by(&mut self, deadline: tokio::time::Instant) -> RemovalReport {
        let leaving = std::mem::take(&mut self.executors);
        self.stop_executors(leaving, Some(deadline)).await
    }

    /// Cancels `leaving`, then waits for them until `deadline`, or `stop_timeout` when there is
    /// none, and aborts what still runs.
    async fn stop_executors(
        &mut self,
        leaving: Vec<RunningExecutor>,
        deadline: Option<tokio::time::Instant>,
    ) -> RemovalReport {
        // Cancelled together, they share one wait.
        let until =
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + self.config.stop_timeout);
        for e in &leaving {
            e.state
                .move_toward(ExecutorHealth::Stopping, "removed from pool");
            e.cancel.cancel();
        }
        let mut report = RemovalReport::default();
        for e in leaving {
            let RunningExecutor {
                id,
                executor,
                mut task,
                state,
                ..
            } = e;
            // Release our strong reference first: the loop's Weak can no longer upgrade.
            drop(executor);
            match tokio::time::timeout_at(until, &mut task).await {
                Ok(_) => report.graceful += 1,
                Err(_) => {
                    tracing::warn!(
                        executor_type = self.executor_type.as_str(),
                        executor_id = id,
                        "executor did not stop in time; aborting"
                    );
                    task.abort();
                    let _ = task.await;
                    report.aborted += 1;
                }
            }
            self.retire(&state);
        }
        report
    }

    fn retire(&self, state: &ExecutorState) {
        let mut totals = MetricsTotals::default();
        state.metrics.merge_into(&mut totals);
        self.retired.absorb(&totals);
    }

    /// Marks executors silent for longer than `stale_after` unhealthy, then replaces every
    /// unhealthy executor with a new one. Returns the removal report of the replaced ones.
    pub async fn replace_unhealthy(&mut self, stale_after: Duration) -> RemovalReport {
        let now = self.shared.now_ms();
        let stale_ms = u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX);
        for e in &self.executors {
            let age = now.saturating_sub(e.state.heartbeat_ms.load(Ordering::Relaxed));
            if age > stale_ms {
                e.state.move_toward(
                    ExecutorHealth::Unhealthy,
                    &format!("no heartbeat for {age} ms"),
                );
            }
        }
        let (sick, well): (Vec<_>, Vec<_>) = std::mem::take(&mut self.executors)
            .into_iter()
            .partition(|e| e.state.health() == ExecutorHealth::Unhealthy);
        self.executors = well;
        let mut report = RemovalReport::default();
        if sick.is_empty() {
            return report;
        }
        let n = sick.len();
        tracing::warn!(
            executor_type = self.executor_type.as_str(),
            count = n,
            "replacing unhealthy executors"
        );
        report.add(self.stop_executors(sick, None).await);
        for _ in 0..n {
            self.add_executor();
        }
        self.replaced += u64::try_from(n).unwrap_or(u64::MAX);
        report
    }

    /// Totals over the pool's life.
    pub fn totals(&self) -> MetricsTotals {
        let mut totals = MetricsTotals::default();
        self.retired.merge_into(&mut totals);
        for e in &self.executors {
            e.state.metrics.merge_into(&mut totals);
        }
        totals
    }

    /// The pool's state for the health view.
    pub fn snapshot(&self) -> PoolSnapshot {
        let now = self.shared.now_ms();
        let totals = self.totals();
        let breaker = self.shared.breaker();
        PoolSnapshot {
            executor_type: self.executor_type,
            executors: self
                .executors
                .iter()
                .map(|e| {
                    let h = e
                        .state
                        .health
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    ExecutorSnapshot {
                        id: e.id,
                        health: h.state(),
                        time_in_state: h.time_in_state(),
                        heartbeat_age_ms: now
                            .saturating_sub(e.state.heartbeat_ms.load(Ordering::Relaxed)),
                        health_history: h.history().cloned().collect(),
                    }
                })
                .collect(),
            min_executors: self.config.min_executors,
            max_executors: self.config.max_executors,
            batches: totals.batches,
            items: totals.items,
            errors: totals.errors,
            busy: totals.busy,
            latency: totals.latency_summary(),
            circuit_breaker: breaker.state(),
            circuit_breaker_trips: breaker.trips(),
            replaced: self.replaced,
        }
    }
}

/// The processing loop of one executor. Holds a `Weak` to it, never an `Arc` across batches,
/// and adds what every executor type needs around a batch: the circuit breaker, backpressure,
/// timing, heartbeats and health.
async fn run_loop(
    executor: Weak<dyn OrchestrationExecutor>,
    state: Arc<ExecutorState>,
    shared: Arc<PoolShared>,
    cancel: CancellationToken,
    wake: Arc<Notify>,
    config: PoolConfig,
) {
    let weight = config.backpressure_weight_permille;
    while !cancel.is_cancelled() {
        let Some(strong) = executor.upgrade() else {
            break;
        };
        if !strong.should_continue() {
            break;
        }
        let allowed = shared.breaker().try_acquire(Instant::now());
        let found_work = if allowed {
            let batch = shared.gauge.batch_size(config.batch_size, weight);
            let started = Instant::now();
            let work = strong
                .process_batch(batch)
                .instrument(tracing::debug_span!("batch", batch.size = batch));
            let result = if config.heartbeat_during_batch {
                tokio::pin!(work);
                // Cheap (one atomic store) and well under any sensible heartbeat timeout.
                let mut beat = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tokio::select! {
                        r = &mut work => break r,
                        _ = beat.tick() => state.heartbeat_ms.store(shared.now_ms(), Ordering::Relaxed),
                    }
                }
            } else {
                work.await
            };
            drop(strong);
            let elapsed = started.elapsed();
            state
                .metrics
                .record_batch(elapsed, *result.as_ref().unwrap_or(&0), result.is_err());
            // A full batch means more may be waiting: go again at once. A partial one drained
            // the queue as of its dequeue; whatever arrived since left a wake-up permit, so
            // the wait below returns at once for it, without an empty poll in between.
            after_batch(&state, &shared, &config, &result) >= batch as usize
        } else {
            drop(strong);
            state.move_toward(ExecutorHealth::Degraded, "circuit breaker open");
            false
        };
        state.heartbeat_ms.store(shared.now_ms(), Ordering::Relaxed);
        if found_work {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = wake.notified() => {}
            () = tokio::time::sleep(shared.gauge.polling_interval(config.polling_interval, weight)) => {}
        }
        state.heartbeat_ms.store(shared.now_ms(), Ordering::Relaxed);
    }
}

/// Updates breaker and health after a batch; returns how many items it processed.
fn after_batch(
    state: &ExecutorState,
    shared: &PoolShared,
    config: &PoolConfig,
    result: &Result<usize, crate::pipeline::executor::ExecutorError>,
) -> usize {
    match result {
        Ok(n) => {
            shared.breaker().record_success();
            state.consecutive_errors.store(0, Ordering::Relaxed);
            state.move_toward(ExecutorHealth::Healthy, "batch succeeded");
            *n
        }
        Err(error) => {
            // Only outages count against the breaker; a domain answer is not an outage.
            if error.is_infrastructure() {
                shared.breaker().record_failure(Instant::now());
            }
            let errors = state.consecutive_errors.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(%error, consecutive = errors, "executor batch failed");
            if errors >= config.unhealthy_after_errors {
                state.move_toward(
                    ExecutorHealth::Unhealthy,
                    &format!("{errors} consecutive failed batches"),
                );
            } else {
                state.move_toward(ExecutorHealth::Degraded, "batch failed");
            }
            0
        }
    }
}

#[cfg(test)]
mod tests;
