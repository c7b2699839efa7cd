//! Decoding `steps` rows, and the rows of started attempts with their handler's input.

use tasker_store::Result;
use tasker_types::{StepId, StepRow, TaskId};

use crate::{corrupt, get_state, get_u32, get_u64, RowExt};

/// The columns [`step`] reads, for `SELECT` and `RETURNING` lists.
pub const STEP_COLUMNS: &str = "id, task_id, name, handler, handler_config, state, queue, attempts, \
     max_attempts, retry_base_ms, retry_max_ms, retry_jitter, pending_parents, live_parents, branches, map, map_of, map_index, \
     map_input, next_attempt_at_ms, timeout_ms, result, last_error, started_at_ms, finished_at_ms";

/// `columns` (a comma-separated list such as [`STEP_COLUMNS`]) each qualified with `table`,
/// for `RETURNING` lists of statements that join another relation.
pub fn qualified(table: &str, columns: &str) -> String {
    columns
        .split(',')
        .map(|c| format!("{table}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decodes a `steps` row.
pub fn step(row: &impl RowExt) -> Result<StepRow> {
    let timeout_ms = row.opt_int("timeout_ms")?;
    Ok(StepRow {
        id: StepId(row.int("id")?),
        task_id: TaskId(row.int("task_id")?),
        name: row.text("name")?,
        handler: row.text("handler")?,
        handler_config: row.json("handler_config")?,
        state: get_state(row, "step state")?,
        queue: row.opt_text("queue")?,
        attempts: get_u32(row, "attempts")?,
        max_attempts: get_u32(row, "max_attempts")?,
        retry_base_ms: get_u64(row, "retry_base_ms")?,
        retry_max_ms: get_u64(row, "retry_max_ms")?,
        retry_jitter: row.flag("retry_jitter")?,
        pending_parents: get_u32(row, "pending_parents")?,
        live_parents: get_u32(row, "live_parents")?,
        branches: row
            .opt_json("branches")?
            .filter(|j| !j.0.is_null())
            .map(|j| serde_json::from_value(j.0))
            .transpose()
            .map_err(|e| corrupt("branches", e))?,
        map: row
            .opt_json("map")?
            .filter(|j| !j.0.is_null())
            .map(|j| serde_json::from_value(j.0))
            .transpose()
            .map_err(|e| corrupt("map", e))?,
        map_instance: match row.opt_int("map_of")? {
            None => None,
            Some(of) => Some(tasker_types::MapInstance {
                of: StepId(of),
                index: get_u32(row, "map_index")?,
                input: row.json("map_input")?,
            }),
        },
        next_attempt_at_ms: row.opt_int("next_attempt_at_ms")?,
        timeout_ms: timeout_ms
            .map(u64::try_from)
            .transpose()
            .map_err(|e| corrupt("timeout_ms", e))?,
        result: row.opt_json("result")?.map(|j| j.0),
        last_error: row.opt_text("last_error")?,
        started_at_ms: row.opt_int("started_at_ms")?,
        finished_at_ms: row.opt_int("finished_at_ms")?,
    })
}

/// [`PARENT_FAILURES`], for `concat!`.
macro_rules! parent_failures {
    () => {
        "CASE WHEN p.map IS NULL OR p.map_of IS NOT NULL THEN NULL \
         ELSE (SELECT COUNT(*) FROM steps f WHERE f.map_of = p.id AND f.state = 'Error') END"
    };
}

/// For a parent `p` that is a mapped step, how many of its instances failed (`Error`, the step
/// machine's name): what its children see in `parents_meta`; `NULL` for any other parent.
pub const PARENT_FAILURES: &str = parent_failures!();

/// The columns after a claimed step's own in [`claimed_steps`]' rows: its lease token, its
/// task's context and one parent's name, output and failed instances ([`PARENT_FAILURES`]),
/// for a `SELECT` whose steps are aliased `s`, tasks `t` and parents `p`. Each backend's claim
/// adds `lease_ran_out` (a flag: the step was leased without a new attempt).
pub const CLAIMED_INPUT_COLUMNS: &str = concat!(
    "s.lease_token, t.context, p.name AS parent_name, p.result AS parent_result, ",
    parent_failures!(),
    " AS parent_failures"
);

/// The statement that reads claimed steps back with their handlers' input, in the row shape
/// [`claimed_steps`] decodes: the steps `ids`, of which `ran_out` were leased without a new
/// attempt.
pub fn claimed_input(ids: &[i64], ran_out: &[i64]) -> crate::Sql<'static> {
    let mut sql = crate::Sql::new(format!(
        "SELECT {}, {CLAIMED_INPUT_COLUMNS}, ",
        qualified("s", STEP_COLUMNS)
    ));
    if ran_out.is_empty() {
        // A false flag in either database's own type.
        sql.push("s.id < 0");
    } else {
        sql.push("s.id IN (")
            .push_list(ran_out.iter().copied())
            .push(")");
    }
    sql.push(
        " AS lease_ran_out FROM steps s \
         JOIN tasks t ON t.id = s.task_id \
         LEFT JOIN step_edges e ON e.child_id = s.id \
         LEFT JOIN steps p ON p.id = e.parent_id \
         WHERE s.id IN (",
    )
    .push_list(ids.iter().copied())
    .push(") ORDER BY s.id, p.position");
    sql
}

/// The condition a claim puts on a step whose lease ran out (over the table `steps`, not
/// aliased): its lease is not with a result still queued. A remote worker's result takes its
/// step's lease as `result:<message id>` (`QueueStore::queue_forward`); while that message
/// exists, the step waits for it, whatever the time.
pub const NOT_AWAITING_RESULT: &str = "(steps.lease_token IS NULL \
     OR steps.lease_token NOT LIKE 'result:%' \
     OR NOT EXISTS (SELECT 1 FROM queue_messages r \
                    WHERE r.id = CAST(substr(steps.lease_token, 8) AS BIGINT)))";

/// The lease token that hands a step over to the result message `id`
/// ([`NOT_AWAITING_RESULT`]).
pub fn result_lease(id: i64) -> String {
    format!("result:{id}")
}

/// Groups rows of claimed steps into each step with its lease and its handler's input. Each
/// row holds the step's columns, [`CLAIMED_INPUT_COLUMNS`] and `lease_ran_out`: one row per parent
/// (`parent_name` NULL for a step without any), ordered by step id, then parent position.
///
/// # Errors
///
/// [`StoreError::Corrupt`] for a row that does not decode.
pub fn claimed_steps(rows: &[impl RowExt]) -> Result<Vec<tasker_store::StepClaimed>> {
    let mut claimed: Vec<tasker_store::StepClaimed> = Vec::new();
    for row in rows {
        let id = row.int("id")?;
        if claimed.last().is_none_or(|s| s.step.id.0 != id) {
            claimed.push(tasker_store::StepClaimed {
                step: step(row)?,
                context: row.json("context")?,
                parents: Vec::new(),
                parents_meta: Vec::new(),
                lease_token: row.text("lease_token")?,
                lease_ran_out: row.flag("lease_ran_out")?,
            });
        }
        if let (Some(name), Some(last)) = (row.opt_text("parent_name")?, claimed.last_mut()) {
            if let Some(failed) = row.opt_int("parent_failures")? {
                last.parents_meta
                    .push((name.clone(), serde_json::json!({ "failed": failed })));
            }
            last.parents
                .push((name, row.opt_json("parent_result")?.map(|j| j.0)));
        }
    }
    Ok(claimed)
}
