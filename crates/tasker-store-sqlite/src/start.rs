//! Starting attempts: the statements `StepStore::step_start_many` sends on SQLite.

use tasker_store::{Result, StepStartManyParams, StepStarted};
use tasker_store_sql::{
    commit, insert_transitions, qualified, started_steps, Backend, NewTransition, RowExt, Sql,
    INSERT_CHUNK, STARTED_INPUT_COLUMNS, STEP_COLUMNS,
};
use tasker_types::{Entity, StepEvent, StepId, StepState, TaskId};

use crate::{SqliteBackend, NOW_MS};

impl SqliteBackend {
    /// Moves the `Enqueued` steps among `params.step_ids` to `InProgress`, writes their audit
    /// rows and reads their handlers' input, in one transaction on the single writer.
    pub(crate) async fn start(&self, params: &StepStartManyParams) -> Result<Vec<StepStarted>> {
        let mut tx = self.begin_write().await?;
        let mut moved: Vec<(i64, i64)> = Vec::with_capacity(params.step_ids.len());
        for chunk in params.step_ids.chunks(INSERT_CHUNK) {
            let mut sql = Sql::new(format!(
                "UPDATE steps SET state = 'InProgress', attempts = attempts + 1, \
                 started_at_ms = COALESCE(started_at_ms, {NOW_MS}), next_attempt_at_ms = NULL \
                 WHERE state = 'Enqueued' AND id IN ("
            ));
            sql.push_list(chunk.iter().map(|id| id.0))
                .push(") RETURNING id, task_id");
            for row in Self::fetch_all(&mut tx, &sql).await? {
                moved.push((row.int("id")?, row.int("task_id")?));
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
        insert_transitions::<Self>(&mut tx, &transitions).await?;
        let mut started = Vec::with_capacity(moved.len());
        for chunk in moved.chunks(INSERT_CHUNK) {
            let mut sql = Sql::new(format!(
                "SELECT {}, {STARTED_INPUT_COLUMNS} FROM steps s \
                 JOIN tasks t ON t.id = s.task_id \
                 LEFT JOIN step_edges e ON e.child_id = s.id \
                 LEFT JOIN steps p ON p.id = e.parent_id \
                 WHERE s.id IN (",
                qualified("s", STEP_COLUMNS)
            ));
            sql.push_list(chunk.iter().map(|&(id, _)| id))
                .push(") ORDER BY s.id, p.position");
            started.extend(started_steps(&Self::fetch_all(&mut tx, &sql).await?)?);
        }
        commit::<Self>(tx).await?;
        Ok(started)
    }
}
