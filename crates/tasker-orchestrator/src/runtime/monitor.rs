//! The monitor: the one task that owns the coordinator. Every scaling interval it runs a round
//! ([`OrchestrationLoopCoordinator::tick`]) and publishes the coordinator's snapshot through a
//! `watch` channel and its gauges to the engine's recorder. Anything else that must touch the
//! coordinator (a round on demand, a tool resizing a pool, shutdown taking it back) asks on a
//! bounded command channel and is served between rounds.
//!
//! So nothing reads the coordinator behind a lock: health, metrics and the pools view read the
//! last published snapshot and never wait, even while a round scales a pool down (which can
//! take up to that pool's stop timeout).

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use tasker_store::Store;
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use crate::runtime::{
    coordinator::{CoordinatorSnapshot, OrchestrationLoopCoordinator},
    metrics::EngineMetrics,
};

/// Commands waiting for the monitor beyond this many make their senders wait.
const COMMAND_CAPACITY: usize = 16;

/// Work on the coordinator, run by the monitor between rounds.
type Job = Box<
    dyn for<'a> FnOnce(
            &'a mut OrchestrationLoopCoordinator,
        ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>
        + Send,
>;

enum Command {
    /// Run a round now; answer when its snapshot is published.
    Round(oneshot::Sender<()>),
    /// Run a job on the coordinator, then publish its snapshot.
    Job(Job),
    /// Hand the coordinator over and stop.
    Release(oneshot::Sender<OrchestrationLoopCoordinator>),
}

/// How the rest of the engine reaches the monitor.
#[derive(Debug, Clone)]
pub struct MonitorHandle {
    commands: mpsc::Sender<Command>,
    snapshots: watch::Receiver<Arc<CoordinatorSnapshot>>,
}

impl MonitorHandle {
    /// The snapshot of the last round; never waits.
    pub fn snapshot(&self) -> Arc<CoordinatorSnapshot> {
        self.snapshots.borrow().clone()
    }

    /// Runs a round now and returns once its snapshot is published; `false` when the monitor
    /// has stopped.
    pub async fn round(&self) -> bool {
        let (reply, done) = oneshot::channel();
        self.commands.send(Command::Round(reply)).await.is_ok() && done.await.is_ok()
    }

    /// Runs `job` on the coordinator between rounds and returns its answer; `None` when the
    /// monitor has stopped.
    pub async fn with_coordinator<R: Send + 'static>(
        &self,
        job: impl for<'a> FnOnce(
                &'a mut OrchestrationLoopCoordinator,
            ) -> Pin<Box<dyn Future<Output = R> + Send + 'a>>
            + Send
            + 'static,
    ) -> Option<R> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |coordinator| {
            Box::pin(async move {
                let _ = reply.send(job(coordinator).await);
            })
        });
        self.commands.send(Command::Job(job)).await.ok()?;
        answer.await.ok()
    }

    /// Stops the monitor and takes the coordinator back (to shut its pools down); `None` when
    /// it was taken already.
    pub async fn release(&self) -> Option<OrchestrationLoopCoordinator> {
        let (reply, coordinator) = oneshot::channel();
        self.commands.send(Command::Release(reply)).await.ok()?;
        coordinator.await.ok()
    }
}

/// Starts the monitor on `coordinator`, with a round every `interval`. It stops when
/// released, or when every [`MonitorHandle`] is gone (the engine was dropped), dropping the
/// coordinator then.
pub fn spawn(
    coordinator: OrchestrationLoopCoordinator,
    store: Arc<dyn Store>,
    metrics: EngineMetrics,
    interval: Duration,
) -> (MonitorHandle, JoinHandle<()>) {
    let (commands, receiver) = mpsc::channel(COMMAND_CAPACITY);
    let first = coordinator.snapshot();
    set_gauges(&first, &metrics);
    let (publisher, snapshots) = watch::channel(Arc::new(first));
    let monitor = Monitor {
        coordinator,
        store,
        metrics,
        publisher,
    };
    let task = tokio::spawn(monitor.run(receiver, interval));
    (
        MonitorHandle {
            commands,
            snapshots,
        },
        task,
    )
}

struct Monitor {
    coordinator: OrchestrationLoopCoordinator,
    store: Arc<dyn Store>,
    metrics: EngineMetrics,
    publisher: watch::Sender<Arc<CoordinatorSnapshot>>,
}

impl Monitor {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => self.round().await,
                command = commands.recv() => match command {
                    Some(Command::Round(reply)) => {
                        self.round().await;
                        let _ = reply.send(());
                    }
                    Some(Command::Job(job)) => {
                        job(&mut self.coordinator).await;
                        self.publish();
                    }
                    Some(Command::Release(reply)) => {
                        let _ = reply.send(self.coordinator);
                        return;
                    }
                    None => return,
                },
            }
        }
    }

    async fn round(&mut self) {
        self.coordinator.tick(self.store.as_ref()).await;
        self.publish();
    }

    /// Publishes the coordinator's snapshot to readers and its gauges to the engine's
    /// recorder; also drains the recorder's waiting latency samples into their buckets, so an
    /// engine nobody scrapes does not grow.
    fn publish(&self) {
        let snapshot = self.coordinator.snapshot();
        set_gauges(&snapshot, &self.metrics);
        self.metrics.run_upkeep();
        self.publisher.send_replace(Arc::new(snapshot));
    }
}

/// Sets the engine's gauges (executors, utilization, breaker state per pool; backpressure)
/// from a coordinator snapshot, so `/metrics` and `/v1/health/pools` agree.
fn set_gauges(snapshot: &CoordinatorSnapshot, metrics: &EngineMetrics) {
    for (&t, pool) in &snapshot.pools {
        let utilization = snapshot
            .series
            .get(&t)
            .and_then(|s| s.last())
            .map(|p| p.utilization);
        metrics.set_pool_gauges(t, pool.executors.len(), pool.circuit_breaker, utilization);
    }
    metrics.set_backpressure(snapshot.backpressure);
}
