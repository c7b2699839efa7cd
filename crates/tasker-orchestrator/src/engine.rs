//! `Engine`: an embedded orchestrator: the five pools under their coordinator, in-process
//! workers for chosen namespaces, task submission and an event stream.

use std::{sync::Arc, time::Duration};

use tasker_store::{Store, TaskCreated};
use tasker_types::{StepState, TaskId, TaskState};
use tokio::sync::{broadcast, mpsc, Mutex};

use crate::{
    coordinator::{OrchestrationLoopCoordinator, PoolSnapshot},
    executor::{
        create_task, ExecutorContext, ExecutorType, OrchestrationExecutor, StepEnqueuer,
        StepResultProcessor, TaskClaimer, TaskFinalizer, TaskRequestProcessor,
    },
    handler::HandlerRegistry,
    messages::TaskRequest,
    pool::{ExecutorFactory, ExecutorPool, PoolConfig},
    wakeup::Wakeups,
    worker::InProcessWorker,
};

pub use crate::executor::RequestError;

/// Something observers may want to know. Advisory: a slow observer may miss events (the
/// channel is bounded); the store is the truth.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEvent {
    /// A step reached a new state after an attempt.
    StepFinished {
        /// Its task.
        task_id: TaskId,
        /// Step name.
        name: String,
        /// New state.
        state: StepState,
        /// Attempts so far.
        attempts: u32,
    },
    /// A task reached `Complete` or `Error`.
    TaskFinished {
        /// The task.
        task_id: TaskId,
        /// Its final state.
        state: TaskState,
    },
}

/// How to build an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Recorded in audit rows.
    pub instance_id: String,
    /// Settings of every orchestration pool.
    pub pool: PoolConfig,
    /// Namespaces whose steps in-process workers run.
    pub worker_namespaces: Vec<String>,
    /// Worker loops per namespace.
    pub workers_per_namespace: usize,
    /// Lease on claimed tasks.
    pub claim_lease: Duration,
    /// Visibility timeout of internal and step messages.
    pub visibility_timeout: Duration,
    /// Deliveries before a message is dead-lettered.
    pub max_deliveries: u32,
    /// Capacity of the claims channel between claimers and enqueuers.
    pub claims_capacity: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            instance_id: format!("tasker-{}", uuid::Uuid::new_v4().simple()),
            pool: PoolConfig::default(),
            worker_namespaces: Vec::new(),
            workers_per_namespace: 2,
            claim_lease: Duration::from_secs(30),
            visibility_timeout: Duration::from_secs(60),
            max_deliveries: 10,
            claims_capacity: 1024,
        }
    }
}

/// A running embedded orchestrator.
#[derive(Debug)]
pub struct Engine {
    ctx: ExecutorContext,
    coordinator: Mutex<OrchestrationLoopCoordinator>,
    workers: Mutex<Vec<ExecutorPool>>,
}

impl Engine {
    /// Starts the pools and the in-process workers over `store`.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled start leaves pools running; call [`Engine::shutdown`].
    pub async fn start(
        store: Arc<dyn Store>,
        config: EngineConfig,
        handlers: HandlerRegistry,
    ) -> Self {
        let (events, _) = broadcast::channel(4096);
        let (claims_tx, claims_rx) = mpsc::channel(config.claims_capacity.max(1));
        let ctx = ExecutorContext {
            store,
            wakeups: Wakeups::default(),
            instance_id: config.instance_id.clone(),
            events,
            claims_tx,
            claims_rx: Arc::new(Mutex::new(claims_rx)),
            claim_lease: config.claim_lease,
            visibility_timeout: config.visibility_timeout,
            max_deliveries: config.max_deliveries,
        };
        let pools = ExecutorType::ALL.into_iter().map(|t| {
            let c = ctx.clone();
            let factory: ExecutorFactory = Arc::new(move || -> Arc<dyn OrchestrationExecutor> {
                match t {
                    ExecutorType::TaskRequestProcessor => {
                        Arc::new(TaskRequestProcessor::new(c.clone()))
                    }
                    ExecutorType::TaskClaimer => Arc::new(TaskClaimer::new(c.clone())),
                    ExecutorType::StepEnqueuer => Arc::new(StepEnqueuer::new(c.clone())),
                    ExecutorType::StepResultProcessor => {
                        Arc::new(StepResultProcessor::new(c.clone()))
                    }
                    ExecutorType::TaskFinalizer | ExecutorType::InProcessWorker => {
                        Arc::new(TaskFinalizer::new(c.clone()))
                    }
                }
            });
            ExecutorPool::new(
                t,
                factory,
                config.pool.clone(),
                ctx.wakeups.for_queue(t.wakes_on()),
            )
        });
        let mut coordinator = OrchestrationLoopCoordinator::new(pools);
        coordinator.start().await;

        let handlers = Arc::new(handlers);
        let mut workers = Vec::new();
        for namespace in &config.worker_namespaces {
            let worker = InProcessWorker {
                ctx: ctx.clone(),
                handlers: handlers.clone(),
                namespace: namespace.clone(),
            };
            let factory: ExecutorFactory =
                Arc::new(move || Arc::new(worker.clone()) as Arc<dyn OrchestrationExecutor>);
            let mut pool = ExecutorPool::new(
                ExecutorType::InProcessWorker,
                factory,
                PoolConfig {
                    min_executors: config.workers_per_namespace,
                    max_executors: config.workers_per_namespace,
                    ..config.pool.clone()
                },
                ctx.wakeups.for_queue(namespace),
            );
            pool.scale_to(config.workers_per_namespace).await;
            workers.push(pool);
        }
        Self {
            ctx,
            coordinator: Mutex::new(coordinator),
            workers: Mutex::new(workers),
        }
    }

    /// The store the engine runs on.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.ctx.store
    }

    /// Observes step and task events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.ctx.events.subscribe()
    }

    /// Validates and creates a task now (idempotent with a key) and hands it to the pipeline.
    ///
    /// # Errors
    ///
    /// [`RequestError`]: unknown template, invalid context, store failure.
    pub async fn submit(&self, request: &TaskRequest) -> Result<TaskCreated, RequestError> {
        create_task(&self.ctx, request).await
    }

    /// Queues a request for the TaskRequestProcessor (asynchronous intake).
    ///
    /// # Errors
    ///
    /// Store failures.
    pub async fn enqueue_request(&self, request: &TaskRequest) -> Result<(), crate::ExecutorError> {
        self.ctx
            .publish(
                crate::messages::TASK_REQUESTS,
                std::slice::from_ref(request),
                Duration::ZERO,
            )
            .await
    }

    /// The pools' state.
    pub async fn pools(&self) -> Vec<PoolSnapshot> {
        self.coordinator.lock().await.snapshot()
    }

    /// Stops workers, then pools; each executor finishes its batch or is aborted after the
    /// pool's stop timeout. Unacknowledged messages are delivered again after their lease.
    pub async fn shutdown(&self) {
        for pool in self.workers.lock().await.iter_mut() {
            pool.stop_all().await;
        }
        let report = self.coordinator.lock().await.stop().await;
        tracing::info!(
            graceful = report.graceful,
            aborted = report.aborted,
            "engine stopped"
        );
    }
}
