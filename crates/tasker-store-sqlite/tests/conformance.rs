//! The store conformance suite against SQLite, one temporary database file per test.

use std::sync::Arc;

use tasker_store::{conformance::TestStore, store_conformance};
use tasker_store_sqlite::{SqliteStore, SqliteStoreOptions};

async fn sqlite_store() -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(SqliteStoreOptions::new(dir.path().join("tasker.db")))
        .await
        .expect("open sqlite store");
    TestStore {
        store: Arc::new(store),
        cleanup: Some(Box::pin(async move { drop(dir) })),
    }
}

store_conformance!(sqlite_store);
