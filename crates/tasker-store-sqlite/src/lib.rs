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

mod claim;
mod connect;
mod decode;
mod queue;

use sqlx::{
    pool::PoolConnection,
    sqlite::{SqlitePool, SqliteRow},
    Sqlite, SqliteConnection, Transaction,
};
use tasker_store::{
    Capabilities, ConnectionPoolStats, QueueAckParams, QueueDequeueParams, Result, StepClaimParams,
    StepClaimed, StoreError,
};
use tasker_store_sql::{Backend, NewTransition, Outbox, Sql, SqlStore, Value};
use tasker_types::QueueMessage;

pub use connect::SqliteStoreOptions;

use decode::map_err;

/// `now` on the database clock, in milliseconds, as an SQL expression.
const NOW_MS: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

/// A Tasker store on one SQLite file.
pub type SqliteStore = SqlStore<SqliteBackend>;

/// SQLite under [`SqlStore`]: its single writer, its readers and the statements it sends its
/// own way.
#[derive(Debug)]
pub struct SqliteBackend {
    writer: SqlitePool,
    reader: SqlitePool,
}

/// `sql` with its `$N` placeholders written `?`, one per occurrence, and its values in the
/// order of the occurrences. SQLite takes `$N` too, but keeps named and numbered placeholders
/// in a list that each bind searches from the start: quadratic in a multi-row insert of
/// thousands of values, which made SQLite 4.5 times slower end to end (measured). Plain `?`s
/// have no names to search. The shared SQL writes no `$` but in placeholders.
fn anonymous<'a>(sql: &Sql<'a>) -> (String, Vec<Value<'a>>) {
    let text = sql.text();
    let mut out = String::with_capacity(text.len());
    let mut values = Vec::with_capacity(sql.values().len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - at - 1);
        match rest[at + 1..at + 1 + digits].parse::<usize>() {
            Ok(n) if n >= 1 => {
                out.push('?');
                // An unbound placeholder is NULL, as SQLite treats it.
                values.push(sql.values().get(n - 1).copied().unwrap_or(Value::Int(None)));
            }
            _ => out.push_str(&rest[at..=at + digits]),
        }
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
    (out, values)
}

/// `values` bound to `query`.
fn bind<'q>(
    query: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    values: &[Value<'q>],
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    values.iter().fold(query, |q, value| match *value {
        Value::Int(v) => q.bind(v),
        Value::Text(v) => q.bind(v),
        Value::Bool(v) => q.bind(v),
        Value::Json(v) => q.bind(v.map(sqlx::types::Json)),
    })
}

impl Backend for SqliteBackend {
    type Db = Sqlite;
    type Row = SqliteRow;

    const NAME: &'static str = "sqlite";
    const NOW_MS: &'static str = NOW_MS;

    fn map_err(err: sqlx::Error) -> StoreError {
        map_err(err)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            listen_notify: false,
            skip_locked: false,
            single_writer: true,
            multi_instance: false,
        }
    }

    fn connection_pool(&self) -> ConnectionPoolStats {
        let r = tasker_store_sql::pool_stats(&self.reader);
        let w = tasker_store_sql::pool_stats(&self.writer);
        ConnectionPoolStats {
            max_connections: r.max_connections.saturating_add(w.max_connections),
            open: r.open.saturating_add(w.open),
            idle: r.idle.saturating_add(w.idle),
        }
    }

    /// Opens a write transaction on the single writer, taking the write lock up front.
    async fn begin_write(&self) -> Result<Transaction<'_, Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)
    }

    async fn read(&self) -> Result<PoolConnection<Sqlite>> {
        self.reader.acquire().await.map_err(map_err)
    }

    async fn write(&self) -> Result<PoolConnection<Sqlite>> {
        self.writer.acquire().await.map_err(map_err)
    }

    async fn fetch_all(conn: &mut SqliteConnection, sql: &Sql<'_>) -> Result<Vec<SqliteRow>> {
        let (text, values) = anonymous(sql);
        bind(sqlx::query(&text), &values)
            .fetch_all(conn)
            .await
            .map_err(map_err)
    }

    async fn execute(conn: &mut SqliteConnection, sql: &Sql<'_>) -> Result<u64> {
        let (text, values) = anonymous(sql);
        let done = bind(sqlx::query(&text), &values)
            .execute(conn)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    /// The single writer already serializes every write transaction: nothing to lock.
    async fn lock_tasks(_conn: &mut SqliteConnection, _ids: &[i64]) -> Result<()> {
        Ok(())
    }

    /// One process per file: nothing to announce beyond the in-process wake-ups.
    async fn announce_enqueued(_conn: &mut SqliteConnection, _queue: &str) -> Result<()> {
        Ok(())
    }

    /// A multi-row statement each for the audit rows, each queue's messages and the consumed
    /// deliveries (statements are cheap in process).
    async fn write_effects(
        conn: &mut SqliteConnection,
        transitions: &[NewTransition<'_>],
        outbox: &Outbox,
        consumed: &[QueueAckParams],
        announce: &[String],
    ) -> Result<()> {
        tasker_store_sql::insert_transitions::<Self>(conn, transitions).await?;
        for queue in announce {
            Self::announce_enqueued(conn, queue).await?;
        }
        for (queue, payloads) in outbox {
            tasker_store_sql::insert_messages::<Self>(
                conn,
                queue,
                payloads,
                std::time::Duration::ZERO,
            )
            .await?;
        }
        tasker_store_sql::delete_consumed::<Self>(conn, consumed).await
    }

    async fn dequeue_leased(&self, params: &QueueDequeueParams) -> Result<Vec<QueueMessage>> {
        self.dequeue(params).await
    }

    async fn claim_steps(&self, params: &StepClaimParams) -> Result<Vec<StepClaimed>> {
        self.claim(params).await
    }

    async fn wakeup_subscribe(&self) -> Result<Option<tokio::sync::mpsc::Receiver<String>>> {
        Ok(None)
    }

    async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_anonymous_with_their_values_in_order_of_use() {
        let sql = Sql::new("UPDATE t SET a = $2, b = '$' WHERE id = $1 OR id = $2 OR $10 IS NULL")
            .bind(1_i64)
            .bind("x");
        let (text, values) = anonymous(&sql);
        assert_eq!(
            text,
            "UPDATE t SET a = ?, b = '$' WHERE id = ? OR id = ? OR ? IS NULL"
        );
        assert_eq!(
            values,
            [
                Value::from("x"),
                Value::from(1_i64),
                Value::from("x"),
                Value::Int(None)
            ]
        );
    }
}
