//! Applying completions: `StepStore::step_apply_results` in one statement on PostgreSQL, for
//! the common batch in which every result is a success.

use std::collections::HashMap;

use sqlx::{types::Json, Row};
use tasker_store::{Result, ResultsApplied, StepApplyResultsParams};
use tasker_store_sql::{
    qualified, step as decode_step, task as decode_task, STEP_COLUMNS, TASK_COLUMNS,
};
use tasker_types::{Entity, StepEvent, StepState, TaskEvent, TaskState};

use crate::{decode::map_err, notify, now_ms, PgStore};

impl PgStore {
    /// Applies a batch of successes with one statement (one round trip, one commit), doing
    /// exactly what the shared multi-statement path does: lock the tasks in id order, move the
    /// steps, count them on their tasks (finishing those with nothing left), count the parents
    /// on the children (enqueueing the ready ones of running tasks), hand the undecided tasks
    /// to the evaluator, write the audit rows and messages, `NOTIFY`, and delete the consumed
    /// deliveries. `None` when the batch holds a failure (or nothing): the shared path applies
    /// it then.
    pub(crate) async fn apply_completions(
        &self,
        params: &StepApplyResultsParams,
    ) -> Result<Option<ResultsApplied>> {
        if params.results.is_empty()
            || params
                .results
                .iter()
                .any(|r| r.event != StepEvent::Complete)
        {
            return Ok(None);
        }
        let mut tasks: Vec<i64> = params.results.iter().map(|r| r.task_id.0).collect();
        tasks.sort_unstable();
        tasks.dedup();
        let sql = format!(
            "WITH locked AS ( \
               SELECT id FROM tasks WHERE id = ANY($4) ORDER BY id FOR UPDATE), \
             v AS ( \
               SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::jsonb[]) AS v(step_id, attempt, output)), \
             moved AS ( \
               UPDATE steps s SET state = {complete}, result = COALESCE(v.output, s.result), \
                 next_attempt_at_ms = NULL, finished_at_ms = {now} \
               FROM v WHERE s.id = v.step_id AND s.state = {in_progress} AND s.attempts = v.attempt \
                 AND (SELECT count(*) FROM locked) >= 0 \
               RETURNING {moved_columns}), \
             counted AS ( \
               UPDATE tasks t SET unfinished_steps = t.unfinished_steps - c.n, updated_at_ms = {now}, \
                 state = CASE WHEN t.state = {running} AND t.unfinished_steps = c.n \
                              THEN {task_complete} ELSE t.state END, \
                 finished_at_ms = CASE WHEN t.state = {running} AND t.unfinished_steps = c.n \
                              THEN {now} ELSE t.finished_at_ms END \
               FROM (SELECT task_id, count(*) AS n FROM moved GROUP BY task_id) c \
               WHERE t.id = c.task_id \
               RETURNING t.id, t.namespace, t.unfinished_steps), \
             children AS ( \
               UPDATE steps c SET pending_parents = c.pending_parents - e.n, \
                 state = CASE WHEN t.state = {running} AND c.pending_parents = e.n \
                              AND c.state = {pending} AND c.attempts < c.max_attempts \
                              THEN {enqueued} ELSE c.state END \
               FROM (SELECT se.child_id, count(*) AS n FROM step_edges se \
                     JOIN moved m ON se.parent_id = m.id GROUP BY se.child_id) e, tasks t \
               WHERE c.id = e.child_id AND t.id = c.task_id \
               RETURNING c.id, c.task_id, c.state, c.handler), \
             enqueued AS (SELECT id, task_id, handler FROM children WHERE state = {enqueued}), \
             decided AS ( \
               SELECT ct.id, ct.namespace, old.state AS old_state, \
                      (old.state = {running} AND ct.unfinished_steps = 0) AS finished, \
                      EXISTS (SELECT 1 FROM enqueued e WHERE e.task_id = ct.id) AS enqueued_any \
               FROM counted ct JOIN tasks old ON old.id = ct.id), \
             evaluate AS ( \
               SELECT d.id FROM decided d WHERE NOT d.finished AND ( \
                 (d.old_state <> {running} AND d.old_state NOT IN ({terminal})) \
                 OR (d.old_state = {running} AND NOT d.enqueued_any AND NOT EXISTS ( \
                       SELECT 1 FROM steps s WHERE s.task_id = d.id \
                       AND s.state IN ('Enqueued', 'InProgress') \
                       AND s.id NOT IN (SELECT id FROM moved))))), \
             outbox AS ( \
               INSERT INTO queue_messages (queue, payload, enqueued_at_ms, visible_at_ms) \
               SELECT q, p, {now}, {now} FROM ( \
                 SELECT 1 AS k, e.id AS o, \
                        CASE WHEN e.handler = ANY($5) THEN $6 ELSE d.namespace END AS q, \
                        jsonb_build_object('task_id', e.task_id, 'step_id', e.id) AS p \
                 FROM enqueued e JOIN decided d ON d.id = e.task_id \
                 UNION ALL \
                 SELECT 2, id, $7, jsonb_build_object('task_id', id) FROM evaluate) x \
               ORDER BY k, o RETURNING queue), \
             audit AS ( \
               INSERT INTO transitions (entity, task_id, step_id, from_state, to_state, event, \
                                        reason, instance_id, at_ms) \
               SELECT e, t, s, f, o, ev, NULL, $8, {now} FROM ( \
                 SELECT 1 AS k, id AS ord, {step_entity} AS e, task_id AS t, id AS s, \
                        {in_progress} AS f, {complete} AS o, {complete_event} AS ev FROM moved \
                 UNION ALL \
                 SELECT 2, id, {step_entity}, task_id, id, {pending}, {enqueued}, {enqueue_event} \
                 FROM enqueued \
                 UNION ALL \
                 SELECT 3, id * 2, {task_entity}, id, NULL, {running}, {evaluating}, {received_event} \
                 FROM decided WHERE finished \
                 UNION ALL \
                 SELECT 3, id * 2 + 1, {task_entity}, id, NULL, {evaluating}, {task_complete}, \
                        {task_complete_event} \
                 FROM decided WHERE finished) x \
               ORDER BY k, ord), \
             consumed AS ( \
               DELETE FROM queue_messages m USING unnest($9::bigint[], $10::text[]) AS c(id, token) \
               WHERE m.id = c.id AND m.lease_token = c.token), \
             notified AS ( \
               SELECT q, pg_notify($11, q) FROM (SELECT DISTINCT queue AS q FROM outbox) x) \
             SELECT moved.*, \
               (SELECT array_agg(id) FROM decided WHERE finished) AS finished_ids, \
               (SELECT array_agg(q) FROM notified) AS queues \
             FROM moved ORDER BY moved.task_id, moved.id",
            now = now_ms!(),
            moved_columns = qualified("s", STEP_COLUMNS),
            complete = literal(StepState::Complete.as_str()),
            in_progress = literal(StepState::InProgress.as_str()),
            pending = literal(StepState::Pending.as_str()),
            enqueued = literal(StepState::Enqueued.as_str()),
            running = literal(TaskState::StepsInProcess.as_str()),
            evaluating = literal(TaskState::EvaluatingResults.as_str()),
            task_complete = literal(TaskState::Complete.as_str()),
            terminal = [
                TaskState::Complete,
                TaskState::Cancelled,
                TaskState::ResolvedManually,
                TaskState::Error,
            ]
            .map(|s| literal(s.as_str()))
            .join(", "),
            step_entity = literal(Entity::Step.as_str()),
            task_entity = literal(Entity::Task.as_str()),
            complete_event = literal(StepEvent::Complete.name()),
            enqueue_event = literal(StepEvent::Enqueue.name()),
            received_event = literal(TaskEvent::StepResultReceived.name()),
            task_complete_event = literal(TaskEvent::Complete.name()),
        );
        let locals: Vec<&str> = params
            .routing
            .local_handlers
            .iter()
            .map(String::as_str)
            .collect();
        self.count(1);
        let rows = sqlx::query(&sql)
            .bind(
                params
                    .results
                    .iter()
                    .map(|r| r.step_id.0)
                    .collect::<Vec<_>>(),
            )
            .bind(
                params
                    .results
                    .iter()
                    .map(|r| i64::from(r.attempt))
                    .collect::<Vec<_>>(),
            )
            .bind(
                params
                    .results
                    .iter()
                    .map(|r| r.output.as_ref().map(Json))
                    .collect::<Vec<_>>(),
            )
            .bind(&tasks)
            .bind(&locals)
            .bind(&params.routing.local_queue)
            .bind(&params.evaluate_queue)
            .bind(&params.instance_id)
            .bind(params.consumed.iter().map(|c| c.id).collect::<Vec<_>>())
            .bind(
                params
                    .consumed
                    .iter()
                    .map(|c| c.lease_token.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(notify::CHANNEL)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        let mut applied = ResultsApplied::default();
        let mut finished: Vec<i64> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            applied.steps.push(decode_step(row)?);
            if i == 0 {
                finished = row
                    .try_get::<Option<Vec<i64>>, _>("finished_ids")
                    .map_err(map_err)?
                    .unwrap_or_default();
                applied.queues = row
                    .try_get::<Option<Vec<String>>, _>("queues")
                    .map_err(map_err)?
                    .unwrap_or_default();
                applied.queues.sort_unstable();
            }
        }
        if !finished.is_empty() {
            // Read after the commit: the tasks are final, nothing moves them any more.
            self.count(1);
            let rows = sqlx::query(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE id = ANY($1) ORDER BY id"
            ))
            .bind(&finished)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
            let by_id: HashMap<i64, _> = rows
                .iter()
                .map(|r| Ok((r.try_get::<i64, _>("id").map_err(map_err)?, decode_task(r)?)))
                .collect::<Result<_>>()?;
            applied.finished = finished
                .iter()
                .filter_map(|id| by_id.get(id).cloned())
                .collect();
        }
        Ok(Some(applied))
    }
}

/// A state, event or entity name as an SQL string literal. Only for the crate's own constant
/// identifiers, never input.
fn literal(name: &str) -> String {
    debug_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    format!("'{name}'")
}
