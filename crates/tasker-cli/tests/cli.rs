//! The `tasker` binary, run as a user would run it.

use std::{path::PathBuf, process::Command};

fn tasker(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tasker"))
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("run tasker");
    (
        out.status.code().expect("exit code"),
        String::from_utf8(out.stdout).expect("utf-8 stdout"),
        String::from_utf8(out.stderr).expect("utf-8 stderr"),
    )
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const FIXTURES: &str = "crates/tasker-cli/tests/fixtures";

#[test]
fn every_example_template_validates() {
    let examples: Vec<String> = std::fs::read_dir(workspace_root().join("examples/templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            format!(
                "examples/templates/{}",
                p.file_name().unwrap().to_string_lossy()
            )
        })
        .collect();
    assert!(examples.len() >= 4);
    let args: Vec<&str> = ["templates", "validate"]
        .into_iter()
        .chain(examples.iter().map(String::as_str))
        .collect();
    let (code, stdout, _) = tasker(&args);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("ok: examples/templates/diamond.yaml (demo/diamond@1.0.0, 4 steps)"));
    assert!(stdout.contains("ok: examples/templates/tree.yaml (demo/tree@1.0.0, 7 steps)"));
    assert_eq!(stdout.lines().count(), examples.len());
}

#[test]
fn a_cycle_is_reported_with_its_path() {
    let file = format!("{FIXTURES}/cyclic.yaml");
    let (code, stdout, _) = tasker(&["templates", "validate", &file]);
    assert_eq!(code, 1);
    assert!(stdout.contains(&format!("error: {file}: ")), "{stdout}");
    assert!(stdout.contains("cycle: a -> b -> c -> a"), "{stdout}");
}

#[test]
fn a_dangling_dependency_is_named() {
    let (code, stdout, _) = tasker(&[
        "templates",
        "validate",
        &format!("{FIXTURES}/dangling.yaml"),
    ]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains(r#"step "b": depends_on: unknown step "missing""#),
        "{stdout}"
    );
}

#[test]
fn a_duplicate_step_name_is_named() {
    let (code, stdout, _) = tasker(&[
        "templates",
        "validate",
        &format!("{FIXTURES}/duplicate.yaml"),
    ]);
    assert_eq!(code, 1);
    assert!(stdout.contains(r#"duplicate step name "a""#), "{stdout}");
}

#[test]
fn an_unknown_key_is_an_error_naming_it() {
    let (code, stdout, _) = tasker(&[
        "templates",
        "validate",
        &format!("{FIXTURES}/unknown_key.yaml"),
    ]);
    assert_eq!(code, 1);
    assert!(stdout.contains("max_atempts"), "{stdout}");
}

#[test]
fn one_bad_file_fails_the_run_but_every_file_is_reported() {
    let (code, stdout, _) = tasker(&[
        "templates",
        "validate",
        "examples/templates/linear.yaml",
        &format!("{FIXTURES}/duplicate.yaml"),
        "does/not/exist.yaml",
    ]);
    assert_eq!(code, 1);
    assert!(stdout.contains("ok: examples/templates/linear.yaml"));
    assert!(stdout.contains("duplicate step name"));
    assert!(
        stdout.contains("error: does/not/exist.yaml: cannot read template file"),
        "{stdout}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, stderr) = tasker(&["templates", "validate"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("Usage"), "{stderr}");
    assert_eq!(tasker(&["no-such-command"]).0, 2);
}

#[test]
fn json_output_is_one_object_per_file() {
    let (code, stdout, _) = tasker(&[
        "templates",
        "validate",
        "--json",
        "examples/templates/diamond.yaml",
        &format!("{FIXTURES}/cyclic.yaml"),
    ]);
    assert_eq!(code, 1);
    let objects: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects[0]["ok"], true);
    assert_eq!(objects[0]["template"], "demo/diamond@1.0.0");
    assert_eq!(objects[1]["ok"], false);
    assert!(objects[1]["errors"][0].as_str().unwrap().contains("cycle"));
}

fn run_json(args: &[&str]) -> (i32, serde_json::Value, String) {
    let (code, stdout, stderr) = tasker(args);
    let value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (code, value, stderr)
}

fn assert_diamond_complete(task: &serde_json::Value) {
    assert_eq!(task["state"], "Complete");
    let steps = task["steps"].as_array().unwrap();
    let names: Vec<_> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["start", "left", "right", "join"]);
    for s in steps {
        assert_eq!(s["state"], "Complete");
        assert_eq!(s["attempts"], 1);
        assert!(s["started_at"].is_string() && s["finished_at"].is_string());
    }
}

#[test]
fn run_completes_the_diamond_on_sqlite() {
    let (code, task, stderr) = run_json(&["run", "examples/templates/diamond.yaml", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert_diamond_complete(&task);
    assert!(
        stderr.contains("step join: Complete (attempt 1)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_completes_the_diamond_on_postgres() {
    let db = tasker_store_postgres::test_database::TestDatabase::create()
        .await
        .unwrap();
    let url = db.url.clone();
    let (code, task, stderr) = tokio::task::spawn_blocking(move || {
        run_json(&[
            "run",
            "examples/templates/diamond.yaml",
            "--json",
            "--database-url",
            &url,
        ])
    })
    .await
    .unwrap();
    db.drop_database().await.unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert_diamond_complete(&task);
}

#[test]
fn run_exits_1_when_the_task_ends_in_error() {
    let (code, task, _) = run_json(&["run", &format!("{FIXTURES}/failing.yaml"), "--json"]);
    assert_eq!(code, 1);
    assert_eq!(task["state"], "Error");
    assert_eq!(task["steps"][1]["state"], "Error");
    assert!(task["steps"][1]["error"]
        .as_str()
        .unwrap()
        .contains("fail handler"));
}

#[test]
fn run_refuses_a_context_that_breaks_the_schema() {
    let (code, stdout, stderr) = tasker(&[
        "run",
        "examples/templates/order_fulfillment.yaml",
        "--context",
        "{}",
    ]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stderr.contains("order_id"), "{stderr}");
}

/// Every example that needs no remote worker runs to `Complete` with `tasker run`.
#[test]
fn every_self_contained_example_runs() {
    let contexts = [
        ("linear.yaml", "{}"),
        ("diamond.yaml", "{}"),
        ("tree.yaml", "{}"),
        (
            "order_fulfillment.yaml",
            r#"{"order_id": "o-1", "items": [{"sku": "tea", "quantity": 2}]}"#,
        ),
        ("handlers.yaml", r#"{"name": "ada", "n": 3}"#),
    ];
    for (file, context) in contexts {
        let path = format!("examples/templates/{file}");
        let (code, task, stderr) = run_json(&["run", &path, "--json", "--context", context]);
        assert_eq!(code, 0, "{file}: {stderr}");
        assert_eq!(task["state"], "Complete", "{file}");
    }
    let (_, task, _) = run_json(&[
        "run",
        "examples/templates/handlers.yaml",
        "--json",
        "--context",
        r#"{"name": "ada", "n": 3}"#,
    ]);
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
        serde_json::json!({"greeting": "hello ada", "n": 3})
    );
    assert_eq!(
        step("shout")["result"],
        serde_json::json!({"loud": "hello ada!", "n": 3})
    );
    assert_eq!(step("pause")["result"], serde_json::json!({"slept_ms": 50}));
    assert_eq!(step("flaky")["attempts"], 2);
}

#[test]
fn bench_reports_every_field_for_both_modes() {
    for (shape, mode) in [
        ("diamond4", "latency"),
        ("fanout100", "throughput"),
        ("single", "throughput"),
    ] {
        let (code, report, stderr) = run_json(&[
            "bench", "--shape", shape, "--mode", mode, "--tasks", "5", "--json",
        ]);
        assert_eq!(code, 0, "{stderr}");
        for field in [
            "backend",
            "shape",
            "mode",
            "tasks",
            "steps",
            "duration_s",
            "tasks_per_s",
            "steps_per_s",
            "latency_ms",
            "db_statements_per_step",
            "peak_rss_mb",
        ] {
            assert!(
                report.get(field).is_some(),
                "{shape}/{mode}: {field} missing in {report}"
            );
        }
        assert_eq!(
            (report["shape"].as_str(), report["mode"].as_str()),
            (Some(shape), Some(mode))
        );
        let steps_per_task = match shape {
            "diamond4" => 4,
            "fanout100" => 102,
            _ => 1,
        };
        assert_eq!(report["steps"], 5 * steps_per_task);
        assert!(report["db_statements_per_step"].as_f64().unwrap() > 0.0);
        if mode == "latency" {
            let l = &report["latency_ms"];
            assert!(
                l["p50"].as_f64().unwrap() > 0.0 && l["p50"].as_f64() <= l["max"].as_f64(),
                "{l}"
            );
        }
    }
    let (code, _, stderr) = tasker(&["bench", "--tasks", "0"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--tasks"), "{stderr}");
}

/// `tasker run` of a template whose steps need handlers only a remote worker has fails at once
/// naming them, rather than waiting out `--timeout` (ten minutes by default).
#[test]
fn run_refuses_at_once_a_template_whose_handlers_it_lacks() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tasker"))
        .args([
            "run",
            "examples/templates/greeting.yaml",
            "--context",
            r#"{"name": "ada"}"#,
        ])
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tasker");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tasker run was still waiting after 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "template greeting/hello uses handlers this process does not have: \
             py_greet (step greet), py_total (step total)"
        ),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
