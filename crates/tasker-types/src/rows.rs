//! Rows as the store returns them. Backends map their database rows into these types so that
//! no database type leaks past a backend crate.

use serde::{Deserialize, Serialize};

use crate::{InstanceState, StepId, StepState, TaskId, TaskState, UnixMillis};

/// An orchestrator instance of the cluster, as it registered and last reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRow {
    /// The instance's id (the one its audit rows and leases name).
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id on its host.
    pub pid: u32,
    /// Tasker version.
    pub version: String,
    /// Its connection pool's size.
    pub connections: u32,
    /// What it reported last.
    pub state: InstanceState,
    /// When it registered (database clock).
    pub started_at_ms: UnixMillis,
    /// Its last heartbeat (database clock).
    pub heartbeat_at_ms: UnixMillis,
    /// The database clock when the row was read: the heartbeat's age is the difference.
    pub read_at_ms: UnixMillis,
    /// Steps whose lease it holds.
    pub leases: u64,
}

impl InstanceRow {
    /// Whether the instance, as read, is dead (see [`is_dead`]).
    pub fn is_dead(&self, dead_after: std::time::Duration) -> bool {
        is_dead(self.heartbeat_at_ms, self.read_at_ms, dead_after)
    }
}

/// The one rule of an instance's death: its last heartbeat (`heartbeat_at_ms`) is older than
/// `dead_after` at `read_at_ms`, both on the database clock. The cluster view, the connection
/// budget and the leader's failover all judge by it.
pub fn is_dead(
    heartbeat_at_ms: UnixMillis,
    read_at_ms: UnixMillis,
    dead_after: std::time::Duration,
) -> bool {
    let age = read_at_ms.saturating_sub(heartbeat_at_ms);
    u128::try_from(age).unwrap_or(0) > dead_after.as_millis()
}

/// A registered template, as stored: its identity and the validated definition as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateRecord {
    /// Database id of the template version.
    pub id: i64,
    /// Template namespace.
    pub namespace: String,
    /// Template name.
    pub name: String,
    /// Semantic version, as text.
    pub version: String,
    /// The template definition, serialized.
    pub definition: serde_json::Value,
    /// When the version was registered.
    pub created_at_ms: UnixMillis,
}

/// One task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRow {
    /// Task id.
    pub id: TaskId,
    /// Id of the template version the task was created from.
    pub template_id: i64,
    /// Template namespace (also the worker queue of its steps).
    pub namespace: String,
    /// Template name.
    pub name: String,
    /// Template version.
    pub version: String,
    /// Current state.
    pub state: TaskState,
    /// The JSON context the task was requested with.
    pub context: serde_json::Value,
    /// Caller-supplied idempotency key, unique per template.
    pub idempotency_key: Option<String>,
    /// Higher runs earlier.
    pub priority: i32,
    /// Creation time.
    pub created_at_ms: UnixMillis,
    /// Time of the last state change.
    pub updated_at_ms: UnixMillis,
    /// When the task reached a final or error state.
    pub finished_at_ms: Option<UnixMillis>,
}

/// One workflow step of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    /// Step id.
    pub id: StepId,
    /// Owning task.
    pub task_id: TaskId,
    /// Step name, unique within the task.
    pub name: String,
    /// Handler name.
    pub handler: String,
    /// Handler configuration (JSON `null` when absent).
    pub handler_config: serde_json::Value,
    /// Current state.
    pub state: StepState,
    /// The queue it waits in while `Enqueued`, or was claimed from (none before its first
    /// enqueue).
    #[serde(default)]
    pub queue: Option<String>,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts allowed by the retry policy.
    pub max_attempts: u32,
    /// Retry policy: first backoff delay in milliseconds.
    pub retry_base_ms: u64,
    /// Retry policy: backoff cap in milliseconds.
    pub retry_max_ms: u64,
    /// Retry policy: randomize the delay.
    pub retry_jitter: bool,
    /// Parents that still hold it back (not yet `Complete`, resolved or `Skipped`); the
    /// step is viable only when this is zero.
    pub pending_parents: u32,
    /// Parents that finished choosing it (see `settle::is_skippable`): once no parent holds
    /// it back, it runs if this is above zero and is skipped otherwise.
    #[serde(default)]
    pub live_parents: u32,
    /// A decision step's direct children, the names its output's `next` may list; `None`
    /// for any other step.
    #[serde(default)]
    pub branches: Option<Vec<String>>,
    /// A mapped step's fan-out, also kept on each of its instances.
    #[serde(default)]
    pub map: Option<crate::MapSpec>,
    /// An instance: the mapped step it belongs to, its index among that step's instances and
    /// the input it runs on (`{"item": …, "index": …}`, or `items` for batches).
    #[serde(default)]
    pub map_instance: Option<MapInstance>,
    /// Earliest time of the next attempt, while `WaitingForRetry`.
    pub next_attempt_at_ms: Option<UnixMillis>,
    /// Per-attempt timeout, if any.
    pub timeout_ms: Option<u64>,
    /// Output of the successful attempt.
    pub result: Option<serde_json::Value>,
    /// Error of the last failed attempt.
    pub last_error: Option<String>,
    /// Start of the first attempt.
    pub started_at_ms: Option<UnixMillis>,
    /// When the step reached a terminal state.
    pub finished_at_ms: Option<UnixMillis>,
}

/// What makes a step an instance of a mapped step (not to be confused with an engine
/// instance, [`InstanceRow`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapInstance {
    /// The mapped step.
    pub of: StepId,
    /// Its index, from 0 in item order.
    pub index: u32,
    /// What its handler receives besides the context: `item` or `items`, and `index`.
    pub input: serde_json::Value,
}

/// Which state machine a transition row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entity {
    /// A task transition.
    Task,
    /// A step transition.
    Step,
}

impl Entity {
    /// The name stored in the `entity` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Task => "task",
            Entity::Step => "step",
        }
    }

    /// Inverse of [`Entity::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "task" => Some(Entity::Task),
            "step" => Some(Entity::Step),
            _ => None,
        }
    }
}

/// One append-only audit row: a state change of a task or a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionRow {
    /// Row id, increasing in commit order per backend.
    pub id: i64,
    /// Task or step.
    pub entity: Entity,
    /// The task the change belongs to.
    pub task_id: TaskId,
    /// The step, for step transitions.
    pub step_id: Option<StepId>,
    /// State before the change; `None` for the initial state.
    pub from_state: Option<String>,
    /// State after the change.
    pub to_state: String,
    /// The event that caused it.
    pub event: String,
    /// Free-form reason (error text, operator note).
    pub reason: Option<String>,
    /// The orchestrator instance that made the change.
    pub instance_id: String,
    /// When.
    pub at_ms: UnixMillis,
}

/// A message leased from a durable queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueMessage {
    /// Message id.
    pub id: i64,
    /// Queue name.
    pub queue: String,
    /// Payload.
    pub payload: serde_json::Value,
    /// How many times the message has been handed out, this delivery included.
    pub deliveries: u32,
    /// When it was first enqueued.
    pub enqueued_at_ms: UnixMillis,
    /// Lease token of this delivery; ack and nack must present it.
    pub lease_token: String,
}

/// A message moved out of its queue after too many deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The original message id.
    pub id: i64,
    /// Queue it came from.
    pub queue: String,
    /// Payload.
    pub payload: serde_json::Value,
    /// Deliveries made before it was dead-lettered.
    pub deliveries: u32,
    /// When it was moved.
    pub dead_at_ms: UnixMillis,
}
