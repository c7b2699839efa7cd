//! Control flow end to end, as a user runs it, on SQLite and on PostgreSQL: `tasker serve` runs
//! the decision example of `examples/templates`, each branch in turn (the branch left out is
//! skipped, with `skip` transitions in the audit trail, and the join runs after the branch that
//! ran), and the map example over 0, 1 and 10 items; a decision naming a step that is not its
//! child, and a map over something that is not an array, fail saying why.

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

/// Submits the line items example with `items` and waits for it to finish.
fn charge(addr: &str, items: &Value) -> Value {
    let (status, task) = post_json(
        addr,
        "/v1/tasks",
        &json!({"namespace": "shop", "name": "line_items", "context": {"items": items}}),
    );
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_i64().unwrap();
    wait_until(addr, id, "finished", |t| {
        t["state"] == "Complete" || t["state"] == "Error"
    })
}

fn maps(addr: &str) {
    let yaml = std::fs::read_to_string(root().join("examples/templates/line_items.yaml")).unwrap();
    register_yaml(addr, &yaml);
    for n in [0_usize, 1, 10] {
        let items: Vec<Value> = (0..n)
            .map(|i| json!({"sku": format!("sku-{i}"), "cents": i * 100}))
            .collect();
        let task = charge(addr, &json!(items));
        assert_eq!(task["state"], "Complete", "{n} items: {task}");
        let steps = task["steps"].as_array().unwrap();
        let instances: Vec<&Value> = steps
            .iter()
            .filter(|s| s["name"].as_str().unwrap().starts_with("charge["))
            .collect();
        assert_eq!(instances.len(), n, "{task}");
        let charges: Vec<Value> = (0..n)
            .map(|i| json!({"sku": format!("sku-{i}"), "charged": i * 100, "line": i}))
            .collect();
        assert_eq!(step(&task, "charge")["result"], json!(charges), "{task}");
        assert_eq!(
            step(&task, "total")["result"],
            json!({"charges": charges}),
            "{task}"
        );
    }
    // A path that names no array fails the mapped step for good, naming the path.
    register_yaml(
        addr,
        "namespace: shop\nname: astray_map\nversion: 1.0.0\nsteps:\n\
         - {name: load, handler: {name: echo, config: {value: {items: 3}}}}\n\
         - {name: each, handler: noop, depends_on: [load], map: {over: parents.load.items}}\n",
    );
    let (_, task) = post_json(
        addr,
        "/v1/tasks",
        &json!({"namespace": "shop", "name": "astray_map", "context": {}}),
    );
    let task = wait_until(addr, task["id"].as_i64().unwrap(), "failed", |t| {
        t["state"] == "Error"
    });
    let each = step(&task, "each");
    assert_eq!(
        (each["state"].clone(), each["attempts"].clone()),
        (json!("Error"), json!(1))
    );
    let error = each["error"].as_str().unwrap();
    assert!(
        error.contains("parents.load.items") && error.contains("not an array"),
        "{error}"
    );
}

#[test]
fn maps_on_sqlite() {
    let server = serve(&[], &[]);
    maps(&server.addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_on_postgres() {
    let db = tasker_store_postgres::test_database::TestDatabase::create()
        .await
        .unwrap();
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let server = serve(&["--database-url", &url], &[]);
        maps(&server.addr);
    })
    .await
    .unwrap();
    db.drop_database().await.unwrap();
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
