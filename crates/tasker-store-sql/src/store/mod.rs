//! [`SqlStore`]: the store both SQL backends share, generic over a [`Backend`], one module per
//! aggregate (`templates`, `tasks`, `steps`, `queues`) and one for applying result batches
//! (`results`).
//!
//! The backends run the same SQL (both take `RETURNING` and `ON CONFLICT … DO NOTHING`;
//! statements are written with `$N` placeholders, which the SQLite backend sends as `?`). What
//! differs is what [`Backend`] asks for: the clock expression, how a write transaction begins
//! (SQLite: `BEGIN IMMEDIATE` on its single writer), the pools, sending a [`Sql`] statement,
//! and the few operations each does its own way (dequeueing messages and claiming steps, with
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL; there also one statement each for a claim, writing
//! effects and the two halves of a result batch). The compiler checks each backend against the trait, and navigation lands in
//! real code.

mod instances;
mod queues;
mod results;
mod sql;
mod steps;
mod tasks;
mod templates;

use std::future::Future;

use async_trait::async_trait;
use sqlx::{pool::PoolConnection, Database, Transaction};
use tasker_store::{
    Capabilities, ConnectionPoolStats, QueueAckParams, QueueDequeueParams, Result, StepClaimParams,
    StepClaimed, Store, StoreError,
};
use tasker_types::QueueMessage;

pub use queues::{delete_consumed, insert_messages};
pub use results::{apply_effects, move_steps, Counted, EffectsApplied, EffectsPlan, StepMove};
pub use sql::{Sql, Tuple, Value};
pub use tasks::{create_tasks, created_or_existing, insert_transitions};

use crate::{NewTransition, Outbox, RowExt};

/// A backend's connection type.
pub type Conn<B> = <<B as Backend>::Db as Database>::Connection;

/// What a SQL database must supply for [`SqlStore`] to run on it.
pub trait Backend: Sized + Send + Sync + std::fmt::Debug + 'static {
    /// The sqlx database.
    type Db: Database<Row = Self::Row>;
    /// Its rows, read through [`RowExt`].
    type Row: RowExt + Send + Sync;

    /// `sqlite` or `postgres`.
    const NAME: &'static str;
    /// `now` on the database clock in milliseconds, as an SQL expression.
    const NOW_MS: &'static str;

    /// Normalizes an error of this database.
    fn map_err(err: sqlx::Error) -> StoreError;

    /// What the backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Size and use of the connection pools.
    fn connection_pool(&self) -> ConnectionPoolStats;

    /// Opens a write transaction.
    fn begin_write(&self) -> impl Future<Output = Result<Transaction<'_, Self::Db>>> + Send;

    /// A connection for reads outside a transaction.
    fn read(&self) -> impl Future<Output = Result<PoolConnection<Self::Db>>> + Send;

    /// A connection for single-statement writes outside a transaction.
    fn write(&self) -> impl Future<Output = Result<PoolConnection<Self::Db>>> + Send;

    /// Sends `sql`; returns its rows.
    fn fetch_all(
        conn: &mut Conn<Self>,
        sql: &Sql<'_>,
    ) -> impl Future<Output = Result<Vec<Self::Row>>> + Send;

    /// Sends `sql`; returns the rows it changed.
    fn execute(conn: &mut Conn<Self>, sql: &Sql<'_>) -> impl Future<Output = Result<u64>> + Send;

    /// Locks the tasks' rows, in id order, for the rest of the transaction, where writers run
    /// concurrently (the portable [`move_steps`] does, so that batches cannot deadlock).
    fn lock_tasks(conn: &mut Conn<Self>, ids: &[i64]) -> impl Future<Output = Result<()>> + Send;

    /// Bounds how long the rest of the transaction waits for any one row lock; past it, the
    /// statement fails [`StoreError::Locked`]. By default nothing: a backend without row locks
    /// has nothing to bound.
    fn limit_lock_wait(
        conn: &mut Conn<Self>,
        wait: std::time::Duration,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (conn, wait);
        std::future::ready(Ok(()))
    }

    /// Tells other processes, when the transaction commits, that `queue` has new work.
    fn announce_enqueued(
        conn: &mut Conn<Self>,
        queue: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Appends audit rows, publishes messages visible at once, deletes consumed deliveries
    /// (each only while its lease token is current), and announces the outbox's queues and
    /// `announce` (queues that received steps).
    fn write_effects(
        conn: &mut Conn<Self>,
        transitions: &[NewTransition<'_>],
        outbox: &Outbox,
        consumed: &[QueueAckParams],
        announce: &[String],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Moves the steps of a result batch, each only while it runs the result's attempt, and
    /// counts those that finished on their tasks and their children: the counters settlement
    /// reads. By default, [`move_steps`] in a few statements.
    fn move_steps(
        conn: &mut Conn<Self>,
        moves: &[StepMove<'_>],
    ) -> impl Future<Output = Result<Counted>> + Send {
        move_steps::<Self>(conn, moves)
    }

    /// Applies what settlement chose for a result batch, each change guarded by the state it
    /// was decided on, with the audit rows and messages. By default, [`apply_effects`] in a
    /// few statements.
    fn apply_effects(
        conn: &mut Conn<Self>,
        plan: EffectsPlan<'_>,
    ) -> impl Future<Output = Result<EffectsApplied>> + Send {
        apply_effects::<Self>(conn, plan)
    }

    /// Creates tasks inside the caller's write transaction (`TaskStore::task_create_many`). By
    /// default, [`create_tasks`] in a few statements.
    fn create_tasks(
        conn: &mut Conn<Self>,
        batch: &[tasker_store::TaskCreateParams],
    ) -> impl Future<Output = Result<Vec<tasker_store::TaskCreated>>> + Send {
        create_tasks::<Self>(conn, batch)
    }

    /// `QueueStore::queue_dequeue`.
    fn dequeue_leased(
        &self,
        params: &QueueDequeueParams,
    ) -> impl Future<Output = Result<Vec<QueueMessage>>> + Send;

    /// `StepStore::step_claim`, for `max > 0` and a non-empty handler filter (if any).
    fn claim_steps(
        &self,
        params: &StepClaimParams,
    ) -> impl Future<Output = Result<Vec<StepClaimed>>> + Send;

    /// `Store::server_connection_limit`; by default there is no server.
    fn server_connection_limit(&self) -> impl Future<Output = Result<Option<u32>>> + Send {
        async { Ok(None) }
    }

    /// `Store::wakeup_subscribe`.
    fn wakeup_subscribe(
        &self,
    ) -> impl Future<Output = Result<Option<tokio::sync::mpsc::Receiver<String>>>> + Send;

    /// `Store::close`.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// A Tasker store on a SQL database: every store trait, over the backend `B`.
#[derive(Debug)]
pub struct SqlStore<B> {
    backend: B,
}

impl<B: Backend> SqlStore<B> {
    /// A store on a connected, migrated backend.
    pub fn new(backend: B) -> Self {
        Self { backend }
    }

    /// The backend, for what only it offers.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, to put under another store (tests compare a backend's own statements with
    /// the portable ones this way).
    pub fn into_backend(self) -> B {
        self.backend
    }

    async fn begin_write(&self) -> Result<Transaction<'_, B::Db>> {
        self.backend.begin_write().await
    }

    async fn read(&self) -> Result<PoolConnection<B::Db>> {
        self.backend.read().await
    }
}

/// The lease token a claim gives each step it takes: the claim's own random token and the
/// step's id, so that no two steps share one. An SQL expression over `steps.id` and `token`,
/// the claim's token as a bound placeholder.
pub fn step_token_sql(token: &str) -> String {
    format!("{token} || '.' || CAST(steps.id AS TEXT)")
}

/// Commits a write transaction.
pub async fn commit<B: Backend>(tx: Transaction<'_, B::Db>) -> Result<()> {
    tx.commit().await.map_err(B::map_err)
}

/// Sends `sql`; returns its first row, if any.
pub async fn fetch_optional<B: Backend>(
    conn: &mut Conn<B>,
    sql: &Sql<'_>,
) -> Result<Option<B::Row>> {
    Ok(B::fetch_all(conn, sql).await?.into_iter().next())
}

/// Sends `sql`; returns its one row.
pub async fn fetch_one<B: Backend>(conn: &mut Conn<B>, sql: &Sql<'_>) -> Result<B::Row> {
    fetch_optional::<B>(conn, sql)
        .await?
        .ok_or_else(|| crate::corrupt("statement", format!("no row from {}", sql.text())))
}

#[async_trait]
impl<B: Backend> Store for SqlStore<B> {
    fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    fn backend_name(&self) -> &'static str {
        B::NAME
    }

    fn connection_pool(&self) -> ConnectionPoolStats {
        self.backend.connection_pool()
    }

    async fn wakeup_subscribe(&self) -> Result<Option<tokio::sync::mpsc::Receiver<String>>> {
        self.backend.wakeup_subscribe().await
    }

    async fn server_connection_limit(&self) -> Result<Option<u32>> {
        self.backend.server_connection_limit().await
    }

    async fn close(&self) {
        self.backend.close().await;
    }
}
