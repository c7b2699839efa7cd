//! Tasker's domain vocabulary: identifiers, the task and step state machines, and the rows the
//! store hands back. This crate does no I/O; every other Tasker crate depends on it.
//!
//! The state machines are those of docs/state_machines.md. Each machine is an enum of states,
//! an enum of events and one `transition` function that either returns the next state or a
//! typed [`TransitionError`]. Final states (`Complete`, `Cancelled`, `ResolvedManually`) accept no event.

mod ids;
mod rows;
pub mod settle;
mod spec;
pub mod state;

pub use ids::{StepId, TaskId, UnixMillis};
pub use rows::{
    is_dead, DeadLetter, Entity, InstanceRow, MapInstance, QueueMessage, StepRow, TaskRow,
    TemplateRecord, TransitionRow,
};
pub use spec::{MapSpec, OnFailure, StepSpec, TemplateDefinition};
pub use state::{
    instance::InstanceState,
    step::{StepEvent, StepState},
    task::{TaskEvent, TaskState},
    ParseStateError, TransitionError,
};
