//! Parameter and result types of the store methods. Each type echoes its method's name.

use std::{collections::HashSet, sync::Arc, time::Duration};

use serde_json::Value;
use tasker_types::{
    StepEvent, StepId, StepRow, StepSpec, StepState, TaskEvent, TaskId, TaskRow, TaskState,
    TemplateDefinition,
};

/// [`crate::TemplateStore::template_register`].
#[derive(Debug, Clone)]
pub struct TemplateRegisterParams {
    /// The validated template's identity and definition.
    pub template: TemplateDefinition,
}

/// [`crate::TemplateStore::template_get`].
#[derive(Debug, Clone)]
pub struct TemplateGetParams {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Exact version, or the highest semantic version when `None`.
    pub version: Option<String>,
}

/// [`crate::TaskStore::task_create`].
#[derive(Debug, Clone)]
pub struct TaskCreateParams {
    /// Id of the registered template version.
    pub template_id: i64,
    /// The steps to create, in template order.
    pub steps: Vec<StepSpec>,
    /// The task context, already validated against the template's schema.
    pub context: Value,
    /// Caller's key; a repeat with the same key and template returns the existing task.
    pub idempotency_key: Option<String>,
    /// Higher runs earlier.
    pub priority: i32,
    /// Instance recorded in the audit rows.
    pub instance_id: String,
    /// When set, a new task starts in the creating transaction: its root steps are
    /// `Enqueued` in the queues this routing names, and the task is `StepsInProcess`. Otherwise
    /// it is left `Pending` for the pipeline to pick up.
    pub start: Option<StepRouting>,
}

/// Result of [`crate::TaskStore::task_create`].
#[derive(Debug, Clone)]
pub struct TaskCreated {
    /// The task (new, or the existing one for a repeated idempotency key).
    pub task: TaskRow,
    /// `false` when the idempotency key matched an existing task.
    pub created: bool,
    /// Queues the new task's first steps wait in (empty unless started).
    pub queues: Vec<String>,
}

/// [`crate::TaskStore::task_list`]: filters are combined with AND; results are newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskListParams {
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Only tasks of this namespace.
    pub namespace: Option<String>,
    /// Only tasks of this template name.
    pub name: Option<String>,
    /// Only tasks with an id below this (keyset pagination).
    pub before_id: Option<TaskId>,
    /// Only tasks created at or after this time (ms since the epoch).
    pub created_after_ms: Option<i64>,
    /// Only tasks created before this time (ms since the epoch).
    pub created_before_ms: Option<i64>,
    /// Page size.
    pub limit: u32,
}

/// [`crate::TaskStore::task_count`]: the filters of [`TaskListParams`] but the state, combined
/// with AND.
#[derive(Debug, Clone, Default)]
pub struct TaskCountParams {
    /// Only tasks of this namespace.
    pub namespace: Option<String>,
    /// Only tasks of this template name.
    pub name: Option<String>,
    /// Only tasks created at or after this time (ms since the epoch).
    pub created_after_ms: Option<i64>,
    /// Only tasks created before this time (ms since the epoch).
    pub created_before_ms: Option<i64>,
}

/// How far one task has come, from [`crate::StepStore::step_progress_many`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepProgress {
    /// The task.
    pub task_id: TaskId,
    /// Its steps, mapped steps' instances included.
    pub total: u64,
    /// Those done for their task ([`tasker_types::StepState::releases_dependents`]).
    pub done: u64,
}

/// [`crate::QueueStore::dead_letter_list`]: oldest first.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterListParams {
    /// Only the dead letters of this queue.
    pub queue: Option<String>,
    /// Only dead letters with an id above this (keyset pagination).
    pub after_id: Option<i64>,
    /// Page size.
    pub limit: u32,
}

/// [`crate::TaskStore::task_transition`].
#[derive(Debug, Clone)]
pub struct TaskTransitionParams {
    /// The task.
    pub task_id: TaskId,
    /// The state the caller saw; the write fails with `StaleState` if it changed.
    pub from: TaskState,
    /// What happened.
    pub event: TaskEvent,
    /// Optional note for the audit row.
    pub reason: Option<String>,
    /// Instance recorded in the audit row.
    pub instance_id: String,
}

/// [`crate::TaskStore::task_claim`].
#[derive(Debug, Clone)]
pub struct TaskClaimParams {
    /// The task.
    pub task_id: TaskId,
    /// Who claims it (unique per claiming executor).
    pub claimer: String,
    /// The instance of the claimer. Its claims hold only while it is registered: once it is
    /// declared dead (or deregistered), its claims are free before their lease runs out.
    pub instance_id: String,
    /// How long the claim holds without renewal.
    pub lease: Duration,
}

/// [`crate::TaskStore::task_release`].
#[derive(Debug, Clone)]
pub struct TaskReleaseParams {
    /// The task.
    pub task_id: TaskId,
    /// Who held it.
    pub claimer: String,
}

/// [`crate::StepStore::step_transition`].
#[derive(Debug, Clone)]
pub struct StepTransitionParams {
    /// The step.
    pub step_id: StepId,
    /// The state the caller saw; the write fails with `StaleState` if it changed.
    pub from: StepState,
    /// What happened.
    pub event: StepEvent,
    /// Output of a successful attempt (`Complete`).
    pub output: Option<Value>,
    /// Error text of a failed attempt (`Fail`), also kept as the audit reason.
    pub error: Option<String>,
    /// Delay before the next attempt, for `Fail { will_retry: true }`; counted from the
    /// database clock.
    pub backoff: Option<Duration>,
    /// Instance recorded in the audit row.
    pub instance_id: String,
    /// Only if the step is still in this attempt: fences a worker's result to the attempt it
    /// ran, so a stale result cannot land on a newer attempt.
    pub attempt: Option<u32>,
}

/// [`crate::StepStore::step_viable_many`].
#[derive(Debug, Clone)]
pub struct StepViableManyParams {
    /// The task.
    pub task_id: TaskId,
    /// At most this many steps.
    pub limit: u32,
}

/// [`crate::StepStore::step_enqueue_many`].
#[derive(Debug, Clone)]
pub struct StepEnqueueManyParams {
    /// The task the steps belong to.
    pub task_id: TaskId,
    /// Steps with the state the caller saw them in (`Pending` or `WaitingForRetry`).
    pub steps: Vec<(StepId, StepState)>,
    /// The queue the steps wait in (see [`StepRouting`]).
    pub queue: String,
    /// Instance recorded in the audit rows.
    pub instance_id: String,
}

/// The payload of a task message (the orchestrator's `task_work` and `task_finalize` queues),
/// as [`crate::StepStore::step_apply_results`] publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskMessage {
    /// The task.
    pub task_id: TaskId,
}

/// Which queue an enqueued step waits in: steps whose handler runs in this process in
/// `local_queue`, every other step in its task's namespace queue, where remote workers claim it.
#[derive(Debug, Clone, Default)]
pub struct StepRouting {
    /// The in-process workers' queue.
    pub local_queue: String,
    /// Handlers the in-process workers have (empty without local workers).
    pub local_handlers: Arc<HashSet<String>>,
}

impl StepRouting {
    /// The queue of a step with `handler` in a task of `namespace`.
    pub fn queue<'a>(&'a self, namespace: &'a str, handler: &str) -> &'a str {
        self.local_queue_for(handler).unwrap_or(namespace)
    }

    /// The queue of a step with `handler` in a task of `namespace`, or of a mapped step
    /// (`mapped`): the in-process queue, where the engine expands it into its instances.
    pub fn queue_of<'a>(&'a self, namespace: &'a str, handler: &str, mapped: bool) -> &'a str {
        self.local_queue_of(handler, mapped).unwrap_or(namespace)
    }

    /// [`Self::local_queue_for`], or the in-process queue for a mapped step.
    pub fn local_queue_of(&self, handler: &str, mapped: bool) -> Option<&str> {
        if mapped {
            Some(&self.local_queue)
        } else {
            self.local_queue_for(handler)
        }
    }

    /// The in-process queue when this process runs `handler`; otherwise `None`: the step waits
    /// in its task's namespace queue.
    pub fn local_queue_for(&self, handler: &str) -> Option<&str> {
        self.local_handlers
            .contains(handler)
            .then_some(self.local_queue.as_str())
    }
}

/// One worker result for [`crate::StepStore::step_apply_results`].
#[derive(Debug, Clone)]
pub struct StepResultApply {
    /// The task the step belongs to.
    pub task_id: TaskId,
    /// The step.
    pub step_id: StepId,
    /// The attempt the result is for: applied only while the step is `InProgress` in it.
    pub attempt: u32,
    /// `Complete` or `Fail { .. }`.
    pub event: StepEvent,
    /// Output of a successful attempt.
    pub output: Option<Value>,
    /// Error text of a failed attempt, also the audit reason.
    pub error: Option<String>,
    /// Delay before the next attempt, for `Fail { will_retry: true }` (database clock).
    pub backoff: Option<Duration>,
    /// Only while this lease holds the step: an in-process worker's result, fenced to its
    /// claim. `None` for a remote worker's result, whose lease went with it (the attempt
    /// fences it).
    pub lease_token: Option<String>,
    /// For a decision step's success, the direct children its output left out
    /// (`tasker_types::settle::unchosen`): they count the step finished but not choosing them.
    pub unchosen: Vec<String>,
    /// For a mapped step's expansion (`event` is `Expand`), its instances' inputs
    /// (`tasker_types::settle::expand`): the step becomes `Mapped` and they are created.
    pub instances: Vec<Value>,
}

/// [`crate::StepStore::step_apply_results`].
#[derive(Debug, Clone)]
pub struct StepApplyResultsParams {
    /// The results, in any order.
    pub results: Vec<StepResultApply>,
    /// The `step_results` deliveries the results came in, deleted in the same transaction (a
    /// delivery whose lease was lost meanwhile is left alone). Empty for an in-process
    /// worker's results: its steps' leases end with the move.
    pub consumed: Vec<QueueAckParams>,
    /// Which queues newly ready steps wait in.
    pub routing: StepRouting,
    /// Where a task that needs a full evaluation is announced ([`TaskMessage`]).
    pub evaluate_queue: String,
    /// Instance recorded in the audit rows.
    pub instance_id: String,
    /// Claim the steps these results make ready in one queue for the caller, in the same
    /// transaction (an in-process worker runs a task's next steps without claiming them).
    pub chain: Option<StepChain>,
    /// Longest wait for a row lock another session holds; `None` waits as long as it takes.
    /// Past it the call fails [`crate::StoreError::Locked`] having written nothing, so a
    /// caller that has other work (an in-process worker's next claims) can hand these results
    /// to a path that may wait. Backends without row locks ignore it.
    pub lock_wait: Option<std::time::Duration>,
}

/// [`StepApplyResultsParams::chain`]: children that the results enqueue in `queue`, at most
/// `max` of them, are claimed at once as [`crate::StepStore::step_claim`] would claim them
/// (leased for `lease`, their attempts started and audited), and returned in
/// [`ResultsApplied::claimed`]. The others wait in their queues as usual.
#[derive(Debug, Clone)]
pub struct StepChain {
    /// The caller's queue.
    pub queue: String,
    /// At most this many.
    pub max: u32,
    /// Each is leased for this long.
    pub lease: Duration,
}

/// What [`crate::StepStore::step_apply_results`] did.
#[derive(Debug, Clone, Default)]
pub struct ResultsApplied {
    /// The steps the results moved (stale and duplicate results move none).
    pub steps: Vec<StepRow>,
    /// Tasks the results finished.
    pub finished: Vec<TaskRow>,
    /// Queues that received messages or ready steps, for wake-ups.
    pub queues: Vec<String>,
    /// The steps claimed for the caller ([`StepApplyResultsParams::chain`]), by id.
    pub claimed: Vec<StepClaimed>,
}

/// [`crate::InstanceStore::instance_register`].
#[derive(Debug, Clone)]
pub struct InstanceRegisterParams {
    /// The instance's id.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Tasker version.
    pub version: String,
    /// Its connection pool's size.
    pub connections: u32,
}

/// [`crate::InstanceStore::instance_heartbeat`].
#[derive(Debug, Clone)]
pub struct InstanceHeartbeatParams {
    /// The instance's id.
    pub id: String,
    /// What it is doing.
    pub state: tasker_types::InstanceState,
}

/// The cluster's leadership as it stands ([`crate::InstanceStore::leader_get`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaderLease {
    /// Who holds it; the leader only while `expires_at_ms` is ahead of `read_at_ms`.
    pub holder: Option<String>,
    /// Its epoch: each new holding takes the next.
    pub epoch: i64,
    /// When the holding lapses unless renewed (database clock).
    pub expires_at_ms: i64,
    /// The database clock when it was read.
    pub read_at_ms: i64,
}

impl LeaderLease {
    /// The leader, if the holding has not lapsed.
    pub fn leader(&self) -> Option<&str> {
        self.holder
            .as_deref()
            .filter(|_| self.expires_at_ms > self.read_at_ms)
    }
}

/// [`crate::InstanceStore::retention_sweep`]: what the leader deletes, one batch a call.
#[derive(Debug, Clone)]
pub struct RetentionSweepParams {
    /// The leader, and its epoch: nothing is deleted unless it still leads in it.
    pub leader: String,
    /// See `leader`.
    pub epoch: i64,
    /// Tasks finished (`Complete`, `Cancelled`, `ResolvedManually`) longer ago than this go,
    /// with their steps, edges and transitions; `None` keeps them.
    pub complete: Option<Duration>,
    /// Tasks in `Error` for longer than this go likewise; `None` keeps them.
    pub error: Option<Duration>,
    /// Dead letters older than this go; `None` keeps them.
    pub dead_letters: Option<Duration>,
    /// At most this many tasks, and this many dead letters, per call.
    pub batch: u32,
}

/// What one [`crate::InstanceStore::retention_sweep`] deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionSwept {
    /// Tasks (with their steps, edges and transitions).
    pub tasks: u64,
    /// Dead letters.
    pub dead_letters: u64,
}

/// [`crate::StepStore::step_claim`].
#[derive(Debug, Clone)]
pub struct StepClaimParams {
    /// The queue whose steps to claim (a namespace, or the in-process workers' queue).
    pub queue: String,
    /// At most this many steps.
    pub max: u32,
    /// The lease: a claimed step whose lease is not extended within it is claimed again.
    pub lease: Duration,
    /// Only steps with these handlers (all when `None`).
    pub handlers: Option<Vec<String>>,
    /// Instance recorded in the audit rows.
    pub instance_id: String,
    /// Who holds the leases: this instance for its in-process workers, the remote worker
    /// for a remote claim (recorded on each step; see [`crate::InstanceStore`]).
    pub holder: String,
}

/// One step [`crate::StepStore::step_claim`] leased, with its handler's input.
#[derive(Debug, Clone)]
pub struct StepClaimed {
    /// The step, `InProgress`, with the claim's attempt counted (unless `lease_ran_out`).
    pub step: StepRow,
    /// The task context.
    pub context: Value,
    /// The parents' outputs by name (`None` for a parent without output).
    pub parents: Vec<(String, Option<Value>)>,
    /// What a parent that is a mapped step says of its instances, by name: `{"failed": n}`.
    pub parents_meta: Vec<(String, Value)>,
    /// Proves the lease on later calls; a new claim of the step replaces it.
    pub lease_token: String,
    /// The step's earlier lease ran out while its attempt ran (the worker stopped answering):
    /// no attempt was started; the claimer reports that attempt failed instead of running the
    /// handler, and settlement decides what follows, as for any failed attempt.
    pub lease_ran_out: bool,
}

/// A held step lease, as [`crate::StepStore::step_claim`] handed it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepLease {
    /// The step.
    pub step_id: StepId,
    /// The claim's lease token.
    pub lease_token: String,
}

/// [`crate::StepStore::step_lease_extend`].
#[derive(Debug, Clone)]
pub struct StepLeaseExtendParams {
    /// The held leases.
    pub leases: Vec<StepLease>,
    /// Each is held for this long from now (database clock).
    pub lease: Duration,
}

/// [`crate::QueueStore::queue_forward`].
#[derive(Debug, Clone)]
pub struct QueueForwardParams {
    /// Deliveries consumed, deleted (those whose lease was lost are left alone).
    pub consumed: Vec<QueueAckParams>,
    /// Queue the produced messages go to.
    pub queue: String,
    /// One message per payload, visible at once.
    pub payloads: Vec<Value>,
    /// Step leases handed over to the payloads' messages, the `i`-th to the `i`-th (a remote
    /// worker's result): no call holds them any more, and their steps are claimed again only
    /// once that message is gone without moving them (dead-lettered) and `settle_within` has
    /// passed. A lease no longer held fails the whole call with `LeaseLost`.
    pub settled: Vec<StepLease>,
    /// See `settled`.
    pub settle_within: Duration,
}

/// [`crate::QueueStore::queue_enqueue_many`].
#[derive(Debug, Clone)]
pub struct QueueEnqueueManyParams {
    /// Queue name.
    pub queue: String,
    /// One message per payload, in order.
    pub payloads: Vec<Value>,
    /// Messages become visible after this delay.
    pub delay: Duration,
}

/// [`crate::QueueStore::queue_dequeue`].
#[derive(Debug, Clone)]
pub struct QueueDequeueParams {
    /// Queue name.
    pub queue: String,
    /// At most this many messages.
    pub max: u32,
    /// The lease: a message not acked within it becomes visible again.
    pub visibility_timeout: Duration,
    /// A visible message already delivered this many times moves to the dead-letter table
    /// instead of being delivered again.
    pub max_deliveries: u32,
    /// The instance taking the deliveries, recorded on them so that, should it die, a failover
    /// ends them at once (`InstanceStore::instance_fail_over`).
    pub holder: String,
}

/// [`crate::QueueStore::queue_ack`] and [`crate::QueueStore::queue_nack`].
#[derive(Debug, Clone)]
pub struct QueueAckParams {
    /// Message id.
    pub id: i64,
    /// The lease token of the delivery being acknowledged.
    pub lease_token: String,
}

/// A held delivery and a delay: what [`crate::QueueStore::queue_nack`],
/// [`crate::QueueStore::queue_release`] and [`crate::QueueStore::queue_extend`] change.
#[derive(Debug, Clone)]
pub struct QueueLeaseParams {
    /// Message id.
    pub id: i64,
    /// The lease token of the delivery.
    pub lease_token: String,
    /// The message becomes visible again after this delay (nack, release), or stays leased
    /// for this long (extend).
    pub delay: Duration,
}

/// [`crate::QueueStore::queue_extend_many`].
#[derive(Debug, Clone)]
pub struct QueueExtendManyParams {
    /// The held deliveries.
    pub leases: Vec<QueueAckParams>,
    /// Each stays leased for this long from now.
    pub visibility_timeout: Duration,
}

/// Depth of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct QueueDepth {
    /// Visible now.
    pub ready: u64,
    /// Invisible: leased to a consumer or delayed.
    pub invisible: u64,
    /// In the dead-letter table.
    pub dead: u64,
}
