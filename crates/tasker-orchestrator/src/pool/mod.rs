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
//! Removing executors first cancels them and waits up to `stop_timeout` for the in-flight batch
//! to finish; a loop still running then is aborted (`JoinHandle::abort`) and awaited. Every
//! removal is accounted as graceful or aborted; no task is left detached.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use tokio::{sync::Notify, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::executor::{ExecutorType, OrchestrationExecutor};

/// Builds a new executor of the pool's type.
pub type ExecutorFactory = Arc<dyn Fn() -> Arc<dyn OrchestrationExecutor> + Send + Sync>;

/// Settings of one pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Fewest executors.
    pub min_executors: usize,
    /// Most executors.
    pub max_executors: usize,
    /// Items per batch.
    pub batch_size: u32,
    /// Fallback sleep when a batch found no work and no wake-up came.
    pub polling_interval: Duration,
    /// How long a stopping executor may take to finish its batch before it is aborted.
    pub stop_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            min_executors: 1,
            max_executors: 4,
            batch_size: 50,
            polling_interval: Duration::from_millis(100),
            stop_timeout: Duration::from_secs(5),
        }
    }
}

/// Counters of one executor's loop, written only by that loop.
#[derive(Debug, Default)]
pub struct LoopStats {
    /// Batches run.
    pub batches: AtomicU64,
    /// Items processed.
    pub items: AtomicU64,
    /// Batches that failed.
    pub errors: AtomicU64,
    /// Time spent inside `process_batch`, in nanoseconds.
    pub busy_nanos: AtomicU64,
}

struct RunningExecutor {
    id: u64,
    executor: Arc<dyn OrchestrationExecutor>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    stats: Arc<LoopStats>,
}

/// How a removal went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RemovalReport {
    /// Executors that finished their batch and stopped in time.
    pub graceful: usize,
    /// Executors aborted after the stop timeout.
    pub aborted: usize,
}

/// The executors of one type.
pub struct ExecutorPool {
    executor_type: ExecutorType,
    factory: ExecutorFactory,
    config: PoolConfig,
    wake: Arc<Notify>,
    executors: Vec<RunningExecutor>,
    next_id: u64,
    /// Totals of executors already removed, so pool totals never go backwards.
    retired: LoopStats,
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
    /// An empty pool; `wake` is the notifier its loops wait on between empty batches.
    pub fn new(
        executor_type: ExecutorType,
        factory: ExecutorFactory,
        config: PoolConfig,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            executor_type,
            factory,
            config,
            wake,
            executors: Vec::new(),
            next_id: 0,
            retired: LoopStats::default(),
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

    /// Starts one more executor.
    pub fn add_executor(&mut self) {
        let executor = (self.factory)();
        let stats = Arc::new(LoopStats::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_loop(
            Arc::downgrade(&executor),
            stats.clone(),
            cancel.clone(),
            self.wake.clone(),
            self.config.batch_size,
            self.config.polling_interval,
        ));
        self.next_id += 1;
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
            stats,
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
        let leaving: Vec<RunningExecutor> = self.executors.split_off(self.executors.len() - count);
        for e in &leaving {
            e.cancel.cancel();
        }
        let mut report = RemovalReport::default();
        for e in leaving {
            let RunningExecutor {
                id,
                executor,
                mut task,
                stats,
                ..
            } = e;
            // Release our strong reference first: the loop's Weak can no longer upgrade.
            drop(executor);
            match tokio::time::timeout(self.config.stop_timeout, &mut task).await {
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
            self.retire(&stats);
        }
        report
    }

    /// Stops every executor (two-phase).
    pub async fn stop_all(&mut self) -> RemovalReport {
        let n = self.executors.len();
        self.remove_executors(n).await
    }

    fn retire(&self, stats: &LoopStats) {
        for (total, part) in [
            (&self.retired.batches, &stats.batches),
            (&self.retired.items, &stats.items),
            (&self.retired.errors, &stats.errors),
            (&self.retired.busy_nanos, &stats.busy_nanos),
        ] {
            total.fetch_add(part.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Totals over the pool's life: (batches, items, errors, busy time).
    pub fn totals(&self) -> (u64, u64, u64, Duration) {
        let sum = |f: fn(&LoopStats) -> &AtomicU64| {
            f(&self.retired).load(Ordering::Relaxed)
                + self
                    .executors
                    .iter()
                    .map(|e| f(&e.stats).load(Ordering::Relaxed))
                    .sum::<u64>()
        };
        (
            sum(|s| &s.batches),
            sum(|s| &s.items),
            sum(|s| &s.errors),
            Duration::from_nanos(sum(|s| &s.busy_nanos)),
        )
    }
}

/// The processing loop of one executor. Holds a `Weak` to it, never an `Arc` across batches.
async fn run_loop(
    executor: Weak<dyn OrchestrationExecutor>,
    stats: Arc<LoopStats>,
    cancel: CancellationToken,
    wake: Arc<Notify>,
    batch_size: u32,
    polling_interval: Duration,
) {
    while !cancel.is_cancelled() {
        let Some(strong) = executor.upgrade() else {
            break;
        };
        let started = Instant::now();
        let result = strong.process_batch(batch_size).await;
        drop(strong);
        let busy = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        stats.busy_nanos.fetch_add(busy, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        let found_work = match result {
            Ok(n) => {
                stats.items.fetch_add(n as u64, Ordering::Relaxed);
                n > 0
            }
            Err(error) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "executor batch failed");
                false
            }
        };
        if found_work {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = wake.notified() => {}
            () = tokio::time::sleep(polling_interval) => {}
        }
    }
}

#[cfg(test)]
mod tests;
