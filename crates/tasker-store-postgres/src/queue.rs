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
        // One statement: the first two parts move visible messages that used up their
        // deliveries to the dead letters (rare), the last leases the others. Concurrent
        // consumers skip each other's locked rows, so no delivery is handed out twice.
        self.count(1);
        let token = uuid::Uuid::new_v4().to_string();
        let rows = sqlx::query(&format!(
            "WITH dead AS ( \
               DELETE FROM queue_messages WHERE id IN ( \
                 SELECT id FROM queue_messages \
                 WHERE queue = $3 AND visible_at_ms <= {now} AND deliveries >= $5 \
                 FOR UPDATE SKIP LOCKED) \
               RETURNING id, queue, payload, deliveries, enqueued_at_ms), \
             buried AS ( \
               INSERT INTO dead_letters (id, queue, payload, deliveries, enqueued_at_ms, dead_at_ms) \
               SELECT id, queue, payload, deliveries, enqueued_at_ms, {now} FROM dead) \
             UPDATE queue_messages SET deliveries = deliveries + 1, lease_token = $1, \
             visible_at_ms = {now} + $2 \
             WHERE id IN (SELECT id FROM queue_messages \
                          WHERE queue = $3 AND visible_at_ms <= {now} AND deliveries < $5 \
                          ORDER BY visible_at_ms, id LIMIT $4 \
                          FOR UPDATE SKIP LOCKED) \
             RETURNING {MESSAGE_COLUMNS}",
            now = now_ms!()
        ))
        .bind(&token)
        .bind(duration_ms(params.visibility_timeout))
        .bind(&params.queue)
        .bind(i64::from(params.max))
        .bind(i64::from(params.max_deliveries))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let mut messages = rows.iter().map(message).collect::<Result<Vec<_>>>()?;
        messages.sort_unstable_by_key(|m| m.id);
        Ok(messages)
    }
}
