//! Claiming steps: the statements `StepStore::step_claim` sends on SQLite.

use tasker_store::{Result, StepClaimParams, StepClaimed};
use tasker_store_sql::{
    claimed_input, claimed_steps, commit, duration_ms, insert_transitions, step_token_sql, Backend,
    NewTransition, RowExt, Sql,
};
use tasker_types::{Entity, StepEvent, StepId, StepState, TaskId};

use crate::{SqliteBackend, NOW_MS};

/// A step a claim picked, as it was before the claim.
struct Picked {
    id: i64,
    task_id: i64,
    /// It was `InProgress`: its lease ran out.
    expired: bool,
    /// ...on its last attempt.
    exhausted: bool,
}

impl SqliteBackend {
    /// Claims up to `params.max` steps of `params.queue` (see `StepStore::step_claim`) in one
    /// transaction on the single writer, so no other claim interleaves: pick the oldest
    /// claimable steps, lease and start them in one `UPDATE`, write their audit rows, read
    /// their handlers' input.
    pub(crate) async fn claim(&self, params: &StepClaimParams) -> Result<Vec<StepClaimed>> {
        let mut tx = self.begin_write().await?;
        // The states are literals, exactly `steps_queue_idx`'s predicate.
        let mut pick = Sql::new(format!(
            "SELECT id, task_id, state = 'InProgress' AS expired, \
             state = 'InProgress' AND attempts >= max_attempts AS exhausted FROM steps \
             WHERE queue = $1 AND state IN ('Enqueued', 'InProgress') AND visible_at_ms <= {NOW_MS}"
        ))
        .bind(&params.queue);
        if let Some(handlers) = &params.handlers {
            pick.push(" AND handler IN (")
                .push_list(handlers.iter().map(String::as_str))
                .push(")");
        }
        pick.push(" ORDER BY visible_at_ms, id LIMIT ")
            .push_bind(i64::from(params.max));
        let picked = Self::fetch_all(&mut tx, &pick)
            .await?
            .iter()
            .map(|r| {
                Ok(Picked {
                    id: r.int("id")?,
                    task_id: r.int("task_id")?,
                    expired: r.int("expired")? != 0,
                    exhausted: r.int("exhausted")? != 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if picked.is_empty() {
            return Ok(Vec::new());
        }

        let token = uuid::Uuid::new_v4().to_string();
        let mut lease = Sql::new("UPDATE steps SET state = 'InProgress', lease_token = ");
        let token = lease.placeholder(token.as_str());
        lease
            .push(&step_token_sql(&token))
            .push(&format!(", visible_at_ms = {NOW_MS} + "))
            .push_bind(duration_ms(params.lease))
            .push(&format!(
                ", attempts = CASE WHEN state = 'InProgress' AND attempts >= max_attempts \
                 THEN attempts ELSE attempts + 1 END, \
                 started_at_ms = COALESCE(started_at_ms, {NOW_MS}), next_attempt_at_ms = NULL \
                 WHERE id IN ("
            ))
            .push_list(picked.iter().map(|p| p.id))
            .push(")");
        Self::execute(&mut tx, &lease).await?;

        // Audit rows in step order: a taken-back step's `lease_expired` before its `start`.
        let expire = (StepState::InProgress, StepEvent::LeaseExpired);
        let start = (StepState::Enqueued, StepEvent::Start);
        let mut transitions: Vec<NewTransition<'_>> = Vec::with_capacity(picked.len());
        let mut ordered: Vec<&Picked> = picked.iter().filter(|p| !p.exhausted).collect();
        ordered.sort_unstable_by_key(|p| p.id);
        for p in ordered {
            let moves = if p.expired {
                &[expire, start][..]
            } else {
                &[start][..]
            };
            for &(from, event) in moves {
                transitions.push(NewTransition {
                    entity: Entity::Step,
                    task_id: TaskId(p.task_id),
                    step_id: Some(StepId(p.id)),
                    from_state: Some(from.as_str()),
                    to_state: from.transition(event)?.as_str(),
                    event: event.name(),
                    reason: None,
                    instance_id: &params.instance_id,
                });
            }
        }
        insert_transitions::<Self>(&mut tx, &transitions).await?;

        let ids: Vec<i64> = picked.iter().map(|p| p.id).collect();
        let exhausted: Vec<i64> = picked
            .iter()
            .filter(|p| p.exhausted)
            .map(|p| p.id)
            .collect();
        let read = claimed_input(&ids, &exhausted);
        let claimed = claimed_steps(&Self::fetch_all(&mut tx, &read).await?)?;
        commit::<Self>(tx).await?;
        Ok(claimed)
    }
}
