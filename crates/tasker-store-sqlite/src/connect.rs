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
