//! SQLite backend of the Tasker store: the embedded default, one file under the data directory.
//!
//! # Honest limits
//!
//! - **One writer.** SQLite allows one write transaction at a time. Every write goes through a
//!   pool of exactly one connection and opens with `BEGIN IMMEDIATE`, so writers queue in
//!   process instead of failing with `SQLITE_BUSY`; reads use a separate pool and see the last
//!   committed state (WAL mode). A second process on the same file works but waits on
//!   `busy_timeout`.
//! - **No `SKIP LOCKED`.** Because writes are serialized, a dequeue is a single
//!   `UPDATE … RETURNING` that no other consumer can interleave with.
//! - **No `LISTEN/NOTIFY`.** Wake-ups stay inside the process ([`tasker_store::Capabilities`]).
//! - **Database clock** is `unixepoch('subsec')` of the process's own clock.

mod connect;
mod decode;
mod queue;
mod start;

use async_trait::async_trait;
use sqlx::sqlite::SqlitePool;
use tasker_store::{Capabilities, Store};

pub use connect::SqliteStoreOptions;

/// `now` on the database clock, in milliseconds, as an SQL expression.
macro_rules! now_ms {
    () => {
        "CAST(unixepoch('subsec') * 1000 AS INTEGER)"
    };
}
pub(crate) use now_ms;

use decode::map_err;

tasker_store_sql::impl_sql_store!(
    store = SqliteStore,
    db = sqlx::Sqlite,
    conn = sqlx::SqliteConnection,
    reader = reader,
    writer = writer
);

/// A Tasker store on one SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// One process per file: nothing to announce beyond the in-process wake-ups.
    async fn announce_enqueued(
        _conn: &mut sqlx::SqliteConnection,
        _queue: &str,
    ) -> tasker_store::Result<()> {
        Ok(())
    }

    /// Appends audit rows, publishes messages and deletes consumed deliveries: a multi-row
    /// statement each (statements are cheap in process).
    async fn write_effects(
        conn: &mut sqlx::SqliteConnection,
        transitions: &[tasker_store_sql::NewTransition<'_>],
        outbox: &tasker_store_sql::Outbox,
        consumed: &[tasker_store::QueueAckParams],
    ) -> tasker_store::Result<()> {
        Self::insert_transitions(conn, transitions).await?;
        for (queue, payloads) in outbox {
            Self::insert_messages(conn, queue, payloads, std::time::Duration::ZERO).await?;
        }
        Self::delete_consumed(conn, consumed).await
    }

    /// The single writer already serializes every write transaction: nothing to lock.
    async fn lock_tasks(
        _conn: &mut sqlx::SqliteConnection,
        _ids: &[i64],
    ) -> tasker_store::Result<()> {
        Ok(())
    }

    /// Opens a write transaction on the single writer, taking the write lock up front.
    async fn begin_write(&self) -> tasker_store::Result<sqlx::Transaction<'_, sqlx::Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(decode::map_err)
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            listen_notify: false,
            skip_locked: false,
            single_writer: true,
            multi_instance: false,
        }
    }

    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    fn connection_pool(&self) -> tasker_store::ConnectionPoolStats {
        let r = tasker_store_sql::pool_stats(&self.reader);
        let w = tasker_store_sql::pool_stats(&self.writer);
        tasker_store::ConnectionPoolStats {
            max_connections: r.max_connections.saturating_add(w.max_connections),
            open: r.open.saturating_add(w.open),
            idle: r.idle.saturating_add(w.idle),
        }
    }

    async fn wakeup_subscribe(
        &self,
    ) -> tasker_store::Result<Option<tokio::sync::mpsc::Receiver<String>>> {
        Ok(None)
    }

    async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}
