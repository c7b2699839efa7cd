//! Backend-only (SQLite has no row locks): a result batch given a lock wait fails `Locked`
//! when another session holds a row it must move longer than that, writes nothing, and
//! applies once the session is gone.

use std::{collections::HashSet, sync::Arc, time::Duration};

use sqlx::Connection;
use tasker_store::{
    conformance::template, StepApplyResultsParams, StepClaimParams, StepResultApply, StepRouting,
    StepStore, Store, StoreError, TaskCreateParams, TaskStore, TemplateRegisterParams,
    TemplateStore,
};
use tasker_store_postgres::{test_database::TestDatabase, PgStoreOptions};
use tasker_types::{StepEvent, StepState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_meeting_a_held_row_lock_fails_locked_and_writes_nothing() {
    let db = TestDatabase::create().await.unwrap();
    let store = PgStoreOptions::new(&db.url).connect().await.unwrap();
    let routing = StepRouting {
        local_queue: "steps".into(),
        local_handlers: Arc::new(HashSet::from(["noop".to_owned()])),
    };
    let t = template(
        "namespace: locks\nname: pair\nversion: 1.0.0\nsteps:\n\
         - {name: first, handler: noop}\n- {name: second, handler: noop, depends_on: [first]}\n",
    );
    let record = store
        .template_register(&TemplateRegisterParams {
            template: t.to_definition(),
        })
        .await
        .unwrap();
    store
        .task_create_many(&[TaskCreateParams {
            template_id: record.id,
            steps: t.step_specs(),
            context: serde_json::json!({}),
            idempotency_key: None,
            priority: 0,
            instance_id: "locks".into(),
            start: Some(routing.clone()),
        }])
        .await
        .unwrap();
    let claimed = store
        .step_claim(&StepClaimParams {
            queue: "steps".into(),
            max: 10,
            lease: Duration::from_secs(60),
            handlers: None,
            instance_id: "locks".into(),
            holder: "locks".into(),
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let first = &claimed[0].step;
    let apply = |lock_wait| StepApplyResultsParams {
        results: vec![StepResultApply {
            task_id: first.task_id,
            step_id: first.id,
            attempt: first.attempts,
            event: StepEvent::Complete,
            output: Some(serde_json::json!({"ok": true})),
            error: None,
            backoff: None,
            lease_token: Some(claimed[0].lease_token.clone()),
            unchosen: Vec::new(),
            instances: Vec::new(),
        }],
        consumed: Vec::new(),
        routing: routing.clone(),
        evaluate_queue: "finalize".into(),
        instance_id: "locks".into(),
        chain: None,
        lock_wait,
    };

    // Another session locks the child the result would enqueue.
    let mut session = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut held = session.begin().await.unwrap();
    sqlx::query("SELECT id FROM steps WHERE name = 'second' FOR UPDATE")
        .execute(&mut *held)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = store
        .step_apply_results(&apply(Some(Duration::from_millis(200))))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(err.is_retryable() && !err.is_infrastructure(), "{err:?}");
    assert!(
        waited < Duration::from_secs(5),
        "gave up after {waited:?}, not after its wait"
    );
    let step = store.step_get(first.id).await.unwrap();
    assert_eq!(step.state, StepState::InProgress, "nothing was written");

    // Once the session is gone, the same batch applies.
    held.rollback().await.unwrap();
    let applied = store
        .step_apply_results(&apply(Some(Duration::from_millis(200))))
        .await
        .unwrap();
    assert_eq!(applied.steps.len(), 1);
    assert_eq!(
        store.step_get(first.id).await.unwrap().state,
        StepState::Complete
    );
    drop(session);
    store.close().await;
    db.drop_database().await.unwrap();
}
