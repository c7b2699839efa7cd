use std::time::Duration;

use async_trait::async_trait;
use tasker_types::{
    DeadLetter, InstanceRow, QueueMessage, StepId, StepRow, TaskId, TaskRow, TaskState,
    TemplateRecord, TransitionRow,
};

use crate::{
    DeadLetterListParams, InstanceHeartbeatParams, InstanceRegisterParams, LeaderLease,
    QueueAckParams, QueueDepth, QueueDequeueParams, QueueEnqueueManyParams, QueueExtendManyParams,
    QueueForwardParams, QueueLeaseParams, Result, ResultsApplied, RetentionSweepParams,
    RetentionSwept, StepApplyResultsParams, StepClaimParams, StepClaimed, StepEnqueueManyParams,
    StepLeaseExtendParams, StepProgress, StepTransitionParams, StepViableManyParams,
    TaskClaimParams, TaskCountParams, TaskCreateParams, TaskCreated, TaskListParams,
    TaskReleaseParams, TaskTransitionParams, TemplateGetParams, TemplateRegisterParams,
};

/// What a backend can do; the engine branches on these, never on the backend's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    /// Wake-ups can cross processes (`LISTEN/NOTIFY`); otherwise only an in-process notifier.
    pub listen_notify: bool,
    /// Concurrent consumers skip each other's locked rows (`FOR UPDATE SKIP LOCKED`).
    pub skip_locked: bool,
    /// All writes are serialized through one writer (SQLite).
    pub single_writer: bool,
    /// Several orchestrator processes may share the database.
    pub multi_instance: bool,
}

/// Size and use of a store's connection pool(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ConnectionPoolStats {
    /// Most connections the pool may open.
    pub max_connections: u32,
    /// Connections open now.
    pub open: u32,
    /// Open connections not lent out.
    pub idle: u32,
}

impl ConnectionPoolStats {
    /// Connections lent out over the maximum, in `[0, 1]`.
    pub fn utilization(&self) -> f64 {
        if self.max_connections == 0 {
            return 0.0;
        }
        f64::from(self.open.saturating_sub(self.idle)) / f64::from(self.max_connections)
    }
}

/// Registered task templates.
#[async_trait]
pub trait TemplateStore: Send + Sync {
    /// Registers a template version. Registering the same content again returns the existing
    /// record; different content under an existing version is a conflict.
    ///
    /// # Errors
    ///
    /// [`crate::StoreError::Conflict`] as above; infrastructure errors.
    async fn template_register(&self, params: &TemplateRegisterParams) -> Result<TemplateRecord>;

    /// Fetches `namespace/name@version`, or the highest semantic version when no version is given.
    ///
    /// # Errors
    ///
    /// [`crate::StoreError::NotFound`] when no such template (version) is registered.
    async fn template_get(&self, params: &TemplateGetParams) -> Result<TemplateRecord>;

    /// Every registered template version, ordered by namespace, name and registration.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn template_list(&self) -> Result<Vec<TemplateRecord>>;
}

/// Tasks.
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Creates a task with all its steps, edges and initial transitions in one transaction.
    /// With an idempotency key that this template already has, returns that task instead.
    ///
    /// # Errors
    ///
    /// [`crate::StoreError::NotFound`] for an unknown template id; infrastructure errors.
    async fn task_create(&self, params: &TaskCreateParams) -> Result<TaskCreated>;

    /// Creates several tasks as [`Self::task_create`] does, all in one transaction: all of
    /// them or, on an error, none. Results are in the order of `params`.
    ///
    /// # Errors
    ///
    /// As [`Self::task_create`], for any one of them.
    async fn task_create_many(&self, params: &[TaskCreateParams]) -> Result<Vec<TaskCreated>>;

    /// One task.
    ///
    /// # Errors
    ///
    /// [`crate::StoreError::NotFound`].
    async fn task_get(&self, id: TaskId) -> Result<TaskRow>;

    /// Tasks matching the filters, newest first.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn task_list(&self, params: &TaskListParams) -> Result<Vec<TaskRow>>;

    /// How many tasks are in each state, among those the filters keep; states without a
    /// task are left out.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn task_count(&self, params: &TaskCountParams) -> Result<Vec<(TaskState, u64)>>;

    /// Moves a task by its state machine, compare-and-swap on `from`, with its audit row in the
    /// same transaction.
    ///
    /// # Errors
    ///
    /// [`crate::StoreError::Transition`] for an illegal move, [`crate::StoreError::StaleState`]
    /// when the task is no longer in `from`, [`crate::StoreError::NotFound`].
    async fn task_transition(&self, params: &TaskTransitionParams) -> Result<TaskRow>;

    /// Claims a task for `claimer` until `lease` passes (database clock): succeeds when nobody
    /// holds it, the claimer already does (the lease is extended), the holder's lease has
    /// expired, or the holder's instance is not registered (declared dead, or gone). Returns
    /// whether the claim is now held.
    ///
    /// # Errors
    ///
    /// Infrastructure errors (an unknown task simply cannot be claimed).
    async fn task_claim(&self, params: &TaskClaimParams) -> Result<bool>;

    /// Releases `claimer`'s claim; `false` when it did not hold one (it expired and was taken).
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn task_release(&self, params: &TaskReleaseParams) -> Result<bool>;
}

/// Workflow steps and their readiness.
#[async_trait]
pub trait StepStore: Send + Sync {
    /// The steps of a task, in template order.
    ///
    /// # Errors
    ///
    /// Infrastructure errors (an unknown task has no steps).
    async fn step_list(&self, task_id: TaskId) -> Result<Vec<StepRow>>;

    /// One step.
    ///
    /// # Errors
    ///
    /// [`crate::StoreError::NotFound`].
    async fn step_get(&self, id: StepId) -> Result<StepRow>;

    /// The `(parent, child)` edges of a task.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn step_edges(&self, task_id: TaskId) -> Result<Vec<(StepId, StepId)>>;

    /// Steps done and in all, for each of these tasks that has steps, in one statement.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn step_progress_many(&self, task_ids: &[TaskId]) -> Result<Vec<StepProgress>>;

    /// Moves a step by its state machine, compare-and-swap on `from`, with its audit row in the
    /// same transaction. `Start` counts an attempt. A step reaching `Complete` or
    /// `ResolvedManually` decrements its children's unfinished-parent counters in the same
    /// transaction; `Retry` (operator) resets the attempt count. Only the state moves: putting
    /// a step in a queue and leasing it are [`Self::step_enqueue_many`]'s and
    /// [`Self::step_claim`]'s, so a step `Enqueued` or started through this method waits in
    /// no queue and holds no lease.
    ///
    /// # Errors
    ///
    /// [`crate::StoreError::Transition`], [`crate::StoreError::StaleState`],
    /// [`crate::StoreError::NotFound`].
    async fn step_transition(&self, params: &StepTransitionParams) -> Result<StepRow>;

    /// Steps of a task that may run now: every parent complete, `Pending` (or `WaitingForRetry`
    /// with its retry time passed on the database clock), attempts left. Cost grows with the
    /// number of such steps, not with the size of the task.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn step_viable_many(&self, params: &StepViableManyParams) -> Result<Vec<StepRow>>;

    /// Marks the given steps `Enqueued` in `queue` (compare-and-swap on each one's state),
    /// with their audit rows, in one transaction. A step is its own queue entry: nothing else
    /// is written for it, and [`Self::step_claim`] takes it from there. Steps that moved
    /// meanwhile are skipped. Returns the ids actually enqueued.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn step_enqueue_many(&self, params: &StepEnqueueManyParams) -> Result<Vec<StepId>>;

    /// Claims up to `max` steps waiting in `queue`, oldest first, each leased for
    /// `params.lease` with a new token: an `Enqueued` step starts an attempt (`InProgress`,
    /// counted, audited); an `InProgress` step whose lease ran out (and whose lease is not
    /// with a result still queued) is leased as it is and answered
    /// [`StepClaimed::lease_ran_out`], for the claimer to report that attempt failed. One
    /// transaction, with each step's handler input. Concurrent claimers never get the same
    /// step.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn step_claim(&self, params: &StepClaimParams) -> Result<Vec<StepClaimed>>;

    /// Extends held step leases to `params.lease` from now (database clock), a statement per
    /// 200 leases. Returns the steps whose lease was lost (the step moved on, or another claim
    /// holds it); the others were extended.
    ///
    /// # Errors
    ///
    /// Infrastructure errors; then some leases may not have been extended (extending them
    /// again is harmless).
    async fn step_lease_extend(&self, params: &StepLeaseExtendParams) -> Result<Vec<StepId>>;

    /// Applies worker results in one transaction and settles what each one decides:
    ///
    /// - the step moves (compare-and-swap on `InProgress` in the result's attempt, and under
    ///   the result's lease when it names one; a stale or duplicate result changes nothing);
    /// - a completed step's children count it, and those left with no unfinished parent are
    ///   `Enqueued` in the queue `routing` names, when the task is `StepsInProcess` (or claimed
    ///   for the caller at once, see [`crate::StepChain`]);
    /// - a task whose last step completed becomes `Complete`;
    /// - any other task that needs deciding (a failure, nothing left running, a task not in
    ///   `StepsInProcess`) is announced on `evaluate_queue`;
    /// - the consumed `step_results` deliveries are deleted.
    ///
    /// Tasks are locked in ascending id order, so concurrent batches cannot deadlock.
    ///
    /// # Errors
    ///
    /// [`crate::StoreError::Transition`] for an event a running step cannot take;
    /// infrastructure errors (nothing is applied then).
    async fn step_apply_results(&self, params: &StepApplyResultsParams) -> Result<ResultsApplied>;
}

/// Durable message queues: the transactional outbox between the orchestration executors, and
/// remote workers' results. Steps are not messages: a step is its own queue entry
/// ([`StepStore::step_claim`]).
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Appends messages in one statement; returns their ids in order.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn queue_enqueue_many(&self, params: &QueueEnqueueManyParams) -> Result<Vec<i64>>;

    /// Leases up to `max` visible messages, oldest first, for `visibility_timeout`. Visible
    /// messages that were already delivered `max_deliveries` times move to the dead-letter table
    /// instead. Concurrent consumers never receive the same delivery.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn queue_dequeue(&self, params: &QueueDequeueParams) -> Result<Vec<QueueMessage>>;

    /// Enqueues `params.payloads`, deletes the consumed deliveries and settles the step leases
    /// `params.settled` in one transaction, so what a consumer produced and the
    /// acknowledgement of what it consumed commit together. Returns the new messages' ids in
    /// order.
    ///
    /// # Errors
    ///
    /// [`crate::StoreError::LeaseLost`] when a settled step lease is no longer held;
    /// infrastructure errors (nothing is written then).
    async fn queue_forward(&self, params: &QueueForwardParams) -> Result<Vec<i64>>;

    /// The delivery that `params.lease_token` holds, read without changing it (a remote worker's
    /// call is checked against it before anything moves).
    ///
    /// # Errors
    ///
    /// [`crate::StoreError::LeaseLost`] when the message is gone or another delivery (or none)
    /// holds it.
    async fn queue_get(&self, params: &QueueAckParams) -> Result<QueueMessage>;

    /// Deletes a delivered message.
    ///
    /// # Errors
    ///
    /// [`crate::StoreError::LeaseLost`] when the lease token is not the current delivery's.
    async fn queue_ack(&self, params: &QueueAckParams) -> Result<()>;

    /// Returns a delivered message to its queue, visible again after `delay`.
    ///
    /// # Errors
    ///
    /// [`crate::StoreError::LeaseLost`] when the lease token is not the current delivery's.
    async fn queue_nack(&self, params: &QueueLeaseParams) -> Result<()>;

    /// Returns a delivered message unprocessed, visible again after `delay`: unlike a nack it
    /// does not count as a delivery (the consumer put it back without trying it).
    ///
    /// # Errors
    ///
    /// [`crate::StoreError::LeaseLost`] when the lease token is not the current delivery's.
    async fn queue_release(&self, params: &QueueLeaseParams) -> Result<()>;

    /// Extends a delivered message's lease to `visibility_timeout` from now (database clock).
    ///
    /// # Errors
    ///
    /// [`crate::StoreError::LeaseLost`] when the lease token is not the current delivery's.
    async fn queue_extend(&self, params: &QueueLeaseParams) -> Result<()>;

    /// Extends several held deliveries' leases to `visibility_timeout` from now, in one round
    /// trip whatever their number. Returns the ids whose lease was lost (their token is no
    /// longer the current delivery's); the others were extended.
    ///
    /// # Errors
    ///
    /// Infrastructure errors; then no lease was extended.
    async fn queue_extend_many(&self, params: &QueueExtendManyParams) -> Result<Vec<i64>>;

    /// Message counts of one queue.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn queue_depth(&self, queue: &str) -> Result<QueueDepth>;

    /// Dead letters, oldest first.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn dead_letter_list(&self, params: &DeadLetterListParams) -> Result<Vec<DeadLetter>>;

    /// One dead letter.
    ///
    /// # Errors
    ///
    /// [`crate::StoreError::NotFound`] when there is none with this id.
    async fn dead_letter_get(&self, id: i64) -> Result<DeadLetter>;

    /// Puts a dead letter back in its queue as a new message, visible at once with no
    /// deliveries counted, and removes it from the dead letters, in one transaction. Returns
    /// the new message's id.
    ///
    /// # Errors
    ///
    /// [`crate::StoreError::NotFound`] when there is none with this id (requeued or
    /// discarded already).
    async fn dead_letter_requeue(&self, id: i64) -> Result<i64>;

    /// Deletes a dead letter for good.
    ///
    /// # Errors
    ///
    /// [`crate::StoreError::NotFound`] when there is none with this id.
    async fn dead_letter_discard(&self, id: i64) -> Result<()>;
}

/// The cluster's orchestrator instances: registration, heartbeats, and the leases they hold.
/// Times are the database clock's, so instances with skewed clocks agree on who is alive.
#[async_trait]
pub trait InstanceStore: Send + Sync {
    /// Registers an instance (`Running`, heartbeat now), or re-registers one whose row is gone.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn instance_register(&self, params: &InstanceRegisterParams) -> Result<InstanceRow>;

    /// Records a heartbeat and the instance's state. `false` when the instance is not
    /// registered (it was declared dead and removed): it must register again.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn instance_heartbeat(&self, params: &InstanceHeartbeatParams) -> Result<bool>;

    /// Every registered instance, oldest first, with the leases it holds and the database
    /// clock's reading.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn instance_list(&self) -> Result<Vec<InstanceRow>>;

    /// Removes an instance's registration (after it released what it held).
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn instance_deregister(&self, id: &str) -> Result<()>;

    /// Ends at once the leases instance `holder` holds on running steps, on message deliveries
    /// and on tasks: the steps are claimable now (their next claimer reports the attempts
    /// lost), the messages visible (the lost delivery counted), the tasks' claims free.
    /// Returns how many.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn instance_release_leases(&self, holder: &str) -> Result<u64>;

    /// Takes the cluster's leadership for `holder` until `ttl` from now, or renews it: taken
    /// when nobody holds it unexpired, with the next epoch (also when `holder`'s own holding
    /// had lapsed). Returns the epoch held, or `None` while another instance leads.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn leader_acquire(&self, holder: &str, ttl: Duration) -> Result<Option<i64>>;

    /// Gives the leadership up at once, if `holder` has it (an instance that stops), so another
    /// takes it at its next heartbeat.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn leader_release(&self, holder: &str) -> Result<()>;

    /// The leadership as it stands.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn leader_get(&self) -> Result<LeaderLease>;

    /// Leader-only: every other instance silent for longer than `dead_after` is declared dead,
    /// its leases (steps, message deliveries) end at once and its registration goes. Does
    /// nothing unless `leader` holds the leadership in `epoch`, unexpired. Returns each
    /// instance failed over with the leases it released.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn instance_fail_over(
        &self,
        leader: &str,
        epoch: i64,
        dead_after: Duration,
    ) -> Result<Vec<(String, u64)>>;

    /// Leader-only: deletes one batch of what retention no longer keeps (see
    /// [`RetentionSweepParams`]), oldest first, in one transaction. Does nothing unless the
    /// caller leads in its epoch.
    ///
    /// # Errors
    ///
    /// Infrastructure errors; then nothing was deleted.
    async fn retention_sweep(&self, params: &RetentionSweepParams) -> Result<RetentionSwept>;
}

/// The append-only audit trail.
#[async_trait]
pub trait TransitionLog: Send + Sync {
    /// Every transition of a task and its steps, in commit order.
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn transition_list(&self, task_id: TaskId) -> Result<Vec<TransitionRow>>;
}

/// A complete storage backend.
#[async_trait]
pub trait Store:
    TemplateStore + TaskStore + StepStore + QueueStore + TransitionLog + InstanceStore + std::fmt::Debug
{
    /// What the backend can do.
    fn capabilities(&self) -> Capabilities;

    /// `sqlite` or `postgres`, for logs and reports.
    fn backend_name(&self) -> &'static str;

    /// The connection pool's size and use, for backpressure and resource validation.
    fn connection_pool(&self) -> ConnectionPoolStats;

    /// How many connections the database server lets clients like this one open in all
    /// (PostgreSQL: `max_connections` less the superuser reserve); `None` where there is no
    /// server (SQLite).
    ///
    /// # Errors
    ///
    /// Infrastructure errors.
    async fn server_connection_limit(&self) -> Result<Option<u32>>;

    /// Subscribes to "queue has new work" announcements from every process sharing the
    /// database: each item is a queue name. `None` when the backend cannot announce across
    /// processes (see [`Capabilities::listen_notify`]); in-process wake-ups cover that case.
    /// Announcements are advisory: a full subscriber drops them and pools fall back to polling.
    ///
    /// # Errors
    ///
    /// Infrastructure errors while subscribing.
    async fn wakeup_subscribe(&self) -> Result<Option<tokio::sync::mpsc::Receiver<String>>>;

    /// Closes the connection pools; later calls fail with `Unavailable`.
    async fn close(&self);
}
