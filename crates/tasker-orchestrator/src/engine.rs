//! `Engine`: an embedded orchestrator: resource validation, the five pools and the in-process
//! worker pool under the coordinator and its monitor, its own metrics recorder, task
//! submission, an event stream, and graceful shutdown.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tasker_store::{Store, TaskCreated};
use tasker_template::TaskTemplate;
use tasker_types::{InstanceState, StepId, StepRow, TaskId, TaskRow};
use tokio::{
    sync::{broadcast, mpsc, Mutex},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

pub use crate::pipeline::executor::RequestError;
use crate::{
    handler::HandlerRegistry,
    pipeline::events::EngineEvent,
    pipeline::executor::{
        create_each, create_task, create_tasks, ExecutorContext, ExecutorType,
        OrchestrationExecutor, StepEnqueuer, StepResultProcessor, TaskClaimer, TaskFinalizer,
        TaskRequestProcessor,
    },
    pipeline::messages::StepOutcome,
    pipeline::messages::{TaskRequest, LOCAL_STEPS},
    pipeline::operator::{self, OperatorError},
    pipeline::remote::{self, ClaimRequest, ClaimedStep, RemoteError},
    pipeline::wakeup::Wakeups,
    pipeline::worker::InProcessWorker,
    runtime::backpressure::default_weight_permille,
    runtime::coordinator::{
        CoordinatorConfig, CoordinatorSnapshot, OrchestrationLoopCoordinator, WorkSource,
    },
    runtime::membership::{self, ClusterConfig},
    runtime::metrics::{ClusterMetrics, EngineMetrics},
    runtime::monitor::{self, MonitorHandle},
    runtime::pool::{ExecutorFactory, ExecutorPool, PoolConfig},
    runtime::resources::{self, FailureMode, PoolBounds, ResourceReport},
};

/// How to build an [`Engine`].
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Recorded in audit rows.
    pub instance_id: String,
    /// Settings of each orchestration pool.
    pub pools: BTreeMap<ExecutorType, PoolConfig>,
    /// Settings of the in-process worker pool.
    pub worker_pool: PoolConfig,
    /// Run steps whose handler is registered here in this process. Without local workers every
    /// step waits in its namespace's queue for a remote worker.
    pub local_workers: bool,
    /// The coordinator and its monitor.
    pub coordinator: CoordinatorConfig,
    /// What to do when the pools do not fit the database pool.
    pub failure_mode: FailureMode,
    /// Lease on claimed tasks.
    pub claim_lease: Duration,
    /// Visibility timeout of internal messages, and the lease of a step an in-process worker
    /// claims.
    pub visibility_timeout: Duration,
    /// Deliveries before a message is dead-lettered.
    pub max_deliveries: u32,
    /// Capacity of the claims channel between claimers and enqueuers.
    pub claims_capacity: usize,
    /// Heartbeats and failure detection across the instances sharing the database.
    pub cluster: ClusterConfig,
    /// How long [`Engine::shutdown`] lets the work in flight finish, from its call: an executor
    /// still running its batch then is aborted, and the leases it held are released.
    pub shutdown_grace: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            instance_id: format!("tasker-{}", uuid::Uuid::new_v4().simple()),
            pools: ExecutorType::ALL
                .into_iter()
                .map(|t| {
                    (
                        t,
                        PoolConfig {
                            backpressure_weight_permille: default_weight_permille(t),
                            ..PoolConfig::default()
                        },
                    )
                })
                .collect(),
            worker_pool: PoolConfig {
                // One worker runs a whole batch of handlers at once; the monitor adds more
                // under load. Idle extra workers cost polls (about 10% PostgreSQL latency on
                // two cores, measured with `tasker bench`).
                min_executors: 1,
                max_executors: 4,
                backpressure_weight_permille: default_weight_permille(
                    ExecutorType::InProcessWorker,
                ),
                // Workers run user handlers bounded by the steps' timeouts.
                heartbeat_during_batch: true,
                // A claim takes what is waiting, up to this: a shallow queue is claimed as
                // it is, a deep one in a few large batches, each one claim and one result
                // transaction. 50 gave 8,300–8,600 single-step tasks/s on PostgreSQL and
                // 12,900–13,200 on SQLite; 200 gave 11,400–12,000 and 15,300 (`tasker bench`,
                // two cores).
                batch_size: 200,
                ..PoolConfig::default()
            },
            local_workers: true,
            coordinator: CoordinatorConfig::default(),
            failure_mode: FailureMode::FailFast,
            claim_lease: Duration::from_secs(30),
            visibility_timeout: Duration::from_secs(60),
            max_deliveries: 10,
            claims_capacity: 1024,
            cluster: ClusterConfig::default(),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl EngineConfig {
    /// Applies `f` to every orchestration pool's settings and the worker pool's.
    pub fn with_pools(mut self, f: impl Fn(&mut PoolConfig)) -> Self {
        self.pools.values_mut().for_each(&f);
        f(&mut self.worker_pool);
        self
    }
}

/// The problems of a template's handler configurations, as the handlers in `handlers` judge
/// them (a handler not registered there passes), each as
/// `steps.<step>.handler.config[.<key>]: <what is wrong>`: what template registration and
/// `tasker run` refuse a template for.
pub fn handler_config_problems(handlers: &HandlerRegistry, template: &TaskTemplate) -> Vec<String> {
    template
        .steps
        .iter()
        .filter_map(|step| {
            let problem = handlers
                .check_config(&step.handler.name, &step.handler.config)
                .err()?;
            Some(match problem.key.as_str() {
                "config" => format!("steps.{}.handler.config: {}", step.name, problem.message),
                _ => format!("steps.{}.handler.config.{problem}", step.name),
            })
        })
        .collect()
}

/// Why an engine did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Resource validation failed in `fail_fast` mode (or `degraded` could not fit).
    #[error("resource validation failed: {}", .0.errors.join("; "))]
    Resources(Box<ResourceReport>),
    /// The instance could not register with the cluster (the store failed).
    #[error("could not register this instance: {0}")]
    Store(#[source] tasker_store::StoreError),
    /// The cluster's connection pools would not fit the server, in `fail_fast` mode.
    #[error("connections: {0}")]
    Connections(String),
}

/// How long a stopping instance tries to release its leases and deregister, after its drain.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The pools that stop first, in this order: intake. The work in flight drains after them.
const STOP_ORDER: [ExecutorType; 3] = [
    ExecutorType::TaskRequestProcessor,
    ExecutorType::TaskClaimer,
    ExecutorType::StepEnqueuer,
];

/// A running embedded orchestrator.
#[derive(Debug)]
pub struct Engine {
    ctx: ExecutorContext,
    /// The monitor owns the coordinator; this reaches it and reads its published snapshots.
    monitor: MonitorHandle,
    /// The monitor and the wake-up forwarder.
    background: std::sync::Mutex<Vec<JoinHandle<()>>>,
    stop_background: CancellationToken,
    resources: ResourceReport,
    gauge: crate::runtime::backpressure::PressureGauge,
    handlers: Arc<HandlerRegistry>,
    /// This engine's recorder: its pools' handles point into it, and `/metrics` renders it.
    metrics: EngineMetrics,
    /// Heartbeats and failure detection.
    cluster: ClusterConfig,
    /// The cluster metrics' handles, shared with the heartbeat task.
    cluster_metrics: ClusterMetrics,
    /// The bound of the whole drain at shutdown.
    shutdown_grace: Duration,
    /// The heartbeat task and its stop, taken by `shutdown` after the pools stopped, so the
    /// instance heartbeats (`Draining`) while it drains.
    membership: std::sync::Mutex<Option<(JoinHandle<()>, CancellationToken)>>,
    /// Set when the engine starts stopping: heartbeats report `Draining`.
    draining: Arc<AtomicBool>,
}

impl Engine {
    /// Validates resources, then starts the pools, the in-process workers and the monitor.
    ///
    /// # Errors
    ///
    /// [`EngineError::Resources`] when the pools do not fit the database pool and the failure
    /// mode says to stop.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled start leaves pools running.
    pub async fn start(
        store: Arc<dyn Store>,
        mut config: EngineConfig,
        handlers: HandlerRegistry,
    ) -> Result<Self, EngineError> {
        // The cluster's pools must fit the server's connections too: fail fast, or size this
        // instance's executors to what is left.
        let budget =
            membership::connection_budget(store.as_ref(), &config.instance_id, config.cluster)
                .await
                .map_err(EngineError::Store)?;
        let database_pool = if budget.fits() {
            budget.own
        } else if config.failure_mode == FailureMode::FailFast {
            return Err(EngineError::Connections(budget.describe()));
        } else {
            tracing::warn!(
                allowed = budget.allowed(),
                "{}; this instance's executors are sized to what is left",
                budget.describe()
            );
            budget.allowed()
        };
        let resources = validate_resources(store.as_ref(), database_pool, &mut config)?;
        // This instance joins the cluster before any executor runs: what it holds (task
        // claims, say) counts only while it is registered.
        store
            .instance_register(&membership::registration(
                store.as_ref(),
                &config.instance_id,
            ))
            .await
            .map_err(EngineError::Store)?;
        // A new process holds nothing yet: what is recorded under its id (a configured id
        // reused after a crash) is a former run's, released now rather than after its leases.
        store
            .instance_release_leases(&config.instance_id)
            .await
            .map_err(EngineError::Store)?;
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
            templates: Arc::default(),
            routing: tasker_store::StepRouting {
                local_queue: LOCAL_STEPS.to_owned(),
                local_handlers: Arc::new(if config.local_workers {
                    handlers.names().into_iter().collect()
                } else {
                    Default::default()
                }),
            },
        };
        let metrics = EngineMetrics::new();
        let mut coordinator = OrchestrationLoopCoordinator::new(config.coordinator.clone());
        let gauge = coordinator.pressure_gauge();
        for (&t, pool_config) in &config.pools {
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
            let pool = ExecutorPool::new(
                t,
                factory,
                pool_config.clone(),
                ctx.wakeups.for_queue(t.wakes_on()),
                gauge.clone(),
                metrics.pool(t),
            );
            let source = if t == ExecutorType::StepEnqueuer {
                let tx = ctx.claims_tx.clone();
                WorkSource::Channel(Arc::new(move || {
                    u64::try_from(tx.max_capacity() - tx.capacity()).unwrap_or(0)
                }))
            } else {
                WorkSource::Queue(t.wakes_on().to_owned())
            };
            coordinator.add_pool(pool, source).await;
        }
        let handlers = Arc::new(handlers);
        if !config.local_workers {
            tracing::info!(
                "local_workers = false: this instance runs no step and expands no mapped step; \
                 mapped steps wait for an instance that runs in-process workers"
            );
        }
        if config.local_workers {
            let worker = InProcessWorker {
                ctx: ctx.clone(),
                handlers: handlers.clone(),
                queue: LOCAL_STEPS.to_owned(),
            };
            let factory: ExecutorFactory =
                Arc::new(move || Arc::new(worker.clone()) as Arc<dyn OrchestrationExecutor>);
            let pool = ExecutorPool::new(
                ExecutorType::InProcessWorker,
                factory,
                config.worker_pool.clone(),
                ctx.wakeups.for_queue(LOCAL_STEPS),
                gauge.clone(),
                metrics.pool(ExecutorType::InProcessWorker),
            );
            coordinator
                .add_pool(pool, WorkSource::Queue(LOCAL_STEPS.to_owned()))
                .await;
        }
        tracing::info!(instance = %config.instance_id, backend = ctx.store.backend_name(), "engine started");

        let stop_background = CancellationToken::new();
        let mut background = Vec::new();
        // Registered (above), this instance heartbeats (and fails dead instances over) until
        // it stops.
        let draining = Arc::new(AtomicBool::new(false));
        let stop_membership = CancellationToken::new();
        let cluster_metrics = metrics.cluster();
        let membership_task = tokio::spawn(membership::heartbeat(
            ctx.store.clone(),
            config.instance_id.clone(),
            config.cluster,
            cluster_metrics.clone(),
            draining.clone(),
            stop_membership.clone(),
        ));
        // Wake-ups from other processes sharing the database (PostgreSQL LISTEN/NOTIFY).
        match ctx.store.wakeup_subscribe().await {
            Ok(Some(announcements)) => {
                background.push(tokio::spawn(forward_wakeups(
                    announcements,
                    ctx.wakeups.clone(),
                    stop_background.clone(),
                )));
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "cross-process wake-ups unavailable; pools poll instead")
            }
        }

        let (monitor, monitor_task) = monitor::spawn(
            coordinator,
            ctx.store.clone(),
            metrics.clone(),
            config.coordinator.scaling.interval,
        );
        background.push(monitor_task);
        Ok(Self {
            ctx,
            monitor,
            background: std::sync::Mutex::new(background),
            stop_background,
            resources,
            gauge,
            handlers,
            metrics,
            cluster: config.cluster,
            cluster_metrics,
            shutdown_grace: config.shutdown_grace,
            membership: std::sync::Mutex::new(Some((membership_task, stop_membership))),
            draining,
        })
    }

    /// This engine's metrics: its own Prometheus recorder, shared with no other engine.
    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// The handlers this process has (whether or not it runs steps itself): what template
    /// registration checks handler configurations against.
    pub fn handlers(&self) -> &HandlerRegistry {
        &self.handlers
    }

    /// The store the engine runs on.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.ctx.store
    }

    /// This instance's id: the one its audit rows, leases and registration name.
    pub fn instance_id(&self) -> &str {
        &self.ctx.instance_id
    }

    /// The cluster as this instance sees it (see [`membership::view`]).
    ///
    /// # Errors
    ///
    /// Store failures.
    pub async fn cluster(&self) -> Result<membership::ClusterView, tasker_store::StoreError> {
        membership::view(self.ctx.store.as_ref(), &self.ctx.instance_id, self.cluster).await
    }

    /// The resource validation report made at start.
    pub fn resources(&self) -> &ResourceReport {
        &self.resources
    }

    /// Observes step and task events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<EngineEvent> {
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

    /// Validates and creates the tasks of several requests in one transaction, as [`Self::submit`]
    /// does for one: all of them, or none when any request is refused.
    ///
    /// # Errors
    ///
    /// [`RequestError`] for the first request refused, or a store failure.
    pub async fn submit_many(
        &self,
        requests: &[TaskRequest],
    ) -> Result<Vec<TaskCreated>, RequestError> {
        create_tasks(&self.ctx, requests).await
    }

    /// Creates the tasks of the requests that pass validation in one transaction and answers
    /// each request on its own, in order (see [`crate::pipeline::executor::create_each`]).
    ///
    /// # Errors
    ///
    /// [`RequestError::Store`] when storage fails; nothing was created then.
    pub async fn submit_each(
        &self,
        requests: &[TaskRequest],
    ) -> Result<Vec<Result<TaskCreated, RequestError>>, RequestError> {
        create_each(&self.ctx, requests).await
    }

    /// Queues a request for the TaskRequestProcessor (asynchronous intake).
    ///
    /// # Errors
    ///
    /// Store failures.
    pub async fn enqueue_request(&self, request: &TaskRequest) -> Result<(), crate::ExecutorError> {
        self.ctx
            .publish(
                crate::pipeline::messages::TASK_REQUESTS,
                std::slice::from_ref(request),
                Duration::ZERO,
            )
            .await
    }

    /// The applied backpressure factor in `[0, 1]`; at 1 the engine is saturated.
    pub fn pressure(&self) -> f64 {
        self.gauge.factor()
    }

    /// Cancels a task and its unfinished steps (see [`operator`]).
    ///
    /// # Errors
    ///
    /// [`OperatorError`]: the task finished already, or does not exist; store failures.
    pub async fn cancel_task(&self, task_id: TaskId) -> Result<TaskRow, OperatorError> {
        operator::cancel_task(&self.ctx, task_id).await
    }

    /// Runs a failed step again, its attempts starting over (see [`operator`]).
    ///
    /// # Errors
    ///
    /// [`OperatorError`]: the step is not in `Error`, or does not exist; store failures.
    pub async fn retry_step(&self, task_id: TaskId, step: &str) -> Result<StepRow, OperatorError> {
        operator::retry_step(&self.ctx, task_id, step).await
    }

    /// Resolves a failed step by hand, with `output` as its result when given (see
    /// [`operator`]).
    ///
    /// # Errors
    ///
    /// [`OperatorError`]: the step is not in `Error`, or does not exist; store failures.
    pub async fn resolve_step(
        &self,
        task_id: TaskId,
        step: &str,
        output: Option<serde_json::Value>,
    ) -> Result<StepRow, OperatorError> {
        operator::resolve_step(&self.ctx, task_id, step, output).await
    }

    /// Claims steps of a namespace for a remote worker, each with a lease (see [`remote`]).
    ///
    /// # Errors
    ///
    /// [`RemoteError`]: a bad request; store failures.
    pub async fn claim_steps(
        &self,
        request: &ClaimRequest,
    ) -> Result<Vec<ClaimedStep>, RemoteError> {
        remote::claim(&self.ctx, request).await
    }

    /// Extends a remote worker's lease on a step by `lease`.
    ///
    /// # Errors
    ///
    /// [`RemoteError`]: the lease is no longer held, or was issued for another step.
    pub async fn heartbeat_step(
        &self,
        step_id: StepId,
        lease_token: &str,
        lease: Duration,
    ) -> Result<(), RemoteError> {
        remote::heartbeat(&self.ctx, step_id, lease_token, lease).await
    }

    /// Reports a remote worker's outcome of a step's attempt.
    ///
    /// # Errors
    ///
    /// [`RemoteError`]: the lease is no longer held, or was issued for another step; nothing
    /// changes then.
    pub async fn finish_step(
        &self,
        step_id: StepId,
        lease_token: &str,
        outcome: StepOutcome,
    ) -> Result<(), RemoteError> {
        remote::finish(&self.ctx, step_id, lease_token, outcome).await
    }

    /// The pools, their health, the pressure history and recent scaling decisions, as of the
    /// last monitor round (at most one scaling interval old). Never waits: it reads what the
    /// monitor published, not the coordinator.
    pub fn snapshot(&self) -> Arc<CoordinatorSnapshot> {
        self.monitor.snapshot()
    }

    /// Runs one monitor round now and returns once its snapshot is published (tests and tools
    /// use it instead of waiting an interval). Does nothing after shutdown.
    pub async fn monitor_tick(&self) {
        self.monitor.round().await;
    }

    /// Runs `job` on the coordinator between monitor rounds (tools and tests drive pools with
    /// it) and returns its answer; `None` after shutdown.
    pub async fn with_coordinator<R: Send + 'static>(
        &self,
        job: impl for<'a> FnOnce(
                &'a mut OrchestrationLoopCoordinator,
            )
                -> std::pin::Pin<Box<dyn std::future::Future<Output = R> + Send + 'a>>
            + Send
            + 'static,
    ) -> Option<R> {
        self.monitor.with_coordinator(job).await
    }

    /// Stops intake first (request processors, claimers, enqueuers), then lets the work in
    /// flight drain (workers, result processors, finalizers); each executor finishes its batch
    /// or is aborted once `shutdown_grace` has passed since the call. Claims taken but not yet
    /// enqueued are released at once rather than left to their lease; then the instance
    /// releases what it still holds and leaves the cluster. Safe to call twice.
    pub async fn shutdown(&self) {
        // One deadline for the whole drain, from now (the pools' `stop_timeout` is for scaling
        // down).
        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        // Taken back from the monitor, which stops; a second call finds nothing to take.
        let Some(mut coordinator) = self.monitor.release().await else {
            return;
        };
        // The cluster sees it draining at once; heartbeats go on until the pools stopped.
        self.draining.store(true, Ordering::Relaxed);
        let report_draining = membership::beat(
            self.ctx.store.as_ref(),
            &self.ctx.instance_id,
            InstanceState::Draining,
            self.cluster,
            &self.cluster_metrics,
            false,
        );
        match tokio::time::timeout_at(deadline, report_draining).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "could not report draining"),
            Err(_) => tracing::warn!("could not report draining within the shutdown grace"),
        }
        self.stop_background.cancel();
        let background = std::mem::take(
            &mut *self
                .background
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for task in background {
            let _ = task.await;
        }
        // Intake first: no new task, claim or enqueue.
        let mut report = coordinator.stop(&STOP_ORDER, deadline).await;
        // Claims still in the channel go back at once, while there is time; past the
        // deadline, leaving the cluster below releases them.
        let mut released = 0;
        {
            let mut claims = self.ctx.claims_rx.lock().await;
            while let Ok(claim) = claims.try_recv() {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                if claim.give_back(&self.ctx, Duration::ZERO).await.is_ok() {
                    released += 1;
                }
            }
        }
        // Then the work in flight drains: workers, result processors, finalizers.
        report.add(coordinator.stop_all(deadline).await);
        let membership = self
            .membership
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some((task, stop)) = membership {
            stop.cancel();
            let _ = task.await;
        }
        // A few statements; bounded, since the database may be what is failing.
        if tokio::time::timeout(
            LEAVE_TIMEOUT,
            membership::leave(self.ctx.store.as_ref(), &self.ctx.instance_id),
        )
        .await
        .is_err()
        {
            tracing::warn!("could not leave the cluster in time; the leader will fail it over");
        }
        tracing::info!(
            released_claims = released,
            graceful = report.graceful,
            aborted = report.aborted,
            "engine stopped"
        );
    }
}

/// Validates the configured pools against the store's connection pool, applying the failure
/// mode (shrinking pool maxima in `degraded` mode).
fn validate_resources(
    store: &dyn Store,
    database_pool: u32,
    config: &mut EngineConfig,
) -> Result<ResourceReport, EngineError> {
    let mut bounds: BTreeMap<ExecutorType, PoolBounds> = config
        .pools
        .iter()
        .map(|(&t, p)| {
            (
                t,
                PoolBounds {
                    min_executors: p.min_executors,
                    max_executors: p.max_executors,
                },
            )
        })
        .collect();
    if config.local_workers {
        bounds.insert(
            ExecutorType::InProcessWorker,
            PoolBounds {
                min_executors: config.worker_pool.min_executors,
                max_executors: config.worker_pool.max_executors,
            },
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let report = resources::validate(
        database_pool,
        &bounds,
        config.failure_mode,
        cores,
        store.capabilities().single_writer,
    );
    for warning in &report.warnings {
        if store.capabilities().single_writer {
            // The warning says why it is not enforced; nothing needs an operator.
            tracing::info!("{warning}");
        } else {
            tracing::warn!("{warning}");
        }
    }
    if report.fail_startup {
        return Err(EngineError::Resources(Box::new(report)));
    }
    for (t, b) in &report.pools {
        if let Some(p) = config.pools.get_mut(t) {
            p.min_executors = b.min_executors;
            p.max_executors = b.max_executors;
        } else if *t == ExecutorType::InProcessWorker {
            config.worker_pool.min_executors = b.min_executors;
            config.worker_pool.max_executors = b.max_executors;
        }
    }
    tracing::info!(
        database_pool = report.database_pool,
        reserved = report.reserved,
        executors = report.requested_executors,
        cpu_cores = report.cpu_cores,
        estimated_memory_mb = report.estimated_memory_bytes / (1024 * 1024),
        "resources validated"
    );
    Ok(report)
}

/// Turns announcements from other processes into local wake-ups.
async fn forward_wakeups(
    mut announcements: mpsc::Receiver<String>,
    wakeups: Wakeups,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            queue = announcements.recv() => match queue {
                Some(queue) => wakeups.wake(&queue),
                None => break,
            },
        }
    }
}
