//! Backend-only: the `LISTEN` connection behind wake-ups is stopped by `close()`, even while a
//! subscriber still holds its receiver: the session leaves the server, the receiver ends and
//! `close()` itself returns.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tasker_store::Store;
use tasker_store_postgres::{test_database::TestDatabase, PgStoreOptions};
use tokio::time::{sleep, timeout, Instant};

/// Polls `check` every 50 ms until it holds, for up to 5 s.
async fn within_5s(mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_stops_the_wakeup_listener() {
    let db = TestDatabase::create().await.unwrap();
    let store = PgStoreOptions::new(&db.url).connect().await.unwrap();
    let mut admin = PgConnection::connect(&db.url).await.unwrap();
    let mut wakeups = store
        .wakeup_subscribe()
        .await
        .unwrap()
        .expect("postgres has LISTEN");

    // The listener's session, as the server shows it.
    let mut listener_pid = None;
    let seen = within_5s(async || {
        listener_pid = sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'",
        )
        .bind(&db.name)
        .fetch_optional(&mut admin)
        .await
        .unwrap();
        listener_pid.is_some()
    })
    .await;
    assert!(seen, "the LISTEN session shows in pg_stat_activity");
    let pid = listener_pid.unwrap();

    timeout(Duration::from_secs(10), store.close())
        .await
        .expect("close() returns while a subscriber holds its receiver");

    let gone = within_5s(async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(&mut admin)
            .await
            .unwrap()
            == 0
    })
    .await;
    assert!(gone, "the LISTEN session {pid} is gone after close()");
    assert_eq!(
        timeout(Duration::from_secs(5), wakeups.recv())
            .await
            .expect("the receiver ends"),
        None
    );
    assert!(
        store.wakeup_subscribe().await.is_err(),
        "no new listener after close()"
    );

    admin.close().await.unwrap();
    db.drop_database().await.unwrap();
}
