//! Claiming steps: the statement `StepStore::step_claim` sends on PostgreSQL.

use tasker_store::{Result, StepClaimParams, StepClaimed};
use tasker_store_sql::{
    claimed_steps, duration_ms, qualified, step_token_sql, CLAIMED_INPUT_COLUMNS,
    NOT_AWAITING_RESULT, STEP_COLUMNS,
};
use tasker_types::{Entity, StepEvent, StepState};

use crate::{decode::map_err, PgBackend, NOW_MS};

impl PgBackend {
    /// Claims up to `params.max` steps of `params.queue` (see `StepStore::step_claim`): one
    /// statement (data-modifying CTEs), so one round trip and one commit. The oldest claimable
    /// steps are locked with `SKIP LOCKED`, so concurrent claimers neither wait for each other
    /// nor take the same step; then they are leased, the waiting ones started and audited,
    /// and returned with their handlers' input. Sent on the lease pool (no wait for the WAL
    /// flush): a claim lost in a server crash leaves its steps to be claimed again, and results
    /// under the lost lease are refused.
    pub(crate) async fn claim(&self, params: &StepClaimParams) -> Result<Vec<StepClaimed>> {
        let token = uuid::Uuid::new_v4().to_string();
        let rows = sqlx::query(&format!(
            "WITH picked AS ( \
               SELECT id, state = $5 AS ran_out FROM steps \
               WHERE queue = $1 AND state IN ('Enqueued', 'InProgress') AND visible_at_ms <= {now} \
                 AND ($3::text[] IS NULL OR handler = ANY($3)) \
                 AND (state = 'Enqueued' OR {NOT_AWAITING_RESULT}) \
               ORDER BY visible_at_ms, id LIMIT $2 \
               FOR UPDATE SKIP LOCKED), \
             leased AS ( \
               UPDATE steps SET state = $5, lease_token = {token_sql}, lease_holder = $11, \
                 visible_at_ms = {now} + $6, \
                 attempts = CASE WHEN picked.ran_out THEN attempts ELSE attempts + 1 END, \
                 started_at_ms = COALESCE(started_at_ms, {now}), next_attempt_at_ms = NULL \
               FROM picked WHERE steps.id = picked.id \
               RETURNING {steps}, steps.lease_token, picked.ran_out), \
             audit AS ( \
               INSERT INTO transitions (entity, task_id, step_id, from_state, to_state, event, \
                                        reason, instance_id, at_ms) \
               SELECT $7, l.task_id, l.id, $9, $5, $10, NULL, $8, {now} \
               FROM leased l WHERE NOT l.ran_out ORDER BY l.id) \
             SELECT {s}, {CLAIMED_INPUT_COLUMNS}, s.ran_out AS lease_ran_out \
             FROM leased s \
             JOIN tasks t ON t.id = s.task_id \
             LEFT JOIN step_edges e ON e.child_id = s.id \
             LEFT JOIN steps p ON p.id = e.parent_id \
             ORDER BY s.id, p.position",
            now = NOW_MS,
            token_sql = step_token_sql("$4"),
            steps = qualified("steps", STEP_COLUMNS),
            s = qualified("s", STEP_COLUMNS),
        ))
        .bind(&params.queue)
        .bind(i64::from(params.max))
        .bind(params.handlers.as_deref())
        .bind(&token)
        .bind(StepState::InProgress.as_str())
        .bind(duration_ms(params.lease))
        .bind(Entity::Step.as_str())
        .bind(&params.instance_id)
        .bind(StepState::Enqueued.as_str())
        .bind(StepEvent::Start.name())
        .bind(&params.holder)
        .fetch_all(&mut *self.acquire(&self.lease_pool).await?)
        .await
        .map_err(map_err)?;
        claimed_steps(&rows)
    }
}
