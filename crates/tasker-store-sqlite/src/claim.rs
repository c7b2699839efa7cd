//! Claiming steps: the statements `StepStore::step_claim` sends on SQLite.

use tasker_store::{Result, StepClaimParams, StepClaimed};
use tasker_store_sql::{
    claimed_input, claimed_steps, commit, duration_ms, insert_transitions, step_token_sql, Backend,
    NewTransition, RowExt, Sql, NOT_AWAITING_RESULT,
};
use tasker_types::{Entity, StepEvent, StepId, StepState, TaskId};

use crate::{SqliteBackend, NOW_MS};

/// A step a claim picked, as it was before the claim.
struct Picked {
    id: i64,
    task_id: i64,
    /// It was `InProgress`: its lease ran out.
    ran_out: bool,
}

impl SqliteBackend {
    /// Claims up to `params.max` steps of `params.queue` (see `StepStore::step_claim`) in one
    /// transaction on the single writer, so no other claim interleaves: pick the oldest
    /// claimable steps, lease them (starting the waiting ones) in one `UPDATE`, write the
    /// starts' audit rows, read their handlers' input.
    pub(crate) async fn claim(&self, params: &StepClaimParams) -> Result<Vec<StepClaimed>> {
        let mut tx = self.begin_write().await?;
        // The states are literals, exactly `steps_queue_idx`'s predicate.
        let mut pick = Sql::new(format!(
            "SELECT id, task_id, state = 'InProgress' AS ran_out FROM steps \
             WHERE queue = $1 AND state IN ('Enqueued', 'InProgress') \
               AND visible_at_ms <= {NOW_MS} AND (state = 'Enqueued' OR {NOT_AWAITING_RESULT})"
        ))
        .bind(&params.queue);
        if let Some(handlers) = &params.handlers {
            pick.push(" AND handler IN (")
                .push_list(handlers.iter().map(String::as_str))
                .push(")");
        }
        pick.push(" ORDER BY visible_at_ms, id LIMIT ")
            .push_bind(i64::from(params.max));
        let mut picked = Self::fetch_all(&mut tx, &pick)
            .await?
            .iter()
            .map(|r| {
                Ok(Picked {
                    id: r.int("id")?,
                    task_id: r.int("task_id")?,
                    ran_out: r.int("ran_out")? != 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if picked.is_empty() {
            return Ok(Vec::new());
        }
        picked.sort_unstable_by_key(|p| p.id);

        let token = uuid::Uuid::new_v4().to_string();
        let mut lease = Sql::new("UPDATE steps SET state = 'InProgress', lease_token = ");
        let token = lease.placeholder(token.as_str());
        lease
            .push(&step_token_sql(&token))
            .push(", lease_holder = ")
            .push_bind(params.holder.as_str())
            .push(&format!(", visible_at_ms = {NOW_MS} + "))
            .push_bind(duration_ms(params.lease))
            .push(&format!(
                ", attempts = CASE WHEN state = 'InProgress' THEN attempts ELSE attempts + 1 END, \
                 started_at_ms = COALESCE(started_at_ms, {NOW_MS}), next_attempt_at_ms = NULL \
                 WHERE id IN ("
            ))
            .push_list(picked.iter().map(|p| p.id))
            .push(")");
        Self::execute(&mut tx, &lease).await?;

        // A started attempt's audit row, in step order; a step whose lease ran out moves later,
        // by the failure its claimer reports.
        let from = StepState::Enqueued;
        let to = from.transition(StepEvent::Start)?;
        let transitions: Vec<NewTransition<'_>> = picked
            .iter()
            .filter(|p| !p.ran_out)
            .map(|p| NewTransition {
                entity: Entity::Step,
                task_id: TaskId(p.task_id),
                step_id: Some(StepId(p.id)),
                from_state: Some(from.as_str()),
                to_state: to.as_str(),
                event: StepEvent::Start.name(),
                reason: None,
                instance_id: &params.instance_id,
            })
            .collect();
        insert_transitions::<Self>(&mut tx, &transitions).await?;

        let ids: Vec<i64> = picked.iter().map(|p| p.id).collect();
        let ran_out: Vec<i64> = picked.iter().filter(|p| p.ran_out).map(|p| p.id).collect();
        let claimed =
            claimed_steps(&Self::fetch_all(&mut tx, &claimed_input(&ids, &ran_out)).await?)?;
        commit::<Self>(tx).await?;
        Ok(claimed)
    }
}
