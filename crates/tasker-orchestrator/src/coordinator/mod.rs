//! `OrchestrationLoopCoordinator`: one [`ExecutorPool`] per executor type, started at their
//! minimum size and stopped together.

use std::collections::BTreeMap;

use crate::{
    executor::ExecutorType,
    pool::{ExecutorPool, RemovalReport},
};

/// Owns the pools.
#[derive(Debug)]
pub struct OrchestrationLoopCoordinator {
    pools: BTreeMap<ExecutorType, ExecutorPool>,
}

/// One pool, as reported.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolSnapshot {
    /// Executor type.
    pub executor_type: ExecutorType,
    /// Running executors.
    pub executors: usize,
    /// Bounds.
    pub min_executors: usize,
    /// Bounds.
    pub max_executors: usize,
    /// Batches run over the pool's life.
    pub batches: u64,
    /// Items processed.
    pub items: u64,
    /// Failed batches.
    pub errors: u64,
}

impl OrchestrationLoopCoordinator {
    /// A coordinator over `pools` (one per type).
    pub fn new(pools: impl IntoIterator<Item = ExecutorPool>) -> Self {
        Self {
            pools: pools.into_iter().map(|p| (p.executor_type(), p)).collect(),
        }
    }

    /// Starts every pool at its minimum size.
    pub async fn start(&mut self) {
        for pool in self.pools.values_mut() {
            let min = pool.config().min_executors;
            pool.scale_to(min).await;
        }
        tracing::info!(pools = self.pools.len(), "orchestration pools started");
    }

    /// Stops every pool (two-phase removal).
    pub async fn stop(&mut self) -> RemovalReport {
        let mut total = RemovalReport::default();
        for pool in self.pools.values_mut() {
            let r = pool.stop_all().await;
            total.graceful += r.graceful;
            total.aborted += r.aborted;
        }
        total
    }

    /// Every pool's state.
    pub fn snapshot(&self) -> Vec<PoolSnapshot> {
        self.pools
            .values()
            .map(|p| {
                let (batches, items, errors, _) = p.totals();
                PoolSnapshot {
                    executor_type: p.executor_type(),
                    executors: p.len(),
                    min_executors: p.config().min_executors,
                    max_executors: p.config().max_executors,
                    batches,
                    items,
                    errors,
                }
            })
            .collect()
    }
}
