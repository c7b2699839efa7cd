//! The store these tests run against: a temporary SQLite file, removed afterwards.

use std::sync::Arc;

use tasker_store::conformance::TestStore;
use tasker_store_sqlite::SqliteStoreOptions;

pub(crate) async fn sqlite_store() -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStoreOptions::new(dir.path().join("tasker.db"))
        .open()
        .await
        .expect("open sqlite store");
    TestStore {
        store: Arc::new(store),
        cleanup: Some(Box::pin(async move { drop(dir) })),
    }
}
