//! Steps: transitions with their readiness counters, viable steps, the enqueue outbox, and
//! result batches, which keep the counters that `tasker_types::settle` reads and apply the
//! effects it returns; the rules themselves live there.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use tasker_store::{
    Result, ResultsApplied, StepApplyResultsParams, StepEnqueueManyParams, StepMessage,
    StepResultApply, StepStartManyParams, StepStarted, StepStore, StepTransitionParams,
    StepViableManyParams, StoreError, TaskMessage,
};
use tasker_types::{settle, Entity, StepEvent, StepId, StepRow, StepState, TaskId};

use super::{commit, fetch_optional, insert_messages, insert_transitions, Backend, Conn, Sql};
use super::{delete_consumed, SqlStore};
use crate::{
    corrupt, duration_ms, qualified, stale_or_missing, step as decode_step, task as decode_task,
    NewTransition, Outbox, RowExt, INSERT_CHUNK, STEP_COLUMNS, TASK_COLUMNS,
};

/// Enqueues the children settlement chose, each only while still `Pending`, with their audit
/// rows and step messages.
async fn enqueue_children<'p, B: Backend>(
    conn: &mut Conn<B>,
    children: &[StepId],
    namespaces: &HashMap<TaskId, String>,
    params: &'p StepApplyResultsParams,
    transitions: &mut Vec<NewTransition<'p>>,
    outbox: &mut Outbox,
) -> Result<()> {
    let to = StepState::Pending.transition(StepEvent::Enqueue)?;
    for chunk in children.chunks(INSERT_CHUNK) {
        let mut sql = Sql::new("UPDATE steps SET state = ");
        sql.push_bind(to.as_str())
            .push(" WHERE state = ")
            .push_bind(StepState::Pending.as_str())
            .push(" AND id IN (")
            .push_list(chunk.iter().map(|id| id.0))
            .push(") RETURNING id, task_id, handler");
        for row in B::fetch_all(conn, &sql).await? {
            let task_id = TaskId(row.int("task_id")?);
            let step_id = StepId(row.int("id")?);
            let handler = row.text("handler")?;
            transitions.push(NewTransition {
                entity: Entity::Step,
                task_id,
                step_id: Some(step_id),
                from_state: Some(StepState::Pending.as_str()),
                to_state: to.as_str(),
                event: StepEvent::Enqueue.name(),
                reason: None,
                instance_id: &params.instance_id,
            });
            let namespace = namespaces.get(&task_id).map_or("", String::as_str);
            outbox
                .entry(params.routing.queue(namespace, &handler).to_owned())
                .or_default()
                .push(serde_json::json!(StepMessage { task_id, step_id }));
        }
    }
    Ok(())
}

#[async_trait]
impl<B: Backend> StepStore for SqlStore<B> {
    async fn step_list(&self, task_id: TaskId) -> Result<Vec<StepRow>> {
        let rows = B::fetch_all(
            &mut *self.read().await?,
            &Sql::new(format!(
                "SELECT {STEP_COLUMNS} FROM steps WHERE task_id = $1 ORDER BY position"
            ))
            .bind(task_id.0),
        )
        .await?;
        rows.iter().map(decode_step).collect()
    }

    async fn step_get(&self, id: StepId) -> Result<StepRow> {
        let row = fetch_optional::<B>(
            &mut *self.read().await?,
            &Sql::new(format!("SELECT {STEP_COLUMNS} FROM steps WHERE id = $1")).bind(id.0),
        )
        .await?
        .ok_or_else(|| StoreError::NotFound {
            entity: "step",
            id: id.to_string(),
        })?;
        decode_step(&row)
    }

    async fn step_edges(&self, task_id: TaskId) -> Result<Vec<(StepId, StepId)>> {
        let rows = B::fetch_all(
            &mut *self.read().await?,
            &Sql::new(
                "SELECT parent_id, child_id FROM step_edges WHERE task_id = $1 \
                 ORDER BY parent_id, child_id",
            )
            .bind(task_id.0),
        )
        .await?;
        rows.iter()
            .map(|r| Ok((StepId(r.int("parent_id")?), StepId(r.int("child_id")?))))
            .collect()
    }

    async fn step_transition(&self, params: &StepTransitionParams) -> Result<StepRow> {
        let to = params.from.transition(params.event)?;
        let mut tx = self.begin_write().await?;
        let row = fetch_optional::<B>(
            &mut tx,
            &Sql::new(format!(
                "UPDATE steps SET state = $1, \
                 attempts = CASE WHEN $2 THEN attempts + 1 WHEN $3 THEN 0 ELSE attempts END, \
                 started_at_ms = CASE WHEN $2 AND started_at_ms IS NULL THEN {now} \
                                 ELSE started_at_ms END, \
                 result = COALESCE($4, result), \
                 last_error = COALESCE($5, last_error), \
                 next_attempt_at_ms = CASE WHEN $6 IS NULL THEN NULL ELSE {now} + $6 END, \
                 finished_at_ms = CASE WHEN $7 THEN {now} ELSE NULL END \
                 WHERE id = $8 AND state = $9 AND ($10 IS NULL OR attempts = $10) \
                 RETURNING {STEP_COLUMNS}",
                now = B::NOW_MS
            ))
            .bind(to.as_str())
            .bind(params.event == StepEvent::Start)
            .bind(params.event == StepEvent::Retry)
            .bind(params.output.as_ref())
            .bind(params.error.as_deref())
            .bind(params.backoff.map(duration_ms))
            .bind(to.is_terminal())
            .bind(params.step_id.0)
            .bind(params.from.as_str())
            .bind(params.attempt.map(i64::from)),
        )
        .await?;
        let Some(row) = row else {
            let current = fetch_optional::<B>(
                &mut tx,
                &Sql::new("SELECT state FROM steps WHERE id = $1").bind(params.step_id.0),
            )
            .await?
            .map(|r| r.text("state"))
            .transpose()?;
            return Err(stale_or_missing(
                "step",
                params.step_id.0,
                params.from.as_str(),
                current,
            ));
        };
        let step = decode_step(&row)?;
        if to.satisfies_dependents() {
            B::execute(
                &mut tx,
                &Sql::new(
                    "UPDATE steps SET pending_parents = pending_parents - 1 \
                     WHERE id IN (SELECT child_id FROM step_edges WHERE parent_id = $1)",
                )
                .bind(step.id.0),
            )
            .await?;
            B::execute(
                &mut tx,
                &Sql::new("UPDATE tasks SET unfinished_steps = unfinished_steps - 1 WHERE id = $1")
                    .bind(step.task_id.0),
            )
            .await?;
        }
        insert_transitions::<B>(
            &mut tx,
            &[NewTransition {
                entity: Entity::Step,
                task_id: step.task_id,
                step_id: Some(step.id),
                from_state: Some(params.from.as_str()),
                to_state: to.as_str(),
                event: params.event.name(),
                reason: params.error.as_deref(),
                instance_id: &params.instance_id,
            }],
        )
        .await?;
        commit::<B>(tx).await?;
        Ok(step)
    }

    async fn step_viable_many(&self, params: &StepViableManyParams) -> Result<Vec<StepRow>> {
        // The first two predicates are exactly `steps_viable_idx`'s, so the planner reads the
        // partial index: the ready steps of this task, nothing else.
        let rows = B::fetch_all(
            &mut *self.read().await?,
            &Sql::new(format!(
                "SELECT {STEP_COLUMNS} FROM steps \
                 WHERE task_id = $1 AND pending_parents = 0 \
                   AND state IN ('Pending', 'WaitingForRetry') \
                   AND (state = 'Pending' OR next_attempt_at_ms <= {now}) \
                   AND attempts < max_attempts \
                 ORDER BY position LIMIT $2",
                now = B::NOW_MS
            ))
            .bind(params.task_id.0)
            .bind(i64::from(params.limit)),
        )
        .await?;
        rows.iter().map(decode_step).collect()
    }

    async fn step_enqueue_many(&self, params: &StepEnqueueManyParams) -> Result<Vec<StepId>> {
        if params.steps.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let mut enqueued: Vec<(StepId, StepState)> = Vec::with_capacity(params.steps.len());
        for from in [StepState::Pending, StepState::WaitingForRetry] {
            let ids: Vec<i64> = params
                .steps
                .iter()
                .filter(|(_, s)| *s == from)
                .map(|(id, _)| id.0)
                .collect();
            if ids.is_empty() {
                continue;
            }
            let mut sql = Sql::new("UPDATE steps SET state = ");
            sql.push_bind(StepState::Enqueued.as_str())
                .push(" WHERE task_id = ")
                .push_bind(params.task_id.0)
                .push(" AND pending_parents = 0 AND state = ")
                .push_bind(from.as_str())
                .push(" AND id IN (")
                .push_list(ids)
                .push(") RETURNING id");
            for row in B::fetch_all(&mut tx, &sql).await? {
                enqueued.push((StepId(row.int("id")?), from));
            }
        }
        if enqueued.is_empty() {
            return Ok(Vec::new());
        }
        let transitions: Vec<NewTransition<'_>> = enqueued
            .iter()
            .map(|&(step_id, from)| NewTransition {
                entity: Entity::Step,
                task_id: params.task_id,
                step_id: Some(step_id),
                from_state: Some(from.as_str()),
                to_state: StepState::Enqueued.as_str(),
                event: StepEvent::Enqueue.name(),
                reason: None,
                instance_id: &params.instance_id,
            })
            .collect();
        insert_transitions::<B>(&mut tx, &transitions).await?;
        let payloads = enqueued
            .iter()
            .map(|&(step_id, _)| {
                serde_json::to_value(StepMessage {
                    task_id: params.task_id,
                    step_id,
                })
                .map_err(|e| corrupt("step message", e))
            })
            .collect::<Result<Vec<_>>>()?;
        insert_messages::<B>(&mut tx, &params.queue, &payloads, Duration::ZERO).await?;
        commit::<B>(tx).await?;
        Ok(enqueued.into_iter().map(|(id, _)| id).collect())
    }

    async fn step_start_many(&self, params: &StepStartManyParams) -> Result<Vec<StepStarted>> {
        if params.step_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.backend().start_steps(params).await
    }

    async fn step_apply_results(&self, params: &StepApplyResultsParams) -> Result<ResultsApplied> {
        // Set-based: a fixed number of statements per batch, whatever its size.
        let mut order: Vec<&StepResultApply> = params.results.iter().collect();
        order.sort_by_key(|r| (r.task_id.0, r.step_id.0));
        order.dedup_by_key(|r| r.step_id);
        let targets = order
            .iter()
            .map(|r| Ok((*r, StepState::InProgress.transition(r.event)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut applied = ResultsApplied::default();
        let mut transitions: Vec<NewTransition<'_>> = Vec::new();
        let mut outbox = Outbox::new();
        let mut tx = self.begin_write().await?;
        let mut task_ids: Vec<i64> = targets.iter().map(|(r, _)| r.task_id.0).collect();
        task_ids.dedup();
        B::lock_tasks(&mut tx, &task_ids).await?;

        // 1. Each step moves, only while it runs the result's attempt.
        let mut moved: HashMap<i64, StepRow> = HashMap::with_capacity(targets.len());
        for chunk in targets.chunks(INSERT_CHUNK / 7) {
            let mut sql = Sql::new(format!(
                "UPDATE steps SET state = v.column3, result = COALESCE(v.column4, result), \
                 last_error = COALESCE(v.column5, last_error), next_attempt_at_ms = CASE \
                 WHEN v.column6 IS NULL THEN NULL ELSE {now} + v.column6 END, \
                 finished_at_ms = CASE WHEN v.column7 THEN {now} ELSE NULL END FROM (",
                now = B::NOW_MS
            ));
            sql.push_values(chunk, |b, (r, to)| {
                b.bind(r.step_id.0)
                    .bind(i64::from(r.attempt))
                    .bind(to.as_str())
                    .bind(r.output.as_ref())
                    .bind(r.error.as_deref())
                    .bind(r.backoff.map(duration_ms))
                    .bind(to.is_terminal());
            });
            sql.push(&format!(
                ") AS v WHERE steps.id = v.column1 AND steps.state = 'InProgress' \
                 AND steps.attempts = v.column2 RETURNING {}",
                qualified("steps", STEP_COLUMNS)
            ));
            for row in B::fetch_all(&mut tx, &sql).await? {
                let step = decode_step(&row)?;
                moved.insert(step.id.0, step);
            }
        }
        // Stale results and duplicates moved nothing: whoever moved their step settled its
        // task then.
        let mut settled: Vec<settle::Moved> = Vec::with_capacity(moved.len());
        let mut done_per_task: BTreeMap<i64, i64> = BTreeMap::new();
        let mut completed: Vec<i64> = Vec::new();
        for (r, to) in &targets {
            let Some(step) = moved.remove(&r.step_id.0) else {
                continue;
            };
            transitions.push(NewTransition {
                entity: Entity::Step,
                task_id: r.task_id,
                step_id: Some(r.step_id),
                from_state: Some(StepState::InProgress.as_str()),
                to_state: to.as_str(),
                event: r.event.name(),
                reason: r.error.as_deref(),
                instance_id: &params.instance_id,
            });
            settled.push(settle::Moved {
                task_id: r.task_id,
                step_id: r.step_id,
                to: *to,
            });
            let done = done_per_task.entry(r.task_id.0).or_default();
            if to.satisfies_dependents() {
                *done += 1;
                completed.push(r.step_id.0);
            }
            applied.steps.push(step);
        }
        if settled.is_empty() {
            delete_consumed::<B>(&mut tx, &params.consumed).await?;
            commit::<B>(tx).await?;
            return Ok(applied);
        }

        // 2. The counters settlement reads: their tasks count the finished steps...
        let mut sql = Sql::new(format!(
            "UPDATE tasks SET updated_at_ms = {}, \
             unfinished_steps = unfinished_steps - v.column2 FROM (",
            B::NOW_MS
        ));
        sql.push_values(&done_per_task, |b, (task, done)| {
            b.bind(*task).bind(*done);
        });
        sql.push(
            ") AS v WHERE tasks.id = v.column1 \
             RETURNING tasks.id, tasks.state, tasks.namespace, tasks.unfinished_steps",
        );
        let mut counts: Vec<settle::TaskCount> = Vec::new();
        let mut namespaces: HashMap<TaskId, String> = HashMap::new();
        for row in B::fetch_all(&mut tx, &sql).await? {
            let task_id = TaskId(row.int("id")?);
            counts.push(settle::TaskCount {
                task_id,
                state: row
                    .text("state")?
                    .parse()
                    .map_err(|e| corrupt("task state", e))?,
                unfinished_steps: row.int("unfinished_steps")?,
            });
            namespaces.insert(task_id, row.text("namespace")?);
        }
        // ...and the children of the completed steps count their finished parents.
        let mut children: Vec<StepRow> = Vec::new();
        for chunk in completed.chunks(INSERT_CHUNK) {
            let mut sql = Sql::new(
                "UPDATE steps SET pending_parents = pending_parents - c.n \
                 FROM (SELECT child_id, COUNT(*) AS n FROM step_edges WHERE parent_id IN (",
            );
            sql.push_list(chunk.iter().copied()).push(&format!(
                ") GROUP BY child_id) AS c WHERE steps.id = c.child_id RETURNING {}",
                qualified("steps", STEP_COLUMNS)
            ));
            for row in B::fetch_all(&mut tx, &sql).await? {
                children.push(decode_step(&row)?);
            }
        }

        // 3. Settlement decides; the rest applies its effects, each guarded by the state it
        // was decided on.
        let effects = settle::settle(&settled, &counts, &children);
        enqueue_children::<B>(
            &mut tx,
            &effects.enqueue,
            &namespaces,
            params,
            &mut transitions,
            &mut outbox,
        )
        .await?;
        let mut evaluate: Vec<TaskId> = effects.evaluate;
        if !effects.evaluate_if_idle.is_empty() {
            // Literal states: exactly `steps_running_idx`'s predicate, so even a generic plan
            // may use that partial index.
            let mut sql = Sql::new(
                "SELECT DISTINCT task_id FROM steps \
                 WHERE state IN ('Enqueued', 'InProgress') AND task_id IN (",
            );
            sql.push_list(effects.evaluate_if_idle.iter().map(|t| t.0))
                .push(")");
            let busy = B::fetch_all(&mut tx, &sql)
                .await?
                .iter()
                .map(|r| r.int("task_id"))
                .collect::<Result<HashSet<_>>>()?;
            evaluate.extend(
                effects
                    .evaluate_if_idle
                    .into_iter()
                    .filter(|t| !busy.contains(&t.0)),
            );
        }
        if !effects.complete.is_empty() {
            let (from, _) = settle::COMPLETE_FROM_RUNNING[0];
            let (last_from, last_event) = settle::COMPLETE_FROM_RUNNING[1];
            let mut sql = Sql::new("UPDATE tasks SET state = ");
            sql.push_bind(last_from.transition(last_event)?.as_str())
                .push(&format!(
                    ", updated_at_ms = {now}, finished_at_ms = {now} WHERE state = ",
                    now = B::NOW_MS
                ))
                .push_bind(from.as_str())
                .push(" AND id IN (")
                .push_list(effects.complete.iter().map(|t| t.0))
                .push(&format!(") RETURNING {TASK_COLUMNS}"));
            for row in B::fetch_all(&mut tx, &sql).await? {
                let done = decode_task(&row)?;
                for (from, event) in settle::COMPLETE_FROM_RUNNING {
                    transitions.push(NewTransition {
                        entity: Entity::Task,
                        task_id: done.id,
                        step_id: None,
                        from_state: Some(from.as_str()),
                        to_state: from.transition(event)?.as_str(),
                        event: event.name(),
                        reason: None,
                        instance_id: &params.instance_id,
                    });
                }
                applied.finished.push(done);
            }
        }
        for task_id in evaluate {
            outbox
                .entry(params.evaluate_queue.clone())
                .or_default()
                .push(serde_json::json!(TaskMessage { task_id }));
        }

        // 4. The audit rows, the messages, the consumed deliveries.
        B::write_effects(&mut tx, &transitions, &outbox, &params.consumed).await?;
        commit::<B>(tx).await?;
        applied.queues = outbox.into_keys().collect();
        Ok(applied)
    }
}
