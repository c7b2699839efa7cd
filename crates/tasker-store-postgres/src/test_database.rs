//! Throw-away databases for tests: each test gets its own, created on the server named by
//! `TASKER_TEST_DATABASE_URL` and dropped afterwards. Their names start with
//! `TASKER_TEST_DB_PREFIX` (default `tasker_test_`): `scripts/test` gives each run its own, so
//! it can drop a run's leftovers without touching another run's databases.

use sqlx::{Connection, PgConnection};
use tasker_store::{Result, StoreError};

use crate::decode::map_err;

/// The variable naming the PostgreSQL server tests use (an admin URL, e.g.
/// `postgres://postgres@127.0.0.1:5432/postgres`).
pub const TEST_DATABASE_URL_VAR: &str = "TASKER_TEST_DATABASE_URL";

/// The variable naming the prefix of test database names (`[a-z0-9_]`, at most
/// [`MAX_PREFIX_LEN`] bytes, not starting with a digit).
pub const TEST_DB_PREFIX_VAR: &str = "TASKER_TEST_DB_PREFIX";

/// The prefix when [`TEST_DB_PREFIX_VAR`] is unset or empty.
pub const DEFAULT_PREFIX: &str = "tasker_test_";

/// Longest prefix: PostgreSQL names have at most 63 bytes, and the uuid after it takes 32.
pub const MAX_PREFIX_LEN: usize = 31;

/// A uniquely named database that lives until [`TestDatabase::drop_database`].
#[derive(Debug, Clone)]
pub struct TestDatabase {
    admin_url: String,
    /// The database's name (`<prefix><uuid>`).
    pub name: String,
    /// URL of the new database.
    pub url: String,
}

impl TestDatabase {
    /// Creates a fresh database on the server of `TASKER_TEST_DATABASE_URL`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Other`] when `TASKER_TEST_DATABASE_URL` is unset (saying how to set it) or
    /// `TASKER_TEST_DB_PREFIX` is not a valid prefix, or the server refuses.
    pub async fn create() -> Result<Self> {
        let admin_url = std::env::var(TEST_DATABASE_URL_VAR).map_err(|_| {
            StoreError::other(format!(
                "{TEST_DATABASE_URL_VAR} is not set; run the tests through scripts/test, or set it \
                 to an admin URL such as postgres://postgres@127.0.0.1:5432/postgres"
            ))
        })?;
        let prefix = std::env::var(TEST_DB_PREFIX_VAR)
            .ok()
            .filter(|p| !p.is_empty());
        let name =
            database_name(prefix.as_deref(), uuid::Uuid::new_v4()).map_err(StoreError::other)?;
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

/// `<prefix><uuid>`, with `prefix` defaulting to [`DEFAULT_PREFIX`]; an error naming the
/// variable when the prefix could not be an unquoted PostgreSQL name of at most 63 bytes.
fn database_name(prefix: Option<&str>, id: uuid::Uuid) -> std::result::Result<String, String> {
    let prefix = prefix.unwrap_or(DEFAULT_PREFIX);
    let valid = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && !prefix.starts_with(|c: char| c.is_ascii_digit())
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(format!("{prefix}{}", id.simple()))
    } else {
        Err(format!(
            "{TEST_DB_PREFIX_VAR}={prefix:?} is not a valid prefix: use a-z, 0-9 and _, at most \
             {MAX_PREFIX_LEN} bytes, not starting with a digit"
        ))
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
    use super::{database_name, with_database, MAX_PREFIX_LEN};

    #[test]
    fn names_start_with_the_prefix_and_fit_postgres() {
        let id = uuid::Uuid::new_v4();
        assert_eq!(
            database_name(None, id).unwrap(),
            format!("tasker_test_{}", id.simple())
        );
        let run = database_name(Some("tasker_test_r0a1b2c3d_"), id).unwrap();
        assert!(run.starts_with("tasker_test_r0a1b2c3d_"), "{run}");
        let longest = "a".repeat(MAX_PREFIX_LEN);
        assert_eq!(database_name(Some(&longest), id).unwrap().len(), 63);
    }

    #[test]
    fn refuses_prefixes_that_are_not_plain_names() {
        let id = uuid::Uuid::new_v4();
        for bad in [
            "",
            "Tasker_",
            "t-1_",
            "t;drop_",
            "1tasker_",
            &"a".repeat(MAX_PREFIX_LEN + 1),
        ] {
            let err = database_name(Some(bad), id).unwrap_err();
            assert!(err.contains("TASKER_TEST_DB_PREFIX"), "{err}");
        }
    }

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
