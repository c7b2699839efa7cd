//! Control flow end to end, as a user runs it: `tasker serve` runs the decision example of
//! `examples/templates`, each branch in turn, on SQLite and on PostgreSQL; the branch left out
//! is skipped (with `skip` transitions in the audit trail), the join runs after the branch
//! that ran, and a decision naming a step that is not its child fails, saying which.

mod support;

use serde_json::{json, Value};
use support::{post_json, register_yaml, root, serve, step, tasker, wait_until};

/// Submits the shipping example with `shipping` and waits for it to finish; returns the view.
fn ship(addr: &str, shipping: &str) -> Value {
    let (status, task) = post_json(
        addr,
        "/v1/tasks",
        &json!({"namespace": "shop", "name": "shipping",
                "context": {"order_id": format!("o-{shipping}"), "shipping": shipping}}),
    );
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_i64().unwrap();
    wait_until(addr, id, "finished", |t| {
        t["state"] == "Complete" || t["state"] == "Error"
    })
}

fn decisions(addr: &str) {
    let yaml = std::fs::read_to_string(root().join("examples/templates/shipping.yaml")).unwrap();
    register_yaml(addr, &yaml);
    for (chosen, left_out) in [("express", "standard"), ("standard", "express")] {
        let task = ship(addr, chosen);
        assert_eq!(task["state"], "Complete", "{task}");
        assert_eq!(
            step(&task, "route")["branches"],
            json!(["express", "standard"])
        );
        assert_eq!(step(&task, chosen)["state"], "Complete", "{task}");
        assert_eq!(step(&task, left_out)["state"], "Skipped", "{task}");
        let pack = if chosen == "standard" {
            "Complete"
        } else {
            "Skipped"
        };
        assert_eq!(step(&task, "bulk_pack")["state"], pack, "{task}");
        assert_eq!(step(&task, "notify")["state"], "Complete", "{task}");
        assert_eq!(
            step(&task, "notify")["result"],
            json!({"sent": format!("o-{chosen}")})
        );
        // The audit trail says who was skipped, and never started them.
        let trail = task["transitions"].as_array().unwrap();
        let skipped = step(&task, left_out)["id"].clone();
        let events: Vec<&str> = trail
            .iter()
            .filter(|t| t["step_id"] == skipped)
            .map(|t| t["event"].as_str().unwrap())
            .collect();
        assert_eq!(events, ["create", "skip"], "{task}");

        let id = task["id"].to_string();
        let (code, out, err) = tasker(addr, &["status", &id]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.lines()
                .any(|l| l.contains(left_out) && l.contains("Skipped")),
            "{out}"
        );
    }

    // A decision naming a step that is not its child fails for good, naming the entry.
    register_yaml(
        addr,
        "namespace: shop\nname: astray\nversion: 1.0.0\nsteps:\n\
         - {name: route, decision: true, handler: {name: echo, config: {value: {next: [nowhere]}}}}\n\
         - {name: only, handler: noop, depends_on: [route]}\n",
    );
    let (status, task) = post_json(
        addr,
        "/v1/tasks",
        &json!({"namespace": "shop", "name": "astray", "context": {}}),
    );
    assert_eq!(status, 201, "{task}");
    let task = wait_until(addr, task["id"].as_i64().unwrap(), "failed", |t| {
        t["state"] == "Error"
    });
    let route = step(&task, "route");
    assert_eq!(route["state"], "Error", "{task}");
    assert_eq!(route["attempts"], 1, "a bad choice is not retried: {task}");
    let error = route["error"].as_str().unwrap();
    assert!(
        error.contains("\"nowhere\"") && error.contains("only"),
        "{error}"
    );
    assert_eq!(step(&task, "only")["state"], "Pending", "{task}");
}

#[test]
fn decisions_on_sqlite() {
    let server = serve(&[], &[]);
    decisions(&server.addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_on_postgres() {
    let db = tasker_store_postgres::test_database::TestDatabase::create()
        .await
        .unwrap();
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let server = serve(&["--database-url", &url], &[]);
        decisions(&server.addr);
    })
    .await
    .unwrap();
    db.drop_database().await.unwrap();
}
