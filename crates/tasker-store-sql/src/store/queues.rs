//! Durable queues: enqueue, lease, ack, nack, release, extend, depth, dead letters.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use tasker_store::{
    DeadLetterListParams, QueueAckParams, QueueDepth, QueueDequeueParams, QueueEnqueueManyParams,
    QueueExtendManyParams, QueueForwardParams, QueueLeaseParams, QueueStore, Result, StoreError,
};
use tasker_types::{DeadLetter, QueueMessage};

use super::{commit, fetch_one, fetch_optional, Backend, Conn, Sql, SqlStore};
use crate::{
    dead_letter, duration_ms, message, queue_depth, RowExt, INSERT_CHUNK, MESSAGE_COLUMNS,
};

/// Inserts messages, visible after `delay`, in multi-row statements, announcing the queue when
/// they are visible at once. Returns their ids in insert order.
pub async fn insert_messages<B: Backend>(
    conn: &mut Conn<B>,
    queue: &str,
    payloads: &[serde_json::Value],
    delay: Duration,
) -> Result<Vec<i64>> {
    let delay = duration_ms(delay);
    let mut ids = Vec::with_capacity(payloads.len());
    for chunk in payloads.chunks(INSERT_CHUNK) {
        let mut sql =
            Sql::new("INSERT INTO queue_messages (queue, payload, enqueued_at_ms, visible_at_ms) ");
        let queue = sql.placeholder(queue);
        let visible = format!("{} + {}", B::NOW_MS, sql.placeholder(delay));
        sql.push_values(chunk, |b, payload| {
            b.push(&queue).bind(payload).push(B::NOW_MS).push(&visible);
        });
        sql.push(" RETURNING id");
        for row in B::fetch_all(conn, &sql).await? {
            ids.push(row.int("id")?);
        }
    }
    // RETURNING order is not promised; ids are increasing in insert order.
    ids.sort_unstable();
    if !ids.is_empty() && delay == 0 {
        B::announce_enqueued(conn, queue).await?;
    }
    Ok(ids)
}

/// Deletes consumed deliveries, each only while its lease token is current.
pub async fn delete_consumed<B: Backend>(
    conn: &mut Conn<B>,
    consumed: &[QueueAckParams],
) -> Result<()> {
    for chunk in consumed.chunks(INSERT_CHUNK) {
        let mut sql = Sql::new("DELETE FROM queue_messages WHERE ");
        push_held(&mut sql, chunk);
        B::execute(conn, &sql).await?;
    }
    Ok(())
}

/// `(id = … AND lease_token = …) OR …`: the deliveries still held by these tokens.
fn push_held<'a>(sql: &mut Sql<'a>, held: &'a [QueueAckParams]) {
    for (i, ack) in held.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("(id = ")
            .push_bind(ack.id)
            .push(" AND lease_token = ")
            .push_bind(&ack.lease_token)
            .push(")");
    }
}

/// The columns [`dead_letter`] reads.
const DEAD_LETTER_COLUMNS: &str = "id, queue, payload, deliveries, dead_at_ms";

fn dead_letter_missing(id: i64) -> StoreError {
    StoreError::NotFound {
        entity: "dead letter",
        id: id.to_string(),
    }
}

fn lease_lost(id: i64) -> StoreError {
    StoreError::LeaseLost {
        entity: "message",
        id,
    }
}

/// `Ok` when the statement changed the delivery, `LeaseLost` when its lease had moved on.
fn held(changed: u64, id: i64) -> Result<()> {
    if changed == 0 {
        return Err(lease_lost(id));
    }
    Ok(())
}

impl<B: Backend> SqlStore<B> {
    /// `UPDATE queue_messages SET <set> = now + delay` for the delivery holding
    /// `params.lease_token`; `LeaseLost` when it no longer does. `set` is one of the constants
    /// of the callers below, never input.
    async fn lease_update(&self, set: &str, params: &QueueLeaseParams) -> Result<()> {
        let done = B::execute(
            &mut *self.backend().write().await?,
            &Sql::new(format!(
                "UPDATE queue_messages SET {set} = {} + $1 WHERE id = $2 AND lease_token = $3",
                B::NOW_MS
            ))
            .bind(duration_ms(params.delay))
            .bind(params.id)
            .bind(&params.lease_token),
        )
        .await?;
        held(done, params.id)
    }
}

#[async_trait]
impl<B: Backend> QueueStore for SqlStore<B> {
    async fn queue_enqueue_many(&self, params: &QueueEnqueueManyParams) -> Result<Vec<i64>> {
        if params.payloads.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let ids =
            insert_messages::<B>(&mut tx, &params.queue, &params.payloads, params.delay).await?;
        commit::<B>(tx).await?;
        Ok(ids)
    }

    async fn queue_forward(&self, params: &QueueForwardParams) -> Result<Vec<i64>> {
        let mut tx = self.begin_write().await?;
        if !params.settled.is_empty() && params.settled.len() != params.payloads.len() {
            return Err(StoreError::other(format!(
                "queue_forward: {} settled leases for {} payloads; each lease goes with one",
                params.settled.len(),
                params.payloads.len()
            )));
        }
        let ids =
            insert_messages::<B>(&mut tx, &params.queue, &params.payloads, Duration::ZERO).await?;
        // Each settled lease goes to its payload's message: a lost one undoes everything (the
        // transaction is dropped uncommitted).
        for (lease, id) in params.settled.iter().zip(&ids) {
            let result = crate::result_lease(*id);
            let handed = B::execute(
                &mut tx,
                &Sql::new(format!(
                    "UPDATE steps SET lease_token = $1, visible_at_ms = {} + $2 \
                     WHERE id = $3 AND state = 'InProgress' AND lease_token = $4",
                    B::NOW_MS
                ))
                .bind(&result)
                .bind(duration_ms(params.settle_within))
                .bind(lease.step_id.0)
                .bind(&lease.lease_token),
            )
            .await?;
            if handed == 0 {
                return Err(StoreError::LeaseLost {
                    entity: "step",
                    id: lease.step_id.0,
                });
            }
        }
        delete_consumed::<B>(&mut tx, &params.consumed).await?;
        commit::<B>(tx).await?;
        Ok(ids)
    }

    async fn queue_dequeue(&self, params: &QueueDequeueParams) -> Result<Vec<QueueMessage>> {
        self.backend().dequeue_leased(params).await
    }

    async fn queue_get(&self, params: &QueueAckParams) -> Result<QueueMessage> {
        let row = fetch_optional::<B>(
            &mut *self.read().await?,
            &Sql::new(format!(
                "SELECT {MESSAGE_COLUMNS} FROM queue_messages WHERE id = $1 AND lease_token = $2"
            ))
            .bind(params.id)
            .bind(&params.lease_token),
        )
        .await?;
        row.as_ref()
            .map(message)
            .transpose()?
            .ok_or_else(|| lease_lost(params.id))
    }

    async fn queue_ack(&self, params: &QueueAckParams) -> Result<()> {
        let done = B::execute(
            &mut *self.backend().write().await?,
            &Sql::new("DELETE FROM queue_messages WHERE id = $1 AND lease_token = $2")
                .bind(params.id)
                .bind(&params.lease_token),
        )
        .await?;
        held(done, params.id)
    }

    async fn queue_nack(&self, params: &QueueLeaseParams) -> Result<()> {
        // Visible again after the delay, and no delivery holds it any more.
        self.lease_update("lease_token = NULL, visible_at_ms", params)
            .await
    }

    async fn queue_release(&self, params: &QueueLeaseParams) -> Result<()> {
        self.lease_update(
            "lease_token = NULL, deliveries = deliveries - 1, visible_at_ms",
            params,
        )
        .await
    }

    async fn queue_extend(&self, params: &QueueLeaseParams) -> Result<()> {
        self.lease_update("visible_at_ms", params).await
    }

    async fn queue_extend_many(&self, params: &QueueExtendManyParams) -> Result<Vec<i64>> {
        let mut extended = HashSet::with_capacity(params.leases.len());
        let mut tx = self.begin_write().await?;
        for chunk in params.leases.chunks(INSERT_CHUNK / 2) {
            let mut sql = Sql::new(format!(
                "UPDATE queue_messages SET visible_at_ms = {} + ",
                B::NOW_MS
            ));
            sql.push_bind(duration_ms(params.visibility_timeout))
                .push(" WHERE ");
            push_held(&mut sql, chunk);
            sql.push(" RETURNING id");
            for row in B::fetch_all(&mut tx, &sql).await? {
                extended.insert(row.int("id")?);
            }
        }
        commit::<B>(tx).await?;
        Ok(params
            .leases
            .iter()
            .map(|l| l.id)
            .filter(|id| !extended.contains(id))
            .collect())
    }

    async fn queue_depth(&self, queue: &str) -> Result<QueueDepth> {
        let row = fetch_one::<B>(
            &mut *self.read().await?,
            // A queue holds messages or steps (a step waiting in it, or leased from it); one
            // of the two counts is always zero. The steps' states are literals, exactly
            // `steps_queue_idx`'s predicate.
            &Sql::new(format!(
                "SELECT \
                   (SELECT COUNT(*) FROM queue_messages WHERE queue = $1 AND visible_at_ms <= {now}) \
                   + (SELECT COUNT(*) FROM steps WHERE queue = $1 \
                      AND state IN ('Enqueued', 'InProgress') AND visible_at_ms <= {now}) \
                     AS ready, \
                   (SELECT COUNT(*) FROM queue_messages WHERE queue = $1 AND visible_at_ms > {now}) \
                   + (SELECT COUNT(*) FROM steps WHERE queue = $1 \
                      AND state IN ('Enqueued', 'InProgress') AND visible_at_ms > {now}) \
                     AS invisible, \
                   (SELECT COUNT(*) FROM dead_letters WHERE queue = $1) AS dead",
                now = B::NOW_MS
            ))
            .bind(queue),
        )
        .await?;
        queue_depth(&row)
    }

    async fn dead_letter_list(&self, params: &DeadLetterListParams) -> Result<Vec<DeadLetter>> {
        let mut sql = Sql::new(format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE 1=1"
        ));
        if let Some(queue) = &params.queue {
            sql.push(" AND queue = ").push_bind(queue);
        }
        if let Some(after) = params.after_id {
            sql.push(" AND id > ").push_bind(after);
        }
        sql.push(" ORDER BY id LIMIT ")
            .push_bind(i64::from(params.limit));
        let rows = B::fetch_all(&mut *self.read().await?, &sql).await?;
        rows.iter().map(dead_letter).collect()
    }

    async fn dead_letter_get(&self, id: i64) -> Result<DeadLetter> {
        let row = fetch_optional::<B>(
            &mut *self.read().await?,
            &Sql::new(format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = $1"
            ))
            .bind(id),
        )
        .await?;
        row.as_ref()
            .map(dead_letter)
            .transpose()?
            .ok_or_else(|| dead_letter_missing(id))
    }

    async fn dead_letter_requeue(&self, id: i64) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        // Deleting first takes the row, so two operators requeueing at once make one message.
        let row = fetch_optional::<B>(
            &mut tx,
            &Sql::new(format!(
                "DELETE FROM dead_letters WHERE id = $1 RETURNING {DEAD_LETTER_COLUMNS}"
            ))
            .bind(id),
        )
        .await?;
        let dead = row
            .as_ref()
            .map(dead_letter)
            .transpose()?
            .ok_or_else(|| dead_letter_missing(id))?;
        let ids =
            insert_messages::<B>(&mut tx, &dead.queue, &[dead.payload], Duration::ZERO).await?;
        commit::<B>(tx).await?;
        ids.first()
            .copied()
            .ok_or_else(|| crate::corrupt("requeue", "the insert returned no id"))
    }

    async fn dead_letter_discard(&self, id: i64) -> Result<()> {
        let deleted = B::execute(
            &mut *self.backend().write().await?,
            &Sql::new("DELETE FROM dead_letters WHERE id = $1").bind(id),
        )
        .await?;
        if deleted == 0 {
            return Err(dead_letter_missing(id));
        }
        Ok(())
    }
}
