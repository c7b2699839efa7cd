//! [`EngineEvent`]: what the engine tells observers as steps and tasks finish.

use tasker_types::{StepState, TaskId, TaskState};

/// Something observers may want to know. Advisory: a slow observer may miss events (the
/// channel is bounded); the store is the truth.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
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
