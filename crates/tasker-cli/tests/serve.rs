//! `tasker serve` end to end, as a user runs it: start the server on a free port, register a
//! template and submit a task over HTTP, let `examples/workers/python_worker.py` run the steps
//! the server has no handler for, and watch the task reach `Complete`. On SQLite and on
//! PostgreSQL.

mod support;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use support::{
    get, http, post_json, register_yaml, root, serve, step, submit, tasker, wait_for_state,
    wait_until, with_postgres, Server,
};

fn run_the_tour(server: &Server) {
    let addr = &server.addr;
    let template =
        std::fs::read_to_string(root().join("examples/templates/greeting.yaml")).unwrap();
    let (status, body) = http(
        addr,
        "POST",
        "/v1/templates",
        "application/yaml",
        &template,
        None,
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body,
        json!({"namespace": "greeting", "name": "hello", "version": "1.0.0"})
    );

    let request = json!({"namespace": "greeting", "name": "hello", "context": {"name": "ada", "amounts": [2, 3]}});
    let (status, task) = post_json(addr, "/v1/tasks", &request);
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_i64().unwrap();

    let worker = Command::new("python3")
        .arg(root().join("examples/workers/python_worker.py"))
        .args([
            "--url",
            &format!("http://{addr}"),
            "--namespace",
            "greeting",
            "--exit-when-idle",
            "3",
        ])
        .output()
        .expect("run the python worker");
    let worker_out = String::from_utf8_lossy(&worker.stdout);
    assert!(
        worker.status.success(),
        "{worker_out}\n{}",
        String::from_utf8_lossy(&worker.stderr)
    );
    assert!(
        worker_out.contains("step greet (attempt 1): complete done"),
        "{worker_out}"
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let task = loop {
        let (status, task) = http(
            addr,
            "GET",
            &format!("/v1/tasks/{id}"),
            "application/json",
            "",
            None,
        );
        assert_eq!(status, 200);
        if task["state"] == "Complete" || Instant::now() > deadline {
            break task;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(task["state"], "Complete", "{task}");
    let step = |name: &str| {
        task["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        step("greet")["result"],
        json!({"greeting": "hello ada", "from": "python"})
    );
    assert_eq!(step("total")["result"], json!({"total": 5}));
    assert_eq!(step("finish")["state"], "Complete");
    assert!(task["transitions"].as_array().unwrap().len() > 10);
}

#[test]
fn the_tour_on_sqlite() {
    let server = serve(&[], &[]);
    run_the_tour(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tour_on_postgres() {
    with_postgres(|url| {
        let server = serve(&["--database-url", &url], &[]);
        run_the_tour(&server);
    })
    .await;
}

#[test]
fn with_a_token_everything_but_health_requires_it() {
    let server = serve(&[], &[("TASKER_API_TOKEN", "s3cret")]);
    let addr = &server.addr;
    assert_eq!(
        http(addr, "GET", "/health", "application/json", "", None).0,
        200
    );
    let (status, body) = http(addr, "GET", "/v1/templates", "application/json", "", None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(
        http(
            addr,
            "GET",
            "/v1/templates",
            "application/json",
            "",
            Some("wrong")
        )
        .0,
        401
    );
    assert_eq!(
        http(
            addr,
            "GET",
            "/v1/templates",
            "application/json",
            "",
            Some("s3cret")
        )
        .0,
        200
    );
    assert_eq!(
        http(addr, "GET", "/metrics", "application/json", "", None).0,
        401
    );
}

#[test]
fn client_commands_talk_to_the_server() {
    let server = serve(&[], &[]);
    let addr = &server.addr;
    let (code, out, err) = tasker(
        addr,
        &["templates", "register", "examples/templates/diamond.yaml"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("registered: demo/diamond@1.0.0"), "{out}");
    let (code, out, _) = tasker(addr, &["templates", "list", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["templates"][0]["name"],
        "diamond"
    );

    let (code, out, err) = tasker(
        addr,
        &[
            "submit",
            "demo/diamond",
            "--context",
            "{}",
            "--idempotency-key",
            "k1",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_i64()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (code, out, err) = tasker(addr, &["status", &id]);
        assert_eq!(code, 0, "{err}");
        if out.contains(": Complete") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.starts_with(&format!("task {id} demo/diamond@1.0.0: Complete")),
        "{status}"
    );
    assert!(status.contains("└ join [Complete] attempts 1"), "{status}");
    let (_, out, _) = tasker(addr, &["tasks", "list", "--state", "Complete"]);
    assert!(
        out.lines()
            .any(|l| l.contains("demo/diamond@1.0.0") && l.contains("Complete")),
        "{out}"
    );
    let (code, out, _) = tasker(addr, &["pools", "--json"]);
    assert_eq!(code, 0);
    assert!(serde_json::from_str::<Value>(&out).unwrap()["pools"]["task_finalizer"].is_object());

    let (code, _, err) = tasker(addr, &["submit", "demo/nope"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("404") && err.contains("unknown template"),
        "{err}"
    );
    let (code, _, err) = tasker("127.0.0.1:1", &["tasks", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("is `tasker serve` running?"), "{err}");
}

#[test]
fn invalid_configuration_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tasker.toml");
    std::fs::write(
        &file,
        "[default.pools.task_claimer]\nmin_executors = 5\nmax_executors = 2\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tasker"))
        .args(["serve", "--bind", "127.0.0.1:0", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("pools.task_claimer.min_executors"),
        "{stderr}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tasker"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("TASKER_QUEUES__MAX_DELIVERIES", "zero")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.to_lowercase().contains("max_deliveries"), "{stderr}");
    assert_eq!(
        stderr.matches("invalid type").count(),
        1,
        "said once: {stderr}"
    );
}

/// `tasker serve` on an address already taken fails before creating anything on disk.
#[test]
fn serve_on_a_taken_address_fails_without_creating_the_data_directory() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("sub");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tasker"))
        .args(["serve", "--bind", &addr, "--data-dir"])
        .arg(&data)
        .env_remove("TASKER_DATABASE_URL")
        .env_remove("TASKER_CONFIG")
        .env_remove("TASKER_DATA_DIR")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tasker serve kept running on a taken address");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("binding {addr}")), "{stderr}");
    assert!(!data.exists(), "{} was created", data.display());
    drop(taken);
}

/// `tasker status` marks the error of an attempt that a later one made good as that
/// attempt's, not as the step's error.
#[test]
fn status_marks_an_earlier_attempts_error_as_earlier() {
    let server = serve(&[], &[]);
    let addr = &server.addr;
    register_yaml(
        addr,
        "namespace: demo\nname: flaky\nversion: 1.0.0\nsteps:\n  - name: flaky\n    handler: {name: fail, config: {times: 1, retryable: true}}\n    retry: {max_attempts: 2, base_ms: 10, max_ms: 10, jitter: false}\n",
    );
    let id = submit(addr, "demo", "flaky");
    let task = wait_for_state(addr, id, "Complete");
    assert_eq!(step(&task, "flaky")["attempts"], 2, "{task}");
    let (code, out, err) = tasker(addr, &["status", &id.to_string()]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[1].starts_with("  - flaky [Complete] attempts 2"),
        "{out}"
    );
    assert_eq!(
        lines[2], "    attempt 1 failed: fail handler: attempt 1 fails as configured",
        "{out}"
    );
    assert!(!out.contains("error:"), "{out}");
}

/// `tasks list --state` reads any case; a state that does not exist is refused naming the
/// ones that do.
#[test]
fn tasks_list_state_is_case_insensitive_and_a_bad_one_lists_the_valid_ones() {
    let server = serve(&[], &[]);
    let addr = &server.addr;
    let yaml = std::fs::read_to_string(root().join("examples/templates/diamond.yaml")).unwrap();
    register_yaml(addr, &yaml);
    let id = submit(addr, "demo", "diamond");
    wait_for_state(addr, id, "Complete");
    for state in ["complete", "COMPLETE", "Complete"] {
        let (code, out, err) = tasker(addr, &["tasks", "list", "--state", state, "--json"]);
        assert_eq!(code, 0, "{state}: {err}");
        let page: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(page["tasks"][0]["id"], id, "{state}: {page}");
    }
    let (code, out, _) = tasker(addr, &["tasks", "list", "--state", "error", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["tasks"],
        json!([])
    );
    let (code, out, err) = tasker(addr, &["tasks", "list", "--state", "bogus"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains(r#"unknown task state "bogus""#), "{err}");
    for valid in [
        "Pending",
        "Complete",
        "Error",
        "Cancelled",
        "ResolvedManually",
    ] {
        assert!(err.contains(valid), "{valid} not listed: {err}");
    }
    // The server reads states the same way.
    let (status, body) = http(
        addr,
        "GET",
        "/v1/tasks?state=complete",
        "application/json",
        "",
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tasks"][0]["id"], id);
}

/// `tasker tasks cancel|retry|resolve` do what the API's operator routes do; refusals are
/// reported on stderr with exit 1.
#[test]
fn operator_actions_from_the_cli() {
    let server = serve(&[], &[]);
    let addr = &server.addr;
    let failing =
        std::fs::read_to_string(root().join("crates/tasker-cli/tests/fixtures/failing.yaml"))
            .unwrap();
    register_yaml(addr, &failing);
    register_yaml(
        addr,
        "namespace: demo\nname: slow\nversion: 1.0.0\nsteps:\n  - {name: wait, handler: {name: sleep, config: {ms: 600000}}}\n",
    );

    // Retry: the failed step runs again, its attempts starting over.
    let id = submit(addr, "demo", "failing");
    let ids = id.to_string();
    wait_for_state(addr, id, "Error");
    let (code, out, err) = tasker(addr, &["tasks", "retry", &ids, "broken"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("step broken of task {id}: ")),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    // The retried attempt fails again: the step's second permanent failure, after one retry.
    let events = |task: &Value, event: &str| {
        let broken = &step(task, "broken")["id"];
        task["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| &t["step_id"] == broken && t["event"] == event)
            .count()
    };
    let task = wait_until(addr, id, "failed again", |task| {
        task["state"] == "Error" && events(task, "fail_permanent") == 2
    });
    assert_eq!(events(&task, "retry"), 1, "{task}");
    assert_eq!(step(&task, "broken")["attempts"], 1, "{task}");

    // Resolve, with an output its children would see.
    let (code, out, err) = tasker(
        addr,
        &[
            "tasks",
            "resolve",
            &ids,
            "broken",
            "--output",
            r#"{"fixed": true}"#,
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let resolved: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(resolved["name"], "broken");
    assert_eq!(resolved["state"], "ResolvedManually");
    assert_eq!(resolved["result"], json!({"fixed": true}));

    // Refusals: the API's message on stderr, exit 1, nothing on stdout.
    let (code, out, err) = tasker(addr, &["tasks", "retry", &ids, "broken"]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("409"), "{err}");
    let (code, _, err) = tasker(addr, &["tasks", "resolve", &ids, "no-such-step"]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    let (code, _, err) = tasker(addr, &["tasks", "cancel", "999999"]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    let (code, _, err) = tasker(
        addr,
        &["tasks", "resolve", &ids, "broken", "--output", "{nope"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("--output is not valid JSON"), "{err}");

    // Resolve without an output; then cancel a running task, in JSON and in text.
    let id = submit(addr, "demo", "failing");
    wait_for_state(addr, id, "Error");
    let (code, out, err) = tasker(addr, &["tasks", "resolve", &id.to_string(), "broken"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("step broken of task {id}: ResolvedManually\n"));

    let id = submit(addr, "demo", "slow");
    let (code, out, err) = tasker(addr, &["tasks", "cancel", &id.to_string(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let cancelled: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (cancelled["id"].as_i64(), cancelled["state"].as_str()),
        (Some(id), Some("Cancelled"))
    );
    let id = submit(addr, "demo", "slow");
    let (code, out, err) = tasker(addr, &["tasks", "cancel", &id.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("task {id} Cancelled\n"));
    let (code, _, err) = tasker(addr, &["tasks", "cancel", &id.to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains("409"), "{err}");
}

/// The instance's id, from its pools view.
fn instance_of(server: &Server) -> String {
    get(&server.addr, "/v1/health/pools")["instance"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Two `tasker serve` instances on one PostgreSQL database, at the default cluster settings:
/// kill -9 the one running a step, and the other runs the step again within 10 s (the leader
/// declares the silent instance dead and ends its lease; the lost attempt is retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_of_a_killed_instance_runs_again_elsewhere_within_ten_seconds() {
    let db = tasker_store_postgres::test_database::TestDatabase::create()
        .await
        .unwrap();
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let servers = [
            serve(&["--database-url", &url], &[]),
            serve(&["--database-url", &url], &[]),
        ];
        let template = "namespace: failover\nname: nap\nversion: 1.0.0\nsteps:\n\
             - {name: nap, handler: {name: sleep, config: {ms: 2000}}, \
                retry: {max_attempts: 3, base_ms: 10, max_ms: 10}}\n";
        let (status, body) = http(
            &servers[0].addr,
            "POST",
            "/v1/templates",
            "application/yaml",
            template,
            None,
        );
        assert_eq!(status, 201, "{body}");
        let (status, task) = post_json(
            &servers[0].addr,
            "/v1/tasks",
            &json!({"namespace": "failover", "name": "nap", "context": {}}),
        );
        assert_eq!(status, 201, "{task}");
        let id = task["id"].as_i64().unwrap();
        wait_until(&servers[0].addr, id, "the step running", |t| {
            t["steps"][0]["state"] == "InProgress"
        });
        // Whoever holds the step's lease is killed.
        let cluster = get(&servers[0].addr, "/v1/cluster");
        let holder = cluster["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["leases"] == 1)
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("nobody holds the step: {cluster}"));
        let [first, second] = servers;
        let (mut killed, survivor) = if instance_of(&first) == holder {
            (first, second)
        } else {
            (second, first)
        };
        killed.child.kill().unwrap();
        killed.child.wait().unwrap();
        let at = Instant::now();
        let again = wait_until(&survivor.addr, id, "the step started again", |t| {
            t["steps"][0]["attempts"] == 2
        });
        let failover = at.elapsed();
        eprintln!("failover: the killed instance's step started again {failover:?} after the kill");
        assert!(failover < Duration::from_secs(10), "{failover:?}: {again}");
        let done = wait_until(&survivor.addr, id, "the task complete", |t| {
            t["state"] == "Complete"
        });
        assert_eq!(done["steps"][0]["attempts"], 2, "{done}");
        let cluster = get(&survivor.addr, "/v1/cluster");
        assert_eq!(
            cluster["instances"].as_array().unwrap().len(),
            1,
            "the killed instance was declared dead: {cluster}"
        );
        assert_eq!(cluster["leader"], instance_of(&survivor));
    })
    .await
    .unwrap();
    db.drop_database().await.unwrap();
}
