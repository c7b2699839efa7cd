//! Backend-only (PostgreSQL has deadlocks; SQLite's single writer has none): a real deadlock
//! is normalized as contention, which is retried and does not count against circuit breakers,
//! and every normalized error keeps the driver's error as its source.

use std::error::Error as _;

use sqlx::{Connection, PgConnection};
use tasker_store::StoreError;
use tasker_store_postgres::{normalize_error, test_database::TestDatabase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_is_contention_with_its_source_kept() {
    let db = TestDatabase::create().await.unwrap();
    let mut setup = PgConnection::connect(&db.url).await.unwrap();
    for statement in [
        "CREATE TABLE t (id int PRIMARY KEY, v int)",
        "INSERT INTO t VALUES (1, 0), (2, 0)",
    ] {
        sqlx::query(statement).execute(&mut setup).await.unwrap();
    }
    let mut a = PgConnection::connect(&db.url).await.unwrap();
    let mut b = PgConnection::connect(&db.url).await.unwrap();
    let mut ta = a.begin().await.unwrap();
    let mut tb = b.begin().await.unwrap();
    sqlx::query("UPDATE t SET v = 1 WHERE id = 1")
        .execute(&mut *ta)
        .await
        .unwrap();
    sqlx::query("UPDATE t SET v = 1 WHERE id = 2")
        .execute(&mut *tb)
        .await
        .unwrap();
    // Each now waits for the other's row: PostgreSQL kills one of them.
    let (ra, rb) = tokio::join!(
        sqlx::query("UPDATE t SET v = 2 WHERE id = 2").execute(&mut *ta),
        sqlx::query("UPDATE t SET v = 2 WHERE id = 1").execute(&mut *tb),
    );
    let err = match (ra, rb) {
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => e,
        other => panic!("expected exactly one deadlock victim, got {other:?}"),
    };
    let err = normalize_error(err);
    assert!(
        matches!(err, StoreError::Contended { .. }),
        "a deadlock is contention: {err:?}"
    );
    assert!(err.is_retryable());
    assert!(
        !err.is_infrastructure(),
        "contention must not trip breakers"
    );
    let source = err.source().expect("the driver's error is kept");
    assert!(source.to_string().contains("deadlock"), "{source}");
    drop((ta, tb));
    drop((a, b, setup));
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_unavailable_with_its_source_kept() {
    // Nothing listens on port 1.
    let err = PgConnection::connect("postgres://postgres@127.0.0.1:1/postgres")
        .await
        .unwrap_err();
    let err = normalize_error(err);
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(err.is_infrastructure());
    assert!(err.source().is_some());
}
