//! Applying a batch of step results in two statements, one for each half of
//! `tasker_store_sql::results`: moving and counting, then the effects settlement chose. Each is
//! one round trip, with data-modifying CTEs; the portable versions take up to six.
//!
//! The statements decide nothing: which steps count as finished, which children to enqueue,
//! which tasks to complete and which to announce arrive as parameters, computed by the state
//! machines and `tasker_types::settle`; the SQL applies them under the same guards as the
//! portable statements (the step still runs the attempt, the child is still `Pending`, the
//! task still runs), and the shared conformance suite holds both to the same behaviour.

use sqlx::{types::Json, PgConnection, Row};
use std::collections::HashSet;
use tasker_store::Result;

use tasker_store_sql::{
    claimed_steps, qualified, step as decode_step, step_token_sql, task as decode_task, Counted,
    EffectsApplied, EffectsPlan, JsonRow, RowExt, StepMove, PARENT_FAILURES, STEP_COLUMNS,
    TASK_COLUMNS,
};
use tasker_types::{settle, Entity, StepEvent, StepId, StepState};

use crate::{map_err, BindTransitions, NOW_MS};

/// Moves the steps, counts the finished ones on their tasks and on their children. A batch of
/// several tasks locks them first, in id order, so batches sharing tasks run one after the
/// other instead of deadlocking; a batch of one task has no order to keep and saves the lock.
pub(crate) async fn move_steps(conn: &mut PgConnection, moves: &[StepMove<'_>]) -> Result<Counted> {
    let mut counted = Counted::default();
    if moves.is_empty() {
        return Ok(counted);
    }
    let mut task_ids: Vec<i64> = moves.iter().map(|m| m.task_id.0).collect();
    task_ids.sort_unstable();
    task_ids.dedup();
    // The union reads `moved` and `counted` before `woken`, so the rows are locked in the
    // order tasks, moved steps, children; `locked` runs before the first step is updated.
    let (lock, locked) = if task_ids.len() > 1 {
        (
            "locked AS (SELECT id FROM tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE), ",
            "AND (SELECT count(*) FROM locked) >= 0",
        )
    } else {
        ("", "AND $1::bigint[] IS NOT NULL")
    };
    let rows = sqlx::query(&format!(
        "WITH {lock}\
         v AS (SELECT * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::jsonb[], \
                                    $6::text[], $7::bigint[], $8::bool[], $9::bool[], \
                                    $11::text[]) \
               AS v(id, attempt, state, result, error, backoff_ms, terminal, done, token)), \
         moved AS ( \
           UPDATE steps SET state = v.state, result = COALESCE(v.result, steps.result), \
             last_error = COALESCE(v.error, steps.last_error), \
             next_attempt_at_ms = CASE WHEN v.backoff_ms IS NULL THEN NULL \
                                  ELSE {now} + v.backoff_ms END, \
             finished_at_ms = CASE WHEN v.terminal THEN {now} ELSE NULL END \
           FROM v WHERE steps.id = v.id AND steps.state = $10 AND steps.attempts = v.attempt \
             AND (v.token IS NULL OR steps.lease_token = v.token) \
             {locked} \
           RETURNING {steps}, v.done), \
         counted AS ( \
           UPDATE tasks SET updated_at_ms = {now}, unfinished_steps = unfinished_steps - d.n \
           FROM (SELECT task_id, count(*) FILTER (WHERE done) AS n FROM moved GROUP BY task_id) \
                AS d \
           WHERE tasks.id = d.task_id \
           RETURNING tasks.id, tasks.state, tasks.namespace, tasks.unfinished_steps), \
         woken AS ( \
           UPDATE steps SET pending_parents = pending_parents - e.n, \
             live_parents = live_parents + e.n \
           FROM (SELECT child_id, count(*) AS n FROM step_edges \
                 WHERE parent_id IN (SELECT id FROM moved WHERE done) GROUP BY child_id) AS e \
           WHERE steps.id = e.child_id RETURNING {steps}) \
         SELECT 'moved' AS kind, {m}, c.state AS task_state, c.namespace, c.unfinished_steps \
         FROM moved m JOIN counted c ON c.id = m.task_id \
         UNION ALL \
         SELECT 'child', {w}, NULL, NULL, NULL FROM woken w",
        now = NOW_MS,
        steps = qualified("steps", STEP_COLUMNS),
        m = qualified("m", STEP_COLUMNS),
        w = qualified("w", STEP_COLUMNS),
    ))
    .bind(&task_ids)
    .bind(moves.iter().map(|m| m.step_id.0).collect::<Vec<_>>())
    .bind(moves.iter().map(|m| m.attempt).collect::<Vec<_>>())
    .bind(moves.iter().map(|m| m.to.as_str()).collect::<Vec<_>>())
    .bind(moves.iter().map(|m| m.output.map(Json)).collect::<Vec<_>>())
    .bind(moves.iter().map(|m| m.error).collect::<Vec<_>>())
    .bind(moves.iter().map(|m| m.backoff_ms).collect::<Vec<_>>())
    .bind(moves.iter().map(|m| m.to.is_terminal()).collect::<Vec<_>>())
    .bind(
        moves
            .iter()
            .map(|m| m.to.satisfies_dependents())
            .collect::<Vec<_>>(),
    )
    .bind(StepState::InProgress.as_str())
    .bind(moves.iter().map(|m| m.lease_token).collect::<Vec<_>>())
    .fetch_all(conn)
    .await
    .map_err(map_err)?;
    for row in &rows {
        let step = decode_step(row)?;
        if row.text("kind")? == "child" {
            counted.children.push(step);
            continue;
        }
        if !counted.namespaces.contains_key(&step.task_id) {
            counted.tasks.push(settle::TaskCount {
                task_id: step.task_id,
                state: row
                    .text("task_state")?
                    .parse()
                    .map_err(|e| tasker_store_sql::corrupt("task state", e))?,
                unfinished_steps: row.int("unfinished_steps")?,
            });
            counted
                .namespaces
                .insert(step.task_id, row.text("namespace")?);
        }
        counted.moved.push(step);
    }
    Ok(counted)
}

/// The `json_build_object` arguments of a claimed step's row, in `JsonRow`'s shape: its columns,
/// its lease token, its task's context and one parent's name and output, as `claimed_steps`
/// reads them (steps aliased `s`, tasks `t`, parents `p`).
fn claimed_object() -> String {
    STEP_COLUMNS
        .split(',')
        .map(str::trim)
        .map(|c| format!("s.{c} AS {c}"))
        .chain([
            "s.lease_token AS lease_token".to_owned(),
            "t.context AS context".to_owned(),
            "p.name AS parent_name".to_owned(),
            "p.result AS parent_result".to_owned(),
            format!("{PARENT_FAILURES} AS parent_failures"),
            "false AS lease_ran_out".to_owned(),
        ])
        .map(|column| {
            // `JsonRow`'s shape: each value in a one-element array, SQL NULL as null.
            let (value, name) = column.split_once(" AS ").unwrap_or((&column, &column));
            format!(
                "'{name}', CASE WHEN {value} IS NULL THEN NULL ELSE json_build_array({value}) END"
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Enqueues the chosen children (each in its queue; those of the chain claimed at once, as
/// `step_claim` would), completes the chosen tasks, announces the idle ones, and writes the
/// audit rows, the messages, the consumed deliveries' deletion and a `NOTIFY` for each queue
/// that received messages or waiting steps. Audit rows are inserted in the plan's order, then
/// the children's (a claimed child's start after its enqueue), then the tasks', so ids follow
/// it. The claimed children come back with their handlers' input.
pub(crate) async fn apply_effects(
    conn: &mut PgConnection,
    plan: &EffectsPlan<'_>,
) -> Result<EffectsApplied> {
    let enqueue_to = StepState::Pending.transition(StepEvent::Enqueue)?;
    let (from, _) = settle::COMPLETE_FROM_RUNNING[0];
    let (last_from, last_event) = settle::COMPLETE_FROM_RUNNING[1];
    let mut complete_path: (Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
    for (from, event) in settle::COMPLETE_FROM_RUNNING {
        complete_path.0.push(from.as_str());
        complete_path.1.push(from.transition(event)?.as_str());
        complete_path.2.push(event.name());
    }
    let chained: HashSet<StepId> = plan
        .chain
        .as_ref()
        .map(|c| c.steps.iter().copied().collect())
        .unwrap_or_default();
    let (queues, payloads): (Vec<&str>, Vec<Json<&serde_json::Value>>) = plan
        .outbox
        .iter()
        .flat_map(|(queue, payloads)| payloads.iter().map(move |p| (queue.as_str(), Json(p))))
        .unzip();
    let rows = sqlx::query(&format!(
        "WITH enqueued AS ( \
           UPDATE steps SET queue = c.q, \
             state = CASE WHEN c.chain THEN $32 ELSE $1 END, \
             visible_at_ms = {now} + CASE WHEN c.chain THEN $33 ELSE 0 END, \
             lease_token = CASE WHEN c.chain THEN {token} END, \
             lease_holder = CASE WHEN c.chain THEN $18 ELSE lease_holder END, \
             attempts = attempts + CASE WHEN c.chain THEN 1 ELSE 0 END, \
             started_at_ms = CASE WHEN c.chain THEN COALESCE(started_at_ms, {now}) \
                             ELSE started_at_ms END, \
             next_attempt_at_ms = CASE WHEN c.chain THEN NULL ELSE next_attempt_at_ms END \
           FROM unnest($3::bigint[], $25::text[], $31::bool[]) AS c(id, q, chain) \
           WHERE steps.id = c.id AND steps.state = $2 \
           RETURNING {steps}, steps.lease_token, c.q, c.chain), \
         done AS ( \
           UPDATE tasks SET state = $4, updated_at_ms = {now}, finished_at_ms = {now} \
           WHERE state = $5 AND id = ANY($6::bigint[]) RETURNING {TASK_COLUMNS}), \
         busy AS ( \
           SELECT DISTINCT task_id FROM steps \
           WHERE state IN ('Enqueued', 'InProgress') AND task_id = ANY($7::bigint[])), \
         audit AS ( \
           INSERT INTO transitions (entity, task_id, step_id, from_state, to_state, event, \
                                    reason, instance_id, at_ms) \
           SELECT e, t, s, f, o, ev, r, i, {now} FROM ( \
             SELECT e, t, s, f, o, ev, r, i, 0 AS g, n \
             FROM unnest($8::text[], $9::bigint[], $10::bigint[], $11::text[], $12::text[], \
                         $13::text[], $14::text[], $15::text[]) \
                  WITH ORDINALITY AS a(e, t, s, f, o, ev, r, i, n) \
             UNION ALL \
             SELECT $16, q.task_id, q.id, $2, $1, $17, NULL, $18, 1, q.id * 2 FROM enqueued q \
             UNION ALL \
             SELECT $16, q.task_id, q.id, $1, $32, $35, NULL, $18, 1, q.id * 2 + 1 \
             FROM enqueued q WHERE q.chain \
             UNION ALL \
             SELECT $19, d.id, NULL, x.f, x.o, x.ev, NULL, $18, 2, d.id * 4 + x.k \
             FROM done d CROSS JOIN unnest($20::text[], $21::text[], $22::text[]) \
                  WITH ORDINALITY AS x(f, o, ev, k)) AS rows \
           ORDER BY g, n), \
         outbox AS ( \
           INSERT INTO queue_messages (queue, payload, enqueued_at_ms, visible_at_ms) \
           SELECT q, p, {now}, {now} FROM ( \
             SELECT q, p, 0 AS g, n \
             FROM unnest($23::text[], $24::jsonb[]) WITH ORDINALITY AS m(q, p, n) \
             UNION ALL \
             SELECT $26, i.p, 2, i.n \
             FROM unnest($7::bigint[], $27::jsonb[]) WITH ORDINALITY AS i(id, p, n) \
             WHERE i.id NOT IN (SELECT task_id FROM busy)) AS rows \
           ORDER BY g, n \
           RETURNING queue), \
         consumed AS ( \
           DELETE FROM queue_messages m USING unnest($28::bigint[], $29::text[]) AS c(id, token) \
           WHERE m.id = c.id AND m.lease_token = c.token), \
         announced AS ( \
           SELECT q, pg_notify($30, q) \
           FROM (SELECT queue AS q FROM outbox \
                 UNION SELECT q FROM enqueued WHERE NOT chain) AS x), \
         claimed AS ( \
           SELECT json_agg(json_build_object({claimed_object}) ORDER BY s.id, p.position) AS rows \
           FROM enqueued s JOIN tasks t ON t.id = s.task_id \
           LEFT JOIN step_edges e ON e.child_id = s.id \
           LEFT JOIN steps p ON p.id = e.parent_id \
           WHERE s.chain) \
         SELECT (SELECT array_agg(q ORDER BY q) FROM announced) AS queues, \
                (SELECT rows FROM claimed) AS claimed, d.* \
         FROM (SELECT 1) AS one LEFT JOIN done d ON true",
        now = NOW_MS,
        token = step_token_sql("$34"),
        steps = qualified("steps", STEP_COLUMNS),
        claimed_object = claimed_object(),
    ))
    .bind(enqueue_to.as_str())
    .bind(StepState::Pending.as_str())
    .bind(plan.enqueue.iter().map(|(id, _)| id.0).collect::<Vec<_>>())
    .bind(last_from.transition(last_event)?.as_str())
    .bind(from.as_str())
    .bind(plan.complete.iter().map(|t| t.0).collect::<Vec<_>>())
    .bind(
        plan.evaluate_if_idle
            .iter()
            .map(|(t, _)| t.0)
            .collect::<Vec<_>>(),
    )
    .bind_transitions(&plan.transitions)
    .bind(Entity::Step.as_str())
    .bind(StepEvent::Enqueue.name())
    .bind(plan.instance_id)
    .bind(Entity::Task.as_str())
    .bind(&complete_path.0)
    .bind(&complete_path.1)
    .bind(&complete_path.2)
    .bind(queues)
    .bind(payloads)
    .bind(
        plan.enqueue
            .iter()
            .map(|(_, q)| q.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(plan.evaluate_queue)
    .bind(
        plan.evaluate_if_idle
            .iter()
            .map(|(_, m)| Json(m))
            .collect::<Vec<_>>(),
    )
    .bind(plan.consumed.iter().map(|c| c.id).collect::<Vec<_>>())
    .bind(
        plan.consumed
            .iter()
            .map(|c| c.lease_token.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(crate::notify::CHANNEL)
    .bind(
        plan.enqueue
            .iter()
            .map(|(id, _)| chained.contains(id))
            .collect::<Vec<_>>(),
    )
    .bind(StepState::InProgress.as_str())
    .bind(plan.chain.as_ref().map_or(0, |c| c.lease_ms))
    .bind(plan.chain.as_ref().map_or("", |c| c.token.as_str()))
    .bind(StepEvent::Start.name())
    .fetch_all(conn)
    .await
    .map_err(map_err)?;
    // One row per completed task, or one row of nulls: each carries the queues.
    let mut applied = EffectsApplied::default();
    if let Some(row) = rows.first() {
        let queues: Option<Vec<String>> = row.try_get("queues").map_err(map_err)?;
        applied.queues = queues.unwrap_or_default();
        let claimed: Option<Json<Vec<serde_json::Map<String, serde_json::Value>>>> =
            row.try_get("claimed").map_err(map_err)?;
        let claimed: Vec<JsonRow> = claimed
            .map(|c| c.0.into_iter().map(JsonRow).collect())
            .unwrap_or_default();
        applied.claimed = claimed_steps(&claimed)?;
    }
    for row in &rows {
        if row.opt_int("id")?.is_some() {
            applied.finished.push(decode_task(row)?);
        }
    }
    Ok(applied)
}
