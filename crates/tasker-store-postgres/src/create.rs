//! Creating a batch of tasks: `Backend::create_tasks` on PostgreSQL, one statement whatever
//! the batch's size.
//!
//! Data-modifying CTEs over arrays (one bound array per column, not one parameter per value)
//! insert the tasks, skipping a repeated idempotency key; then only the inserted tasks' steps,
//! edges and audit rows, and a `NOTIFY` for each queue that received a step. Ids come from the
//! tables' identity sequences inside the statement, so the rows that point at each other are
//! sent with stand-ins: a task by its place in the batch (1, 2, …), a step by its task's place
//! and its position. Which rows a task is created with (the plan, the initial audit rows, which
//! of a started task's roots this process runs) is decided in Rust, by the code the portable
//! version uses.

use std::collections::HashMap;

use sqlx::{types::Json, PgConnection};
use tasker_store::{Result, TaskCreateParams, TaskCreated};
use tasker_store_sql::{
    created_or_existing, task as decode_task, NewTransition, PlannedStep, StepPlan, TASK_COLUMNS,
};
use tasker_types::{StepId, StepState, TaskId, TaskState};

use crate::{map_err, notify, BindTransitions, PgBackend, NOW_MS};

/// One new step row, by its task's place in the batch.
struct NewStep<'a> {
    task: i64,
    plan: &'a PlannedStep<'a>,
    /// A started task's root: the in-process queue, or `None` for its namespace's.
    local_queue: Option<&'a str>,
    started: bool,
}

/// Creates `batch` (see the module docs).
pub(crate) async fn create_tasks(
    conn: &mut PgConnection,
    batch: &[TaskCreateParams],
) -> Result<Vec<TaskCreated>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let plans: Vec<StepPlan<'_>> = batch.iter().map(|p| StepPlan::new(&p.steps)).collect();

    // Every row, as the portable version would write it, with stand-ins for the ids.
    let mut steps: Vec<NewStep<'_>> = Vec::new();
    let mut edges: Vec<(i64, StepId, StepId)> = Vec::new();
    let mut transitions: Vec<NewTransition<'_>> = Vec::new();
    for ((p, plan), task) in batch.iter().zip(&plans).zip(1_i64..) {
        let positions: HashMap<String, StepId> = plan
            .steps
            .iter()
            .map(|s| (s.name.to_owned(), StepId(s.position)))
            .collect();
        for step in &plan.steps {
            let started = p.start.is_some() && step.is_root();
            steps.push(NewStep {
                task,
                plan: step,
                local_queue: p
                    .start
                    .as_ref()
                    .filter(|_| started)
                    .and_then(|routing| routing.local_queue_of(step.handler, step.map.is_some())),
                started,
            });
        }
        edges.extend(
            plan.edges(&positions)?
                .into_iter()
                .map(|(parent, child)| (task, parent, child)),
        );
        transitions.extend(plan.initial_transitions(
            TaskId(task),
            &positions,
            &p.instance_id,
            p.start.is_some(),
        )?);
    }

    let rows = sqlx::query(&format!(
        "WITH r AS ( \
           SELECT u.*, nextval(pg_get_serial_sequence('tasks', 'id')) AS id FROM ( \
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::jsonb[], $4::text[], \
                                  $5::bigint[], $6::bigint[]) \
                  WITH ORDINALITY AS u(template_id, state, context, key, priority, \
                                       unfinished, n) \
             ORDER BY n) AS u), \
         new AS ( \
           INSERT INTO tasks (id, template_id, namespace, name, version, state, context, \
                              idempotency_key, priority, unfinished_steps, created_at_ms, \
                              updated_at_ms) \
           OVERRIDING SYSTEM VALUE \
           SELECT r.id, t.id, t.namespace, t.name, t.version, r.state, r.context, r.key, \
                  r.priority, r.unfinished, {now}, {now} \
           FROM r JOIN templates t ON t.id = r.template_id \
           ORDER BY r.n \
           ON CONFLICT (template_id, idempotency_key) DO NOTHING \
           RETURNING {TASK_COLUMNS}), \
         placed AS (SELECT r.n, new.id, new.namespace FROM r JOIN new ON new.id = r.id), \
         s AS ( \
           SELECT u.*, nextval(pg_get_serial_sequence('steps', 'id')) AS id FROM ( \
             SELECT u.*, placed.id AS task_id, \
                    CASE WHEN u.started THEN COALESCE(u.local_queue, placed.namespace) END \
                      AS queue \
             FROM unnest($7::bigint[], $8::bigint[], $9::text[], $10::text[], $11::jsonb[], \
                         $12::bigint[], $13::bigint[], $14::bigint[], $15::bool[], \
                         $16::bigint[], $17::bigint[], $18::text[], $19::bool[], \
                         $34::jsonb[], $35::jsonb[]) \
                  WITH ORDINALITY AS u(task, position, name, handler, config, max_attempts, \
                                       base, cap, jitter, timeout, parents, local_queue, \
                                       started, branches, map, k) \
             JOIN placed ON placed.n = u.task \
             ORDER BY u.k) AS u), \
         new_steps AS ( \
           INSERT INTO steps (id, task_id, position, name, handler, handler_config, state, \
                              max_attempts, retry_base_ms, retry_max_ms, retry_jitter, \
                              timeout_ms, pending_parents, branches, map, queue, \
                              visible_at_ms) \
           OVERRIDING SYSTEM VALUE \
           SELECT s.id, s.task_id, s.position, s.name, s.handler, s.config, \
                  CASE WHEN s.started THEN $20 ELSE $21 END, s.max_attempts, s.base, s.cap, \
                  s.jitter, s.timeout, s.parents, s.branches, s.map, s.queue, \
                  CASE WHEN s.started THEN {now} END \
           FROM s ORDER BY s.id \
           RETURNING queue), \
         new_edges AS ( \
           INSERT INTO step_edges (task_id, parent_id, child_id) \
           SELECT p.task_id, p.id, c.id \
           FROM unnest($22::bigint[], $23::bigint[], $24::bigint[]) AS e(task, parent, child) \
           JOIN s p ON p.task = e.task AND p.position = e.parent \
           JOIN s c ON c.task = e.task AND c.position = e.child), \
         audit AS ( \
           INSERT INTO transitions (entity, task_id, step_id, from_state, to_state, event, \
                                    reason, instance_id, at_ms) \
           SELECT a.e, placed.id, st.id, a.f, a.o, a.ev, a.r, a.i, {now} \
           FROM unnest($25::text[], $26::bigint[], $27::bigint[], $28::text[], $29::text[], \
                       $30::text[], $31::text[], $32::text[]) \
                WITH ORDINALITY AS a(e, task, step, f, o, ev, r, i, k) \
           JOIN placed ON placed.n = a.task \
           LEFT JOIN s st ON st.task = a.task AND st.position = a.step \
           ORDER BY a.k), \
         announced AS ( \
           SELECT pg_notify($33, q) FROM (SELECT DISTINCT queue AS q FROM new_steps \
                                           WHERE queue IS NOT NULL) AS x) \
         SELECT new.*, (SELECT count(*) FROM announced) AS announced FROM new",
        now = NOW_MS
    ))
    .bind(batch.iter().map(|p| p.template_id).collect::<Vec<_>>())
    .bind(
        batch
            .iter()
            .map(|p| {
                if p.start.is_some() {
                    TaskState::StepsInProcess.as_str()
                } else {
                    TaskState::Pending.as_str()
                }
            })
            .collect::<Vec<_>>(),
    )
    .bind(batch.iter().map(|p| Json(&p.context)).collect::<Vec<_>>())
    .bind(
        batch
            .iter()
            .map(|p| p.idempotency_key.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|p| i64::from(p.priority))
            .collect::<Vec<_>>(),
    )
    .bind(
        plans
            .iter()
            .map(|p| i64::try_from(p.steps.len()).unwrap_or(i64::MAX))
            .collect::<Vec<_>>(),
    )
    .bind(steps.iter().map(|s| s.task).collect::<Vec<_>>())
    .bind(steps.iter().map(|s| s.plan.position).collect::<Vec<_>>())
    .bind(steps.iter().map(|s| s.plan.name).collect::<Vec<_>>())
    .bind(steps.iter().map(|s| s.plan.handler).collect::<Vec<_>>())
    .bind(
        steps
            .iter()
            .map(|s| Json(s.plan.handler_config))
            .collect::<Vec<_>>(),
    )
    .bind(
        steps
            .iter()
            .map(|s| s.plan.max_attempts)
            .collect::<Vec<_>>(),
    )
    .bind(
        steps
            .iter()
            .map(|s| s.plan.retry_base_ms)
            .collect::<Vec<_>>(),
    )
    .bind(
        steps
            .iter()
            .map(|s| s.plan.retry_max_ms)
            .collect::<Vec<_>>(),
    )
    .bind(
        steps
            .iter()
            .map(|s| s.plan.retry_jitter)
            .collect::<Vec<_>>(),
    )
    .bind(steps.iter().map(|s| s.plan.timeout_ms).collect::<Vec<_>>())
    .bind(
        steps
            .iter()
            .map(|s| s.plan.pending_parents)
            .collect::<Vec<_>>(),
    )
    .bind(steps.iter().map(|s| s.local_queue).collect::<Vec<_>>())
    .bind(steps.iter().map(|s| s.started).collect::<Vec<_>>())
    .bind(StepState::Enqueued.as_str())
    .bind(StepState::Pending.as_str())
    .bind(edges.iter().map(|e| e.0).collect::<Vec<_>>())
    .bind(edges.iter().map(|e| e.1 .0).collect::<Vec<_>>())
    .bind(edges.iter().map(|e| e.2 .0).collect::<Vec<_>>())
    .bind_transitions(&transitions)
    .bind(notify::CHANNEL)
    .bind(
        steps
            .iter()
            .map(|s| s.plan.branches.as_ref().map(Json))
            .collect::<Vec<_>>(),
    )
    .bind(
        steps
            .iter()
            .map(|s| s.plan.map.as_ref().map(Json))
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    let inserted = rows.iter().map(decode_task).collect::<Result<Vec<_>>>()?;
    let (mut created, new) = created_or_existing::<PgBackend>(conn, batch, inserted).await?;
    for i in new {
        let Some(routing) = &batch[i].start else {
            continue;
        };
        let namespace = created[i].task.namespace.clone();
        let mut queues: Vec<String> = plans[i]
            .steps
            .iter()
            .filter(|s| s.is_root())
            .map(|s| s.queue(routing, &namespace).to_owned())
            .collect();
        queues.sort_unstable();
        queues.dedup();
        created[i].queues = queues;
    }
    Ok(created)
}
