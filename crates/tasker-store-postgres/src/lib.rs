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

mod claim;
mod connect;
mod create;
mod decode;
mod notify;
mod queue;
mod results;
pub mod test_database;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use sqlx::{pool::PoolConnection, postgres::PgRow, PgConnection, PgPool, Postgres, Transaction};
use tasker_store::{
    Capabilities, ConnectionPoolStats, QueueAckParams, QueueDequeueParams, Result, StepClaimParams,
    StepClaimed, StoreError,
};
use tasker_store_sql::{
    Backend, Counted, EffectsApplied, EffectsPlan, NewTransition, Outbox, Sql, SqlStore, StepMove,
    Value,
};
use tasker_types::QueueMessage;

pub use connect::PgStoreOptions;
pub use decode::map_err as normalize_error;

use decode::map_err;

/// `now` on the database clock, in milliseconds, as an SQL expression: when the current
/// statement started. Stable within a statement, unlike `clock_timestamp()`, so comparisons
/// with it can bound an index scan: with the volatile clock, EXPLAIN showed the dequeue
/// filtering every message of its queue, leased ones included.
const NOW_MS: &str = "(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT";

/// A Tasker store on a PostgreSQL database.
pub type PgStore = SqlStore<PgBackend>;

/// How long taking a connection may wait once the server was found unreachable, until a
/// connection is taken again (see [`PgBackend::acquire`]).
const UNREACHABLE_ACQUIRE: Duration = Duration::from_millis(500);

/// PostgreSQL under [`SqlStore`]: its pools and the statements it sends its own way.
#[derive(Debug)]
pub struct PgBackend {
    pool: PgPool,
    /// Connections with `synchronous_commit = off`, for lease changes only (see `connect`).
    lease_pool: PgPool,
    /// The `LISTEN` tasks behind `Store::wakeup_subscribe`, stopped by `Store::close`.
    listeners: notify::Listeners,
    /// Whether the server answers, as taking connections found it.
    reach: Arc<Reach>,
}

/// The server's reachability, as taking connections found it (see [`PgBackend::acquire`]).
#[derive(Debug, Default)]
struct Reach {
    /// Set when taking a connection timed out with room in the pool (connecting failed: the
    /// server is down); cleared when one is taken again.
    unreachable: AtomicBool,
    /// A probe with the pool's full acquire timeout is running.
    probing: AtomicBool,
}

impl Reach {
    /// Records what taking a connection of `pool` said about the server.
    fn observe(&self, pool: &PgPool, error: Option<&sqlx::Error>) {
        match error {
            // A read first: every statement passes here, and most find nothing to clear.
            None => {
                if self.unreachable.load(Ordering::Relaxed) {
                    self.unreachable.store(false, Ordering::Relaxed);
                }
            }
            Some(sqlx::Error::PoolTimedOut) => self.unreachable.store(
                pool.size() < pool.options().get_max_connections(),
                Ordering::Relaxed,
            ),
            Some(_) => {}
        }
    }
}

impl PgBackend {
    /// The connection pool, for companions that need their own connection (LISTEN).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Takes a connection of `pool`, failing fast while the server is unreachable.
    ///
    /// sqlx retries a refused connection until the pool's acquire timeout (5 s by default),
    /// which suits a server starting up; but while it is down, every batch would wait that long
    /// before failing, and executors would take half a minute to open their breakers. So once
    /// an acquire timed out with room in the pool (it was connecting, not waiting for a busy
    /// connection), later ones wait [`UNREACHABLE_ACQUIRE`] at most, until one succeeds, while
    /// a probe in the background tries with the full timeout (a connection slower to open than
    /// that still reaches the pool).
    async fn acquire(&self, pool: &PgPool) -> Result<PoolConnection<Postgres>> {
        let acquired = if self.reach.unreachable.load(Ordering::Relaxed) {
            self.probe(pool);
            tokio::time::timeout(UNREACHABLE_ACQUIRE, pool.acquire())
                .await
                .unwrap_or(Err(sqlx::Error::PoolTimedOut))
        } else {
            pool.acquire().await
        };
        self.reach.observe(pool, acquired.as_ref().err());
        acquired.map_err(map_err)
    }

    /// Starts the background probe of [`PgBackend::acquire`], unless one runs.
    fn probe(&self, pool: &PgPool) {
        if self.reach.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (pool, reach) = (pool.clone(), self.reach.clone());
        tokio::spawn(async move {
            let acquired = pool.acquire().await;
            reach.observe(&pool, acquired.as_ref().err());
            reach.probing.store(false, Ordering::Release);
        });
    }
}

/// Binds audit rows as the eight arrays (entity, task, step, from, to, event, reason,
/// instance) that `unnest` turns back into rows.
trait BindTransitions<'q> {
    fn bind_transitions(self, transitions: &[NewTransition<'q>]) -> Self;
}

impl<'q> BindTransitions<'q> for sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    fn bind_transitions(self, t: &[NewTransition<'q>]) -> Self {
        self.bind(t.iter().map(|t| t.entity.as_str()).collect::<Vec<_>>())
            .bind(t.iter().map(|t| t.task_id.0).collect::<Vec<_>>())
            .bind(t.iter().map(|t| t.step_id.map(|s| s.0)).collect::<Vec<_>>())
            .bind(t.iter().map(|t| t.from_state).collect::<Vec<_>>())
            .bind(t.iter().map(|t| t.to_state).collect::<Vec<_>>())
            .bind(t.iter().map(|t| t.event).collect::<Vec<_>>())
            .bind(t.iter().map(|t| t.reason).collect::<Vec<_>>())
            .bind(t.iter().map(|t| t.instance_id).collect::<Vec<_>>())
    }
}

/// `sql` as a sqlx query on this backend.
fn query<'q>(sql: &'q Sql<'_>) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    sql.values()
        .iter()
        .fold(sqlx::query(sql.text()), |q, value| match *value {
            Value::Int(v) => q.bind(v),
            Value::Text(v) => q.bind(v),
            Value::Bool(v) => q.bind(v),
            Value::Json(v) => q.bind(v.map(sqlx::types::Json)),
        })
}

impl Backend for PgBackend {
    type Db = Postgres;
    type Row = PgRow;

    const NAME: &'static str = "postgres";
    const NOW_MS: &'static str = NOW_MS;

    fn map_err(err: sqlx::Error) -> StoreError {
        map_err(err)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            listen_notify: true,
            skip_locked: true,
            single_writer: false,
            multi_instance: true,
        }
    }

    fn connection_pool(&self) -> ConnectionPoolStats {
        let (main, lease) = (
            tasker_store_sql::pool_stats(&self.pool),
            tasker_store_sql::pool_stats(&self.lease_pool),
        );
        ConnectionPoolStats {
            max_connections: main.max_connections + lease.max_connections,
            open: main.open + lease.open,
            idle: main.idle + lease.idle,
        }
    }

    async fn begin_write(&self) -> Result<Transaction<'_, Postgres>> {
        if self.reach.unreachable.load(Ordering::Relaxed) {
            // A quick try first; the connection it takes goes back to the pool for `begin`.
            drop(self.acquire(&self.pool).await?);
        }
        // sqlx 0.8.6's `begin` on PostgreSQL is not cancel-safe: dropped while its `BEGIN` is in
        // flight (an HTTP client gone mid-request, an aborted executor), it hands the connection
        // back to the pool inside a transaction nothing ends, whose locks then stall every
        // writer of those rows (sqlx issue #4393). On a task of its own the `BEGIN` always
        // completes; a transaction nobody takes is then dropped, which rolls it back.
        let pool = self.pool.clone();
        let begun = tokio::spawn(async move { pool.begin().await })
            .await
            .map_err(|e| StoreError::other(format!("beginning a transaction: {e}")))?;
        self.reach.observe(&self.pool, begun.as_ref().err());
        begun.map_err(map_err)
    }

    async fn read(&self) -> Result<PoolConnection<Postgres>> {
        self.acquire(&self.pool).await
    }

    async fn write(&self) -> Result<PoolConnection<Postgres>> {
        self.acquire(&self.pool).await
    }

    async fn fetch_all(conn: &mut PgConnection, sql: &Sql<'_>) -> Result<Vec<PgRow>> {
        query(sql).fetch_all(conn).await.map_err(map_err)
    }

    async fn execute(conn: &mut PgConnection, sql: &Sql<'_>) -> Result<u64> {
        let done = query(sql).execute(conn).await.map_err(map_err)?;
        Ok(done.rows_affected())
    }

    /// Locks the tasks' rows for the rest of the transaction, in id order, so transactions
    /// that lock several tasks cannot deadlock.
    async fn lock_tasks(conn: &mut PgConnection, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query("SELECT id FROM tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(ids)
            .execute(conn)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// `lock_timeout` for the rest of the transaction (`set_config(..., true)` is `SET LOCAL`).
    async fn limit_lock_wait(conn: &mut PgConnection, wait: std::time::Duration) -> Result<()> {
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(format!("{}ms", wait.as_millis().max(1)))
            .execute(conn)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// `NOTIFY`s the queue's name on [`notify::CHANNEL`]; delivered when the transaction
    /// commits.
    async fn announce_enqueued(conn: &mut PgConnection, queue: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(notify::CHANNEL)
            .bind(queue)
            .execute(conn)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// Appends audit rows, publishes messages, deletes consumed deliveries and `NOTIFY`s the
    /// queues that received work in one statement, so a transaction's effects cost one round
    /// trip.
    /// Rows are inserted in the given order, so ids follow it.
    async fn write_effects(
        conn: &mut PgConnection,
        transitions: &[NewTransition<'_>],
        outbox: &Outbox,
        consumed: &[QueueAckParams],
        announce: &[String],
    ) -> Result<()> {
        if transitions.is_empty() && outbox.is_empty() && consumed.is_empty() && announce.is_empty()
        {
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
             SELECT pg_notify($13, q) \
             FROM (SELECT queue AS q FROM outbox UNION SELECT unnest($14::text[])) AS announced",
            now = NOW_MS
        ))
        .bind_transitions(transitions)
        .bind(queues)
        .bind(payloads)
        .bind(consumed.iter().map(|c| c.id).collect::<Vec<_>>())
        .bind(consumed.iter().map(|c| c.lease_token.as_str()).collect::<Vec<_>>())
        .bind(notify::CHANNEL)
        .bind(announce)
        .fetch_all(conn)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn create_tasks(
        conn: &mut PgConnection,
        batch: &[tasker_store::TaskCreateParams],
    ) -> Result<Vec<tasker_store::TaskCreated>> {
        create::create_tasks(conn, batch).await
    }

    async fn server_connection_limit(&self) -> Result<Option<u32>> {
        let limit: i32 = sqlx::query_scalar(
            "SELECT current_setting('max_connections')::int \
                    - current_setting('superuser_reserved_connections')::int",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(Some(u32::try_from(limit).unwrap_or(0)))
    }

    async fn move_steps(conn: &mut PgConnection, moves: &[StepMove<'_>]) -> Result<Counted> {
        results::move_steps(conn, moves).await
    }

    async fn apply_effects(
        conn: &mut PgConnection,
        plan: EffectsPlan<'_>,
    ) -> Result<EffectsApplied> {
        results::apply_effects(conn, &plan).await
    }

    async fn dequeue_leased(&self, params: &QueueDequeueParams) -> Result<Vec<QueueMessage>> {
        self.dequeue(params).await
    }

    async fn claim_steps(&self, params: &StepClaimParams) -> Result<Vec<StepClaimed>> {
        self.claim(params).await
    }

    async fn wakeup_subscribe(&self) -> Result<Option<tokio::sync::mpsc::Receiver<String>>> {
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
