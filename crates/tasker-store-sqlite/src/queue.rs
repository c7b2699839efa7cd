//! Dequeue: the one queue operation whose SQL differs between the backends.

use tasker_store::{QueueDequeueParams, Result};
use tasker_store_sql::{duration_ms, message, MESSAGE_COLUMNS};
use tasker_types::QueueMessage;

use crate::{decode::map_err, now_ms, SqliteStore};

impl SqliteStore {
    /// Leases up to `max` visible messages (see `QueueStore::queue_dequeue`).
    pub(crate) async fn dequeue_leased(
        &self,
        params: &QueueDequeueParams,
    ) -> Result<Vec<QueueMessage>> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)?;
        let max_deliveries = i64::from(params.max_deliveries);
        // Dead-letter visible messages that used up their deliveries. Such messages are rare,
        // and `queue_messages_visible_idx` bounds the scan to the visible part of the queue.
        self.count(1);
        let dead = sqlx::query(&format!(
            "INSERT INTO dead_letters (id, queue, payload, deliveries, enqueued_at_ms, dead_at_ms) \
             SELECT id, queue, payload, deliveries, enqueued_at_ms, {now} FROM queue_messages \
             WHERE queue = $1 AND visible_at_ms <= {now} AND deliveries >= $2",
            now = now_ms!()
        ))
        .bind(&params.queue)
        .bind(max_deliveries)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if dead.rows_affected() > 0 {
            self.count(1);
            sqlx::query(&format!(
                "DELETE FROM queue_messages \
                 WHERE queue = $1 AND visible_at_ms <= {now} AND deliveries >= $2",
                now = now_ms!()
            ))
            .bind(&params.queue)
            .bind(max_deliveries)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        // One writer at a time: this single statement cannot interleave with another consumer.
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
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        let mut messages = rows.iter().map(message).collect::<Result<Vec<_>>>()?;
        messages.sort_unstable_by_key(|m| m.id);
        Ok(messages)
    }
}
