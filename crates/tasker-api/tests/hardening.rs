//! The API under attack and under outages, on both backends: lease tokens bound to their
//! step, the engine's queues out of reach, committed writes never answered 5xx, NUL characters
//! and unknown fields refused as 4xx naming the field, one error shape for every error, a
//! readiness probe that answers within a second, strict ids, handler configurations checked
//! at registration, and batch creation.

mod support;

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
    Router,
};
use serde_json::{json, Value};
use support::faulty::Faulty;
use tasker_api::{router, ApiConfig};
use tasker_orchestrator::{handler::HandlerRegistry, Engine, EngineConfig};
use tasker_store::Store;
use tasker_store_postgres::{test_database::TestDatabase, PgStoreOptions};
use tasker_store_sqlite::SqliteStoreOptions;
use tower::ServiceExt;

/// A store of either backend, with what must be cleaned up after it.
struct Backend {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    db: Option<TestDatabase>,
}

impl Backend {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStoreOptions::new(dir.path().join("t.db"))
            .open()
            .await
            .unwrap();
        Self {
            store: Arc::new(store),
            _dir: Some(dir),
            db: None,
        }
    }

    async fn postgres() -> Self {
        let db = TestDatabase::create().await.unwrap();
        let store = PgStoreOptions::new(&db.url).connect().await.unwrap();
        Self {
            store: Arc::new(store),
            _dir: None,
            db: Some(db),
        }
    }
}

struct Api {
    router: Router,
    engine: Arc<Engine>,
    faulty: Arc<Faulty>,
    backend: Backend,
}

impl Api {
    async fn start(backend: Backend, config: ApiConfig) -> Self {
        let faulty = Faulty::new(backend.store.clone());
        let engine = Arc::new(
            Engine::start(
                faulty.clone(),
                EngineConfig::default(),
                HandlerRegistry::with_builtins(),
            )
            .await
            .unwrap(),
        );
        Self {
            router: router(engine.clone(), config),
            engine,
            faulty,
            backend,
        }
    }

    async fn stop(self) {
        self.engine.shutdown().await;
        self.backend.store.close().await;
        if let Some(db) = &self.backend.db {
            db.drop_database().await.unwrap();
        }
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, body)
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        content_type: &str,
        body: String,
    ) -> (StatusCode, Value) {
        self.send(
            Request::builder()
                .method(method)
                .uri(uri)
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from(body))
                .unwrap(),
        )
        .await
    }

    async fn post(&self, uri: &str, body: &Value) -> (StatusCode, Value) {
        self.call("POST", uri, "application/json", body.to_string())
            .await
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call("GET", uri, "application/json", String::new())
            .await
    }

    async fn register(&self, yaml: &str) -> (StatusCode, Value) {
        self.call("POST", "/v1/templates", "application/yaml", yaml.to_owned())
            .await
    }
}

/// Runs `body` against a fresh API on each backend.
macro_rules! on_both_backends {
    ($($name:ident($config:expr) |$api:ident| $body:block)+) => {
        $(
            mod $name {
                use super::*;

                async fn run($api: &Api) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let api = Api::start(Backend::sqlite().await, $config).await;
                    run(&api).await;
                    api.stop().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let api = Api::start(Backend::postgres().await, $config).await;
                    run(&api).await;
                    api.stop().await;
                }
            }
        )+
    };
}

fn code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

fn message(body: &Value) -> &str {
    body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

const TWO_REMOTE: &str = "namespace: remote\nname: pair\nversion: 1.0.0\nsteps:\n- {name: x, handler: py_x}\n- {name: y, handler: py_y}\n";
const SHOP: &str = "namespace: shop\nname: order\nversion: 1.0.0\nsteps:\n- {name: a, handler: noop}\n- {name: b, handler: noop, depends_on: [a]}\n";
const WAITING: &str =
    "namespace: shop\nname: waiting\nversion: 1.0.0\nsteps:\n- {name: work, handler: py_later}\n";

async fn step_state(api: &Api, task: i64, name: &str) -> Value {
    let (_, view) = api.get(&format!("/v1/tasks/{task}")).await;
    view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {view}"))
        .clone()
}

async fn task_id_of(api: &Api, name: &str) -> i64 {
    let (_, list) = api.get(&format!("/v1/tasks?name={name}")).await;
    list["tasks"][0]["id"].as_i64().unwrap()
}

on_both_backends! {
    lease_tokens_are_bound_to_their_step(ApiConfig::default()) |api| {
        assert_eq!(api.register(TWO_REMOTE).await.0, StatusCode::CREATED);
        let (status, task) = api
            .post("/v1/tasks", &json!({"namespace": "remote", "name": "pair", "context": {}}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{task}");
        let task_id = task["id"].as_i64().unwrap();
        // One claim takes both steps: their deliveries share a lease token.
        let mut claimed = Vec::new();
        for _ in 0..100 {
            let (status, body) = api
                .post("/v1/workers/claim", &json!({"namespace": "remote", "worker_id": "w", "max": 2, "lease_ms": 60000}))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            claimed.extend(body["steps"].as_array().unwrap().iter().cloned());
            if claimed.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(claimed.len(), 2);
        let (x, y) = (&claimed[0], &claimed[1]);
        let x_token = x["lease_token"].as_str().unwrap();
        let y_id = y["step_id"].as_i64().unwrap();
        for (action, body) in [
            ("complete", json!({"lease_token": x_token, "output": {"stolen": true}})),
            ("fail", json!({"lease_token": x_token, "error": "nope", "retryable": false})),
            ("heartbeat", json!({"lease_token": x_token, "lease_ms": 1000})),
        ] {
            let (status, body) = api.post(&format!("/v1/steps/{y_id}/{action}"), &body).await;
            assert_eq!(status, StatusCode::CONFLICT, "{action}: {body}");
            assert_eq!(code(&body), "lease_mismatch", "{action}");
        }
        for step in [x, y] {
            let name = step["name"].as_str().unwrap();
            let now = step_state(api, task_id, name).await;
            assert_eq!(now["state"], "InProgress", "{name} moved: {now}");
            assert_eq!(now["result"], Value::Null, "{name}: {now}");
        }
        // Each token still works on its own step, so nothing of X's lease was spent.
        for step in [x, y] {
            let (status, body) = api
                .post(
                    &format!("/v1/steps/{}/complete", step["step_id"]),
                    &json!({"lease_token": step["lease_token"], "output": {"me": step["name"]}}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        for _ in 0..500 {
            let (_, view) = api.get(&format!("/v1/tasks/{task_id}")).await;
            if view["state"] == "Complete" {
                for s in view["steps"].as_array().unwrap() {
                    assert_eq!(s["result"], json!({"me": s["name"]}));
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("task {task_id} did not complete");
    }

    engine_queues_are_not_claimable(ApiConfig::default()) |api| {
        for namespace in ["tasker.local_steps", "tasker.step_results", "tasker.task_work", "Shop", ""] {
            let (status, body) = api
                .post("/v1/workers/claim", &json!({"namespace": namespace, "worker_id": "w", "max": 5, "lease_ms": 1000}))
                .await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{namespace}: {body}");
            assert!(message(&body).starts_with("namespace:"), "{body}");
        }
        let yaml = "namespace: tasker.local_steps\nname: t\nversion: 1.0.0\nsteps:\n- {name: a, handler: noop}\n";
        let (status, body) = api.register(yaml).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(message(&body).contains("namespace"), "{body}");
    }

    committed_writes_answer_success_through_an_outage(ApiConfig {
        follow_up_patience: Duration::from_secs(1),
        ..ApiConfig::default()
    }) |api| {
        assert_eq!(api.register(SHOP).await.0, StatusCode::CREATED);
        assert_eq!(api.register(WAITING).await.0, StatusCode::CREATED);
        // A short outage right after the commit: the answer waits it out and is whole.
        api.faulty.outage_after_next_write(Duration::from_millis(400));
        let (status, task) = api
            .post("/v1/tasks", &json!({"namespace": "shop", "name": "order", "context": {}}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{task}");
        assert_eq!(task["steps"].as_array().unwrap().len(), 2, "{task}");
        // An outage longer than the patience: the answer comes from the write itself.
        api.faulty.outage_after_next_write(Duration::from_secs(3));
        let (status, task) = api
            .post("/v1/tasks", &json!({"namespace": "shop", "name": "waiting", "context": {}, "idempotency_key": "k"}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{task}");
        assert_eq!(task["partial"], true, "{task}");
        let id = task["id"].as_i64().unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        // The client saw success, so it does not repeat; had it, the key finds the same task.
        let (status, again) = api
            .post("/v1/tasks", &json!({"namespace": "shop", "name": "waiting", "context": {}, "idempotency_key": "k"}))
            .await;
        assert_eq!((status, again["id"].as_i64()), (StatusCode::OK, Some(id)));
        // Operator actions: the cancel commits, then storage goes away for a while. (The
        // first task finishes first, so the cancel is the next write.)
        let first = task_id_of(api, "order").await;
        for _ in 0..500 {
            if api.get(&format!("/v1/tasks/{first}")).await.1["state"] == "Complete" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        api.faulty.outage_after_next_write(Duration::from_millis(400));
        let (status, cancelled) = api.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
        assert_eq!(status, StatusCode::OK, "{cancelled}");
        assert_eq!(cancelled["state"], "Cancelled", "{cancelled}");
        assert_eq!(step_state(api, id, "work").await["state"], "Cancelled");
    }

    nul_characters_are_refused_naming_the_field(ApiConfig::default()) |api| {
        assert_eq!(api.register(SHOP).await.0, StatusCode::CREATED);
        for (body, field) in [
            (json!({"namespace": "shop", "name": "order", "context": {"note": "a\u{0}b"}}), "/context/note"),
            (json!({"namespace": "shop", "name": "order", "context": {}, "idempotency_key": "k\u{0}"}), "/idempotency_key"),
            (json!({"namespace": "sh\u{0}op", "name": "order", "context": {}}), "/namespace"),
        ] {
            let (status, answer) = api.post("/v1/tasks", &body).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
            assert!(message(&answer).starts_with(field), "{answer}");
        }
        let (status, task) = api
            .post("/v1/tasks", &json!({"namespace": "shop", "name": "order", "context": {}}))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let id = task["id"].as_i64().unwrap();
        for uri in [
            format!("/v1/tasks/{id}/steps/a%00/retry"),
            "/v1/templates/sh%00op/order".to_owned(),
            "/v1/tasks?namespace=sh%00op".to_owned(),
        ] {
            let method = if uri.contains("retry") { "POST" } else { "GET" };
            let (status, answer) = api.call(method, &uri, "application/json", String::new()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {answer}");
            assert!(message(&answer).contains("NUL"), "{answer}");
        }
        let yaml = "namespace: shop\nname: nul\nversion: 1.0.0\nsteps:\n- {name: \"a\\0\", handler: noop}\n";
        let (status, answer) = api.register(yaml).await;
        assert!(status.is_client_error(), "{status} {answer}");
        let json_template = json!({"namespace": "shop", "name": "nul", "version": "1.0.0", "steps": [{"name": "a", "handler": {"name": "echo", "config": {"value": "\u{0}"}}}]});
        let (status, answer) = api.post("/v1/templates", &json_template).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert!(message(&answer).contains("NUL"), "{answer}");
    }

    unknown_fields_of_a_task_request_are_refused(ApiConfig::default()) |api| {
        assert_eq!(api.register(SHOP).await.0, StatusCode::CREATED);
        let (status, body) = api
            .post("/v1/tasks", &json!({"namespace": "shop", "name": "order", "context": {}, "idempotency_keyy": "k"}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(message(&body).contains("idempotency_keyy"), "{body}");
    }

    handler_configs_are_checked_at_registration(ApiConfig::default()) |api| {
        let yaml = "namespace: shop\nname: nap\nversion: 1.0.0\nsteps:\n- {name: nap, handler: {name: sleep, config: {ms: abc}}}\n- {name: remote, handler: {name: py_any, config: {whatever: 1}}}\n";
        let (status, body) = api.register(yaml).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(message(&body).starts_with("steps.nap.handler.config.ms:"), "{body}");
        assert!(!message(&body).contains("remote"), "remote handlers are not checked: {body}");
        let good = "namespace: shop\nname: nap\nversion: 1.0.0\nsteps:\n- {name: nap, handler: {name: sleep, config: {ms: 5}}}\n";
        assert_eq!(api.register(good).await.0, StatusCode::CREATED);
    }

    ids_are_strict_decimals(ApiConfig::default()) |api| {
        assert_eq!(api.register(SHOP).await.0, StatusCode::CREATED);
        let (status, task) = api
            .post("/v1/tasks", &json!({"namespace": "shop", "name": "order", "context": {}}))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let id = task["id"].as_i64().unwrap();
        assert_eq!(api.get(&format!("/v1/tasks/{id}")).await.0, StatusCode::OK);
        for bad in [format!("+{id}"), format!("%2B{id}"), format!("{id}.0"), format!(" {id}")] {
            let (status, body) = api.get(&format!("/v1/tasks/{}", bad.replace(' ', "%20"))).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{bad}: {body}");
            assert_eq!(code(&body), "not_found");
        }
    }

    a_batch_creates_each_request_with_its_own_answer(ApiConfig::default()) |api| {
        assert_eq!(api.register(SHOP).await.0, StatusCode::CREATED);
        let ok = |key: &str| json!({"namespace": "shop", "name": "order", "context": {}, "idempotency_key": key});
        let (status, first) = api.post("/v1/tasks", &ok("earlier")).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, body) = api
            .post(
                "/v1/tasks/batch",
                &json!({"tasks": [ok("b-1"), {"namespace": "shop", "name": "nope", "context": {}}, ok("earlier"), ok("b-2")]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), 4);
        assert_eq!(results[0]["status"], "created");
        assert_eq!(results[1]["status"], "error");
        assert_eq!(results[1]["error"]["code"], "not_found");
        assert_eq!(results[2]["status"], "existing");
        assert_eq!(results[2]["task"]["id"], first["id"]);
        assert_eq!(results[3]["status"], "created");
        assert_ne!(results[0]["task"]["id"], results[3]["task"]["id"]);
        for r in [&results[0], &results[3]] {
            let (status, _) = api.get(&format!("/v1/tasks/{}", r["task"]["id"])).await;
            assert_eq!(status, StatusCode::OK);
        }
        let too_many: Vec<Value> = (0..1001).map(|i| ok(&format!("m-{i}"))).collect();
        let (status, body) = api.post("/v1/tasks/batch", &json!({"tasks": too_many})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let thousand: Vec<Value> = (0..1000).map(|i| ok(&format!("m-{i}"))).collect();
        let (status, body) = api.post("/v1/tasks/batch", &json!({"tasks": thousand})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["results"].as_array().unwrap().iter().all(|r| r["status"] == "created"));
    }

    readiness_answers_within_a_second_when_storage_hangs(ApiConfig::default()) |api| {
        assert_eq!(api.get("/health/ready").await.0, StatusCode::OK);
        api.faulty.hang_probe(true);
        let start = std::time::Instant::now();
        let (status, body) = api.get("/health/ready").await;
        assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(code(&body), "not_ready");
        api.faulty.hang_probe(false);
        assert_eq!(api.get("/health/ready").await.0, StatusCode::OK);
    }
}

/// Every error answer has the API's shape, including those axum makes itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_the_error_shape() {
    let api = Api::start(
        Backend::sqlite().await,
        ApiConfig {
            body_limit: 1024,
            ..ApiConfig::default()
        },
    )
    .await;
    let big = "x".repeat(4096);
    let cases: Vec<(&str, &str, &str, String, StatusCode)> = vec![
        (
            "DELETE",
            "/v1/tasks",
            "application/json",
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "PUT",
            "/health",
            "application/json",
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "GET",
            "/v2/nothing",
            "application/json",
            String::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/v1/tasks",
            "text/plain",
            "{}".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "POST",
            "/v1/tasks",
            "application/json",
            "{".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/tasks",
            "application/json",
            format!("{{\"x\": \"{big}\"}}"),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "POST",
            "/v1/tasks/batch",
            "application/json",
            format!("{{\"x\": \"{big}\"}}"),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "POST",
            "/v1/templates",
            "application/yaml",
            big.clone(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "POST",
            "/v1/workers/claim",
            "application/json",
            format!("{{\"x\": \"{big}\"}}"),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "POST",
            "/v1/steps/1/complete",
            "application/json",
            format!("{{\"x\": \"{big}\"}}"),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "POST",
            "/v1/tasks/1/steps/a/resolve",
            "application/json",
            format!("{{\"x\": \"{big}\"}}"),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "GET",
            "/v1/tasks?limit=abc",
            "application/json",
            String::new(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "GET",
            "/v1/tasks/%FF",
            "application/json",
            String::new(),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, uri, content_type, body, expected) in cases {
        let (status, answer) = api.call(method, uri, content_type, body).await;
        assert_eq!(status, expected, "{method} {uri}: {answer}");
        assert!(
            answer["error"]["code"].is_string() && answer["error"]["message"].is_string(),
            "{method} {uri}: {answer}"
        );
    }
    api.stop().await;
}

/// The bearer scheme is matched whatever its case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let api = Api::start(
        Backend::sqlite().await,
        ApiConfig {
            auth_token: Some("s3cret".into()),
            ..ApiConfig::default()
        },
    )
    .await;
    for (value, expected) in [
        ("Bearer s3cret", StatusCode::OK),
        ("bearer s3cret", StatusCode::OK),
        ("BEARER s3cret", StatusCode::OK),
        ("Bearer s3cre", StatusCode::UNAUTHORIZED),
        ("Basic s3cret", StatusCode::UNAUTHORIZED),
    ] {
        let (status, body) = api
            .send(
                Request::builder()
                    .uri("/v1/templates")
                    .header(header::AUTHORIZATION, value)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, expected, "{value}: {body}");
    }
    api.stop().await;
}

/// The health and metrics routes read the monitor's published snapshot: they answer while the
/// monitor is busy with the coordinator (as a scale-down keeps it for up to a pool's stop
/// timeout), and the monitor takes the next command once it is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_routes_never_wait_on_the_coordinator() {
    let api = Api::start(Backend::sqlite().await, ApiConfig::default()).await;
    let (busy_tx, busy_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let engine = api.engine.clone();
    let held = tokio::spawn(async move {
        engine
            .with_coordinator(move |_| {
                Box::pin(async move {
                    let _ = busy_tx.send(());
                    let _ = release_rx.await;
                })
            })
            .await
    });
    busy_rx.await.expect("the monitor took the job");
    for uri in ["/health/ready", "/v1/health/pools", "/metrics"] {
        let answer = tokio::time::timeout(Duration::from_secs(2), api.get(uri)).await;
        let (status, body) = answer.unwrap_or_else(|_| panic!("{uri} waited on the coordinator"));
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    }
    release_tx.send(()).unwrap();
    assert_eq!(held.await.unwrap(), Some(()));
    tokio::time::timeout(Duration::from_secs(5), api.engine.monitor_tick())
        .await
        .expect("the monitor serves commands again");
    api.stop().await;
}
