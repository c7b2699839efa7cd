//! PostgreSQL backend of the Tasker store: production, many orchestrator and worker processes
//! on many machines sharing one database.
//!
//! - Dequeue uses `FOR UPDATE SKIP LOCKED`, so concurrent consumers never take the same
//!   delivery and never wait on each other's rows.
//! - Every state change is a compare-and-swap `UPDATE … WHERE state = $from`; under READ
//!   COMMITTED the loser re-reads the row and matches nothing.
//! - The database clock (`statement_timestamp()`) decides leases and visibility, so instances with
//!   skewed clocks still agree.
//! - Migrations run under sqlx's advisory lock, so instances starting together apply them once.

mod connect;
mod decode;
mod notify;
mod queue;
mod start;
pub mod test_database;

use async_trait::async_trait;
use sqlx::PgPool;
use tasker_store::{Capabilities, Store};

pub use connect::PgStoreOptions;
pub use decode::map_err as normalize_error;

/// `now` on the database clock, in milliseconds, as an SQL expression: when the current
/// statement started. Stable within a statement, unlike `clock_timestamp()`, so comparisons
/// with it can bound an index scan: with the volatile clock, EXPLAIN showed the dequeue
/// filtering every message of its queue, leased ones included.
macro_rules! now_ms {
    () => {
        "(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT"
    };
}
pub(crate) use now_ms;

use decode::map_err;

tasker_store_sql::impl_sql_store!(
    store = PgStore,
    db = sqlx::Postgres,
    conn = sqlx::PgConnection,
    reader = pool,
    writer = pool
);

/// A Tasker store on a PostgreSQL database.
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    /// Connections with `synchronous_commit = off`, for lease changes only (see `connect`).
    lease_pool: PgPool,
    /// The `LISTEN` tasks behind [`Store::wakeup_subscribe`], stopped by [`Store::close`].
    listeners: notify::Listeners,
}

impl PgStore {
    /// `NOTIFY`s the queue's name on [`notify::CHANNEL`]; delivered when the transaction
    /// commits.
    async fn announce_enqueued(
        conn: &mut sqlx::PgConnection,
        queue: &str,
    ) -> tasker_store::Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(notify::CHANNEL)
            .bind(queue)
            .execute(conn)
            .await
            .map_err(decode::map_err)?;
        Ok(())
    }

    /// Appends audit rows, publishes messages (and `NOTIFY`s their queues) and deletes
    /// consumed deliveries in one statement, so a transaction's effects cost one round trip.
    /// Rows are inserted in the given order, so ids follow it.
    async fn write_effects(
        conn: &mut sqlx::PgConnection,
        transitions: &[tasker_store_sql::NewTransition<'_>],
        outbox: &tasker_store_sql::Outbox,
        consumed: &[tasker_store::QueueAckParams],
    ) -> tasker_store::Result<()> {
        if transitions.is_empty() && outbox.is_empty() && consumed.is_empty() {
            return Ok(());
        }
        let (queues, payloads): (Vec<&str>, Vec<sqlx::types::Json<&serde_json::Value>>) = outbox
            .iter()
            .flat_map(|(queue, payloads)| {
                payloads
                    .iter()
                    .map(move |p| (queue.as_str(), sqlx::types::Json(p)))
            })
            .unzip();
        sqlx::query(&format!(
            "WITH audit AS ( \
               INSERT INTO transitions (entity, task_id, step_id, from_state, to_state, event, \
                                        reason, instance_id, at_ms) \
               SELECT e, t, s, f, o, ev, r, i, {now} \
               FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], \
                           $6::text[], $7::text[], $8::text[]) \
                    WITH ORDINALITY AS a(e, t, s, f, o, ev, r, i, n) ORDER BY n), \
             outbox AS ( \
               INSERT INTO queue_messages (queue, payload, enqueued_at_ms, visible_at_ms) \
               SELECT q, p, {now}, {now} \
               FROM unnest($9::text[], $10::jsonb[]) WITH ORDINALITY AS m(q, p, n) ORDER BY n \
               RETURNING queue), \
             consumed AS ( \
               DELETE FROM queue_messages m USING unnest($11::bigint[], $12::text[]) AS c(id, token) \
               WHERE m.id = c.id AND m.lease_token = c.token) \
             SELECT pg_notify($13, q) FROM (SELECT DISTINCT queue AS q FROM outbox) AS announced",
            now = now_ms!()
        ))
        .bind(transitions.iter().map(|t| t.entity.as_str()).collect::<Vec<_>>())
        .bind(transitions.iter().map(|t| t.task_id.0).collect::<Vec<_>>())
        .bind(transitions.iter().map(|t| t.step_id.map(|s| s.0)).collect::<Vec<_>>())
        .bind(transitions.iter().map(|t| t.from_state).collect::<Vec<_>>())
        .bind(transitions.iter().map(|t| t.to_state).collect::<Vec<_>>())
        .bind(transitions.iter().map(|t| t.event).collect::<Vec<_>>())
        .bind(transitions.iter().map(|t| t.reason).collect::<Vec<_>>())
        .bind(transitions.iter().map(|t| t.instance_id).collect::<Vec<_>>())
        .bind(queues)
        .bind(payloads)
        .bind(consumed.iter().map(|c| c.id).collect::<Vec<_>>())
        .bind(consumed.iter().map(|c| c.lease_token.as_str()).collect::<Vec<_>>())
        .bind(notify::CHANNEL)
        .fetch_all(conn)
        .await
        .map_err(decode::map_err)?;
        Ok(())
    }

    /// Locks the tasks' rows for the rest of the transaction, in id order, so transactions
    /// that lock several tasks cannot deadlock.
    async fn lock_tasks(conn: &mut sqlx::PgConnection, ids: &[i64]) -> tasker_store::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query("SELECT id FROM tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(ids)
            .execute(conn)
            .await
            .map_err(decode::map_err)?;
        Ok(())
    }

    /// Opens a write transaction.
    async fn begin_write(&self) -> tasker_store::Result<sqlx::Transaction<'_, sqlx::Postgres>> {
        self.pool.begin().await.map_err(decode::map_err)
    }

    /// The connection pool, for companions that need their own connection (LISTEN).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl Store for PgStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            listen_notify: true,
            skip_locked: true,
            single_writer: false,
            multi_instance: true,
        }
    }

    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn connection_pool(&self) -> tasker_store::ConnectionPoolStats {
        let (main, lease) = (
            tasker_store_sql::pool_stats(&self.pool),
            tasker_store_sql::pool_stats(&self.lease_pool),
        );
        tasker_store::ConnectionPoolStats {
            max_connections: main.max_connections + lease.max_connections,
            open: main.open + lease.open,
            idle: main.idle + lease.idle,
        }
    }

    async fn wakeup_subscribe(
        &self,
    ) -> tasker_store::Result<Option<tokio::sync::mpsc::Receiver<String>>> {
        self.listeners.subscribe(&self.pool).await.map(Some)
    }

    /// Stops the wake-up listeners first (their receivers end), waiting up to 5 s, so the
    /// connections they hold go back to the pool before it closes.
    async fn close(&self) {
        self.listeners.stop(std::time::Duration::from_secs(5)).await;
        self.pool.close().await;
        self.lease_pool.close().await;
    }
}
