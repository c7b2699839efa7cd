//! The telemetry wiring `tasker` runs with ([`layer`], [`provider`]), with an in-memory
//! exporter in place of OTLP, on a real engine.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::Arc,
    time::Duration,
};

use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use tasker_orchestrator::{
    handler::HandlerRegistry, pipeline::messages::TaskRequest, telemetry::task_span_context,
    Engine, EngineConfig, EngineEvent,
};
use tasker_store::{StepStore, TemplateRegisterParams, TemplateStore};
use tasker_store_sqlite::SqliteStoreOptions;
use tasker_template::TaskTemplate;
use tasker_types::TaskId;
use tracing_subscriber::layer::SubscriberExt as _;

use super::*;

/// A diamond whose `flaky` branch fails its first attempt: 5 attempts for 4 steps.
const TEMPLATE: &str = "namespace: otel\nname: diamond\nversion: 1.0.0\nsteps:\n\
- {name: start, handler: noop}\n\
- {name: flaky, handler: {name: fail, config: {times: 1}}, depends_on: [start], retry: {max_attempts: 2, base_ms: 1, max_ms: 1}}\n\
- {name: steady, handler: noop, depends_on: [start]}\n\
- {name: end, handler: noop, depends_on: [flaky, steady]}\n";

/// Runs `count` tasks of [`TEMPLATE`] to the end; returns each task's id and its steps'
/// `(name, attempts)`.
async fn run_tasks(count: usize) -> Vec<(TaskId, BTreeMap<String, u32>)> {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStoreOptions::new(dir.path().join("t.db"))
            .open()
            .await
            .unwrap(),
    );
    store
        .template_register(&TemplateRegisterParams {
            template: TaskTemplate::from_yaml_str(TEMPLATE, "t")
                .unwrap()
                .to_definition(),
        })
        .await
        .unwrap();
    let engine = Engine::start(
        store.clone(),
        EngineConfig::default(),
        HandlerRegistry::with_builtins(),
    )
    .await
    .unwrap();
    let mut events = engine.subscribe();
    let mut pending = HashSet::new();
    let mut tasks = Vec::new();
    for _ in 0..count {
        let task = engine
            .submit(&TaskRequest::new("otel", "diamond", serde_json::json!({})))
            .await
            .unwrap()
            .task;
        pending.insert(task.id);
        tasks.push(task.id);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(EngineEvent::TaskFinished { task_id, .. })) => {
                pending.remove(&task_id);
            }
            Ok(_) => {}
            Err(_) => panic!("tasks {pending:?} did not finish"),
        }
    }
    engine.shutdown().await;
    let mut attempts = Vec::new();
    for task in tasks {
        let steps = store.step_list(task).await.unwrap();
        attempts.push((
            task,
            steps.into_iter().map(|s| (s.name, s.attempts)).collect(),
        ));
    }
    attempts
}

/// The span's attribute `key`, as text.
fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

#[test]
fn every_attempt_of_a_task_is_one_span_in_the_task_s_own_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = provider(exporter.clone());
    let subscriber = tracing_subscriber::registry().with(layer(&provider));
    // One thread, so every task the engine spawns reports to this subscriber.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tasks = tracing::subscriber::with_default(subscriber, || runtime.block_on(run_tasks(2)));
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    provider.shutdown().unwrap();

    // Only attempts are exported: no executor or batch spans.
    assert!(!spans.is_empty());
    assert!(
        spans.iter().all(|s| s.name == "step.attempt"),
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<BTreeSet<_>>()
    );
    let mut trace_ids = HashSet::new();
    for (task, steps) in &tasks {
        let of_task: Vec<&SpanData> = spans
            .iter()
            .filter(|s| attribute(s, "task_id") == Some(task.to_string()))
            .collect();
        // One span per attempt, naming its step and attempt.
        let expected: BTreeSet<(String, String)> = steps
            .iter()
            .flat_map(|(step, n)| (1..=*n).map(move |a| (step.clone(), a.to_string())))
            .collect();
        assert_eq!(expected.len(), 5, "{steps:?}");
        let seen: Vec<(String, String)> = of_task
            .iter()
            .map(|s| {
                assert!(attribute(s, "step_id").is_some(), "{s:?}");
                (
                    attribute(s, "step").unwrap(),
                    attribute(s, "attempt").unwrap(),
                )
            })
            .collect();
        assert_eq!(seen.len(), expected.len(), "task {task}: {seen:?}");
        assert_eq!(
            seen.into_iter().collect::<BTreeSet<_>>(),
            expected,
            "task {task}"
        );
        // All in the task's trace, children of its (remote, never exported) parent span.
        let parent = task_span_context(*task);
        for span in &of_task {
            assert_eq!(
                span.span_context.trace_id(),
                parent.trace_id(),
                "task {task}"
            );
            assert_eq!(span.parent_span_id, parent.span_id(), "task {task}");
            assert!(span.span_context.is_sampled());
        }
        trace_ids.insert(parent.trace_id());
        // The attempt's outcome is an event of its span.
        let failed = of_task
            .iter()
            .find(|s| {
                attribute(s, "step").as_deref() == Some("flaky")
                    && attribute(s, "attempt").as_deref() == Some("1")
            })
            .unwrap();
        assert!(
            failed.events.iter().any(|e| e.name == "attempt failed"
                && e.attributes.iter().any(|kv| kv.key.as_str() == "error")),
            "{:?}",
            failed.events
        );
    }
    // Different tasks, different traces; and every span belongs to one of the tasks.
    assert_eq!(trace_ids.len(), tasks.len());
    assert_eq!(spans.len(), 10);
}

#[test]
fn the_traces_endpoint_comes_from_the_configuration_then_the_environment() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    // Off by default.
    assert_eq!(traces_endpoint("", env(&[])), None);
    assert_eq!(
        traces_endpoint("", env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
        None
    );
    // A base URL gets the traces path, as OTEL_EXPORTER_OTLP_ENDPOINT does.
    assert_eq!(
        traces_endpoint(
            "",
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")])
        )
        .as_deref(),
        Some("http://collector:4318/v1/traces")
    );
    // The per-signal variable is a full URL.
    assert_eq!(
        traces_endpoint(
            "",
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://traces:4318/in"
                ),
            ])
        )
        .as_deref(),
        Some("http://traces:4318/in")
    );
    // The configuration wins.
    assert_eq!(
        traces_endpoint(
            "http://jaeger:4318/",
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://traces:4318/in"
                ),
            ])
        )
        .as_deref(),
        Some("http://jaeger:4318/v1/traces")
    );
}

#[test]
fn the_service_is_tasker_unless_named() {
    assert_eq!(service_name(None), "tasker");
    assert_eq!(service_name(Some(String::new())), "tasker");
    assert_eq!(service_name(Some("billing-flows".into())), "billing-flows");
}

#[test]
fn https_is_refused_naming_the_endpoint() {
    let err = otlp_provider("https://collector:4318/v1/traces")
        .unwrap_err()
        .to_string();
    assert!(err.contains("https://collector:4318/v1/traces"), "{err}");
    assert!(err.contains("no TLS"), "{err}");
}
