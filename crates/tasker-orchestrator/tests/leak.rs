//! Starting and stopping executors leaks nothing: after 1,000 start/stop cycles the live heap
//! allocations are back at their baseline and every executor was dropped. The predecessor's
//! loop held a strong reference to a copy of its executor, so each restart leaked one.
//!
//! This binary installs a counting global allocator, so it holds only this test.

use std::{
    alloc::System,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tasker_orchestrator::{
    runtime::backpressure::PressureGauge,
    runtime::metrics::PoolMetrics,
    runtime::pool::{ExecutorFactory, ExecutorPool, PoolConfig},
    ExecutorError, ExecutorType, OrchestrationExecutor,
};
use tokio::sync::Notify;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live executor instances.
static LIVE: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
struct Counted;

impl Counted {
    fn new() -> Self {
        LIVE.fetch_add(1, Ordering::SeqCst);
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl OrchestrationExecutor for Counted {
    fn executor_type(&self) -> ExecutorType {
        ExecutorType::TaskClaimer
    }

    async fn process_batch(&self, _batch_size: u32) -> Result<usize, ExecutorError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(1)
    }
}

/// Heap bytes allocated and not yet freed. (`stats_alloc` already counts a growing realloc in
/// `bytes_allocated` and a shrinking one in `bytes_deallocated`.)
fn live_bytes() -> i64 {
    let s = GLOBAL.stats();
    let allocated = i64::try_from(s.bytes_allocated).unwrap();
    let freed = i64::try_from(s.bytes_deallocated).unwrap();
    allocated - freed
}

/// Starts one or two executors, lets them run a few batches, stops them; `n` times.
async fn cycles(pool: &mut ExecutorPool, n: usize) {
    for i in 0..n {
        pool.add_executor();
        if i % 2 == 0 {
            pool.add_executor();
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
        let report = pool.stop_all().await;
        assert_eq!(report.aborted, 0);
        assert_eq!(pool.live_tasks(), 0);
    }
}

#[test]
fn a_thousand_start_stop_cycles_return_live_allocations_to_baseline() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let factory: ExecutorFactory =
            Arc::new(|| Arc::new(Counted::new()) as Arc<dyn OrchestrationExecutor>);
        let config = PoolConfig {
            min_executors: 0,
            max_executors: 4,
            ..PoolConfig::default()
        };
        let mut pool = ExecutorPool::new(
            ExecutorType::TaskClaimer,
            factory,
            config,
            Arc::new(Notify::new()),
            PressureGauge::default(),
            PoolMetrics::detached(),
        );
        // Warm up: the runtime's timer and task slabs and the pool's retired histogram allocate
        // once.
        cycles(&mut pool, 100).await;
        assert_eq!(LIVE.load(Ordering::SeqCst), 0, "every executor was dropped");
        let baseline = live_bytes();

        cycles(&mut pool, 1_000).await;

        assert_eq!(LIVE.load(Ordering::SeqCst), 0, "every executor was dropped");
        let growth = live_bytes() - baseline;
        eprintln!("live heap growth over 1,000 cycles: {growth} bytes");
        // A leaked executor would keep its state and latency histogram (kilobytes), so even a
        // single leaked executor breaks this bound; a leak per cycle, by far. (Measured: 0.)
        assert!(
            growth < 512,
            "live heap grew by {growth} bytes over 1,000 cycles"
        );
        assert!(pool.totals().batches >= 1_500, "the executors really ran");
    });
}
