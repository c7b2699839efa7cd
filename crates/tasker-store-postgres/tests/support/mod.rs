//! The store these tests run against: a throw-away PostgreSQL database, dropped afterwards.

use std::sync::Arc;

use tasker_store::conformance::TestStore;
use tasker_store_postgres::{test_database::TestDatabase, PgStoreOptions};

pub(crate) async fn postgres_store() -> TestStore {
    let db = TestDatabase::create().await.expect("create test database");
    let store = PgStoreOptions::new(&db.url)
        .connect()
        .await
        .expect("connect postgres store");
    TestStore {
        store: Arc::new(store),
        cleanup: Some(Box::pin(async move {
            db.drop_database().await.expect("drop test database");
        })),
    }
}
