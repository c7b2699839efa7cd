//! Dequeue: the one queue operation whose SQL differs between the backends.

use tasker_store::{QueueDequeueParams, Result};
use tasker_store_sql::{duration_ms, message, MESSAGE_COLUMNS};
use tasker_types::QueueMessage;

use crate::{decode::map_err, now_ms, PgStore};

impl PgStore {
    /// Leases up to `max` visible messages (see `QueueStore::queue_dequeue`).
    pub(crate) async fn dequeue_leased(
        &self,
        params: &QueueDequeueParams,
    ) -> Result<Vec<QueueMessage>> {
        // Dead-letter visible messages that used up their deliveries. Such messages are rare;
        // SKIP LOCKED leaves rows another consumer is moving alone.
        self.count(1);
        sqlx::query(&format!(
            "WITH dead AS ( \
               DELETE FROM queue_messages WHERE id IN ( \
                 SELECT id FROM queue_messages \
                 WHERE queue = $1 AND visible_at_ms <= {now} AND deliveries >= $2 \
                 FOR UPDATE SKIP LOCKED) \
               RETURNING id, queue, payload, deliveries, enqueued_at_ms) \
             INSERT INTO dead_letters (id, queue, payload, deliveries, enqueued_at_ms, dead_at_ms) \
             SELECT id, queue, payload, deliveries, enqueued_at_ms, {now} FROM dead",
            now = now_ms!()
        ))
        .bind(&params.queue)
        .bind(i64::from(params.max_deliveries))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        // Concurrent consumers skip each other's locked rows, so no delivery is handed out twice.
        self.count(1);
        let token = uuid::Uuid::new_v4().to_string();
        let rows = sqlx::query(&format!(
            "UPDATE queue_messages SET deliveries = deliveries + 1, lease_token = $1, \
             visible_at_ms = {now} + $2 \
             WHERE id IN (SELECT id FROM queue_messages \
                          WHERE queue = $3 AND visible_at_ms <= {now} \
                          ORDER BY visible_at_ms, id LIMIT $4 \
                          FOR UPDATE SKIP LOCKED) \
             RETURNING {MESSAGE_COLUMNS}",
            now = now_ms!()
        ))
        .bind(&token)
        .bind(duration_ms(params.visibility_timeout))
        .bind(&params.queue)
        .bind(i64::from(params.max))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let mut messages = rows.iter().map(message).collect::<Result<Vec<_>>>()?;
        messages.sort_unstable_by_key(|m| m.id);
        Ok(messages)
    }
}
