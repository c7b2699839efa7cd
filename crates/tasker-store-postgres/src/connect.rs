use std::{sync::atomic::AtomicU64, time::Duration};

use sqlx::postgres::PgPoolOptions;
use tasker_store::{Result, StoreError};

use crate::{decode::map_err, PgStore};

/// The embedded migrations, applied on connect. Version numbers match the SQLite backend's.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (
        2,
        "inline progress",
        include_str!("../migrations/0002_inline_progress.sql"),
    ),
];

/// How to connect a [`PgStore`].
#[derive(Debug, Clone)]
pub struct PgStoreOptions {
    /// `postgres://user@host:port/database`.
    pub url: String,
    /// Size of the connection pool.
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
}

impl PgStore {
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
    pub async fn connect(options: PgStoreOptions) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect(&options.url)
            .await
            .map_err(map_err)?;
        migrator().run(&pool).await.map_err(|e| StoreError::Other {
            message: format!("migrating postgres database: {e}"),
        })?;
        Ok(Self {
            pool,
            statements: AtomicU64::new(0),
        })
    }
}

fn migrator() -> sqlx::migrate::Migrator {
    tasker_store_sql::migrator(MIGRATIONS)
}
