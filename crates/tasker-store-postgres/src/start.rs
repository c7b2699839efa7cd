//! Starting attempts: the statement `StepStore::step_start_many` sends on PostgreSQL.

use tasker_store::{Result, StepStartManyParams, StepStarted};
use tasker_store_sql::{qualified, started_steps, STARTED_INPUT_COLUMNS, STEP_COLUMNS};
use tasker_types::{Entity, StepEvent, StepState};

use crate::{decode::map_err, PgBackend, NOW_MS};

impl PgBackend {
    /// Moves the `Enqueued` steps among `params.step_ids` to `InProgress`, writes their audit
    /// rows and reads their handlers' input: one statement (data-modifying CTEs), so one round
    /// trip and one commit.
    pub(crate) async fn start(&self, params: &StepStartManyParams) -> Result<Vec<StepStarted>> {
        let ids: Vec<i64> = params.step_ids.iter().map(|id| id.0).collect();
        let rows = sqlx::query(&format!(
            "WITH started AS ( \
               UPDATE steps SET state = $3, attempts = attempts + 1, \
               started_at_ms = COALESCE(started_at_ms, {now}), next_attempt_at_ms = NULL \
               WHERE state = $2 AND id = ANY($1) RETURNING {STEP_COLUMNS}), \
             audit AS ( \
               INSERT INTO transitions (entity, task_id, step_id, from_state, to_state, event, \
                                        reason, instance_id, at_ms) \
               SELECT $4, task_id, id, $2, $3, $5, NULL, $6, {now} FROM started ORDER BY id) \
             SELECT {}, {STARTED_INPUT_COLUMNS} FROM started s \
             JOIN tasks t ON t.id = s.task_id \
             LEFT JOIN step_edges e ON e.child_id = s.id \
             LEFT JOIN steps p ON p.id = e.parent_id \
             ORDER BY s.id, p.position",
            qualified("s", STEP_COLUMNS),
            now = NOW_MS
        ))
        .bind(&ids)
        .bind(StepState::Enqueued.as_str())
        .bind(StepState::InProgress.as_str())
        .bind(Entity::Step.as_str())
        .bind(StepEvent::Start.name())
        .bind(&params.instance_id)
        .fetch_all(&self.lease_pool)
        .await
        .map_err(map_err)?;
        started_steps(&rows)
    }
}
