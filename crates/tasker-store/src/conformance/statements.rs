//! Statement counting ([`crate::statements`]) against a real backend. The count is per process,
//! so backends run this from a test binary of its own with
//! [`statements_conformance!`](crate::statements_conformance), never beside other tests.

use std::sync::{Arc, Once};

use tracing_subscriber::layer::SubscriberExt;

use crate::{
    conformance::{create_task, diamond},
    statements, Store, TemplateGetParams,
};

/// Expands [`statements_are_counted`] into a `#[tokio::test]` for one backend.
#[macro_export]
macro_rules! statements_conformance {
    ($factory:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn statements_are_counted() {
            let env = $factory().await;
            $crate::conformance::statements::statements_are_counted(env.store.clone()).await;
            env.store.close().await;
            if let Some(cleanup) = env.cleanup {
                cleanup.await;
            }
        }
    };
}

/// Installs the counting layer as the process's subscriber, once.
fn install_counter() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(statements::counter());
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other subscriber in this test binary");
    });
}

/// Every statement the driver runs is counted, with no count written at the call site: nothing
/// before counting starts, then exactly one per read, and a write transaction counts its
/// statements but not its `BEGIN` and `COMMIT`.
pub async fn statements_are_counted(store: Arc<dyn Store>) {
    install_counter();
    let task = create_task(store.as_ref(), &diamond(), None).await;
    assert_eq!(statements::executed(), 0, "counted before counting started");

    statements::start_counting();
    let before = statements::executed();
    store.task_get(task.id).await.unwrap();
    assert_eq!(
        statements::executed(),
        before + 1,
        "one read, one statement"
    );

    let before = statements::executed();
    store.step_list(task.id).await.unwrap();
    store
        .template_get(&TemplateGetParams {
            namespace: "demo".into(),
            name: "diamond".into(),
            version: None,
        })
        .await
        .unwrap();
    assert_eq!(statements::executed(), before + 2);

    // Registering a known template reads it and writes nothing: one statement inside its
    // transaction, whose BEGIN and COMMIT (or ROLLBACK) are not counted.
    let before = statements::executed();
    create_task(store.as_ref(), &diamond(), Some("again")).await;
    let created = statements::executed() - before;
    assert!(created > 1, "a task creation counted {created} statements");
}
