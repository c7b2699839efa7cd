//! Several instances starting at once against an empty database migrate it once, without
//! error: each connect runs the migrations under sqlx's advisory lock, and those already
//! applied are skipped.

use tasker_store::{InstanceStore, Store};
use tasker_store_postgres::{test_database::TestDatabase, PgStoreOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_racing_on_an_empty_database_migrate_it_once() {
    let db = TestDatabase::create().await.unwrap();
    let connect = || {
        PgStoreOptions {
            max_connections: 4,
            ..PgStoreOptions::new(&db.url)
        }
        .connect()
    };
    let (a, b, c) = tokio::join!(connect(), connect(), connect());
    let stores = [a.unwrap(), b.unwrap(), c.unwrap()];
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(stores[0].backend().pool())
            .await
            .unwrap();
    let expected: Vec<i64> = (1..).take(applied.len()).collect();
    assert_eq!(applied, expected, "each migration applied once, in order");
    assert!(applied.len() >= 5);
    for store in &stores {
        // Every store works on the migrated schema.
        assert!(store.instance_list().await.unwrap().is_empty());
        store.close().await;
    }
    db.drop_database().await.unwrap();
}
