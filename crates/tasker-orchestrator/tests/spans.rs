//! What an executor and a step attempt log carries the fields that say which pool, executor,
//! task, step and attempt it is about.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use tasker_orchestrator::{
    handler::HandlerRegistry, pipeline::messages::TaskRequest, Engine, EngineConfig, EngineEvent,
};
use tasker_store::{TemplateRegisterParams, TemplateStore};
use tasker_store_sqlite::SqliteStoreOptions;
use tasker_template::TaskTemplate;

/// A log sink the test reads back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn batch_and_attempt_spans_carry_their_fields() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    // One thread, so every task the engine spawns logs through this subscriber.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStoreOptions::new(dir.path().join("t.db")).open()
                .await
                .unwrap();
            let yaml = "namespace: demo\nname: one\nversion: 1.0.0\nsteps:\n- {name: only, handler: {name: fail, config: {times: 1}}, retry: {max_attempts: 2, base_ms: 1, max_ms: 1}}\n";
            store
                .template_register(&TemplateRegisterParams {
                    template: TaskTemplate::from_yaml_str(yaml, "t")
                        .unwrap()
                        .to_definition(),
                })
                .await
                .unwrap();
            let engine = Engine::start(
                Arc::new(store),
                EngineConfig::default(),
                HandlerRegistry::with_builtins(),
            )
            .await
            .unwrap();
            let mut events = engine.subscribe();
            let task = engine
                .submit(&TaskRequest::new("demo", "one", serde_json::json!({})))
                .await
                .unwrap()
                .task;
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Ok(EngineEvent::TaskFinished { task_id, .. })) if task_id == task.id => break,
                    Ok(_) => {}
                    Err(_) => panic!("task {} did not finish", task.id),
                }
            }
            engine.shutdown().await;
        });
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let attempt_line = logs
        .lines()
        .find(|l| l.contains("step.attempt{"))
        .unwrap_or_else(|| panic!("no step attempt span in:\n{logs}"));
    for field in [
        "executor.kind=\"in_process_worker\"",
        "executor.id=",
        "batch.size=",
        "task_id=",
        "step_id=",
        "step=only",
        "attempt=",
    ] {
        assert!(
            attempt_line.contains(field),
            "{field} missing from: {attempt_line}"
        );
    }
}
