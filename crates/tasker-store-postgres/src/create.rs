//! Creating a batch of tasks: `Backend::create_tasks` on PostgreSQL, in two statements
//! whatever the batch's size.
//!
//! The first reserves the ids of the new tasks and steps from their identity sequences, so
//! every row, edge and audit row can be written before any is inserted. The second inserts
//! them all with data-modifying CTEs over arrays (one bound array per column, not one
//! parameter per value): the tasks first, skipping a repeated idempotency key; then only the
//! steps, edges and audit rows of the tasks that were inserted, and a `NOTIFY` for each queue
//! that received a step. Which rows a task is created with (the plan, the initial audit rows,
//! the queues of a started task's roots) is decided in Rust, by the code the portable version
//! uses.

use std::collections::HashMap;

use sqlx::{types::Json, PgConnection, Row};
use tasker_store::{Result, TaskCreateParams, TaskCreated};
use tasker_store_sql::{
    corrupt, created_or_existing, task as decode_task, NewTransition, StepPlan, TASK_COLUMNS,
};
use tasker_types::{StepId, StepState, TaskId, TaskState};

use crate::{map_err, notify, BindTransitions, PgBackend, NOW_MS};

/// One new step row, its id reserved.
struct StepRow<'a> {
    id: i64,
    task_id: i64,
    plan: &'a tasker_store_sql::PlannedStep<'a>,
    /// The queue a started task's root waits in.
    queue: Option<String>,
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
    let step_count: usize = plans.iter().map(|p| p.steps.len()).sum();

    // 1. Ids, in increasing order (the tasks' follow the requests' order), and the templates'
    // namespaces, which route a started task's roots.
    let mut template_ids: Vec<i64> = batch.iter().map(|p| p.template_id).collect();
    template_ids.sort_unstable();
    template_ids.dedup();
    let reserved = sqlx::query(
        "SELECT ARRAY(SELECT nextval(pg_get_serial_sequence('tasks', 'id')) \
                      FROM generate_series(1, $1)) AS tasks, \
                ARRAY(SELECT nextval(pg_get_serial_sequence('steps', 'id')) \
                      FROM generate_series(1, $2)) AS steps, \
                ARRAY(SELECT id FROM templates WHERE id = ANY($3) ORDER BY id) AS templates, \
                ARRAY(SELECT namespace FROM templates WHERE id = ANY($3) ORDER BY id) \
                  AS namespaces",
    )
    .bind(i64::try_from(batch.len()).unwrap_or(i64::MAX))
    .bind(i64::try_from(step_count).unwrap_or(i64::MAX))
    .bind(&template_ids)
    .fetch_one(&mut *conn)
    .await
    .map_err(map_err)?;
    let mut task_ids: Vec<i64> = reserved.try_get("tasks").map_err(map_err)?;
    let mut step_ids: Vec<i64> = reserved.try_get("steps").map_err(map_err)?;
    if task_ids.len() != batch.len() || step_ids.len() != step_count {
        return Err(corrupt("id reservation", "fewer ids than rows"));
    }
    task_ids.sort_unstable();
    step_ids.sort_unstable();
    let known: Vec<i64> = reserved.try_get("templates").map_err(map_err)?;
    let namespaces: Vec<String> = reserved.try_get("namespaces").map_err(map_err)?;
    let namespace_of: HashMap<i64, String> = known.into_iter().zip(namespaces).collect();

    // 2. Every row, as the portable version would write it.
    let mut steps: Vec<StepRow<'_>> = Vec::with_capacity(step_count);
    let mut edges: Vec<(i64, StepId, StepId)> = Vec::new();
    let mut transitions: Vec<NewTransition<'_>> = Vec::new();
    let mut queues_of: HashMap<i64, Vec<String>> = HashMap::new();
    let mut next_step = step_ids.into_iter();
    for ((p, plan), &task_id) in batch.iter().zip(&plans).zip(&task_ids) {
        let mut by_name: HashMap<String, StepId> = HashMap::with_capacity(plan.steps.len());
        for step in &plan.steps {
            let id = next_step
                .next()
                .ok_or_else(|| corrupt("id reservation", "a step without an id"))?;
            by_name.insert(step.name.to_owned(), StepId(id));
            // A request for an unknown template inserts nothing: its queues do not matter.
            let namespace = namespace_of.get(&p.template_id).map_or("", String::as_str);
            let queue = p
                .start
                .as_ref()
                .filter(|_| step.is_root())
                .map(|routing| routing.queue(namespace, step.handler).to_owned());
            if let Some(queue) = &queue {
                let queues = queues_of.entry(task_id).or_default();
                if !queues.contains(queue) {
                    queues.push(queue.clone());
                }
            }
            steps.push(StepRow {
                id,
                task_id,
                plan: step,
                queue,
            });
        }
        edges.extend(
            plan.edges(&by_name)?
                .into_iter()
                .map(|(parent, child)| (task_id, parent, child)),
        );
        transitions.extend(plan.initial_transitions(
            TaskId(task_id),
            &by_name,
            &p.instance_id,
            p.start.is_some(),
        )?);
    }

    // 3. One statement.
    let rows = sqlx::query(&format!(
        "WITH new AS ( \
           INSERT INTO tasks (id, template_id, namespace, name, version, state, context, \
                              idempotency_key, priority, unfinished_steps, created_at_ms, \
                              updated_at_ms) \
           OVERRIDING SYSTEM VALUE \
           SELECT r.id, t.id, t.namespace, t.name, t.version, r.state, r.context, r.key, \
                  r.priority, r.unfinished, {now}, {now} \
           FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::jsonb[], $5::text[], \
                       $6::bigint[], $7::bigint[]) \
                AS r(id, template_id, state, context, key, priority, unfinished) \
           JOIN templates t ON t.id = r.template_id \
           ORDER BY r.id \
           ON CONFLICT (template_id, idempotency_key) DO NOTHING \
           RETURNING {TASK_COLUMNS}), \
         new_steps AS ( \
           INSERT INTO steps (id, task_id, position, name, handler, handler_config, state, \
                              max_attempts, retry_base_ms, retry_max_ms, retry_jitter, \
                              timeout_ms, pending_parents, queue, visible_at_ms) \
           OVERRIDING SYSTEM VALUE \
           SELECT s.id, s.task_id, s.position, s.name, s.handler, s.config, \
                  CASE WHEN s.queue IS NULL THEN $8 ELSE $9 END, s.max_attempts, s.base, \
                  s.cap, s.jitter, s.timeout, s.parents, s.queue, \
                  CASE WHEN s.queue IS NULL THEN NULL ELSE {now} END \
           FROM unnest($10::bigint[], $11::bigint[], $12::bigint[], $13::text[], $14::text[], \
                       $15::jsonb[], $16::bigint[], $17::bigint[], $18::bigint[], $19::bool[], \
                       $20::bigint[], $21::bigint[], $22::text[]) \
                AS s(id, task_id, position, name, handler, config, max_attempts, base, cap, \
                     jitter, timeout, parents, queue) \
           WHERE s.task_id IN (SELECT id FROM new) \
           ORDER BY s.id \
           RETURNING queue), \
         new_edges AS ( \
           INSERT INTO step_edges (task_id, parent_id, child_id) \
           SELECT e.t, e.p, e.c FROM unnest($23::bigint[], $24::bigint[], $25::bigint[]) \
                AS e(t, p, c) \
           WHERE e.t IN (SELECT id FROM new)), \
         audit AS ( \
           INSERT INTO transitions (entity, task_id, step_id, from_state, to_state, event, \
                                    reason, instance_id, at_ms) \
           SELECT a.e, a.t, a.s, a.f, a.o, a.ev, a.r, a.i, {now} \
           FROM unnest($26::text[], $27::bigint[], $28::bigint[], $29::text[], $30::text[], \
                       $31::text[], $32::text[], $33::text[]) \
                WITH ORDINALITY AS a(e, t, s, f, o, ev, r, i, n) \
           WHERE a.t IN (SELECT id FROM new) \
           ORDER BY a.n), \
         announced AS ( \
           SELECT pg_notify($34, q) FROM (SELECT DISTINCT queue AS q FROM new_steps \
                                           WHERE queue IS NOT NULL) AS x) \
         SELECT n.*, (SELECT count(*) FROM announced) AS announced FROM new n",
        now = NOW_MS
    ))
    .bind(&task_ids)
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
    .bind(StepState::Pending.as_str())
    .bind(StepState::Enqueued.as_str())
    .bind(steps.iter().map(|s| s.id).collect::<Vec<_>>())
    .bind(steps.iter().map(|s| s.task_id).collect::<Vec<_>>())
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
    .bind(steps.iter().map(|s| s.queue.as_deref()).collect::<Vec<_>>())
    .bind(edges.iter().map(|e| e.0).collect::<Vec<_>>())
    .bind(edges.iter().map(|e| e.1 .0).collect::<Vec<_>>())
    .bind(edges.iter().map(|e| e.2 .0).collect::<Vec<_>>())
    .bind_transitions(&transitions)
    .bind(notify::CHANNEL)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    let inserted = rows.iter().map(decode_task).collect::<Result<Vec<_>>>()?;
    let (mut created, new) = created_or_existing::<PgBackend>(conn, batch, inserted).await?;
    for i in new {
        let mut queues = queues_of.remove(&created[i].task.id.0).unwrap_or_default();
        queues.sort_unstable();
        created[i].queues = queues;
    }
    Ok(created)
}
