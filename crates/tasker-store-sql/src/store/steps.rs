//! Steps: transitions with their readiness counters, viable steps, enqueueing, claims and
//! their leases; result batches are applied in [`results`](super::results).

use async_trait::async_trait;
use tasker_store::{
    Result, ResultsApplied, StepApplyResultsParams, StepClaimParams, StepClaimed,
    StepEnqueueManyParams, StepLease, StepLeaseExtendParams, StepProgress, StepStore,
    StepTransitionParams, StepViableManyParams, StoreError,
};
use tasker_types::{Entity, StepEvent, StepId, StepRow, StepState, TaskId};

use std::{collections::HashSet, time::Duration};

use super::{commit, fetch_optional, insert_transitions, Backend, Conn, Sql, SqlStore};
use crate::{
    duration_ms, stale_or_missing, step as decode_step, NewTransition, RowExt, STEP_COLUMNS,
};

/// Rows per lease-extension statement: each lease is an `OR` term, and SQLite refuses an
/// expression deeper than 1,000.
const LEASES_PER_STATEMENT: usize = 200;

/// Holds the `InProgress` steps these leases still hold until `hold` from now. Returns the ids
/// it changed.
async fn hold_leases<B: Backend>(
    conn: &mut Conn<B>,
    leases: &[StepLease],
    hold: Duration,
) -> Result<HashSet<i64>> {
    let mut held = HashSet::with_capacity(leases.len());
    for chunk in leases.chunks(LEASES_PER_STATEMENT) {
        let mut sql = Sql::new(format!("UPDATE steps SET visible_at_ms = {} + ", B::NOW_MS));
        sql.push_bind(duration_ms(hold))
            .push(" WHERE state = 'InProgress' AND (");
        for (i, lease) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(" OR ");
            }
            sql.push("(id = ")
                .push_bind(lease.step_id.0)
                .push(" AND lease_token = ")
                .push_bind(&lease.lease_token)
                .push(")");
        }
        sql.push(") RETURNING id");
        for row in B::fetch_all(conn, &sql).await? {
            held.insert(row.int("id")?);
        }
    }
    Ok(held)
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

    async fn step_progress_many(&self, task_ids: &[TaskId]) -> Result<Vec<StepProgress>> {
        // What counts as done comes from the step machine, written as literals.
        let done = StepState::ALL
            .iter()
            .filter(|s| s.releases_dependents())
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let mut progress = Vec::with_capacity(task_ids.len());
        let mut conn = self.read().await?;
        for chunk in task_ids.chunks(crate::INSERT_CHUNK) {
            let mut sql = Sql::new(format!(
                "SELECT task_id, COUNT(*) AS total, \
                   SUM(CASE WHEN state IN ({done}) THEN 1 ELSE 0 END) AS done \
                 FROM steps WHERE task_id IN ("
            ));
            sql.push_list(chunk.iter().map(|id| id.0))
                .push(") GROUP BY task_id");
            for row in B::fetch_all(&mut conn, &sql).await? {
                progress.push(StepProgress {
                    task_id: TaskId(row.int("task_id")?),
                    total: crate::get_u64(&row, "total")?,
                    done: crate::get_u64(&row, "done")?,
                });
            }
        }
        Ok(progress)
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
                    "UPDATE steps SET pending_parents = pending_parents - 1, \
                     live_parents = live_parents + 1 \
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
        let mut transitions = vec![NewTransition {
            entity: Entity::Step,
            task_id: step.task_id,
            step_id: Some(step.id),
            from_state: Some(params.from.as_str()),
            to_state: to.as_str(),
            event: params.event.name(),
            reason: params.error.as_deref(),
            instance_id: &params.instance_id,
        }];
        // An instance resolved by hand may be its map's last: the map completes now, and the
        // task's evaluator enqueues its children.
        if let (Some(instance), true) = (&step.map_instance, to.satisfies_dependents()) {
            super::results::settle_map::<B>(
                &mut tx,
                instance.of,
                &mut transitions,
                &params.instance_id,
            )
            .await?;
        }
        insert_transitions::<B>(&mut tx, &transitions).await?;
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
                .push(", queue = ")
                .push_bind(&params.queue)
                .push(&format!(
                    ", visible_at_ms = {}, lease_token = NULL WHERE task_id = ",
                    B::NOW_MS
                ))
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
        B::write_effects(
            &mut tx,
            &transitions,
            &crate::Outbox::new(),
            &[],
            std::slice::from_ref(&params.queue),
        )
        .await?;
        commit::<B>(tx).await?;
        Ok(enqueued.into_iter().map(|(id, _)| id).collect())
    }

    async fn step_claim(&self, params: &StepClaimParams) -> Result<Vec<StepClaimed>> {
        if params.max == 0 || params.handlers.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        self.backend().claim_steps(params).await
    }

    async fn step_lease_extend(&self, params: &StepLeaseExtendParams) -> Result<Vec<StepId>> {
        let mut conn = self.backend().write().await?;
        let kept = hold_leases::<B>(&mut conn, &params.leases, params.lease).await?;
        Ok(params
            .leases
            .iter()
            .map(|l| l.step_id)
            .filter(|id| !kept.contains(&id.0))
            .collect())
    }

    async fn step_apply_results(&self, params: &StepApplyResultsParams) -> Result<ResultsApplied> {
        super::results::apply_results(self, params).await
    }
}
