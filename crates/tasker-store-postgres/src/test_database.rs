//! Throw-away databases for tests: each test gets its own, created on the server named by
//! `TASKER_TEST_DATABASE_URL` and dropped afterwards.

use sqlx::{Connection, PgConnection};
use tasker_store::{Result, StoreError};

use crate::decode::map_err;

/// The variable naming the PostgreSQL server tests use (an admin URL, e.g.
/// `postgres://postgres@127.0.0.1:5432/postgres`).
pub const TEST_DATABASE_URL_VAR: &str = "TASKER_TEST_DATABASE_URL";

/// A uniquely named database that lives until [`TestDatabase::drop_database`].
#[derive(Debug, Clone)]
pub struct TestDatabase {
    admin_url: String,
    /// The database's name (`tasker_test_<uuid>`).
    pub name: String,
    /// URL of the new database.
    pub url: String,
}

impl TestDatabase {
    /// Creates a fresh database on the server of `TASKER_TEST_DATABASE_URL`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Other`] when the variable is unset (saying how to set it), or the server
    /// refuses.
    pub async fn create() -> Result<Self> {
        let admin_url = std::env::var(TEST_DATABASE_URL_VAR).map_err(|_| {
            StoreError::other(format!(
                "{TEST_DATABASE_URL_VAR} is not set; run the tests through scripts/test, or set it \
                 to an admin URL such as postgres://postgres@127.0.0.1:5432/postgres"
            ))
        })?;
        let name = format!("tasker_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin_url).await.map_err(map_err)?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .map_err(map_err)?;
        conn.close().await.map_err(map_err)?;
        let url = with_database(&admin_url, &name);
        Ok(Self {
            admin_url,
            name,
            url,
        })
    }

    /// Drops the database, disconnecting whoever is still connected.
    ///
    /// # Errors
    ///
    /// When the server refuses.
    pub async fn drop_database(&self) -> Result<()> {
        let mut conn = PgConnection::connect(&self.admin_url)
            .await
            .map_err(map_err)?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await
        .map_err(map_err)?;
        conn.close().await.map_err(map_err)
    }
}

/// `url` with its database path replaced by `database` (query string kept).
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let root = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{database}?{q}"),
        None => format!("{root}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_path() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(with_database("postgres://h", "t1"), "postgres://h/t1");
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "t1"),
            "postgres://u@h/t1?sslmode=disable"
        );
    }
}
