//! The internal queues of the pipeline and their message payloads.

use serde::{Deserialize, Serialize};
use tasker_types::{StepId, TaskId};

/// Client task requests, processed by the TaskRequestProcessor.
pub const TASK_REQUESTS: &str = "tasker.task_requests";
/// "This task has steps to enqueue": claimed by the TaskClaimer (the lease is the visibility
/// timeout).
pub const TASK_WORK: &str = "tasker.task_work";
/// Results that workers report, applied by the StepResultProcessor.
pub const STEP_RESULTS: &str = "tasker.step_results";
/// The queue of the steps whose handler this process has, claimed by the in-process workers.
/// Steps with any other handler wait in their namespace's queue, where remote workers claim
/// them.
pub const LOCAL_STEPS: &str = "tasker.local_steps";
/// "Evaluate this task": consumed by the TaskFinalizer.
pub const TASK_FINALIZE: &str = "tasker.task_finalize";
/// Every queue of the pipeline, in pipeline order.
pub const QUEUES: [&str; 5] = [
    TASK_REQUESTS,
    TASK_WORK,
    LOCAL_STEPS,
    STEP_RESULTS,
    TASK_FINALIZE,
];

/// A client's request for a task. Unknown fields are refused, so a misspelt optional field
/// (`idempotency_key`, say) is an error rather than silently nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// Template namespace.
    pub namespace: String,
    /// Template name.
    pub name: String,
    /// Template version; the latest when absent.
    pub version: Option<String>,
    /// Task context.
    pub context: serde_json::Value,
    /// Caller's idempotency key.
    pub idempotency_key: Option<String>,
    /// Higher runs earlier.
    #[serde(default)]
    pub priority: i32,
}

impl TaskRequest {
    /// A request for the latest version of `namespace/name` with `context`, no idempotency
    /// key, at the default priority.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        context: serde_json::Value,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            version: None,
            context,
            idempotency_key: None,
            priority: 0,
        }
    }
}

/// A task that needs attention (`task_work` and `task_finalize` payloads). The store publishes
/// these too, when a step result leaves a task to evaluate.
pub type TaskRef = tasker_store::TaskMessage;

/// What a worker reports for one attempt of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// The task.
    pub task_id: TaskId,
    /// The step.
    pub step_id: StepId,
    /// The attempt this result is for (the fencing token: a result for an older attempt is
    /// ignored).
    pub attempt: u32,
    /// Success or failure.
    pub outcome: StepOutcome,
    /// The lease the attempt ran under, when its worker still holds it (an in-process worker):
    /// the result applies only while it does. A remote result has none: its lease went with it
    /// into the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_token: Option<String>,
    /// A decision step's success: the children its output left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchosen: Vec<String>,
    /// A mapped step's expansion: its instances' inputs (`tasker_types::settle::expand`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<serde_json::Value>,
}

impl StepResult {
    /// The result of `attempt` of a step whose output chooses among `branches` when it is a
    /// decision. A decision's success is read here, by `settle::unchosen`: an output that is
    /// no such choice fails the attempt permanently, naming the bad entry; otherwise the
    /// children it leaves out go with the result.
    pub fn new(
        task_id: TaskId,
        step_id: StepId,
        attempt: u32,
        branches: Option<&[String]>,
        outcome: StepOutcome,
    ) -> Self {
        let mut unchosen = Vec::new();
        let outcome = match (branches, outcome) {
            (Some(branches), StepOutcome::Success { output }) => {
                match tasker_types::settle::unchosen(branches, &output) {
                    Ok(left_out) => {
                        unchosen = left_out;
                        StepOutcome::Success { output }
                    }
                    Err(error) => StepOutcome::Failure {
                        error,
                        retryable: false,
                    },
                }
            }
            (_, outcome) => outcome,
        };
        Self {
            task_id,
            step_id,
            attempt,
            outcome,
            lease_token: None,
            unchosen,
            instances: Vec::new(),
        }
    }
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StepOutcome {
    /// The handler succeeded.
    Success {
        /// Its output.
        output: serde_json::Value,
    },
    /// The handler failed.
    Failure {
        /// What went wrong.
        error: String,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
}
