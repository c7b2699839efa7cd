//! Backend-only: a dequeue that finds a large batch of messages out of deliveries buries them
//! all, with their ids bound as parameters rather than written into the SQL text.
//!
//! The statements are read from sqlx's own statement log (target `sqlx::query`), through a
//! process-wide subscriber: SQLite runs statements on its own worker thread.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use tasker_store::{QueueDepth, QueueDequeueParams, QueueEnqueueManyParams, QueueStore, Store};
use tasker_store_sqlite::SqliteStoreOptions;
use tracing::{
    field::{Field, Visit},
    span, Event, Metadata, Subscriber,
};

/// Records the SQL text of every statement sqlx logs.
#[derive(Clone, Default)]
struct Statements(Arc<Mutex<Vec<String>>>);

struct StatementText(Option<String>);

impl Visit for StatementText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "db.statement" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "db.statement" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl Subscriber for Statements {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == "sqlx::query"
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut text = StatementText(None);
        event.record(&mut text);
        if let Some(sql) = text.0 {
            self.0.lock().unwrap().push(sql);
        }
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

#[tokio::test]
async fn a_large_batch_of_dead_letters_is_buried_with_bound_ids() {
    let statements = Statements::default();
    tracing::subscriber::set_global_default(statements.clone()).expect("the only subscriber");
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStoreOptions::new(dir.path().join("tasker.db"))
        .open()
        .await
        .unwrap();
    // More than one statement's worth of ids (1,000 a statement).
    let n = 2_500;
    let ids = store
        .queue_enqueue_many(&QueueEnqueueManyParams {
            queue: "dlq".into(),
            payloads: (0..n).map(|i| json!({ "i": i })).collect(),
            delay: Duration::ZERO,
        })
        .await
        .unwrap();
    let dequeue = QueueDequeueParams {
        queue: "dlq".into(),
        max: 10_000,
        visibility_timeout: Duration::ZERO,
        max_deliveries: 1,
        holder: "conformance".into(),
    };
    // The first delivery leases every message (and the zero lease makes them visible again);
    // the second finds them all past `max_deliveries` and buries them.
    assert_eq!(store.queue_dequeue(&dequeue).await.unwrap().len(), n);
    statements.0.lock().unwrap().clear();
    assert!(store.queue_dequeue(&dequeue).await.unwrap().is_empty());

    let dead = store
        .dead_letter_list(&tasker_store::DeadLetterListParams {
            queue: Some("dlq".into()),
            after_id: None,
            limit: 10_000,
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), n);
    let mut dead_ids: Vec<i64> = dead.iter().map(|d| d.id).collect();
    dead_ids.sort_unstable();
    assert_eq!(dead_ids, ids);
    assert!(dead.iter().all(|d| d.deliveries == 1));
    assert_eq!(
        store.queue_depth("dlq").await.unwrap(),
        QueueDepth {
            ready: 0,
            invisible: 0,
            dead: u64::try_from(n).unwrap()
        }
    );

    let logged = statements.0.lock().unwrap().clone();
    let burying: Vec<&String> = logged
        .iter()
        .filter(|sql| {
            sql.contains("INSERT INTO dead_letters")
                || sql.contains("DELETE FROM queue_messages WHERE id IN (")
        })
        .collect();
    assert!(
        burying.len() >= 2,
        "the burying statements are logged: {logged:#?}"
    );
    for sql in burying {
        let list = &sql[sql.find("WHERE id IN (").unwrap() + "WHERE id IN (".len()..];
        assert!(
            !list.starts_with(|c: char| c.is_ascii_digit()),
            "ids are bound, not written into the SQL: {}…",
            &sql[..sql.len().min(300)]
        );
    }
    store.close().await;
}
