//! Durable queues: enqueue, lease with a visibility timeout, ack, nack, dead letters.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{types::Json, PgConnection, Postgres, QueryBuilder, Row};
use tasker_store::{
    QueueAckParams, QueueDepth, QueueDequeueParams, QueueEnqueueManyParams, QueueNackParams,
    QueueStore, Result, StoreError,
};
use tasker_store_sql::{dead_letter, duration_ms, message, INSERT_CHUNK, MESSAGE_COLUMNS};
use tasker_types::{DeadLetter, QueueMessage};

use crate::{decode::map_err, now_ms, PgStore};

impl PgStore {
    /// Inserts messages in multi-row statements. Returns their ids and the statements sent.
    pub(crate) async fn insert_messages(
        conn: &mut PgConnection,
        queue: &str,
        payloads: &[serde_json::Value],
        delay: Duration,
    ) -> Result<(Vec<i64>, u64)> {
        let delay = duration_ms(delay);
        let mut ids = Vec::with_capacity(payloads.len());
        let mut statements = 0;
        for chunk in payloads.chunks(INSERT_CHUNK) {
            let mut qb = QueryBuilder::<Postgres>::new(
                "INSERT INTO queue_messages (queue, payload, enqueued_at_ms, visible_at_ms) ",
            );
            qb.push_values(chunk, |mut b, payload| {
                b.push_bind(queue)
                    .push_bind(Json(payload))
                    .push(now_ms!())
                    .push(concat!(now_ms!(), " + "))
                    .push_bind_unseparated(delay);
            });
            qb.push(" RETURNING id");
            let rows = qb.build().fetch_all(&mut *conn).await.map_err(map_err)?;
            statements += 1;
            for row in &rows {
                ids.push(row.try_get("id").map_err(map_err)?);
            }
        }
        // RETURNING order is not promised; ids are increasing in insert order.
        ids.sort_unstable();
        Ok((ids, statements))
    }
}

fn lease_lost(id: i64) -> StoreError {
    StoreError::LeaseLost {
        entity: "message",
        id,
    }
}

#[async_trait]
impl QueueStore for PgStore {
    async fn queue_enqueue_many(&self, params: &QueueEnqueueManyParams) -> Result<Vec<i64>> {
        if params.payloads.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let (ids, n) =
            Self::insert_messages(&mut tx, &params.queue, &params.payloads, params.delay).await?;
        self.count(n);
        tx.commit().await.map_err(map_err)?;
        Ok(ids)
    }

    async fn queue_dequeue(&self, params: &QueueDequeueParams) -> Result<Vec<QueueMessage>> {
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

    async fn queue_ack(&self, params: &QueueAckParams) -> Result<()> {
        self.count(1);
        let done = sqlx::query("DELETE FROM queue_messages WHERE id = $1 AND lease_token = $2")
            .bind(params.id)
            .bind(&params.lease_token)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(lease_lost(params.id));
        }
        Ok(())
    }

    async fn queue_nack(&self, params: &QueueNackParams) -> Result<()> {
        self.count(1);
        let done = sqlx::query(&format!(
            "UPDATE queue_messages SET lease_token = NULL, visible_at_ms = {} + $1 \
             WHERE id = $2 AND lease_token = $3",
            now_ms!()
        ))
        .bind(duration_ms(params.delay))
        .bind(params.id)
        .bind(&params.lease_token)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(lease_lost(params.id));
        }
        Ok(())
    }

    async fn queue_depth(&self, queue: &str) -> Result<QueueDepth> {
        self.count(1);
        let row = sqlx::query(&format!(
            "SELECT \
               (SELECT COUNT(*) FROM queue_messages WHERE queue = $1 AND visible_at_ms <= {now}) \
                 AS ready, \
               (SELECT COUNT(*) FROM queue_messages WHERE queue = $1 AND visible_at_ms > {now}) \
                 AS invisible, \
               (SELECT COUNT(*) FROM dead_letters WHERE queue = $1) AS dead",
            now = now_ms!()
        ))
        .bind(queue)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        tasker_store_sql::queue_depth(&row)
    }

    async fn dead_letter_list(&self, queue: &str) -> Result<Vec<DeadLetter>> {
        self.count(1);
        let rows = sqlx::query(
            "SELECT id, queue, payload, deliveries, dead_at_ms FROM dead_letters \
             WHERE queue = $1 ORDER BY id",
        )
        .bind(queue)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(dead_letter).collect()
    }
}
