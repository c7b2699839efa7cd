use std::{str::FromStr, time::Duration};

use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    Connection,
};
use tasker_store::{Result, StoreError};

use tasker_store_sql::SqlStore;

use crate::{decode::map_err, PgBackend, PgStore};

/// The embedded migrations, applied on connect. Version numbers match the SQLite backend's.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (
        2,
        "inline progress",
        include_str!("../migrations/0002_inline_progress.sql"),
    ),
    (
        3,
        "step queue",
        include_str!("../migrations/0003_step_queue.sql"),
    ),
    (
        4,
        "instances",
        include_str!("../migrations/0004_instances.sql"),
    ),
    (
        5,
        "leadership",
        include_str!("../migrations/0005_leadership.sql"),
    ),
    (
        6,
        "retention",
        include_str!("../migrations/0006_retention.sql"),
    ),
    (
        7,
        "instance connections",
        include_str!("../migrations/0007_instance_connections.sql"),
    ),
    (
        8,
        "instance holders",
        include_str!("../migrations/0008_instance_holders.sql"),
    ),
    (
        9,
        "control flow",
        include_str!("../migrations/0009_control_flow.sql"),
    ),
    (10, "map", include_str!("../migrations/0010_map.sql")),
];

/// How to connect a [`PgStore`].
#[derive(Debug, Clone)]
pub struct PgStoreOptions {
    /// `postgres://user@host:port/database`.
    pub url: String,
    /// Connections in all: a quarter (at least one) serve lease changes, the rest the rest.
    pub max_connections: u32,
    /// How long a caller waits for a free connection before `Unavailable`.
    pub acquire_timeout: Duration,
}

impl PgStoreOptions {
    /// Options for `url` with defaults: 32 connections, 5 s acquire timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 32,
            acquire_timeout: Duration::from_secs(5),
        }
    }

    /// Connects and applies migrations.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the server cannot be reached, [`StoreError::Other`]
    /// when a migration fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: migrations run in transactions under an advisory lock.
    pub async fn connect(self) -> Result<PgStore> {
        // A quarter of the connections (at least one) serve lease changes, the rest everything
        // else; together they stay within `max_connections` (two at the least).
        let leasing = (self.max_connections / 4).max(1);
        let pool = pool_options(
            self.max_connections.saturating_sub(leasing).max(1),
            self.acquire_timeout,
        )
        .connect(&self.url)
        .await
        .map_err(map_err)?;
        migrator().run(&pool).await.map_err(|e| StoreError::Other {
            message: "migrating postgres database".into(),
            source: Some(Box::new(e)),
        })?;
        // Lease changes (dequeues, claims) need not wait for the WAL flush: one lost in a crash
        // leaves its message to be delivered again or its step to be claimed again, and any
        // later synchronous commit (a result, a new task) flushes it first, since the WAL is
        // written in order.
        let lease_options = PgConnectOptions::from_str(&self.url)
            .map_err(map_err)?
            .options([("synchronous_commit", "off")]);
        let lease_pool = pool_options(leasing, self.acquire_timeout)
            .connect_with(lease_options)
            .await
            .map_err(map_err)?;
        Ok(SqlStore::new(PgBackend {
            pool,
            lease_pool,
            listeners: crate::notify::Listeners::default(),
            reach: std::sync::Arc::default(),
        }))
    }
}

/// A pooled connection used this recently is handed out without a ping.
const ALIVE_WITHOUT_PING: Duration = Duration::from_secs(1);

/// A pool of `max` connections. sqlx pings every idle connection before handing it out, a
/// round trip before each transaction and each statement outside one (three or four per step);
/// like HikariCP's alive-bypass window, only a connection idle for [`ALIVE_WITHOUT_PING`] is
/// pinged now, and dropped when the ping fails. A recently used connection that broke since
/// fails its statement, which callers treat as `Unavailable` like any other lost connection.
fn pool_options(max: u32, acquire_timeout: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(
                async move { Ok(meta.idle_for < ALIVE_WITHOUT_PING || conn.ping().await.is_ok()) },
            )
        })
}

fn migrator() -> sqlx::migrate::Migrator {
    tasker_store_sql::migrator(MIGRATIONS)
}

#[cfg(test)]
mod tests {
    use sqlx::Row;
    use tasker_store::{QueueStore, StepStore, Store};

    use super::*;
    use crate::test_database::TestDatabase;

    /// As the SQLite backend's test of the same name: an upgraded database keeps its work.
    #[tokio::test]
    async fn the_step_queue_migration_moves_step_messages_onto_their_steps() {
        let db = TestDatabase::create().await.unwrap();
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&db.url)
            .await
            .unwrap();
        tasker_store_sql::migrator(&MIGRATIONS[..2])
            .run(&pool)
            .await
            .unwrap();
        for statement in [
            "INSERT INTO templates (namespace, name, version, definition, created_at_ms) \
             VALUES ('demo', 't', '1.0.0', '{}', 0)",
            "INSERT INTO tasks (template_id, namespace, name, version, state, context, \
             created_at_ms, updated_at_ms, unfinished_steps) \
             SELECT id, 'demo', 't', '1.0.0', 'StepsInProcess', '{}', 0, 0, 2 FROM templates",
            "INSERT INTO steps (task_id, position, name, handler, handler_config, state, \
             max_attempts, retry_base_ms, retry_max_ms, retry_jitter, pending_parents) \
             SELECT t.id, v.p, v.n, 'noop', 'null', v.s, 3, 1, 1, false, v.parents \
             FROM tasks t, (VALUES (0, 'waiting', 'Enqueued', 0), \
                                   (1, 'after', 'Pending', 1), \
                                   (2, 'remote', 'InProgress', 0)) AS v(p, n, s, parents)",
            "INSERT INTO step_edges (task_id, parent_id, child_id) \
             SELECT a.task_id, a.id, b.id FROM steps a, steps b \
             WHERE a.name = 'waiting' AND b.name = 'after'",
            "INSERT INTO queue_messages (queue, payload, enqueued_at_ms, visible_at_ms) \
             SELECT 'tasker.local_steps', jsonb_build_object('task_id', task_id, 'step_id', id), \
                    0, 0 FROM steps WHERE name = 'waiting' \
             UNION ALL SELECT 'tasker.task_work', '{\"task_id\": 1}', 0, 0 \
             UNION ALL SELECT 'tasker.step_results', \
                    jsonb_build_object('task_id', task_id, 'step_id', id, 'attempt', 1), 0, 0 \
             FROM steps WHERE name = 'remote'",
        ] {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        pool.close().await;

        let store = PgStoreOptions::new(&db.url).connect().await.unwrap();
        let row = sqlx::query("SELECT id FROM steps WHERE name = 'waiting'")
            .fetch_one(store.backend().pool())
            .await
            .unwrap();
        let waiting = store
            .step_get(tasker_types::StepId(row.get("id")))
            .await
            .unwrap();
        assert_eq!(waiting.queue.as_deref(), Some("tasker.local_steps"));
        assert_eq!(
            store.queue_depth("tasker.local_steps").await.unwrap().ready,
            1
        );
        assert_eq!(
            store.queue_depth("tasker.task_work").await.unwrap().ready,
            1
        );
        let row = sqlx::query("SELECT id FROM steps WHERE name = 'remote'")
            .fetch_one(store.backend().pool())
            .await
            .unwrap();
        let remote = store
            .step_get(tasker_types::StepId(row.get("id")))
            .await
            .unwrap();
        assert_eq!(
            remote.queue.as_deref(),
            Some("demo"),
            "its namespace's queue"
        );
        assert_eq!(
            store
                .queue_depth("tasker.step_results")
                .await
                .unwrap()
                .ready,
            1,
            "the pending remote result stays"
        );
        assert_eq!(store.queue_depth("demo").await.unwrap().invisible, 1);
        assert_eq!(
            store.step_edges(waiting.task_id).await.unwrap().len(),
            1,
            "the edges survive losing their foreign keys"
        );
        store.close().await;
        db.drop_database().await.unwrap();
    }
}
