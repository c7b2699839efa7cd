//! The store conformance suite against PostgreSQL, one throw-away database per test.

use std::sync::Arc;

use tasker_store::{conformance::TestStore, store_conformance};
use tasker_store_postgres::{test_database::TestDatabase, PgStore, PgStoreOptions};

async fn postgres_store() -> TestStore {
    let db = TestDatabase::create().await.expect("create test database");
    let store = PgStore::connect(PgStoreOptions::new(&db.url))
        .await
        .expect("connect postgres store");
    TestStore {
        store: Arc::new(store),
        cleanup: Some(Box::pin(async move {
            db.drop_database().await.expect("drop test database");
        })),
    }
}

store_conformance!(postgres_store);
