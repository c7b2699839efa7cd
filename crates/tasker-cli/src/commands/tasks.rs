//! `tasker submit`, `tasker status`, `tasker tasks list|cancel|retry|resolve`, `tasker pools`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tasker_types::TaskState;

use super::client::{block_on, encode, Client, ServerArgs};

/// `tasker submit` arguments.
#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// `namespace/name` or `namespace/name@version`.
    template: String,
    /// Task context as JSON.
    #[arg(long, default_value = "{}")]
    context: String,
    /// Idempotency key: a repeat returns the existing task.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Higher runs earlier.
    #[arg(long, default_value_t = 0)]
    priority: i32,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let (path, version) = match args.template.split_once('@') {
        Some((p, v)) => (p, Some(v)),
        None => (args.template.as_str(), None),
    };
    let Some((namespace, name)) = path.split_once('/') else {
        anyhow::bail!(
            "template must be namespace/name[@version], got {:?}",
            args.template
        );
    };
    let context: Value = serde_json::from_str(&args.context)
        .map_err(|e| anyhow::anyhow!("--context is not valid JSON: {e}"))?;
    let body = json!({
        "namespace": namespace, "name": name, "version": version, "context": context,
        "idempotency_key": args.idempotency_key, "priority": args.priority,
    });
    let task = block_on(Client::new(&args.server).post_json("/v1/tasks", &body))?;
    if args.server.json {
        println!("{task}");
    } else {
        println!(
            "task {} {} ({}/{}@{})",
            task["id"],
            task["state"].as_str().unwrap_or("?"),
            task["namespace"].as_str().unwrap_or("?"),
            task["name"].as_str().unwrap_or("?"),
            task["version"].as_str().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `tasker status` arguments.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The task id.
    task_id: i64,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let task = block_on(Client::new(&args.server).get(&format!("/v1/tasks/{}", args.task_id)))?;
    if args.server.json {
        println!("{task}");
    } else {
        print!("{}", render_tree(&task));
    }
    Ok(ExitCode::SUCCESS)
}

/// Milliseconds between two RFC 3339 timestamps, when both are there.
fn duration_ms(start: &Value, end: &Value) -> Option<u128> {
    let start = humantime::parse_rfc3339(start.as_str()?).ok()?;
    let end = humantime::parse_rfc3339(end.as_str()?).ok()?;
    end.duration_since(start).ok().map(|d| d.as_millis())
}

/// Which attempt failed with `step`'s (last) error. Read from the task's audit trail when the
/// view has one (`transitions`, as `GET /v1/tasks/{id}` gives): attempts are the step's
/// `start`s, counted afresh after an operator's `retry`. Otherwise inferred from the step's
/// attempt count: the attempt before a running or completed one, else the latest.
fn failed_attempt(task: &Value, step: &Value) -> u64 {
    let error = step["error"].as_str();
    let mut attempt = 0_u64;
    let mut failed = None;
    let trail = task["transitions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|t| !step["id"].is_null() && t["step_id"] == step["id"]);
    for t in trail {
        match t["event"].as_str().unwrap_or_default() {
            "start" => attempt += 1,
            "retry" => attempt = 0,
            e if e.starts_with("fail") && t["reason"].as_str() == error => failed = Some(attempt),
            _ => {}
        }
    }
    failed.filter(|&n| n > 0).unwrap_or_else(|| {
        let attempts = step["attempts"].as_u64().unwrap_or(0);
        match step["state"].as_str() {
            Some("InProgress" | "Complete") => attempts.saturating_sub(1),
            _ => attempts,
        }
        .max(1)
    })
}

/// The task as a tree of steps: each step under its first parent, with state, attempts and
/// duration; a step with several parents names the others; a mapped step counts its instances
/// per state and lists the failed ones.
pub(crate) fn render_tree(task: &Value) -> String {
    let steps = task["steps"].as_array().cloned().unwrap_or_default();
    let parents = |s: &Value| -> Vec<String> {
        s["depends_on"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = format!(
        "task {} {}/{}@{}: {}\n",
        task["id"],
        task["namespace"].as_str().unwrap_or("?"),
        task["name"].as_str().unwrap_or("?"),
        task["version"].as_str().unwrap_or("?"),
        task["state"].as_str().unwrap_or("?"),
    );
    fn line(
        out: &mut String,
        task: &Value,
        steps: &[Value],
        step: &Value,
        depth: usize,
        parents: &dyn Fn(&Value) -> Vec<String>,
    ) {
        let name = step["name"].as_str().unwrap_or("?");
        let took = duration_ms(&step["started_at"], &step["finished_at"])
            .map(|ms| format!(", {ms} ms"))
            .unwrap_or_default();
        let also: Vec<String> = parents(step).into_iter().skip(1).collect();
        let also = if also.is_empty() {
            String::new()
        } else {
            format!(" (also after {})", also.join(", "))
        };
        out.push_str(&format!(
            "{}{} {} [{}] attempts {}{}{}\n",
            "  ".repeat(depth + 1),
            if depth == 0 { "-" } else { "└" },
            name,
            step["state"].as_str().unwrap_or("?"),
            step["attempts"],
            took,
            also
        ));
        if let Some(error) = step["error"].as_str() {
            let indent = "  ".repeat(depth + 1);
            // Only a step in `Error` failed last; any other step's error is an earlier
            // attempt's (one retried since, or one that then succeeded).
            if step["state"] == "Error" {
                out.push_str(&format!("{indent}  error: {error}\n"));
            } else {
                let attempt = failed_attempt(task, step);
                out.push_str(&format!("{indent}  attempt {attempt} failed: {error}\n"));
            }
        }
        // A mapped step: its instances' counts per state, and those that failed.
        let instances: Vec<&Value> = steps
            .iter()
            .filter(|i| !step["id"].is_null() && i["instance_of"] == step["id"])
            .collect();
        if !instances.is_empty() {
            let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
            for instance in &instances {
                *counts
                    .entry(instance["state"].as_str().unwrap_or("?"))
                    .or_default() += 1;
            }
            let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
            let indent = "  ".repeat(depth + 1);
            out.push_str(&format!(
                "{indent}  instances: {} ({})\n",
                instances.len(),
                counts.join(", ")
            ));
            for failed in instances.iter().filter(|i| i["state"] == "Error") {
                out.push_str(&format!(
                    "{indent}  {} [Error] attempts {}: {}\n",
                    failed["name"].as_str().unwrap_or("?"),
                    failed["attempts"],
                    failed["error"].as_str().unwrap_or("")
                ));
            }
        }
        for child in steps
            .iter()
            .filter(|c| parents(c).first().map(String::as_str) == Some(name))
        {
            line(out, task, steps, child, depth + 1, parents);
        }
    }
    // Instances are shown under their mapped step.
    for root in steps
        .iter()
        .filter(|s| parents(s).is_empty() && s["instance_of"].is_null())
    {
        line(&mut out, task, &steps, root, 0, &parents);
    }
    out
}

/// `tasker tasks` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum TasksCommand {
    /// List tasks, newest first.
    List {
        /// Only tasks in this state (`Complete`, `error`, `in_progress`, …: any case).
        #[arg(long)]
        state: Option<String>,
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Only this template name.
        #[arg(long)]
        name: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Cancel a task and its unfinished steps.
    Cancel {
        /// The task id.
        task_id: i64,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Run a failed step again; its attempts start over.
    Retry {
        /// The task id.
        task_id: i64,
        /// The step's name.
        step: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Mark a failed step as resolved by hand, so its children may run.
    Resolve {
        /// The task id.
        task_id: i64,
        /// The step's name.
        step: String,
        /// The step's result as JSON, which its children receive as this parent's output.
        #[arg(long)]
        output: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub(crate) fn tasks(cmd: TasksCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TasksCommand::List {
            state,
            namespace,
            name,
            limit,
            server,
        } => list(state, namespace, name, limit, &server),
        TasksCommand::Cancel { task_id, server } => {
            let task = block_on(
                Client::new(&server).post_json(&format!("/v1/tasks/{task_id}/cancel"), &json!({})),
            )?;
            if server.json {
                println!("{task}");
            } else {
                println!(
                    "task {} {}",
                    task["id"],
                    task["state"].as_str().unwrap_or("?")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TasksCommand::Retry {
            task_id,
            step,
            server,
        } => step_action(task_id, &step, "retry", &json!({}), &server),
        TasksCommand::Resolve {
            task_id,
            step,
            output,
            server,
        } => {
            let body = match output {
                Some(output) => {
                    let output: Value =
                        serde_json::from_str(&output).context("--output is not valid JSON")?;
                    json!({ "output": output })
                }
                None => json!({}),
            };
            step_action(task_id, &step, "resolve", &body, &server)
        }
    }
}

/// `tasker tasks retry|resolve`: `POST /v1/tasks/{id}/steps/{step}/{action}`.
fn step_action(
    task_id: i64,
    step: &str,
    action: &str,
    body: &Value,
    server: &ServerArgs,
) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/tasks/{task_id}/steps/{}/{action}", encode(step));
    let answer = block_on(Client::new(server).post_json(&path, body))?;
    if server.json {
        println!("{answer}");
    } else {
        println!(
            "step {} of task {task_id}: {}",
            answer["name"].as_str().unwrap_or(step),
            answer["state"].as_str().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `tasker tasks list`.
fn list(
    state: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    limit: u32,
    server: &ServerArgs,
) -> anyhow::Result<ExitCode> {
    // Read here so any case works against any server, and a bad name lists the good ones.
    let state = state
        .map(|s| s.parse::<TaskState>().map(|s| s.as_str().to_owned()))
        .transpose()
        .context("--state")?;
    let mut query = vec![format!("limit={limit}")];
    for (k, v) in [("state", state), ("namespace", namespace), ("name", name)] {
        if let Some(v) = v {
            query.push(format!("{k}={}", encode(&v)));
        }
    }
    let page = block_on(Client::new(server).get(&format!("/v1/tasks?{}", query.join("&"))))?;
    if server.json {
        println!("{page}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:>8}  {:<18}  {:<32}  created", "id", "state", "template");
    for t in page["tasks"].as_array().into_iter().flatten() {
        let template = format!(
            "{}/{}@{}",
            t["namespace"].as_str().unwrap_or("?"),
            t["name"].as_str().unwrap_or("?"),
            t["version"].as_str().unwrap_or("?")
        );
        println!(
            "{:>8}  {:<18}  {:<32}  {}",
            t["id"].to_string(),
            t["state"].as_str().unwrap_or("?"),
            template,
            t["created_at"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `tasker pools` arguments.
#[derive(Debug, Args)]
pub(crate) struct PoolsArgs {
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn pools(args: PoolsArgs) -> anyhow::Result<ExitCode> {
    let view = block_on(Client::new(&args.server).get("/v1/health/pools"))?;
    if args.server.json {
        println!("{view}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "instance {}  backpressure {:.2}",
        view["instance"].as_str().unwrap_or("?"),
        view["backpressure"]["factor"].as_f64().unwrap_or(0.0)
    );
    println!(
        "{:<24} {:>9} {:>8} {:>10} {:>9} {:>9}  breaker  health",
        "pool", "executors", "items", "errors", "p50 ms", "p99 ms"
    );
    for (name, p) in view["pools"].as_object().into_iter().flatten() {
        let executors = p["executors"].as_array().cloned().unwrap_or_default();
        let healthy = executors
            .iter()
            .filter(|e| e["health"] == "Healthy")
            .count();
        println!(
            "{:<24} {:>9} {:>8} {:>10} {:>9.2} {:>9.2}  {:<7}  {healthy}/{} healthy",
            name,
            format!(
                "{} ({}-{})",
                executors.len(),
                p["min_executors"],
                p["max_executors"]
            ),
            p["items"].to_string(),
            p["errors"].to_string(),
            p["latency"]["p50_ms"].as_f64().unwrap_or(0.0),
            p["latency"]["p99_ms"].as_f64().unwrap_or(0.0),
            p["circuit_breaker"].as_str().unwrap_or("?"),
            executors.len(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `tasker cluster` arguments.
#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn cluster(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let view = block_on(Client::new(&args.server).get("/v1/cluster"))?;
    if args.server.json {
        println!("{view}");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", cluster_table(&view));
    Ok(ExitCode::SUCCESS)
}

/// The cluster view as a table: one line per instance, the answering one marked `*`.
fn cluster_table(view: &Value) -> String {
    let mut out = format!(
        "{} instance(s); dead after {} ms without a heartbeat; leader {} (epoch {})\n\
         {:<2}{:<40} {:<20} {:>8} {:<9} {:<6} {:>10} {:>7}\n",
        view["instances"].as_array().map_or(0, Vec::len),
        view["dead_after_ms"],
        view["leader"].as_str().unwrap_or("none"),
        view["leader_epoch"],
        "",
        "instance",
        "host",
        "pid",
        "state",
        "alive",
        "heartbeat",
        "leases"
    );
    for i in view["instances"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<2}{:<40} {:<20} {:>8} {:<9} {:<6} {:>8}ms {:>7}\n",
            if i["this"] == true { "*" } else { "" },
            i["id"].as_str().unwrap_or("?"),
            i["host"].as_str().unwrap_or("?"),
            i["pid"].to_string(),
            i["state"].as_str().unwrap_or("?"),
            if i["alive"] == true { "yes" } else { "no" },
            i["heartbeat_age_ms"].to_string(),
            i["leases"].to_string(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_table_marks_this_instance_and_the_dead() {
        let view = json!({
            "instance_id": "a", "dead_after_ms": 5000, "leader": "a", "leader_epoch": 3,
            "instances": [
                {"id": "a", "host": "h1", "pid": 10, "state": "Running", "alive": true,
                 "this": true, "heartbeat_age_ms": 120, "leases": 3},
                {"id": "b", "host": "h2", "pid": 20, "state": "Draining", "alive": false,
                 "this": false, "heartbeat_age_ms": 9000, "leases": 0},
            ]
        });
        let table = cluster_table(&view);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[0].starts_with("2 instance(s); dead after 5000 ms"),
            "{table}"
        );
        assert!(lines[0].ends_with("leader a (epoch 3)"), "{table}");
        assert!(
            lines[2].starts_with("* a ") && lines[2].contains("yes") && lines[2].ends_with(" 3"),
            "{table}"
        );
        assert!(
            lines[3].contains("Draining")
                && lines[3].contains(" no ")
                && lines[3].contains("9000ms"),
            "{table}"
        );
    }

    #[test]
    fn the_tree_nests_children_under_their_first_parent() {
        let task = json!({
            "id": 7, "namespace": "demo", "name": "diamond", "version": "1.0.0", "state": "Complete",
            "steps": [
                {"name": "start", "state": "Complete", "attempts": 1, "depends_on": [],
                 "started_at": "2026-01-01T00:00:00.000Z", "finished_at": "2026-01-01T00:00:00.012Z"},
                {"name": "left", "state": "Complete", "attempts": 1, "depends_on": ["start"]},
                {"name": "right", "state": "Error", "attempts": 3, "depends_on": ["start"], "error": "boom"},
                {"name": "join", "state": "Pending", "attempts": 0, "depends_on": ["left", "right"]},
            ]
        });
        let tree = render_tree(&task);
        assert_eq!(
            tree,
            "task 7 demo/diamond@1.0.0: Complete\n  - start [Complete] attempts 1, 12 ms\n    └ left [Complete] attempts 1\n      └ join [Pending] attempts 0 (also after right)\n    └ right [Error] attempts 3\n      error: boom\n"
        );
    }

    #[test]
    fn an_earlier_attempts_error_is_marked_as_such() {
        let transitions = |id: i64, events: &[(&str, Option<&str>)]| -> Vec<Value> {
            events
                .iter()
                .map(|(e, r)| json!({"entity": "step", "step_id": id, "event": e, "reason": r}))
                .collect()
        };
        let mut trail = transitions(
            1,
            &[
                ("enqueue", None),
                ("start", None),
                ("fail_retryable", Some("boom")),
                ("enqueue", None),
                ("start", None),
                ("complete", None),
            ],
        );
        trail.extend(transitions(
            2,
            &[
                ("start", None),
                ("fail_retryable", Some("first")),
                ("start", None),
                ("fail_permanent", Some("second")),
            ],
        ));
        let task = json!({
            "id": 3, "namespace": "demo", "name": "flaky", "version": "1.0.0", "state": "Error",
            "steps": [
                {"id": 1, "name": "flaky", "state": "Complete", "attempts": 2, "depends_on": [], "error": "boom"},
                {"id": 2, "name": "broken", "state": "Error", "attempts": 2, "depends_on": [], "error": "second"},
            ],
            "transitions": trail,
        });
        let tree = render_tree(&task);
        assert!(
            tree.contains("- flaky [Complete] attempts 2\n    attempt 1 failed: boom\n"),
            "{tree}"
        );
        assert!(
            tree.contains("- broken [Error] attempts 2\n    error: second\n"),
            "{tree}"
        );
    }

    #[test]
    fn instances_are_counted_under_their_mapped_step() {
        let instance = |id: i64, index: u64, state: &str| {
            json!({"id": id, "name": format!("charge[{index}]"), "state": state, "attempts": 1,
                   "instance_of": 2, "index": index, "error": (state == "Error").then_some("declined")})
        };
        let task = json!({
            "id": 4, "namespace": "shop", "name": "items", "version": "1.0.0", "state": "Error",
            "steps": [
                {"id": 1, "name": "load", "state": "Complete", "attempts": 1, "depends_on": []},
                {"id": 2, "name": "charge", "state": "Mapped", "attempts": 1, "depends_on": ["load"],
                 "map": {"over": "parents.load.items"}},
                instance(3, 0, "Complete"), instance(4, 1, "Error"), instance(5, 2, "Complete"),
            ],
        });
        let tree = render_tree(&task);
        assert_eq!(
            tree,
            "task 4 shop/items@1.0.0: Error\n  - load [Complete] attempts 1\n    \
             └ charge [Mapped] attempts 1\n      instances: 3 (Complete 2, Error 1)\n      \
             charge[1] [Error] attempts 1: declined\n"
        );
    }

    #[test]
    fn without_a_trail_the_failed_attempt_is_inferred() {
        let step = |state: &str, attempts: u64| json!({"id": 1, "name": "s", "state": state, "attempts": attempts, "error": "x"});
        let task = json!({});
        assert_eq!(failed_attempt(&task, &step("Complete", 3)), 2);
        assert_eq!(failed_attempt(&task, &step("Complete", 1)), 1);
        assert_eq!(failed_attempt(&task, &step("WaitingForRetry", 2)), 2);
        assert_eq!(failed_attempt(&task, &step("InProgress", 2)), 1);
        // After an operator's retry the count starts over.
        let task = json!({"transitions": [
            {"step_id": 1, "event": "start"}, {"step_id": 1, "event": "start"},
            {"step_id": 1, "event": "fail_permanent", "reason": "x"},
            {"step_id": 1, "event": "retry"}, {"step_id": 1, "event": "start"},
            {"step_id": 1, "event": "fail_retryable", "reason": "x"},
            {"step_id": 1, "event": "start"}, {"step_id": 1, "event": "complete"},
        ]});
        assert_eq!(failed_attempt(&task, &step("Complete", 2)), 1);
    }
}
