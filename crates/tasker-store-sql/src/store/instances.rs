//! The cluster's instances: registration, heartbeats, the leases each holds, the leadership,
//! and the leader-only changes (failing instances over, retention).

use std::time::Duration;

use async_trait::async_trait;
use tasker_store::{
    InstanceHeartbeatParams, InstanceRegisterParams, InstanceStore, LeaderLease, Result,
    RetentionSweepParams, RetentionSwept, StoreError,
};
use tasker_types::{is_dead, InstanceRow, InstanceState, TaskState};

use super::{commit, fetch_one, fetch_optional, Backend, Conn, Sql, SqlStore};
use crate::{corrupt, duration_ms, RowExt};

/// The columns [`instance`] reads, with the leases held and the clock, over `instances i`.
fn columns<B: Backend>() -> String {
    format!(
        "i.id, i.host, i.pid, i.version, i.connections, i.state, i.started_at_ms, \
         i.heartbeat_at_ms, \
         {now} AS read_at_ms, \
         (SELECT COUNT(*) FROM steps s WHERE s.state IN ('Enqueued', 'InProgress') \
            AND s.lease_holder = i.id AND s.visible_at_ms > {now}) AS leases",
        now = B::NOW_MS
    )
}

fn instance(row: &impl RowExt) -> Result<InstanceRow> {
    Ok(InstanceRow {
        id: row.text("id")?,
        host: row.text("host")?,
        pid: u32::try_from(row.int("pid")?).map_err(|e| corrupt("instance pid", e))?,
        version: row.text("version")?,
        connections: u32::try_from(row.int("connections")?)
            .map_err(|e| corrupt("instance connections", e))?,
        state: row
            .text("state")?
            .parse::<InstanceState>()
            .map_err(|e| corrupt("instance state", e))?,
        started_at_ms: row.int("started_at_ms")?,
        heartbeat_at_ms: row.int("heartbeat_at_ms")?,
        read_at_ms: row.int("read_at_ms")?,
        leases: u64::try_from(row.int("leases")?).map_err(|e| corrupt("instance leases", e))?,
    })
}

#[async_trait]
impl<B: Backend> InstanceStore for SqlStore<B> {
    async fn instance_register(&self, params: &InstanceRegisterParams) -> Result<InstanceRow> {
        let mut conn = self.backend().write().await?;
        B::execute(
            &mut conn,
            &Sql::new(format!(
                "INSERT INTO instances (id, host, pid, version, connections, state, \
                 started_at_ms, heartbeat_at_ms) VALUES ($1, $2, $3, $4, $6, $5, {now}, {now}) \
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, \
                 heartbeat_at_ms = excluded.heartbeat_at_ms",
                now = B::NOW_MS
            ))
            .bind(params.id.as_str())
            .bind(params.host.as_str())
            .bind(i64::from(params.pid))
            .bind(params.version.as_str())
            .bind(InstanceState::Running.as_str())
            .bind(i64::from(params.connections)),
        )
        .await?;
        let rows = B::fetch_all(
            &mut conn,
            &Sql::new(format!(
                "SELECT {} FROM instances i WHERE i.id = $1",
                columns::<B>()
            ))
            .bind(params.id.as_str()),
        )
        .await?;
        rows.first()
            .map(instance)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound {
                entity: "instance",
                id: params.id.clone(),
            })
    }

    async fn instance_heartbeat(&self, params: &InstanceHeartbeatParams) -> Result<bool> {
        let done = B::execute(
            &mut *self.backend().write().await?,
            &Sql::new(format!(
                "UPDATE instances SET heartbeat_at_ms = {}, state = $1 WHERE id = $2",
                B::NOW_MS
            ))
            .bind(params.state.as_str())
            .bind(params.id.as_str()),
        )
        .await?;
        Ok(done > 0)
    }

    async fn instance_list(&self) -> Result<Vec<InstanceRow>> {
        let rows = B::fetch_all(
            &mut *self.backend().read().await?,
            &Sql::new(format!(
                "SELECT {} FROM instances i ORDER BY i.started_at_ms, i.id",
                columns::<B>()
            )),
        )
        .await?;
        rows.iter().map(instance).collect()
    }

    async fn instance_deregister(&self, id: &str) -> Result<()> {
        B::execute(
            &mut *self.backend().write().await?,
            &Sql::new("DELETE FROM instances WHERE id = $1").bind(id),
        )
        .await?;
        Ok(())
    }

    async fn instance_release_leases(&self, holder: &str) -> Result<u64> {
        release_leases::<B>(&mut *self.backend().write().await?, holder).await
    }

    async fn leader_acquire(&self, holder: &str, ttl: Duration) -> Result<Option<i64>> {
        let rows = B::fetch_all(
            &mut *self.backend().write().await?,
            &Sql::new(format!(
                "UPDATE leadership SET \
                   epoch = CASE WHEN holder = $1 AND expires_at_ms > {now} THEN epoch \
                           ELSE epoch + 1 END, \
                   holder = $1, expires_at_ms = {now} + $2 \
                 WHERE id = 1 AND (holder = $1 OR holder IS NULL OR expires_at_ms <= {now}) \
                 RETURNING epoch",
                now = B::NOW_MS
            ))
            .bind(holder)
            .bind(duration_ms(ttl)),
        )
        .await?;
        rows.first().map(|r| r.int("epoch")).transpose()
    }

    async fn leader_release(&self, holder: &str) -> Result<()> {
        B::execute(
            &mut *self.backend().write().await?,
            &Sql::new("UPDATE leadership SET expires_at_ms = 0 WHERE id = 1 AND holder = $1")
                .bind(holder),
        )
        .await?;
        Ok(())
    }

    async fn leader_get(&self) -> Result<LeaderLease> {
        let row = fetch_one::<B>(
            &mut *self.backend().read().await?,
            &Sql::new(format!(
                "SELECT holder, epoch, expires_at_ms, {} AS read_at_ms FROM leadership \
                 WHERE id = 1",
                B::NOW_MS
            )),
        )
        .await?;
        Ok(LeaderLease {
            holder: row.opt_text("holder")?,
            epoch: row.int("epoch")?,
            expires_at_ms: row.int("expires_at_ms")?,
            read_at_ms: row.int("read_at_ms")?,
        })
    }

    async fn instance_fail_over(
        &self,
        leader: &str,
        epoch: i64,
        dead_after: Duration,
    ) -> Result<Vec<(String, u64)>> {
        // Every instance's heartbeat, read with the clock, judged by the one rule of death.
        // Most heartbeats find nobody dead: a read, without taking the (SQLite: single) writer.
        let dead: Vec<(String, i64)> = B::fetch_all(
            &mut *self.backend().read().await?,
            &Sql::new(format!(
                "SELECT id, heartbeat_at_ms, {} AS read_at_ms FROM instances WHERE id <> $1",
                B::NOW_MS
            ))
            .bind(leader),
        )
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.text("id")?,
                r.int("heartbeat_at_ms")?,
                r.int("read_at_ms")?,
            ))
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .filter(|&(_, heartbeat, read)| is_dead(heartbeat, read, dead_after))
        .map(|(id, heartbeat, _)| (id, heartbeat))
        .collect();
        if dead.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.backend().begin_write().await?;
        if !leads::<B>(&mut tx, leader, epoch).await? {
            return Ok(Vec::new());
        }
        let mut failed_over = Vec::with_capacity(dead.len());
        for (id, heartbeat) in dead {
            // Applied only to the heartbeat judged: an instance that beat since lives on.
            let gone = B::execute(
                &mut tx,
                &Sql::new("DELETE FROM instances WHERE id = $1 AND heartbeat_at_ms = $2")
                    .bind(id.as_str())
                    .bind(heartbeat),
            )
            .await?;
            if gone == 1 {
                let released = release_leases::<B>(&mut tx, &id).await?;
                failed_over.push((id, released));
            }
        }
        commit::<B>(tx).await?;
        Ok(failed_over)
    }

    async fn retention_sweep(&self, params: &RetentionSweepParams) -> Result<RetentionSwept> {
        let mut swept = RetentionSwept::default();
        let mut tx = self.backend().begin_write().await?;
        if !leads::<B>(&mut tx, &params.leader, params.epoch).await? {
            return Ok(swept);
        }
        let now = B::NOW_MS;
        // Through `tasks_finished_idx`: the finished tasks past the shorter of the two
        // retentions, oldest first, each then held to its own state's.
        let mut expired = Vec::new();
        if let Some(complete) = params.complete {
            expired.push((
                "state IN ('Complete', 'Cancelled', 'ResolvedManually')",
                duration_ms(complete),
            ));
        }
        if let Some(error) = params.error {
            expired.push(("state = 'Error'", duration_ms(error)));
        }
        if let Some(shortest) = expired.iter().map(|(_, ms)| *ms).min() {
            let each: Vec<String> = expired
                .iter()
                .map(|(states, ms)| format!("({states} AND finished_at_ms < {now} - {ms})"))
                .collect();
            let ids = B::fetch_all(
                &mut tx,
                &Sql::new(format!(
                    "SELECT id FROM tasks WHERE finished_at_ms < {now} - $1 AND ({}) \
                     ORDER BY finished_at_ms, id LIMIT $2",
                    each.join(" OR ")
                ))
                .bind(shortest)
                .bind(i64::from(params.batch)),
            )
            .await?
            .iter()
            .map(|r| r.int("id"))
            .collect::<Result<Vec<_>>>()?;
            if !ids.is_empty() {
                // Children first: steps keep a foreign key to their task.
                for statement in [
                    "DELETE FROM transitions WHERE task_id IN (",
                    "DELETE FROM step_edges WHERE task_id IN (",
                    "DELETE FROM steps WHERE task_id IN (",
                    "DELETE FROM tasks WHERE id IN (",
                ] {
                    let mut sql = Sql::new(statement);
                    sql.push_list(ids.iter().copied()).push(")");
                    let deleted = B::execute(&mut tx, &sql).await?;
                    if statement.starts_with("DELETE FROM tasks") {
                        swept.tasks = deleted;
                    }
                }
            }
        }
        if let Some(dead_letters) = params.dead_letters {
            swept.dead_letters = B::execute(
                &mut tx,
                &Sql::new(format!(
                    "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters \
                     WHERE dead_at_ms < {now} - $1 ORDER BY id LIMIT $2)"
                ))
                .bind(duration_ms(dead_letters))
                .bind(i64::from(params.batch)),
            )
            .await?;
        }
        commit::<B>(tx).await?;
        Ok(swept)
    }
}

/// Ends the leases `holder` holds on running steps, on message deliveries and on tasks (claims)
/// now: `InstanceStore::instance_release_leases`, and a dead instance's part of
/// `instance_fail_over`. Returns how many.
async fn release_leases<B: Backend>(conn: &mut Conn<B>, holder: &str) -> Result<u64> {
    // Only an unfinished task can be claimed again, so only those are read, through
    // `tasks_state_idx`; the states come from the task machine.
    let unfinished = TaskState::ALL
        .iter()
        .filter(|s| !s.is_final())
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let claims = B::execute(
        conn,
        &Sql::new(format!(
            "UPDATE tasks SET claimed_by = NULL, claim_expires_at_ms = NULL, \
               claim_instance = NULL \
             WHERE state IN ({unfinished}) AND claim_instance = $1"
        ))
        .bind(holder),
    )
    .await?;
    // A delivery ended this way still counts: a message that kills whoever takes it is
    // dead-lettered after its deliveries like any other. Nacked messages (no lease token) keep
    // their delay. No index: this runs when an instance leaves or dies, and the table holds
    // what waits to be processed, not history.
    let messages = B::execute(
        conn,
        &Sql::new(format!(
            "UPDATE queue_messages SET visible_at_ms = {now}, lease_token = NULL \
             WHERE lease_holder = $1 AND lease_token IS NOT NULL AND visible_at_ms > {now}",
            now = B::NOW_MS
        ))
        .bind(holder),
    )
    .await?;
    // `state IN (…)` is `steps_queue_idx`'s predicate, so only the waiting and running steps
    // are read, not the finished ones.
    let steps = B::execute(
        conn,
        &Sql::new(format!(
            "UPDATE steps SET visible_at_ms = {now} \
             WHERE state IN ('Enqueued', 'InProgress') AND state = 'InProgress' \
               AND lease_holder = $1 AND visible_at_ms > {now}",
            now = B::NOW_MS
        ))
        .bind(holder),
    )
    .await?;
    Ok(steps + messages + claims)
}

/// Whether `leader` holds the leadership in `epoch`, unexpired: the guard of every
/// leader-only change, read in its transaction.
async fn leads<B: Backend>(conn: &mut Conn<B>, leader: &str, epoch: i64) -> Result<bool> {
    Ok(fetch_optional::<B>(
        conn,
        &Sql::new(format!(
            "SELECT epoch FROM leadership \
             WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at_ms > {}",
            B::NOW_MS
        ))
        .bind(leader)
        .bind(epoch),
    )
    .await?
    .is_some())
}
