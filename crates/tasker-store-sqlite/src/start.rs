//! Starting attempts: the statements `StepStore::step_start_many` sends on SQLite.

use sqlx::{QueryBuilder, Row};
use tasker_store::{Result, StepStartManyParams, StepStarted};
use tasker_store_sql::{
    qualified, started_steps, NewTransition, INSERT_CHUNK, STARTED_INPUT_COLUMNS, STEP_COLUMNS,
};
use tasker_types::{Entity, StepEvent, StepId, StepState, TaskId};

use crate::{decode::map_err, now_ms, SqliteStore};

impl SqliteStore {
    /// Moves the `Enqueued` steps among `params.step_ids` to `InProgress`, writes their audit
    /// rows and reads their handlers' input, in one transaction on the single writer.
    pub(crate) async fn start_steps(
        &self,
        params: &StepStartManyParams,
    ) -> Result<Vec<StepStarted>> {
        let mut tx = self.begin_write().await?;
        let mut moved: Vec<(i64, i64)> = Vec::with_capacity(params.step_ids.len());
        for chunk in params.step_ids.chunks(INSERT_CHUNK) {
            let mut qb = QueryBuilder::<sqlx::Sqlite>::new(format!(
                "UPDATE steps SET state = 'InProgress', attempts = attempts + 1, \
                 started_at_ms = COALESCE(started_at_ms, {now}), next_attempt_at_ms = NULL \
                 WHERE state = 'Enqueued' AND id IN (",
                now = now_ms!()
            ));
            let mut list = qb.separated(", ");
            for id in chunk {
                list.push_bind(id.0);
            }
            qb.push(") RETURNING id, task_id");
            for row in qb.build().fetch_all(&mut *tx).await.map_err(map_err)? {
                moved.push((
                    row.try_get("id").map_err(map_err)?,
                    row.try_get("task_id").map_err(map_err)?,
                ));
            }
        }
        if moved.is_empty() {
            return Ok(Vec::new());
        }
        moved.sort_unstable();
        let transitions: Vec<NewTransition<'_>> = moved
            .iter()
            .map(|&(step, task)| NewTransition {
                entity: Entity::Step,
                task_id: TaskId(task),
                step_id: Some(StepId(step)),
                from_state: Some(StepState::Enqueued.as_str()),
                to_state: StepState::InProgress.as_str(),
                event: StepEvent::Start.name(),
                reason: None,
                instance_id: &params.instance_id,
            })
            .collect();
        Self::insert_transitions(&mut tx, &transitions).await?;
        let mut started = Vec::with_capacity(moved.len());
        for chunk in moved.chunks(INSERT_CHUNK) {
            let mut qb = QueryBuilder::<sqlx::Sqlite>::new(format!(
                "SELECT {}, {STARTED_INPUT_COLUMNS} FROM steps s \
                 JOIN tasks t ON t.id = s.task_id \
                 LEFT JOIN step_edges e ON e.child_id = s.id \
                 LEFT JOIN steps p ON p.id = e.parent_id \
                 WHERE s.id IN (",
                qualified("s", STEP_COLUMNS)
            ));
            let mut list = qb.separated(", ");
            for (id, _) in chunk {
                list.push_bind(*id);
            }
            qb.push(") ORDER BY s.id, p.position");
            let rows = qb.build().fetch_all(&mut *tx).await.map_err(map_err)?;
            started.extend(started_steps(&rows)?);
        }
        tx.commit().await.map_err(map_err)?;
        Ok(started)
    }
}
