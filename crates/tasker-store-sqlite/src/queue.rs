//! Dequeue: the one queue operation whose SQL differs between the backends.

use tasker_store::{QueueDequeueParams, Result};
use tasker_store_sql::{
    commit, duration_ms, leased_messages, Backend, Sql, INSERT_CHUNK, MESSAGE_COLUMNS,
};
use tasker_types::QueueMessage;

use crate::{decode::map_err, SqliteBackend, NOW_MS};

impl SqliteBackend {
    /// Leases up to `max` visible messages (see `QueueStore::queue_dequeue`).
    ///
    /// One statement on the single writer, so it cannot interleave with another consumer and
    /// needs no transaction around it. Messages that used up their deliveries come back from it
    /// too (leased, so no other consumer sees them meanwhile) and are moved to the dead letters
    /// by a second, rare transaction; should that fail, their lease expires and the next
    /// dequeue tries again.
    pub(crate) async fn dequeue(&self, params: &QueueDequeueParams) -> Result<Vec<QueueMessage>> {
        let token = uuid::Uuid::new_v4().to_string();
        let rows = sqlx::query(&format!(
            "UPDATE queue_messages SET deliveries = deliveries + 1, lease_token = $1, \
             visible_at_ms = {now} + $2, lease_holder = $5 \
             WHERE id IN (SELECT id FROM queue_messages \
                          WHERE queue = $3 AND visible_at_ms <= {now} \
                          ORDER BY visible_at_ms, id LIMIT $4) \
             RETURNING {MESSAGE_COLUMNS}",
            now = NOW_MS
        ))
        .bind(&token)
        .bind(duration_ms(params.visibility_timeout))
        .bind(&params.queue)
        .bind(i64::from(params.max))
        .bind(&params.holder)
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
    /// deliveries they had (the lease that found them was not one). One transaction; the ids
    /// are bound parameters, [`INSERT_CHUNK`] per statement.
    async fn bury(&self, dead: &[QueueMessage]) -> Result<()> {
        let ids: Vec<i64> = dead.iter().map(|m| m.id).collect();
        let mut tx = self.begin_write().await?;
        for chunk in ids.chunks(INSERT_CHUNK) {
            for statement in bury_statements(chunk) {
                Self::execute(&mut tx, &statement).await?;
            }
        }
        commit::<Self>(tx).await?;
        Ok(())
    }
}

/// The statements burying the messages `ids`: copy them to the dead letters, then delete them
/// from their queue.
fn bury_statements(ids: &[i64]) -> [Sql<'static>; 2] {
    let mut copy = Sql::new(format!(
        "INSERT INTO dead_letters (id, queue, payload, deliveries, enqueued_at_ms, dead_at_ms) \
         SELECT id, queue, payload, deliveries - 1, enqueued_at_ms, {NOW_MS} \
         FROM queue_messages WHERE id IN ("
    ));
    let mut delete = Sql::new("DELETE FROM queue_messages WHERE id IN (");
    for statement in [&mut copy, &mut delete] {
        statement.push_list(ids.iter().copied()).push(")");
    }
    [copy, delete]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bury_binds_its_ids_rather_than_writing_them_into_the_sql() {
        let ids = [987_654_321_i64, 123_456_789];
        for statement in bury_statements(&ids) {
            let sql = statement.text();
            assert!(ids.iter().all(|id| !sql.contains(&id.to_string())), "{sql}");
            assert_eq!(statement.values().len(), ids.len(), "{sql}");
            assert!(sql.ends_with("IN ($1, $2)"), "{sql}");
        }
    }
}
