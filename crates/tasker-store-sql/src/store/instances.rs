//! The cluster's instances: registration, heartbeats, the leases each holds.

use async_trait::async_trait;
use tasker_store::{
    InstanceHeartbeatParams, InstanceRegisterParams, InstanceStore, Result, StoreError,
};
use tasker_types::{InstanceRow, InstanceState};

use super::{Backend, Sql, SqlStore};
use crate::{corrupt, RowExt};

/// The columns [`instance`] reads, with the leases held and the clock, over `instances i`.
fn columns<B: Backend>() -> String {
    format!(
        "i.id, i.host, i.pid, i.version, i.state, i.started_at_ms, i.heartbeat_at_ms, \
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
                "INSERT INTO instances (id, host, pid, version, state, started_at_ms, \
                 heartbeat_at_ms) VALUES ($1, $2, $3, $4, $5, {now}, {now}) \
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, \
                 heartbeat_at_ms = excluded.heartbeat_at_ms",
                now = B::NOW_MS
            ))
            .bind(params.id.as_str())
            .bind(params.host.as_str())
            .bind(i64::from(params.pid))
            .bind(params.version.as_str())
            .bind(InstanceState::Running.as_str()),
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
        // `state IN (…)` is `steps_queue_idx`'s predicate, so only the waiting and running
        // steps are read, not the finished ones.
        B::execute(
            &mut *self.backend().write().await?,
            &Sql::new(format!(
                "UPDATE steps SET visible_at_ms = {now} \
                 WHERE state IN ('Enqueued', 'InProgress') AND state = 'InProgress' \
                   AND lease_holder = $1 AND visible_at_ms > {now}",
                now = B::NOW_MS
            ))
            .bind(holder),
        )
        .await
    }
}
