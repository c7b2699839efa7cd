//! Decoding `tasks` rows.

use tasker_store::Result;
use tasker_types::{TaskId, TaskRow};

use crate::{corrupt, get_state, RowExt};

/// The columns [`task`] reads, for `SELECT` and `RETURNING` lists.
pub const TASK_COLUMNS: &str = "id, template_id, namespace, name, version, state, context, \
     idempotency_key, priority, created_at_ms, updated_at_ms, finished_at_ms";

/// Decodes a `tasks` row.
pub fn task(row: &impl RowExt) -> Result<TaskRow> {
    let priority = row.int("priority")?;
    Ok(TaskRow {
        id: TaskId(row.int("id")?),
        template_id: row.int("template_id")?,
        namespace: row.text("namespace")?,
        name: row.text("name")?,
        version: row.text("version")?,
        state: get_state(row, "task state")?,
        context: row.json("context")?,
        idempotency_key: row.opt_text("idempotency_key")?,
        priority: i32::try_from(priority).map_err(|e| corrupt("priority", e))?,
        created_at_ms: row.int("created_at_ms")?,
        updated_at_ms: row.int("updated_at_ms")?,
        finished_at_ms: row.opt_int("finished_at_ms")?,
    })
}
