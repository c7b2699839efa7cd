//! Parameter and result types of the store methods. Each type echoes its method's name.

use std::time::Duration;

use serde_json::Value;
use tasker_template::TaskTemplate;
use tasker_types::{StepEvent, StepId, StepState, TaskEvent, TaskId, TaskRow, TaskState};

/// [`crate::TemplateStore::template_register`].
#[derive(Debug, Clone)]
pub struct TemplateRegisterParams {
    /// The validated template.
    pub template: TaskTemplate,
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
    /// Its definition (the steps to create).
    pub template: TaskTemplate,
    /// The task context, already validated against the template's schema.
    pub context: Value,
    /// Caller's key; a repeat with the same key and template returns the existing task.
    pub idempotency_key: Option<String>,
    /// Higher runs earlier.
    pub priority: i32,
    /// Instance recorded in the audit rows.
    pub instance_id: String,
}

/// Result of [`crate::TaskStore::task_create`].
#[derive(Debug, Clone)]
pub struct TaskCreated {
    /// The task (new, or the existing one for a repeated idempotency key).
    pub task: TaskRow,
    /// `false` when the idempotency key matched an existing task.
    pub created: bool,
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
    pub retry_after: Option<Duration>,
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
    /// Queue to publish the step messages to (the task's namespace).
    pub queue: String,
    /// Instance recorded in the audit rows.
    pub instance_id: String,
}

/// The payload of a step message, as [`crate::StepStore::step_enqueue_many`] publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepMessage {
    /// The task.
    pub task_id: TaskId,
    /// The step.
    pub step_id: StepId,
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
}

/// [`crate::QueueStore::queue_ack`] and [`crate::QueueStore::queue_nack`].
#[derive(Debug, Clone)]
pub struct QueueAckParams {
    /// Message id.
    pub id: i64,
    /// The lease token of the delivery being acknowledged.
    pub lease_token: String,
}

/// [`crate::QueueStore::queue_nack`] and [`crate::QueueStore::queue_extend`].
#[derive(Debug, Clone)]
pub struct QueueNackParams {
    /// Message id.
    pub id: i64,
    /// The lease token of the delivery being returned.
    pub lease_token: String,
    /// The message becomes visible again after this delay (nack), or stays leased for this
    /// long (extend).
    pub delay: Duration,
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
