//! The API's contract, request by request, against an engine on a temporary SQLite file:
//! every error status, idempotent creation, operator actions and the remote-worker lease rules.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
    Router,
};
use serde_json::{json, Value};
use tasker_api::{router, ApiConfig};
use tasker_orchestrator::{handler::HandlerRegistry, Engine, EngineConfig};
use tasker_store_sqlite::SqliteStoreOptions;
use tower::ServiceExt;

struct Api {
    router: Router,
    engine: Arc<Engine>,
    _dir: tempfile::TempDir,
}

async fn api(config: ApiConfig) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStoreOptions::new(dir.path().join("t.db"))
        .open()
        .await
        .unwrap();
    let engine = Arc::new(
        Engine::start(
            Arc::new(store),
            EngineConfig::default(),
            HandlerRegistry::with_builtins(),
        )
        .await
        .unwrap(),
    );
    Api {
        router: router(engine.clone(), config),
        engine,
        _dir: dir,
    }
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: impl Into<Body>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, content_type);
        if let Some(t) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(body.into()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
        )
    }

    /// Any request; the answer's status, headers and body as text.
    async fn send(&self, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.call("POST", path, "application/json", body.to_string(), None)
            .await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call("GET", path, "application/json", Body::empty(), None)
            .await
    }

    async fn register(&self, yaml: &str) {
        let (status, body) = self
            .call(
                "POST",
                "/v1/templates",
                "application/yaml",
                yaml.to_owned(),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    /// Waits until the task reaches `state` (the engine runs in the background).
    async fn wait_for(&self, id: i64, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, task) = self.get(&format!("/v1/tasks/{id}")).await;
            if task["state"] == state {
                return task;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} never reached {state}: {task}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const SHOP: &str = "namespace: shop\nname: order\nversion: 1.0.0\ncontext_schema:\n  type: object\n  required: [order_id]\nsteps:\n- {name: a, handler: noop}\n- {name: b, handler: noop, depends_on: [a]}\n";
const REMOTE: &str = "namespace: remote\nname: job\nversion: 1.0.0\nsteps:\n- {name: work, handler: py_thing}\n- {name: after, handler: noop, depends_on: [work]}\n";
const FAILING: &str = "namespace: shop\nname: broken\nversion: 1.0.0\nsteps:\n- {name: bad, handler: {name: fail, config: {retryable: false}}}\n- {name: next, handler: noop, depends_on: [bad]}\n";

/// The step called `name` of a task view.
fn step_named(task: &Value, name: &str) -> Value {
    task["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {task}"))
        .clone()
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_register_list_get_and_reject_bad_input() {
    let api = api(ApiConfig::default()).await;
    api.register(SHOP).await;
    let json_template = json!({"namespace": "shop", "name": "order", "version": "1.1.0", "steps": [{"name": "a", "handler": "noop"}]});
    assert_eq!(
        api.post("/v1/templates", &json_template).await.0,
        StatusCode::CREATED
    );
    let (status, latest) = api.get("/v1/templates/shop/order").await;
    assert_eq!(
        (status, latest["version"].clone()),
        (StatusCode::OK, json!("1.1.0"))
    );
    assert_eq!(
        api.get("/v1/templates/shop/order/1.0.0").await.1["version"],
        "1.0.0"
    );
    assert_eq!(
        api.get("/v1/templates").await.1["templates"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let (status, body) = api.get("/v1/templates/shop/nope").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );

    let cyclic = "namespace: x\nname: y\nversion: 1.0.0\nsteps:\n- {name: a, handler: noop, depends_on: [b]}\n- {name: b, handler: noop, depends_on: [a]}\n";
    let (status, body) = api
        .call("POST", "/v1/templates", "application/yaml", cyclic, None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cycle: a -> b -> a"),
        "{body}"
    );
    let unknown_key = json!({"namespace": "x", "name": "y", "version": "1.0.0", "steps": [{"name": "a", "handler": "noop", "retries": 3}]});
    let (status, body) = api.post("/v1/templates", &unknown_key).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retries"),
        "{body}"
    );
    let (status, body) = api
        .call("POST", "/v1/templates", "application/json", "{nope", None)
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let changed = SHOP.replace("{name: b, handler: noop", "{name: c, handler: noop");
    let (status, body) = api
        .call("POST", "/v1/templates", "application/yaml", changed, None)
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "conflict")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_creation_errors_and_idempotency() {
    let api = api(ApiConfig {
        body_limit: 4096,
        ..ApiConfig::default()
    })
    .await;
    api.register(SHOP).await;
    let request = json!({"namespace": "shop", "name": "order", "context": {"order_id": 1}, "idempotency_key": "o-1"});
    let (status, first) = api.post("/v1/tasks", &request).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = api.post("/v1/tasks", &request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], first["id"]);
    let task = api
        .wait_for(first["id"].as_i64().unwrap(), "Complete")
        .await;
    assert_eq!(task["steps"].as_array().unwrap().len(), 2);
    assert!(task["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["to"] == "Complete"));

    let (status, body) = api
        .post(
            "/v1/tasks",
            &json!({"namespace": "shop", "name": "order", "context": {}}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid")
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("order_id"),
        "{body}"
    );
    let (status, body) = api
        .post(
            "/v1/tasks",
            &json!({"namespace": "shop", "name": "nope", "context": {}}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, body) = api
        .call(
            "POST",
            "/v1/tasks",
            "application/json",
            "{\"namespace\": ",
            None,
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let (status, body) = api
        .post("/v1/tasks", &json!({"namespace": "shop", "context": {}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("name"),
        "{body}"
    );
    let big = json!({"namespace": "shop", "name": "order", "context": {"pad": "x".repeat(10_000)}});
    let (status, body) = api.post("/v1/tasks", &big).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let (status, body) = api.get("/v1/tasks/999999").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    assert_eq!(api.get("/v1/tasks/abc").await.0, StatusCode::NOT_FOUND);
    assert_eq!(api.get("/v1/nothing").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_filters_and_pages() {
    let api = api(ApiConfig::default()).await;
    api.register(SHOP).await;
    for i in 0..5 {
        api.post(
            "/v1/tasks",
            &json!({"namespace": "shop", "name": "order", "context": {"order_id": i}}),
        )
        .await;
    }
    let (status, page) = api.get("/v1/tasks?namespace=shop&limit=3").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["tasks"].as_array().unwrap().len(), 3);
    let next = page["next"].as_i64().unwrap();
    let (_, rest) = api
        .get(&format!("/v1/tasks?namespace=shop&limit=3&before={next}"))
        .await;
    assert_eq!(rest["tasks"].as_array().unwrap().len(), 2);
    assert!(rest["next"].is_null());
    let (status, body) = api.get("/v1/tasks?state=Bogus").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid")
    );
    assert_eq!(
        api.get("/v1/tasks?limit=0").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        api.get("/v1/tasks?colour=red").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let (_, recent) = api
        .get("/v1/tasks?created_after=2000-01-01T00:00:00Z")
        .await;
    assert_eq!(recent["tasks"].as_array().unwrap().len(), 5);
    let (_, old_ones) = api
        .get("/v1/tasks?created_before=2000-01-01T00:00:00Z")
        .await;
    assert!(old_ones["tasks"].as_array().unwrap().is_empty());
    let (status, body) = api.get("/v1/tasks?created_after=yesterday").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("created_after"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_cancel_retry_and_resolve() {
    let api = api(ApiConfig::default()).await;
    api.register(FAILING).await;
    api.register(REMOTE).await;
    let (_, task) = api
        .post(
            "/v1/tasks",
            &json!({"namespace": "shop", "name": "broken", "context": {}}),
        )
        .await;
    let id = task["id"].as_i64().unwrap();
    api.wait_for(id, "Error").await;
    let (status, body) = api
        .post(&format!("/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "conflict"),
        "Error is left only by retry or resolve"
    );
    let (status, body) = api
        .post(&format!("/v1/tasks/{id}/steps/next/retry"), &json!({}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "conflict"),
        "next never failed"
    );
    let (status, step) = api
        .post(&format!("/v1/tasks/{id}/steps/bad/resolve"), &json!({}))
        .await;
    assert_eq!(
        (status, step["state"].clone()),
        (StatusCode::OK, json!("ResolvedManually"))
    );
    let done = api.wait_for(id, "Complete").await;
    assert_eq!(
        done["steps"][1]["state"], "Complete",
        "the child ran after the resolve"
    );

    let (_, task) = api
        .post(
            "/v1/tasks",
            &json!({"namespace": "shop", "name": "broken", "context": {}}),
        )
        .await;
    let id = task["id"].as_i64().unwrap();
    api.wait_for(id, "Error").await;
    let (status, step) = api
        .post(&format!("/v1/tasks/{id}/steps/bad/retry"), &json!({}))
        .await;
    assert_eq!(
        (status, step["state"].clone()),
        (StatusCode::OK, json!("Pending"))
    );
    api.wait_for(id, "Error").await;
    let (_, task) = api.get(&format!("/v1/tasks/{id}")).await;
    let retries = task["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["event"] == "retry")
        .count();
    assert_eq!(retries, 2, "step and task retry rows");

    // An operator resolve interrupted after the step changed (as by a crash) is resumed by
    // calling it again, instead of being refused because the step is no longer in Error.
    let (_, task) = api
        .post(
            "/v1/tasks",
            &json!({"namespace": "shop", "name": "broken", "context": {}}),
        )
        .await;
    let id = task["id"].as_i64().unwrap();
    let failed = api.wait_for(id, "Error").await;
    let bad_id = failed["steps"][0]["id"].as_i64().unwrap();
    api.engine
        .store()
        .step_transition(&tasker_store::StepTransitionParams {
            step_id: tasker_types::StepId(bad_id),
            from: tasker_types::StepState::Error,
            event: tasker_types::StepEvent::ResolveManually,
            output: None,
            error: None,
            backoff: None,
            instance_id: "crashed-operator".into(),
            attempt: None,
        })
        .await
        .unwrap();
    let (status, _) = api
        .post(&format!("/v1/tasks/{id}/steps/bad/resolve"), &json!({}))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the interrupted resolve is completed"
    );
    api.wait_for(id, "Complete").await;

    // A task whose step waits for a remote worker can be cancelled.
    let (_, task) = api
        .post(
            "/v1/tasks",
            &json!({"namespace": "remote", "name": "job", "context": {}}),
        )
        .await;
    let id = task["id"].as_i64().unwrap();
    let (status, cancelled) = api
        .post(&format!("/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(
        (status, cancelled["state"].clone()),
        (StatusCode::OK, json!("Cancelled"))
    );
    assert!(cancelled["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["state"] == "Cancelled"));
    assert_eq!(
        api.post("/v1/tasks/424242/cancel", &json!({})).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_workers_claim_heartbeat_complete_and_stale_leases_get_409() {
    let api = api(ApiConfig::default()).await;
    api.register(REMOTE).await;
    let (_, task) = api
        .post(
            "/v1/tasks",
            &json!({"namespace": "remote", "name": "job", "context": {"k": 1}}),
        )
        .await;
    let id = task["id"].as_i64().unwrap();

    let claim = json!({"namespace": "remote", "worker_id": "w1", "max": 5, "lease_ms": 200});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        let (status, body) = api.post("/v1/workers/claim", &claim).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if let Some(step) = body["steps"].as_array().unwrap().first() {
            break step.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing to claim");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (
            first["name"].clone(),
            first["handler"].clone(),
            first["attempt"].clone()
        ),
        (json!("work"), json!("py_thing"), json!(1))
    );
    assert_eq!(first["context"], json!({"k": 1}));
    let step_id = first["step_id"].as_i64().unwrap();
    let token = first["lease_token"].as_str().unwrap().to_owned();
    let (status, _) = api
        .post(
            &format!("/v1/steps/{step_id}/heartbeat"),
            &json!({"lease_token": token, "lease_ms": 200}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Let the lease lapse: the step is claimable again, as a second attempt.
    let second = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, body) = api
            .post(
                "/v1/workers/claim",
                &json!({"namespace": "remote", "worker_id": "w2", "max": 5, "lease_ms": 30000}),
            )
            .await;
        if let Some(step) = body["steps"].as_array().unwrap().first() {
            break step.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "lease never lapsed");
    };
    assert_eq!(
        (second["step_id"].as_i64(), second["attempt"].clone()),
        (Some(step_id), json!(2))
    );

    // The first worker is late: every call is refused and changes nothing.
    for (path, body) in [
        ("heartbeat", json!({"lease_token": token, "lease_ms": 1000})),
        (
            "complete",
            json!({"lease_token": token, "output": {"late": true}}),
        ),
        (
            "fail",
            json!({"lease_token": token, "error": "late", "retryable": false}),
        ),
    ] {
        let (status, body) = api
            .post(&format!("/v1/steps/{step_id}/{path}"), &body)
            .await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::CONFLICT, "lease_lost"),
            "{path}"
        );
    }
    let (status, _) = api
        .post(
            &format!("/v1/steps/{step_id}/fail"),
            &json!({"lease_token": "garbage", "error": "x"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a malformed token is a client bug"
    );

    let token2 = second["lease_token"].as_str().unwrap();
    let (status, _) = api
        .post(
            &format!("/v1/steps/{step_id}/complete"),
            &json!({"lease_token": token2, "output": {"done": 2}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let task = api.wait_for(id, "Complete").await;
    assert_eq!(task["steps"][0]["result"], json!({"done": 2}));
    assert_eq!(task["steps"][0]["attempts"], 2);
    let (status, _) = api
        .post(
            &format!("/v1/steps/{step_id}/complete"),
            &json!({"lease_token": token2, "output": {}}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a finished step refuses a repeat"
    );

    let (status, body) = api
        .post(
            "/v1/workers/claim",
            &json!({"namespace": "", "worker_id": "w", "max": 1, "lease_ms": 10}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid")
    );
}

/// A decision run by a remote worker: its reported output chooses the branch; a choice of a
/// step that is not its child fails it for good, saying which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_decision_chooses_its_branch() {
    let api = api(ApiConfig::default()).await;
    api.register(
        "namespace: remote\nname: route\nversion: 1.0.0\nsteps:\n\
         - {name: pick, handler: py_pick, decision: true}\n\
         - {name: left, handler: noop, depends_on: [pick]}\n\
         - {name: right, handler: noop, depends_on: [pick]}\n",
    )
    .await;
    for (output, end) in [
        (json!({"next": ["left"]}), "Complete"),
        (json!({"next": ["up"]}), "Error"),
    ] {
        let (_, task) = api
            .post(
                "/v1/tasks",
                &json!({"namespace": "remote", "name": "route", "context": {}}),
            )
            .await;
        let id = task["id"].as_i64().unwrap();
        let claim = json!({"namespace": "remote", "worker_id": "w", "max": 1, "lease_ms": 30000});
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let step = loop {
            let (_, body) = api.post("/v1/workers/claim", &claim).await;
            if let Some(step) = body["steps"].as_array().unwrap().first() {
                break step.clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "nothing to claim");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (status, body) = api
            .post(
                &format!("/v1/steps/{}/complete", step["step_id"]),
                &json!({"lease_token": step["lease_token"], "output": output}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let task = api.wait_for(id, end).await;
        let state = |name: &str| step_named(&task, name);
        if end == "Complete" {
            assert_eq!(state("left")["state"], "Complete", "{task}");
            assert_eq!(state("right")["state"], "Skipped", "{task}");
        } else {
            let pick = state("pick");
            assert_eq!(pick["state"], "Error", "{task}");
            let error = pick["error"].as_str().unwrap();
            assert!(error.contains("\"up\""), "{error}");
        }
    }
}

/// A mapped step whose handler only a remote worker has: the server expands it, the worker
/// claims each instance with its `item` and `index`, and the mapped step gathers the outputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_workers_run_the_instances_of_a_mapped_step() {
    let api = api(ApiConfig::default()).await;
    api.register(
        "namespace: remote\nname: fan\nversion: 1.0.0\nsteps:\n\
         - {name: load, handler: {name: echo, config: {value: {xs: [7, 8]}}}}\n\
         - {name: each, handler: py_double, depends_on: [load], map: {over: parents.load.xs}}\n",
    )
    .await;
    let (_, task) = api
        .post(
            "/v1/tasks",
            &json!({"namespace": "remote", "name": "fan", "context": {}}),
        )
        .await;
    let id = task["id"].as_i64().unwrap();
    let claim = json!({"namespace": "remote", "worker_id": "w", "max": 5, "lease_ms": 30000});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let (_, body) = api.post("/v1/workers/claim", &claim).await;
        for step in body["steps"].as_array().unwrap() {
            let item = step["item"].as_i64().expect("an instance carries its item");
            seen.push((step["name"].clone(), step["index"].clone(), item));
            let (status, answer) = api
                .post(
                    &format!("/v1/steps/{}/complete", step["step_id"]),
                    &json!({"lease_token": step["lease_token"], "output": item * 2}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "instances never claimed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen.sort_by_key(|(_, _, item)| *item);
    assert_eq!(
        seen,
        [
            (json!("each[0]"), json!(0), 7),
            (json!("each[1]"), json!(1), 8)
        ]
    );
    let task = api.wait_for(id, "Complete").await;
    assert_eq!(
        step_named(&task, "each")["result"],
        json!([14, 16]),
        "{task}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_pools_and_metrics() {
    let api = api(ApiConfig {
        auth_token: Some("t0k".into()),
        ..ApiConfig::default()
    })
    .await;
    assert_eq!(api.get("/health").await.0, StatusCode::OK);
    let (status, body) = api.get("/health/ready").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (status, ready) = api
        .call(
            "GET",
            "/health/ready",
            "application/json",
            Body::empty(),
            Some("t0k"),
        )
        .await;
    assert_eq!(
        (status, ready["status"].clone()),
        (StatusCode::OK, json!("ready"))
    );
    api.engine.monitor_tick().await;
    let (status, pools) = api
        .call(
            "GET",
            "/v1/health/pools",
            "application/json",
            Body::empty(),
            Some("t0k"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        pools["instance"],
        api.engine.instance_id(),
        "pools name their instance"
    );
    assert_eq!(pools["pools"].as_object().unwrap().len(), 6);
    assert_eq!(pools["pools"]["task_claimer"]["circuit_breaker"], "Closed");
    assert!(pools["backpressure"]["factor"].is_number());
    let (status, metrics) = api
        .call("GET", "/metrics", "text/plain", Body::empty(), Some("t0k"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let text = metrics.as_str().unwrap();
    assert!(text.contains("# TYPE tasker_executor_batches_total counter"));
    assert!(text.contains("tasker_executor_batches_total{executor_type=\"task_finalizer\"}"));
    assert!(text.contains("# TYPE tasker_executor_batch_duration_seconds histogram"));
    assert!(text.contains("tasker_backpressure_factor 0\n"));
}

/// `GET /v1/cluster` lists the registered instances (here, the one engine) with their
/// heartbeats and leases, as the answering instance sees them; it needs the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lists_the_registered_instances() {
    let api = api(ApiConfig {
        auth_token: Some("t0k".into()),
        ..ApiConfig::default()
    })
    .await;
    assert_eq!(api.get("/v1/cluster").await.0, StatusCode::UNAUTHORIZED);
    let (status, cluster) = api
        .call(
            "GET",
            "/v1/cluster",
            "application/json",
            Body::empty(),
            Some("t0k"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cluster["instance_id"], api.engine.instance_id());
    assert_eq!(cluster["dead_after_ms"], 5000);
    let instances = cluster["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1, "{cluster}");
    let me = &instances[0];
    assert_eq!(me["id"], api.engine.instance_id());
    assert_eq!(
        (me["this"].clone(), me["alive"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(me["state"], "Running");
    assert_eq!(me["pid"], std::process::id());
    assert_eq!(me["leases"], 0);
    assert!(me["heartbeat_age_ms"].as_i64().unwrap() >= 0);
}

/// The value of the sample `series` (name and labels, as rendered) in a Prometheus exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// After a task has run, `/metrics` shows batch latency as a histogram with cumulative
/// buckets (no quantile summaries), and its counters and gauges agree with the pools view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_batch_latency_buckets_after_work_has_run() {
    let api = api(ApiConfig::default()).await;
    api.register(SHOP).await;
    let (status, task) = api
        .post(
            "/v1/tasks",
            &json!({"namespace": "shop", "name": "order", "context": {"order_id": 7}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    api.wait_for(task["id"].as_i64().unwrap(), "Complete").await;

    // The last batches of the task may still be recording when its state is read: wait until
    // a published snapshot and the exposition agree on every pool's items.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (text, pools) = loop {
        api.engine.monitor_tick().await;
        let (_, pools) = api.get("/v1/health/pools").await;
        let (status, metrics) = api.get("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        let text = metrics.as_str().unwrap().to_owned();
        let agree = pools["pools"].as_object().unwrap().iter().all(|(name, p)| {
            sample(
                &text,
                &format!("tasker_executor_items_total{{executor_type=\"{name}\"}}"),
            ) == p["items"].as_f64()
        });
        if agree {
            break (text, pools);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "items never agreed:\n{text}\n{pools}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!text.contains("quantile="), "{text}");
    let worker = "executor_type=\"in_process_worker\"";
    assert!(
        sample(&text, &format!("tasker_executor_items_total{{{worker}}}")) >= Some(2.0),
        "both steps ran: {text}"
    );
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&format!(
                "tasker_executor_batch_duration_seconds_bucket{{{worker},le=\""
            ))?;
            let (le, value) = rest.split_once("\"} ")?;
            Some((le.to_owned(), value.parse().ok()?))
        })
        .collect();
    assert_eq!(buckets.len(), 16, "15 bounds and +Inf: {text}");
    assert_eq!(buckets[0].0, "0.0005");
    assert_eq!(buckets[14].0, "30");
    assert_eq!(buckets[15].0, "+Inf");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative: {buckets:?}"
    );
    let count = sample(
        &text,
        &format!("tasker_executor_batch_duration_seconds_count{{{worker}}}"),
    )
    .unwrap();
    assert!(count >= 1.0);
    assert_eq!(buckets[15].1, count);
    // Gauges come from the same published snapshot as the pools view.
    assert_eq!(
        sample(&text, &format!("tasker_pool_executors{{{worker}}}")),
        Some(
            pools["pools"]["in_process_worker"]["executors"]
                .as_array()
                .unwrap()
                .len() as f64
        )
    );
    assert_eq!(
        sample(&text, &format!("tasker_circuit_breaker_state{{{worker}}}")),
        Some(0.0)
    );
    assert!(sample(&text, &format!("tasker_pool_utilization_ratio{{{worker}}}")).is_some());
}

/// Messages of `queue` buried after one delivery: `n` dead letters, oldest first.
async fn bury(api: &Api, queue: &str, n: usize) -> Vec<i64> {
    use tasker_store::{QueueDequeueParams, QueueEnqueueManyParams, QueueLeaseParams};
    let store = api.engine.store();
    store
        .queue_enqueue_many(&QueueEnqueueManyParams {
            queue: queue.into(),
            payloads: (0..n).map(|i| json!({"n": i})).collect(),
            delay: Duration::ZERO,
        })
        .await
        .unwrap();
    let dequeue = || QueueDequeueParams {
        queue: queue.into(),
        max: 100,
        visibility_timeout: Duration::from_secs(60),
        max_deliveries: 1,
        holder: "test".into(),
    };
    for m in store.queue_dequeue(&dequeue()).await.unwrap() {
        store
            .queue_nack(&QueueLeaseParams {
                id: m.id,
                lease_token: m.lease_token,
                delay: Duration::ZERO,
            })
            .await
            .unwrap();
    }
    assert!(store.queue_dequeue(&dequeue()).await.unwrap().is_empty());
    let dead = store
        .dead_letter_list(&tasker_store::DeadLetterListParams {
            queue: Some(queue.into()),
            after_id: None,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), n);
    dead.iter().map(|d| d.id).collect()
}

/// Dead letters are listed in pages, read, requeued once (as a fresh message) and discarded,
/// through the API and on the dashboard's pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_requeued_and_discarded() {
    let api = api(ApiConfig::default()).await;
    let ids = bury(&api, "test.dead", 3).await;

    let (status, page) = api.get("/v1/dead_letters?queue=test.dead&limit=2").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed: Vec<i64> = page["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, ids[..2]);
    assert_eq!(page["next"], json!(ids[1]));
    let (_, rest) = api
        .get(&format!(
            "/v1/dead_letters?queue=test.dead&after={}",
            ids[1]
        ))
        .await;
    assert_eq!(rest["dead_letters"][0]["id"], json!(ids[2]));
    assert_eq!(rest["next"], Value::Null);
    let (status, one) = api.get(&format!("/v1/dead_letters/{}", ids[0])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            one["queue"].clone(),
            one["payload"].clone(),
            one["deliveries"].clone()
        ),
        (json!("test.dead"), json!({"n": 0}), json!(1))
    );
    for bad in ["/v1/dead_letters?limit=0", "/v1/dead_letters?color=red"] {
        assert_eq!(
            api.get(bad).await.0,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}"
        );
    }

    let page = |path: String| {
        let request = Request::get(path).body(Body::empty()).unwrap();
        api.send(request)
    };
    let (status, _, html) = page("/dead-letters?queue=test.dead".into()).await;
    assert_eq!(status, StatusCode::OK);
    for id in &ids {
        assert!(
            html.contains(&format!("data-dead-letter=\"{id}\"")),
            "{html}"
        );
    }
    let (status, _, html) = page(format!("/dead-letters/{}", ids[0])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("&quot;n&quot;: 0") && html.contains("/requeue"),
        "{html}"
    );

    let (status, requeued) = api
        .post(
            &format!("/v1/dead_letters/{}/requeue", ids[0]),
            &json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{requeued}");
    assert!(requeued["message_id"].as_i64().unwrap() > 0);
    let (status, again) = api
        .post(
            &format!("/v1/dead_letters/{}/requeue", ids[0]),
            &json!(null),
        )
        .await;
    assert_eq!(
        (status, error_code(&again)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let depth = api.engine.store().queue_depth("test.dead").await.unwrap();
    assert_eq!((depth.ready, depth.dead), (1, 2), "back in its queue, once");

    let discard = format!("/v1/dead_letters/{}", ids[1]);
    let (status, _) = api
        .call("DELETE", &discard, "application/json", Body::empty(), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api
        .call("DELETE", &discard, "application/json", Body::empty(), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(api.get(&discard).await.0, StatusCode::NOT_FOUND);
    let (status, _, html) = page(format!("/dead-letters/{}", ids[1])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        html.contains("<html"),
        "a missing dead letter is a page too: {html}"
    );
    assert_eq!(
        api.get("/v1/dead_letters/x1").await.0,
        StatusCode::NOT_FOUND
    );
}

/// Counts per state follow the filters; the task list carries each task's progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_counts_and_progress() {
    let api = api(ApiConfig::default()).await;
    api.register(SHOP).await;
    api.register(FAILING).await;
    let mut ids = Vec::new();
    for (ns, name, context) in [
        ("shop", "order", json!({"order_id": 1})),
        ("shop", "order", json!({"order_id": 2})),
        ("shop", "broken", json!({})),
    ] {
        let (_, task) = api
            .post(
                "/v1/tasks",
                &json!({"namespace": ns, "name": name, "context": context}),
            )
            .await;
        ids.push(task["id"].as_i64().unwrap());
    }
    api.wait_for(ids[0], "Complete").await;
    api.wait_for(ids[1], "Complete").await;
    api.wait_for(ids[2], "Error").await;

    let (status, counts) = api.get("/v1/tasks/counts").await;
    assert_eq!(status, StatusCode::OK, "{counts}");
    assert_eq!(counts["total"], 3);
    assert_eq!(counts["counts"]["Complete"], 2);
    assert_eq!(counts["counts"]["Error"], 1);
    assert_eq!(counts["counts"]["Pending"], 0, "every state is listed");
    let (_, orders) = api.get("/v1/tasks/counts?name=order").await;
    assert_eq!(
        (orders["total"].clone(), orders["counts"]["Error"].clone()),
        (json!(2), json!(0))
    );
    let (status, _) = api.get("/v1/tasks/counts?state=Error").await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the state is what is counted"
    );

    let (_, list) = api.get("/v1/tasks").await;
    let progress: Vec<(i64, Value)> = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_i64().unwrap(), t["progress"].clone()))
        .collect();
    assert_eq!(
        progress,
        [
            (ids[2], json!({"done": 0, "total": 2})),
            (ids[1], json!({"done": 2, "total": 2})),
            (ids[0], json!({"done": 2, "total": 2})),
        ]
    );
}

/// A task's events arrive as server-sent events while it runs: a `ready` first, a `step`
/// event per step that finishes, and `task` when it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_events_stream_while_the_task_runs() {
    use futures::StreamExt;
    let api = api(ApiConfig::default()).await;
    api.register("namespace: ev\nname: slow\nversion: 1.0.0\nsteps:\n- {name: wait, handler: {name: sleep, config: {ms: 300}}}\n- {name: after, handler: noop, depends_on: [wait]}\n").await;
    let (status, task) = api
        .post(
            "/v1/tasks",
            &json!({"namespace": "ev", "name": "slow", "context": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let id = task["id"].as_i64().unwrap();
    let response = api
        .router
        .clone()
        .oneshot(
            Request::get(format!("/v1/tasks/{id}/events"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !text.contains("event: task") {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("no task event in time: {text}"))
            .expect("the stream ended early")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("event: ready"), "{text}");
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    for step in ["wait", "after"] {
        let event = json!({"task_id": id, "step": step, "state": "Complete", "attempts": 1});
        assert!(events.contains(&event), "{event} in {text}");
    }
    assert!(
        text.contains(&format!("{{\"state\":\"Complete\",\"task_id\":{id}}}")),
        "{text}"
    );
    assert_eq!(
        api.get("/v1/tasks/999999/events").await.0,
        StatusCode::NOT_FOUND
    );
}

/// The dashboard's pages render from a real engine; with a token they answer the sign-in form
/// (401) until it is given, keep it in a cookie the API accepts for reads, and refuse a write
/// on the cookie alone unless the dashboard's header comes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_pages_render_and_ask_for_the_token() {
    let api = api(ApiConfig {
        auth_token: Some("t0k en".into()),
        ..ApiConfig::default()
    })
    .await;
    let get = |path: &str, cookie: Option<&str>| {
        let mut request = Request::get(path);
        if let Some(c) = cookie {
            request = request.header(header::COOKIE, c);
        }
        api.send(request.body(Body::empty()).unwrap())
    };
    let (status, headers, html) = get("/", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers[header::CONTENT_SECURITY_POLICY],
        "default-src 'self'; frame-ancestors 'none'"
    );
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(
        html.contains("name=\"token\"") && html.contains("value=\"/\""),
        "{html}"
    );
    let (status, _, js) = get("/assets/app.js", None).await;
    assert_eq!(status, StatusCode::OK, "assets need no token");
    assert!(js.contains("EventSource"));

    let login = |token: &str| {
        let body = serde_urlencoded::to_string([("token", token), ("next", "/pools")]).unwrap();
        api.send(
            Request::post("/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .unwrap(),
        )
    };
    let (status, headers, html) = login("guess").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get(header::SET_COOKIE).is_none());
    assert!(html.contains("not the one"), "{html}");
    let (status, headers, _) = login("t0k en").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/pools");
    let set = headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();

    let (status, _, json) = get("/v1/tasks", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let token = Some("t0k en");
    let (status, body) = api
        .call(
            "POST",
            "/v1/templates",
            "application/yaml",
            SHOP.to_owned(),
            token,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, task) = api
        .call(
            "POST",
            "/v1/tasks",
            "application/json",
            json!({"namespace": "shop", "name": "order", "context": {"order_id": 7}}).to_string(),
            token,
        )
        .await;
    let id = task["id"].as_i64().unwrap();
    for (path, expect) in [
        ("/".to_owned(), format!("data-task=\"{id}\"")),
        (format!("/tasks/{id}"), "data-step=\"b\"".to_owned()),
        (
            format!("/tasks/{id}?part=live"),
            "id=\"task-live\"".to_owned(),
        ),
        (format!("/tasks/{id}/steps/a"), "Transitions".to_owned()),
        (
            format!("/tasks/{id}?step=b"),
            "data-selected=\"b\"".to_owned(),
        ),
        (
            "/pools".to_owned(),
            "data-executor-type=\"task_finalizer\"".to_owned(),
        ),
        ("/pools?part=main".to_owned(), "Backpressure".to_owned()),
        ("/templates".to_owned(), "/templates/shop/order".to_owned()),
        ("/templates/shop/order".to_owned(), "<svg".to_owned()),
        ("/dead-letters".to_owned(), "No dead letters".to_owned()),
    ] {
        let (status, _, html) = get(&path, Some(&cookie)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {html}");
        assert!(html.contains(&expect), "{path} lacks {expect}: {html}");
    }
    let (status, _, html) = get("/tasks/424242", Some(&cookie)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("task 424242 not found"), "{html}");
    let (status, _, html) = get("/?state=Nope", Some(&cookie)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("state:"), "{html}");

    let cancel = |with_header: bool| {
        let mut request =
            Request::post(format!("/v1/tasks/{id}/cancel")).header(header::COOKIE, &cookie);
        if with_header {
            request = request.header("x-tasker-dashboard", "1");
        }
        api.send(request.body(Body::empty()).unwrap())
    };
    let (status, _, body) = cancel(false).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _, body) = cancel(true).await;
    assert!(
        status == StatusCode::OK || status == StatusCode::CONFLICT,
        "the cookie with the header is let through: {status} {body}"
    );
    let (status, _, _) = get("/v1/tasks", Some("tasker_token=6775657373")).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a cookie with the wrong token"
    );
    // A browser page of another site (another port of this host included) may not write,
    // whatever it holds; reads are not refused.
    for site in ["cross-site", "same-site"] {
        let request = Request::post(format!("/v1/tasks/{id}/cancel"))
            .header(header::AUTHORIZATION, "Bearer t0k en")
            .header("sec-fetch-site", site)
            .body(Body::empty())
            .unwrap();
        let (status, _, body) = api.send(request).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{site}: {body}");
    }
    let request = Request::get("/v1/tasks")
        .header(header::AUTHORIZATION, "Bearer t0k en")
        .header("sec-fetch-site", "cross-site")
        .body(Body::empty())
        .unwrap();
    assert_eq!(api.send(request).await.0, StatusCode::OK);
}
