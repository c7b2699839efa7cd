//! Arbitrary strings, NUL characters included, driven through every endpoint against
//! PostgreSQL (the stricter backend: it refuses NUL in text): no answer is a 5xx.

use std::sync::Arc;

use axum::{
    body::Body,
    http::{header, Request},
    Router,
};
use proptest::prelude::*;
use serde_json::{json, Value};
use tasker_api::{router, ApiConfig};
use tasker_orchestrator::{handler::HandlerRegistry, Engine, EngineConfig};
use tasker_store_postgres::{test_database::TestDatabase, PgStoreOptions};
use tower::ServiceExt;

/// Percent-encodes every byte outside RFC 3986's unreserved set, so any string fits in a path
/// segment or a query value (a dependency for these few lines would add nothing).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Every request a client can make, with `s` in each place a string goes.
fn requests(s: &str, task: i64, step: i64) -> Vec<(&'static str, String, String, String)> {
    let e = encode(s);
    let json = |v: Value| v.to_string();
    let j = "application/json";
    vec![
        ("POST", "/v1/tasks".into(), j.into(), json(json!({"namespace": s, "name": s, "context": {s: s}, "idempotency_key": s}))),
        ("POST", "/v1/tasks".into(), j.into(), json(json!({"namespace": "shop", "name": "order", "context": {"k": s, s: [s]}, "idempotency_key": s}))),
        ("POST", "/v1/tasks".into(), j.into(), json(json!({"namespace": "shop", "name": "order", "version": s, "context": {}}))),
        ("POST", "/v1/tasks/batch".into(), j.into(), json(json!({"tasks": [{"namespace": s, "name": "order", "context": {}}, {"namespace": "shop", "name": "order", "context": {"v": s}}]}))),
        ("GET", format!("/v1/tasks?namespace={e}&name={e}"), j.into(), String::new()),
        ("GET", format!("/v1/tasks?state={e}"), j.into(), String::new()),
        ("GET", format!("/v1/tasks?created_after={e}"), j.into(), String::new()),
        ("GET", format!("/v1/tasks/{e}"), j.into(), String::new()),
        ("POST", format!("/v1/tasks/{e}/cancel"), j.into(), "{}".into()),
        ("POST", format!("/v1/tasks/{task}/steps/{e}/retry"), j.into(), "{}".into()),
        ("POST", format!("/v1/tasks/{task}/steps/{e}/resolve"), j.into(), json(json!({"output": {s: s}}))),
        ("GET", format!("/v1/templates/{e}/{e}"), j.into(), String::new()),
        ("GET", format!("/v1/templates/shop/order/{e}"), j.into(), String::new()),
        ("POST", "/v1/templates".into(), j.into(), json(json!({"namespace": s, "name": s, "version": s, "steps": [{"name": s, "handler": s}]}))),
        ("POST", "/v1/templates".into(), j.into(), json(json!({"namespace": "shop", "name": "t", "version": "1.0.0", "steps": [{"name": "a", "handler": {"name": "echo", "config": {"value": s}}}]}))),
        ("POST", "/v1/templates".into(), "application/yaml".into(), format!("namespace: shop\nname: y\nversion: 1.0.0\nsteps:\n- {{name: {s:?}, handler: noop}}\n")),
        ("POST", "/v1/templates".into(), "application/yaml".into(), s.to_owned()),
        ("POST", "/v1/workers/claim".into(), j.into(), json(json!({"namespace": s, "worker_id": s, "max": 1, "lease_ms": 1000, "handlers": [s]}))),
        ("POST", format!("/v1/steps/{e}/heartbeat"), j.into(), json(json!({"lease_token": s}))),
        ("POST", format!("/v1/steps/{step}/heartbeat"), j.into(), json(json!({"lease_token": s}))),
        ("POST", format!("/v1/steps/{step}/complete"), j.into(), json(json!({"lease_token": s, "output": {s: s}}))),
        ("POST", format!("/v1/steps/{step}/fail"), j.into(), json(json!({"lease_token": s, "error": s}))),
        ("POST", format!("/v1/steps/{step}/complete"), j.into(), json(json!({"lease_token": format!("1.1.{s}"), "output": s}))),
        ("GET", format!("/v1/{e}"), j.into(), String::new()),
    ]
}

async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    content_type: &str,
    body: String,
) -> (u16, String) {
    let Ok(request) = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
    else {
        // Not a URI a client could send; nothing to test.
        return (400, String::new());
    };
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[test]
fn no_input_makes_a_server_error_on_postgres() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (router, engine, db, store) = runtime.block_on(async {
        let db = TestDatabase::create().await.unwrap();
        let store = Arc::new(PgStoreOptions::new(&db.url).connect().await.unwrap());
        let engine = Arc::new(
            Engine::start(
                store.clone(),
                EngineConfig::default(),
                HandlerRegistry::with_builtins(),
            )
            .await
            .unwrap(),
        );
        let router = router(engine.clone(), ApiConfig::default());
        let template =
            "namespace: shop\nname: order\nversion: 1.0.0\nsteps:\n- {name: a, handler: py_a}\n";
        let (status, body) = call(
            &router,
            "POST",
            "/v1/templates",
            "application/yaml",
            template.into(),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        (router, engine, db, store)
    });
    // A task and a step to aim the id-bearing routes at.
    let (task, step) = runtime.block_on(async {
        let (status, body) = call(
            &router,
            "POST",
            "/v1/tasks",
            "application/json",
            json!({"namespace": "shop", "name": "order", "context": {}}).to_string(),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let task: Value = serde_json::from_str(&body).unwrap();
        (
            task["id"].as_i64().unwrap(),
            task["steps"][0]["id"].as_i64().unwrap(),
        )
    });

    let strings = prop_oneof![
        any::<String>(),
        "[a-z\u{0}]{0,6}",
        Just("\u{0}".to_owned()),
        Just("tasker.local_steps".to_owned()),
        "[0-9+-]{1,25}",
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&strings, |s| {
        runtime.block_on(async {
            for (method, uri, content_type, body) in requests(&s, task, step) {
                let (status, answer) = call(&router, method, &uri, &content_type, body).await;
                prop_assert!(status < 500, "{method} {uri} answered {status}: {answer}");
            }
            Ok(())
        })
    });
    runtime.block_on(async {
        engine.shutdown().await;
        tasker_store::Store::close(store.as_ref()).await;
        db.drop_database().await.unwrap();
    });
    result.unwrap();
}
