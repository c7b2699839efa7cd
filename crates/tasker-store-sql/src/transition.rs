//! Decoding and writing `transitions` rows: the audit trail.

use tasker_store::Result;
use tasker_types::{Entity, StepId, TaskId, TransitionRow};

use crate::{corrupt, RowExt};

/// The columns [`transition`] reads, for `SELECT` and `RETURNING` lists.
pub const TRANSITION_COLUMNS: &str =
    "id, entity, task_id, step_id, from_state, to_state, event, reason, instance_id, at_ms";

/// Decodes a `transitions` row.
pub fn transition(row: &impl RowExt) -> Result<TransitionRow> {
    let entity = row.text("entity")?;
    Ok(TransitionRow {
        id: row.int("id")?,
        entity: Entity::parse(&entity).ok_or_else(|| corrupt("transition entity", &entity))?,
        task_id: TaskId(row.int("task_id")?),
        step_id: row.opt_int("step_id")?.map(StepId),
        from_state: row.opt_text("from_state")?,
        to_state: row.text("to_state")?,
        event: row.text("event")?,
        reason: row.opt_text("reason")?,
        instance_id: row.text("instance_id")?,
        at_ms: row.int("at_ms")?,
    })
}

/// An audit row about to be written; `at_ms` comes from the database clock.
#[derive(Debug, Clone)]
pub struct NewTransition<'a> {
    /// Task or step.
    pub entity: tasker_types::Entity,
    /// The task.
    pub task_id: tasker_types::TaskId,
    /// The step, for step transitions.
    pub step_id: Option<tasker_types::StepId>,
    /// State before; `None` on creation.
    pub from_state: Option<&'a str>,
    /// State after.
    pub to_state: &'a str,
    /// Event name.
    pub event: &'a str,
    /// Optional note.
    pub reason: Option<&'a str>,
    /// Acting instance.
    pub instance_id: &'a str,
}
