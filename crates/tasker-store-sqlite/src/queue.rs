//! Dequeue: the one queue operation whose SQL differs between the backends.

use tasker_store::{QueueDequeueParams, Result};
use tasker_store_sql::{duration_ms, leased_messages, MESSAGE_COLUMNS};
use tasker_types::QueueMessage;

use crate::{decode::map_err, now_ms, SqliteStore};

impl SqliteStore {
    /// Leases up to `max` visible messages (see `QueueStore::queue_dequeue`).
    ///
    /// One statement on the single writer, so it cannot interleave with another consumer and
    /// needs no transaction around it. Messages that used up their deliveries come back from it
    /// too (leased, so no other consumer sees them meanwhile) and are moved to the dead letters
    /// by a second, rare transaction; should that fail, their lease expires and the next
    /// dequeue tries again.
    pub(crate) async fn dequeue_leased(
        &self,
        params: &QueueDequeueParams,
    ) -> Result<Vec<QueueMessage>> {
        self.count(1);
        let token = uuid::Uuid::new_v4().to_string();
        let rows = sqlx::query(&format!(
            "UPDATE queue_messages SET deliveries = deliveries + 1, lease_token = $1, \
             visible_at_ms = {now} + $2 \
             WHERE id IN (SELECT id FROM queue_messages \
                          WHERE queue = $3 AND visible_at_ms <= {now} \
                          ORDER BY visible_at_ms, id LIMIT $4) \
             RETURNING {MESSAGE_COLUMNS}",
            now = now_ms!()
        ))
        .bind(&token)
        .bind(duration_ms(params.visibility_timeout))
        .bind(&params.queue)
        .bind(i64::from(params.max))
        .fetch_all(&self.writer)
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
        let ids = dead.iter().map(|m| m.id.to_string()).collect::<Vec<_>>();
        // Ids are integers read back from the database, not input.
        let ids = ids.join(", ");
        let mut tx = self.begin_write().await?;
        self.count(2);
        sqlx::query(&format!(
            "INSERT INTO dead_letters (id, queue, payload, deliveries, enqueued_at_ms, dead_at_ms) \
             SELECT id, queue, payload, deliveries - 1, enqueued_at_ms, {now} \
             FROM queue_messages WHERE id IN ({ids})",
            now = now_ms!()
        ))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(&format!("DELETE FROM queue_messages WHERE id IN ({ids})"))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(())
    }
}
