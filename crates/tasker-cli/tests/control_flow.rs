//! Control flow end to end, as a user runs it, on SQLite and on PostgreSQL: `tasker serve` runs
//! the decision example of `examples/templates`, each branch in turn (the branch left out is
//! skipped, with `skip` transitions in the audit trail, and the join runs after the branch that
//! ran), and the map example over 0, 1 and 10 items; a decision naming a step that is not its
//! child, and a map over something that is not an array, fail saying why.

mod support;

use serde_json::{json, Value};
use support::{
    register_yaml, root, serve, step, submit_context, tasker, wait_until, with_postgres,
};

/// Submits a task of `namespace/name` with `context` and waits for it to finish.
fn run(addr: &str, namespace: &str, name: &str, context: &Value) -> Value {
    let id = submit_context(addr, namespace, name, context);
    wait_until(addr, id, "finished", |t| {
        t["state"] == "Complete" || t["state"] == "Error"
    })
}

fn decisions(addr: &str) {
    let yaml = std::fs::read_to_string(root().join("examples/templates/shipping.yaml")).unwrap();
    register_yaml(addr, &yaml);
    for (chosen, left_out) in [("express", "standard"), ("standard", "express")] {
        let context = json!({"order_id": format!("o-{chosen}"), "shipping": chosen});
        let task = run(addr, "shop", "shipping", &context);
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
    let task = run(addr, "shop", "astray", &json!({}));
    assert_eq!(task["state"], "Error", "{task}");
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

fn maps(addr: &str) {
    let yaml = std::fs::read_to_string(root().join("examples/templates/line_items.yaml")).unwrap();
    register_yaml(addr, &yaml);
    for n in [0_usize, 1, 10] {
        let items: Vec<Value> = (0..n)
            .map(|i| json!({"sku": format!("sku-{i}"), "cents": i * 100}))
            .collect();
        let task = run(addr, "shop", "line_items", &json!({ "items": items }));
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
    let task = run(addr, "shop", "astray_map", &json!({}));
    assert_eq!(task["state"], "Error", "{task}");
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

/// Milliseconds since the epoch of an RFC 3339 timestamp in a view.
fn millis(at: &Value) -> u128 {
    humantime::parse_rfc3339(at.as_str().unwrap())
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// The instances of a task view, in index order.
fn instances(task: &Value) -> Vec<Value> {
    let mut found: Vec<Value> = task["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["instance_of"].is_null())
        .cloned()
        .collect();
    found.sort_by_key(|s| s["index"].as_u64());
    found
}

/// `max_parallel` is never exceeded, by the recorded start and finish times; batches are
/// flattened; a decision after a map; 1,000 items; an operator retries a failed instance; a
/// task cancelled mid-map cancels what had not run.
fn map_controls(addr: &str, dir: &std::path::Path) {
    register_yaml(
        addr,
        "namespace: flow\nname: paced\nversion: 1.0.0\nsteps:\n\
         - {name: each, handler: {name: sleep, config: {ms: 30}}, \
            map: {over: context.xs, max_parallel: 3}}\n",
    );
    let id = submit_context(
        addr,
        "flow",
        "paced",
        &json!({"xs": (0..12).collect::<Vec<_>>()}),
    );
    let task = wait_until(addr, id, "complete", |t| t["state"] == "Complete");
    let mut edges: Vec<(u128, i32)> = Vec::new();
    for instance in instances(&task) {
        assert_eq!(instance["attempts"], 1, "{instance}");
        edges.push((millis(&instance["started_at"]), 1));
        edges.push((millis(&instance["finished_at"]), -1));
    }
    // A finish and a start in the same millisecond: the finish first (it freed the slot).
    edges.sort_unstable();
    let mut running = 0;
    let mut most = 0;
    for (_, change) in edges {
        running += change;
        most = most.max(running);
    }
    assert!(
        (1..=3).contains(&most),
        "{most} instances ran at once: {task}"
    );

    register_yaml(
        addr,
        "namespace: flow\nname: batched\nversion: 1.0.0\nsteps:\n\
         - {name: each, handler: {name: echo, config: {value: \"{{ items }}\"}}, \
            map: {over: context.xs, batch_size: 2}}\n\
         - {name: route, decision: true, depends_on: [each], \
            handler: {name: echo, config: {value: {next: [\"{{ context.then }}\"]}}}}\n\
         - {name: small, handler: noop, depends_on: [route]}\n\
         - {name: large, handler: noop, depends_on: [route]}\n",
    );
    let id = submit_context(
        addr,
        "flow",
        "batched",
        &json!({"xs": [1, 2, 3, 4, 5], "then": "large"}),
    );
    let task = wait_until(addr, id, "complete", |t| t["state"] == "Complete");
    assert_eq!(instances(&task).len(), 3, "{task}");
    assert_eq!(instances(&task)[2]["result"], json!([5]));
    assert_eq!(step(&task, "each")["result"], json!([1, 2, 3, 4, 5]));
    assert_eq!(step(&task, "large")["state"], "Complete");
    assert_eq!(step(&task, "small")["state"], "Skipped");

    let xs: Vec<usize> = (0..1000).collect();
    register_yaml(
        addr,
        "namespace: flow\nname: thousand\nversion: 1.0.0\nsteps:\n\
         - {name: each, handler: {name: echo, config: {value: \"{{ item }}\"}}, \
            map: {over: context.xs}}\n\
         - {name: after, handler: noop, depends_on: [each]}\n",
    );
    let id = submit_context(addr, "flow", "thousand", &json!({ "xs": xs }));
    let task = wait_until(addr, id, "complete", |t| t["state"] == "Complete");
    assert_eq!(instances(&task).len(), 1000);
    assert_eq!(step(&task, "each")["result"], json!(xs));

    // One instance fails until the test creates its flag; an operator then retries just it.
    let flag = dir.join("flag");
    register_yaml(
        addr,
        "namespace: flow\nname: flaky\nversion: 1.0.0\nsteps:\n\
         - {name: each, retry: {max_attempts: 1}, map: {over: context.xs}, handler: {name: command, \
            config: {program: /bin/sh, args: [-c, \"test {{ item }} != 1 || test -e {{ context.flag }}\"]}}}\n\
         - {name: after, handler: noop, depends_on: [each]}\n",
    );
    let id = submit_context(
        addr,
        "flow",
        "flaky",
        &json!({"xs": [0, 1, 2], "flag": flag}),
    );
    let task = wait_until(addr, id, "failed", |t| t["state"] == "Error");
    let states: Vec<Value> = instances(&task)
        .iter()
        .map(|i| i["state"].clone())
        .collect();
    assert_eq!(
        states,
        [json!("Complete"), json!("Error"), json!("Complete")],
        "{task}"
    );
    assert_eq!(step(&task, "each")["state"], "Mapped");
    assert_eq!(step(&task, "after")["state"], "Pending");
    std::fs::write(&flag, "").unwrap();
    let (code, out, err) = tasker(addr, &["tasks", "retry", &id.to_string(), "each[1]"]);
    assert_eq!(code, 0, "{out}{err}");
    let task = wait_until(addr, id, "complete", |t| t["state"] == "Complete");
    assert_eq!(instances(&task)[1]["attempts"], 1, "{task}");
    assert_eq!(step(&task, "after")["state"], "Complete");

    // With on_failure: continue the failed instance gives null and the task completes; that
    // instance can then be neither retried nor resolved.
    register_yaml(
        addr,
        "namespace: flow\nname: tolerant\nversion: 1.0.0\nsteps:\n\
         - {name: each, retry: {max_attempts: 1}, map: {over: context.xs, on_failure: continue}, \
            handler: {name: command, config: {program: /bin/sh, \
            args: [-c, \"test {{ item }} != 1 && echo {{ item }}\"]}}}\n\
         - {name: after, handler: {name: echo, config: {value: {all: \"{{ parents.each }}\", \
            failed: \"{{ parents_meta.each.failed }}\"}}}, depends_on: [each]}\n",
    );
    let id = submit_context(addr, "flow", "tolerant", &json!({"xs": [0, 1, 2]}));
    let task = wait_until(addr, id, "complete", |t| t["state"] == "Complete");
    assert_eq!(instances(&task)[1]["state"], "Error", "{task}");
    assert_eq!(
        step(&task, "after")["result"],
        json!({"all": [0, null, 2], "failed": 1}),
        "{task}"
    );
    for action in ["retry", "resolve"] {
        let (code, out, err) = tasker(addr, &["tasks", action, &id.to_string(), "each[1]"]);
        assert_ne!(code, 0, "{out}");
        assert!(err.contains("went on without it"), "{err}");
    }

    // Cancelled mid-map: what had not finished is cancelled, the mapped step with it.
    register_yaml(
        addr,
        "namespace: flow\nname: slow\nversion: 1.0.0\nsteps:\n\
         - {name: each, handler: {name: sleep, config: {ms: 200}}, \
            map: {over: context.xs, max_parallel: 2}}\n",
    );
    let id = submit_context(
        addr,
        "flow",
        "slow",
        &json!({"xs": (0..20).collect::<Vec<_>>()}),
    );
    wait_until(addr, id, "mapped", |t| {
        instances(t).iter().any(|i| i["state"] == "Complete")
    });
    let (code, out, err) = tasker(addr, &["tasks", "cancel", &id.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let task = wait_until(addr, id, "cancelled", |t| t["state"] == "Cancelled");
    assert_eq!(step(&task, "each")["state"], "Cancelled", "{task}");
    let left: Vec<&Value> = task["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !matches!(s["state"].as_str(), Some("Complete" | "Cancelled")))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let pending = instances(&task)
        .iter()
        .filter(|i| i["state"] == "Cancelled" && i["attempts"] == 0)
        .count();
    assert!(pending > 10, "the waiting instances never ran: {task}");
}

#[test]
fn maps_on_sqlite() {
    let server = serve(&[], &[]);
    maps(&server.addr);
    let dir = tempfile::tempdir().unwrap();
    map_controls(&server.addr, dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_on_postgres() {
    with_postgres(|url| {
        let server = serve(&["--database-url", &url], &[]);
        maps(&server.addr);
        let dir = tempfile::tempdir().unwrap();
        map_controls(&server.addr, dir.path());
    })
    .await;
}

#[test]
fn decisions_on_sqlite() {
    let server = serve(&[], &[]);
    decisions(&server.addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_on_postgres() {
    with_postgres(|url| {
        let server = serve(&["--database-url", &url], &[]);
        decisions(&server.addr);
    })
    .await;
}
