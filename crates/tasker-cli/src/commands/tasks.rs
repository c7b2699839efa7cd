//! `tasker submit`, `tasker status`, `tasker tasks list`, `tasker pools`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::{block_on, Client, ServerArgs};

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

/// The task as a tree of steps: each step under its first parent, with state, attempts and
/// duration; a step with several parents names the others.
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
            out.push_str(&format!("{}  error: {error}\n", "  ".repeat(depth + 1)));
        }
        for child in steps
            .iter()
            .filter(|c| parents(c).first().map(String::as_str) == Some(name))
        {
            line(out, steps, child, depth + 1, parents);
        }
    }
    for root in steps.iter().filter(|s| parents(s).is_empty()) {
        line(&mut out, &steps, root, 0, &parents);
    }
    out
}

/// `tasker tasks` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum TasksCommand {
    /// List tasks, newest first.
    List {
        /// Only tasks in this state (`Complete`, `Error`, …).
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
}

pub(crate) fn tasks(cmd: TasksCommand) -> anyhow::Result<ExitCode> {
    let TasksCommand::List {
        state,
        namespace,
        name,
        limit,
        server,
    } = cmd;
    let mut query = vec![format!("limit={limit}")];
    for (k, v) in [("state", state), ("namespace", namespace), ("name", name)] {
        if let Some(v) = v {
            query.push(format!("{k}={v}"));
        }
    }
    let page = block_on(Client::new(&server).get(&format!("/v1/tasks?{}", query.join("&"))))?;
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
        "backpressure {:.2}",
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
