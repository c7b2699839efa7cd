use std::{path::PathBuf, str::FromStr, time::Duration};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tasker_store::{Result, StoreError};

use tasker_store_sql::SqlStore;

use crate::{decode::map_err, SqliteBackend, SqliteStore};

/// The embedded migrations, applied on open. Version numbers match the PostgreSQL backend's.
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

/// How to open a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteStoreOptions {
    /// The database file; created when missing.
    pub path: PathBuf,
    /// Connections of the read pool.
    pub read_connections: u32,
    /// How long a write waits for a lock held by another process.
    pub busy_timeout: Duration,
}

impl SqliteStoreOptions {
    /// Options for `path` with defaults: 4 readers, 5 s busy timeout.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            read_connections: 4,
            busy_timeout: Duration::from_secs(5),
        }
    }

    /// Parses `sqlite://PATH` or `sqlite:PATH`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Other`] when the URL is not a SQLite URL.
    pub fn from_url(url: &str) -> Result<Self> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| StoreError::other(format!("not a sqlite url: {url}")))?;
        let path = path.split('?').next().unwrap_or(path);
        Ok(Self::new(path))
    }

    /// Opens (creating if needed) the database file, switches it to WAL and applies migrations.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the file cannot be opened, [`StoreError::Other`] when a
    /// migration fails.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled open may leave a migration half applied (it is re-run in a
    /// transaction on the next open).
    pub async fn open(self) -> Result<SqliteStore> {
        let connect = SqliteConnectOptions::from_str("sqlite://")
            .map_err(map_err)?
            .filename(&self.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(self.busy_timeout);
        // No ping before handing out a connection (sqlx's default): a file has no server to
        // lose, and each ping is a round trip to the connection's worker thread.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .connect_with(connect.clone())
            .await
            .map_err(map_err)?;
        migrator()
            .run(&writer)
            .await
            .map_err(|e| StoreError::Other {
                message: format!("migrating {}", self.path.display()),
                source: Some(Box::new(e)),
            })?;
        let reader = SqlitePoolOptions::new()
            .max_connections(self.read_connections.max(1))
            .test_before_acquire(false)
            .connect_with(connect.read_only(true))
            .await
            .map_err(map_err)?;
        Ok(SqlStore::new(SqliteBackend { writer, reader }))
    }
}

fn migrator() -> sqlx::migrate::Migrator {
    tasker_store_sql::migrator(MIGRATIONS)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::{sqlite::SqlitePoolOptions, Row};
    use tasker_store::{QueueStore, StepClaimParams, StepStore, Store};

    use super::*;

    /// A database that ran the migrations before the step queue, with steps waiting in and
    /// held through queue messages, keeps its work across the upgrade: each step takes its
    /// (latest) message's queue and lease, the messages of steps go, the engine's other
    /// messages stay, a remote result waiting to be applied among them, and the step it is for
    /// waits in its namespace's queue, out of reach until long after the result is applied.
    #[tokio::test]
    async fn the_step_queue_migration_moves_step_messages_onto_their_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.db");
        let connect = SqliteConnectOptions::from_str("sqlite://")
            .unwrap()
            .filename(&path)
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(connect)
            .await
            .unwrap();
        tasker_store_sql::migrator(&MIGRATIONS[..2])
            .run(&pool)
            .await
            .unwrap();
        for statement in [
            "INSERT INTO templates (id, namespace, name, version, definition, created_at_ms) \
             VALUES (1, 'demo', 't', '1.0.0', '{}', 0)",
            "INSERT INTO tasks (id, template_id, namespace, name, version, state, context, \
             created_at_ms, updated_at_ms, unfinished_steps) \
             VALUES (1, 1, 'demo', 't', '1.0.0', 'StepsInProcess', '{}', 0, 0, 3)",
            "INSERT INTO steps (id, task_id, position, name, handler, handler_config, state, \
             max_attempts, retry_base_ms, retry_max_ms, retry_jitter, pending_parents) VALUES \
             (1, 1, 0, 'waiting', 'noop', 'null', 'Enqueued', 3, 1, 1, 0, 0), \
             (2, 1, 1, 'running', 'noop', 'null', 'InProgress', 3, 1, 1, 0, 0), \
             (3, 1, 2, 'after', 'noop', 'null', 'Pending', 3, 1, 1, 0, 2), \
             (4, 1, 3, 'remote', 'shell', 'null', 'InProgress', 3, 1, 1, 0, 0)",
            "INSERT INTO step_edges (task_id, parent_id, child_id) VALUES (1, 1, 3), (1, 2, 3)",
            "INSERT INTO queue_messages (queue, payload, deliveries, enqueued_at_ms, \
             visible_at_ms, lease_token) VALUES \
             ('tasker.local_steps', '{\"task_id\": 1, \"step_id\": 1}', 0, 0, 5, NULL), \
             ('tasker.local_steps', '{\"task_id\": 1, \"step_id\": 1}', 0, 0, 0, NULL), \
             ('demo', '{\"task_id\": 1, \"step_id\": 2}', 1, 0, 9999999999999, 'held'), \
             ('tasker.task_work', '{\"task_id\": 1}', 0, 0, 0, NULL), \
             ('tasker.step_results', '{\"task_id\": 1, \"step_id\": 4, \"attempt\": 1}', \
              0, 0, 0, NULL)",
        ] {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        pool.close().await;

        let store = SqliteStoreOptions::new(&path).open().await.unwrap();
        let waiting = store.step_get(tasker_types::StepId(1)).await.unwrap();
        assert_eq!(waiting.queue.as_deref(), Some("tasker.local_steps"));
        let running = store.step_get(tasker_types::StepId(2)).await.unwrap();
        assert_eq!(running.queue.as_deref(), Some("demo"));
        let after = store.step_get(tasker_types::StepId(3)).await.unwrap();
        assert_eq!(after.queue, None);
        let row = sqlx::query("SELECT lease_token, visible_at_ms FROM steps WHERE id = 2")
            .fetch_one(&store.backend().writer)
            .await
            .unwrap();
        assert_eq!(row.get::<String, _>("lease_token"), "held");
        assert_eq!(row.get::<i64, _>("visible_at_ms"), 9_999_999_999_999);
        let row = sqlx::query("SELECT visible_at_ms FROM steps WHERE id = 1")
            .fetch_one(&store.backend().writer)
            .await
            .unwrap();
        assert_eq!(
            row.get::<i64, _>("visible_at_ms"),
            0,
            "the latest message's"
        );
        let remote = store.step_get(tasker_types::StepId(4)).await.unwrap();
        assert_eq!(remote.queue.as_deref(), Some("demo"));
        assert_eq!(
            store
                .queue_depth("tasker.step_results")
                .await
                .unwrap()
                .ready,
            1
        );
        assert_eq!(
            store.queue_depth("tasker.task_work").await.unwrap().ready,
            1
        );
        assert_eq!(
            store.queue_depth("tasker.local_steps").await.unwrap().ready,
            1
        );
        assert_eq!(store.queue_depth("demo").await.unwrap().invisible, 2);
        let claimed = store
            .step_claim(&StepClaimParams {
                queue: "tasker.local_steps".into(),
                max: 10,
                lease: Duration::from_secs(30),
                handlers: None,
                instance_id: "test".into(),
                holder: "test".into(),
            })
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].step.name, "waiting");
        assert_eq!(
            store
                .step_edges(tasker_types::TaskId(1))
                .await
                .unwrap()
                .len(),
            2,
            "the edges survive the table's rebuild"
        );
        store.close().await;
    }
}
