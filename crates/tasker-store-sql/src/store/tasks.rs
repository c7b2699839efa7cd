//! Tasks, their creation and the audit log.

use std::collections::HashMap;

use async_trait::async_trait;
use tasker_store::{
    Result, StoreError, TaskClaimParams, TaskCountParams, TaskCreateParams, TaskCreated,
    TaskListParams, TaskReleaseParams, TaskStore, TaskTransitionParams, TransitionLog,
};
use tasker_types::{Entity, StepId, StepState, TaskId, TaskRow, TaskState, TransitionRow};

use super::{commit, fetch_optional, Backend, Conn, Sql, SqlStore};
use crate::{
    corrupt, duration_ms, get_state, get_u64, stale_or_missing, task as decode_task,
    transition as decode_transition, NewTransition, Outbox, PlannedStep, RowExt, StepPlan,
    INSERT_CHUNK, TASK_COLUMNS, TRANSITION_COLUMNS,
};

/// Appends audit rows in multi-row inserts.
pub async fn insert_transitions<B: Backend>(
    conn: &mut Conn<B>,
    rows: &[NewTransition<'_>],
) -> Result<()> {
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut sql = Sql::new(
            "INSERT INTO transitions (entity, task_id, step_id, from_state, to_state, event, \
             reason, instance_id, at_ms) ",
        );
        sql.push_values(chunk, |b, t| {
            b.bind(t.entity.as_str())
                .bind(t.task_id.0)
                .bind(t.step_id.map(|s| s.0))
                .bind(t.from_state)
                .bind(t.to_state)
                .bind(t.event)
                .bind(t.reason)
                .bind(t.instance_id)
                .push(B::NOW_MS);
        });
        B::execute(conn, &sql).await?;
    }
    Ok(())
}

async fn task_fetch<B: Backend>(conn: &mut Conn<B>, id: TaskId) -> Result<Option<TaskRow>> {
    let row = fetch_optional::<B>(
        conn,
        &Sql::new(format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1")).bind(id.0),
    )
    .await?;
    row.as_ref().map(decode_task).transpose()
}

/// The answer to each request of a creation batch, given the task rows its insert returned
/// (`inserted`, in any order; an insert skips a repeated idempotency key and an unknown
/// template): a request takes the next inserted row, by id, if that row is its own; a request
/// skipped gets the task its key names, or `NotFound` for its template. Returns the answers,
/// in request order, and the indexes of the requests whose task is new.
///
/// # Errors
///
/// [`StoreError::NotFound`] for a request whose template does not exist.
pub async fn created_or_existing<B: Backend>(
    conn: &mut Conn<B>,
    batch: &[TaskCreateParams],
    mut inserted: Vec<TaskRow>,
) -> Result<(Vec<TaskCreated>, Vec<usize>)> {
    inserted.sort_unstable_by_key(|t| t.id.0);
    let mut created: Vec<TaskCreated> = Vec::with_capacity(batch.len());
    let mut new: Vec<usize> = Vec::with_capacity(batch.len());
    let mut rows = inserted.into_iter().peekable();
    for (i, p) in batch.iter().enumerate() {
        let own = rows.peek().is_some_and(|t| {
            t.template_id == p.template_id && t.idempotency_key == p.idempotency_key
        });
        if own {
            let task = rows
                .next()
                .ok_or_else(|| corrupt("task insert", "row vanished"))?;
            new.push(i);
            created.push(TaskCreated {
                task,
                created: true,
                queues: Vec::new(),
            });
            continue;
        }
        let existing = match &p.idempotency_key {
            Some(key) => {
                fetch_optional::<B>(
                    conn,
                    &Sql::new(format!(
                        "SELECT {TASK_COLUMNS} FROM tasks \
                         WHERE template_id = $1 AND idempotency_key = $2"
                    ))
                    .bind(p.template_id)
                    .bind(key),
                )
                .await?
            }
            None => None,
        };
        let Some(row) = existing else {
            return Err(StoreError::NotFound {
                entity: "template",
                id: p.template_id.to_string(),
            });
        };
        created.push(TaskCreated {
            task: decode_task(&row)?,
            created: false,
            queues: Vec::new(),
        });
    }
    Ok((created, new))
}

/// `Backend::create_tasks` as portable statements, with a fixed number per batch: one
/// multi-row insert each for the tasks, their steps (a started task's roots already waiting in
/// their queues), their edges and their audit rows.
pub async fn create_tasks<B: Backend>(
    conn: &mut Conn<B>,
    batch: &[TaskCreateParams],
) -> Result<Vec<TaskCreated>> {
    let plans: Vec<StepPlan<'_>> = batch.iter().map(|p| StepPlan::new(&p.steps)).collect();
    // 1. The tasks. A repeated idempotency key hits the unique index and is skipped (DO
    // NOTHING); so is a request for an unknown template (the join). Rows are inserted in
    // request order (ORDER BY), so ids increase with it.
    let mut rows: Vec<TaskRow> = Vec::with_capacity(batch.len());
    let numbered: Vec<(usize, &TaskCreateParams, &StepPlan<'_>)> = batch
        .iter()
        .zip(&plans)
        .enumerate()
        .map(|(i, (p, plan))| (i, p, plan))
        .collect();
    for chunk in numbered.chunks(INSERT_CHUNK) {
        let mut sql = Sql::new(format!(
            "INSERT INTO tasks (template_id, namespace, name, version, state, context, \
                 idempotency_key, priority, unfinished_steps, created_at_ms, updated_at_ms) \
                 SELECT t.id, t.namespace, t.name, t.version, v.column3, v.column4, \
                 v.column5, v.column6, v.column7, {now}, {now} FROM (",
            now = B::NOW_MS
        ));
        sql.push_values(chunk, |b, (i, p, plan)| {
            let state = if p.start.is_some() {
                TaskState::StepsInProcess
            } else {
                TaskState::Pending
            };
            b.bind(i64::try_from(*i).unwrap_or(i64::MAX))
                .bind(p.template_id)
                .bind(state.as_str())
                .bind(&p.context)
                .bind(p.idempotency_key.as_deref())
                .bind(i64::from(p.priority))
                .bind(i64::try_from(plan.steps.len()).unwrap_or(i64::MAX));
        });
        // `WHERE true`: SQLite's parser needs a WHERE before an upsert clause.
        sql.push(&format!(
            ") AS v JOIN templates t ON t.id = v.column2 WHERE true ORDER BY v.column1 \
                 ON CONFLICT (template_id, idempotency_key) DO NOTHING RETURNING {TASK_COLUMNS}"
        ));
        for row in B::fetch_all(conn, &sql).await? {
            rows.push(decode_task(&row)?);
        }
    }
    let (mut created, new) = created_or_existing::<B>(conn, batch, rows).await?;

    // 2. The new tasks' steps; a started task's roots are `Enqueued` already, each in
    // the queue its routing names.
    let step_rows: Vec<(TaskId, Option<String>, &PlannedStep<'_>)> = new
        .iter()
        .flat_map(|&i| {
            let task = &created[i].task;
            let start = batch[i].start.as_ref();
            plans[i].steps.iter().map(move |s| {
                let queue = start
                    .filter(|_| s.is_root())
                    .map(|routing| s.queue(routing, &task.namespace).to_owned());
                (task.id, queue, s)
            })
        })
        .collect();
    let mut ids: HashMap<(i64, String), StepId> = HashMap::with_capacity(step_rows.len());
    let mut queues_of: HashMap<i64, Vec<String>> = HashMap::new();
    for chunk in step_rows.chunks(INSERT_CHUNK) {
        let mut sql = Sql::new(
            "INSERT INTO steps (task_id, position, name, handler, handler_config, state, \
                 max_attempts, retry_base_ms, retry_max_ms, retry_jitter, timeout_ms, \
                 pending_parents, branches, map, queue, visible_at_ms) ",
        );
        sql.push_values(chunk, |b, (task, queue, s)| {
            let state = if queue.is_some() {
                StepState::Enqueued
            } else {
                StepState::Pending
            };
            b.bind(task.0)
                .bind(s.position)
                .bind(s.name)
                .bind(s.handler)
                .bind(s.handler_config)
                .bind(state.as_str())
                .bind(s.max_attempts)
                .bind(s.retry_base_ms)
                .bind(s.retry_max_ms)
                .bind(s.retry_jitter)
                .bind(s.timeout_ms)
                .bind(s.pending_parents)
                .bind(s.branches.as_ref())
                .bind(s.map.as_ref())
                .bind(queue.as_deref());
            if queue.is_some() {
                b.push(B::NOW_MS);
            } else {
                b.push("NULL");
            }
        });
        sql.push(" RETURNING id, task_id, name");
        for row in B::fetch_all(conn, &sql).await? {
            ids.insert(
                (row.int("task_id")?, row.text("name")?),
                StepId(row.int("id")?),
            );
        }
        for (task, queue, _) in chunk {
            if let Some(queue) = queue {
                let queues = queues_of.entry(task.0).or_default();
                if !queues.contains(queue) {
                    queues.push(queue.clone());
                }
            }
        }
    }

    // 3. Edges and audit rows.
    let mut edges: Vec<(TaskId, StepId, StepId)> = Vec::new();
    let mut transitions: Vec<NewTransition<'_>> = Vec::new();
    for &i in &new {
        let task = &created[i].task;
        let by_name: HashMap<String, StepId> = plans[i]
            .steps
            .iter()
            .filter_map(|s| {
                ids.get(&(task.id.0, s.name.to_owned()))
                    .map(|id| (s.name.to_owned(), *id))
            })
            .collect();
        edges.extend(
            plans[i]
                .edges(&by_name)?
                .into_iter()
                .map(|(p, c)| (task.id, p, c)),
        );
        transitions.extend(plans[i].initial_transitions(
            task.id,
            &by_name,
            &batch[i].instance_id,
            batch[i].start.is_some(),
        )?);
        let mut queues = queues_of.remove(&task.id.0).unwrap_or_default();
        queues.sort_unstable();
        created[i].queues = queues;
    }
    for chunk in edges.chunks(INSERT_CHUNK) {
        let mut sql = Sql::new("INSERT INTO step_edges (task_id, parent_id, child_id) ");
        sql.push_values(chunk, |b, (task, parent, child)| {
            b.bind(task.0).bind(parent.0).bind(child.0);
        });
        B::execute(conn, &sql).await?;
    }
    let mut announce: Vec<String> = created.iter().flat_map(|c| c.queues.clone()).collect();
    announce.sort_unstable();
    announce.dedup();
    B::write_effects(conn, &transitions, &Outbox::new(), &[], &announce).await?;
    Ok(created)
}

#[async_trait]
impl<B: Backend> TaskStore for SqlStore<B> {
    async fn task_create(&self, params: &TaskCreateParams) -> Result<TaskCreated> {
        let mut created = self.task_create_many(std::slice::from_ref(params)).await?;
        created
            .pop()
            .ok_or_else(|| corrupt("task insert", "no task created"))
    }

    async fn task_create_many(&self, params: &[TaskCreateParams]) -> Result<Vec<TaskCreated>> {
        let mut tx = self.begin_write().await?;
        let created = B::create_tasks(&mut tx, params).await?;
        commit::<B>(tx).await?;
        Ok(created)
    }

    async fn task_get(&self, id: TaskId) -> Result<TaskRow> {
        task_fetch::<B>(&mut *self.read().await?, id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                entity: "task",
                id: id.to_string(),
            })
    }

    async fn task_list(&self, params: &TaskListParams) -> Result<Vec<TaskRow>> {
        let mut sql = Sql::new(format!("SELECT {TASK_COLUMNS} FROM tasks WHERE 1=1"));
        if let Some(state) = params.state {
            sql.push(" AND state = ").push_bind(state.as_str());
        }
        push_task_filters(
            &mut sql,
            params.namespace.as_deref(),
            params.name.as_deref(),
            params.created_after_ms,
            params.created_before_ms,
        );
        if let Some(before) = params.before_id {
            sql.push(" AND id < ").push_bind(before.0);
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(params.limit));
        let rows = B::fetch_all(&mut *self.read().await?, &sql).await?;
        rows.iter().map(decode_task).collect()
    }

    async fn task_count(&self, params: &TaskCountParams) -> Result<Vec<(TaskState, u64)>> {
        let mut sql = Sql::new("SELECT state, COUNT(*) AS n FROM tasks WHERE 1=1");
        push_task_filters(
            &mut sql,
            params.namespace.as_deref(),
            params.name.as_deref(),
            params.created_after_ms,
            params.created_before_ms,
        );
        sql.push(" GROUP BY state");
        let rows = B::fetch_all(&mut *self.read().await?, &sql).await?;
        rows.iter()
            .map(|r| Ok((get_state(r, "task state")?, get_u64(r, "n")?)))
            .collect()
    }

    async fn task_transition(&self, params: &TaskTransitionParams) -> Result<TaskRow> {
        let to = params.from.transition(params.event)?;
        let mut tx = self.begin_write().await?;
        let row = fetch_optional::<B>(
            &mut tx,
            &Sql::new(format!(
                "UPDATE tasks SET state = $1, updated_at_ms = {now}, \
                 finished_at_ms = CASE WHEN $2 THEN {now} ELSE NULL END \
                 WHERE id = $3 AND state = $4 RETURNING {TASK_COLUMNS}",
                now = B::NOW_MS
            ))
            .bind(to.as_str())
            .bind(to.is_terminal())
            .bind(params.task_id.0)
            .bind(params.from.as_str()),
        )
        .await?;
        let Some(row) = row else {
            let current = task_fetch::<B>(&mut tx, params.task_id).await?;
            return Err(stale_or_missing(
                "task",
                params.task_id.0,
                params.from.as_str(),
                current.map(|t| t.state.as_str().to_owned()),
            ));
        };
        let task = decode_task(&row)?;
        insert_transitions::<B>(
            &mut tx,
            &[NewTransition {
                entity: Entity::Task,
                task_id: task.id,
                step_id: None,
                from_state: Some(params.from.as_str()),
                to_state: to.as_str(),
                event: params.event.name(),
                reason: params.reason.as_deref(),
                instance_id: &params.instance_id,
            }],
        )
        .await?;
        commit::<B>(tx).await?;
        Ok(task)
    }

    async fn task_claim(&self, params: &TaskClaimParams) -> Result<bool> {
        let done = B::execute(
            &mut *self.backend.write().await?,
            &Sql::new(format!(
                "UPDATE tasks SET claimed_by = $1, claim_expires_at_ms = {now} + $2, \
                   claim_instance = $4 \
                 WHERE id = $3 AND (claimed_by IS NULL OR claimed_by = $1 \
                                    OR claim_expires_at_ms <= {now} \
                                    OR (claim_instance IS NOT NULL \
                                        AND NOT EXISTS (SELECT 1 FROM instances i \
                                                        WHERE i.id = tasks.claim_instance)))",
                now = B::NOW_MS
            ))
            .bind(&params.claimer)
            .bind(duration_ms(params.lease))
            .bind(params.task_id.0)
            .bind(&params.instance_id),
        )
        .await?;
        Ok(done == 1)
    }

    async fn task_release(&self, params: &TaskReleaseParams) -> Result<bool> {
        let done = B::execute(
            &mut *self.backend.write().await?,
            &Sql::new(
                "UPDATE tasks SET claimed_by = NULL, claim_expires_at_ms = NULL, \
                   claim_instance = NULL \
                 WHERE id = $1 AND claimed_by = $2",
            )
            .bind(params.task_id.0)
            .bind(&params.claimer),
        )
        .await?;
        Ok(done == 1)
    }
}

#[async_trait]
impl<B: Backend> TransitionLog for SqlStore<B> {
    async fn transition_list(&self, task_id: TaskId) -> Result<Vec<TransitionRow>> {
        let rows = B::fetch_all(
            &mut *self.read().await?,
            &Sql::new(format!(
                "SELECT {TRANSITION_COLUMNS} FROM transitions WHERE task_id = $1 ORDER BY id"
            ))
            .bind(task_id.0),
        )
        .await?;
        rows.iter().map(decode_transition).collect()
    }
}

/// ` AND …` for each filter given: one home for what `task_list` and `task_count` keep.
fn push_task_filters<'a>(
    sql: &mut Sql<'a>,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
    created_after_ms: Option<i64>,
    created_before_ms: Option<i64>,
) {
    if let Some(ns) = namespace {
        sql.push(" AND namespace = ").push_bind(ns);
    }
    if let Some(name) = name {
        sql.push(" AND name = ").push_bind(name);
    }
    if let Some(after) = created_after_ms {
        sql.push(" AND created_at_ms >= ").push_bind(after);
    }
    if let Some(before) = created_before_ms {
        sql.push(" AND created_at_ms < ").push_bind(before);
    }
}
