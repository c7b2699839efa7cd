//! Dequeue: the one queue operation whose SQL differs between the backends.

use tasker_store::{QueueDequeueParams, Result};
use tasker_store_sql::{duration_ms, leased_messages, MESSAGE_COLUMNS};
use tasker_types::QueueMessage;

use crate::{decode::map_err, PgBackend, NOW_MS};

impl PgBackend {
    /// Leases up to `max` visible messages (see `QueueStore::queue_dequeue`).
    ///
    /// One statement. Concurrent consumers skip each other's locked rows, so no delivery is
    /// handed out twice. Messages that used up their deliveries come back from it too (leased,
    /// so no other consumer sees them meanwhile) and are moved to the dead letters by a second,
    /// rare statement; should that fail, their lease expires and the next dequeue tries again.
    /// Filtering them out in the first statement instead would make every dequeue scan the
    /// whole visible backlog for them (EXPLAIN showed a sequential scan).
    pub(crate) async fn dequeue(&self, params: &QueueDequeueParams) -> Result<Vec<QueueMessage>> {
        let token = uuid::Uuid::new_v4().to_string();
        let rows = sqlx::query(&format!(
            "UPDATE queue_messages SET deliveries = deliveries + 1, lease_token = $1, \
             visible_at_ms = {now} + $2, lease_holder = $5 \
             WHERE id IN (SELECT id FROM queue_messages \
                          WHERE queue = $3 AND visible_at_ms <= {now} \
                          ORDER BY visible_at_ms, id LIMIT $4 \
                          FOR UPDATE SKIP LOCKED) \
             RETURNING {MESSAGE_COLUMNS}",
            now = NOW_MS
        ))
        .bind(&token)
        .bind(duration_ms(params.visibility_timeout))
        .bind(&params.queue)
        .bind(i64::from(params.max))
        .bind(&params.holder)
        .fetch_all(&mut *self.acquire(&self.lease_pool).await?)
        .await
        .map_err(map_err)?;
        let (live, dead) = leased_messages(&rows, params.max_deliveries)?;
        if !dead.is_empty() {
            self.bury(&dead).await?;
        }
        Ok(live)
    }

    /// Moves leased messages that used up their deliveries to the dead letters, recording the
    /// deliveries they had (the lease that found them was not one).
    async fn bury(&self, dead: &[QueueMessage]) -> Result<()> {
        let ids: Vec<i64> = dead.iter().map(|m| m.id).collect();
        sqlx::query(&format!(
            "WITH dead AS ( \
               DELETE FROM queue_messages WHERE id = ANY($1) \
               RETURNING id, queue, payload, deliveries, enqueued_at_ms) \
             INSERT INTO dead_letters (id, queue, payload, deliveries, enqueued_at_ms, dead_at_ms) \
             SELECT id, queue, payload, deliveries - 1, enqueued_at_ms, {now} FROM dead",
            now = NOW_MS
        ))
        .bind(&ids)
        .execute(&mut *self.acquire(&self.lease_pool).await?)
        .await
        .map_err(map_err)?;
        Ok(())
    }
}
