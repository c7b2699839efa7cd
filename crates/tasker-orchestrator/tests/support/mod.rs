//! What the engine tests share: a fresh store on each backend, template registration, and
//! `on_both_backends!`, which runs each named test on SQLite and on PostgreSQL.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use tasker_store::{Store, TemplateRegisterParams};
use tasker_store_postgres::{test_database::TestDatabase, PgStoreOptions};
use tasker_store_sqlite::SqliteStoreOptions;
use tasker_template::TaskTemplate;

/// A store on a temporary SQLite file, removed with the directory.
pub async fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStoreOptions::new(dir.path().join("t.db"))
        .open()
        .await
        .unwrap();
    (Arc::new(store), dir)
}

/// A store on a throw-away PostgreSQL database.
pub async fn postgres() -> (Arc<dyn Store>, TestDatabase) {
    let db = TestDatabase::create().await.unwrap();
    let store = PgStoreOptions::new(&db.url).connect().await.unwrap();
    (Arc::new(store), db)
}

/// Registers the template `yaml`.
pub async fn register(store: &dyn Store, yaml: &str) {
    store
        .template_register(&TemplateRegisterParams {
            template: TaskTemplate::from_yaml_str(yaml, "test")
                .unwrap()
                .to_definition(),
        })
        .await
        .unwrap();
}

/// Expands each `async fn NAME(store: Arc<dyn Store>)` of the test file into a test per backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _dir) = $crate::support::sqlite().await;
                    super::$name(store).await;
                }
            )+
        }
        mod postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, db) = $crate::support::postgres().await;
                    super::$name(store.clone()).await;
                    store.close().await;
                    db.drop_database().await.unwrap();
                }
            )+
        }
    };
}
