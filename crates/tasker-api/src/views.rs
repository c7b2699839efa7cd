//! JSON views of domain rows, shared by the API and `tasker run --json`.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};
use tasker_types::{StepId, StepRow, TaskRow, TransitionRow, UnixMillis};

/// RFC 3339 with milliseconds, or `null`.
pub fn timestamp(ms: Option<UnixMillis>) -> Value {
    ms.and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
        .map_or(Value::Null, |t| {
            Value::String(humantime::format_rfc3339_millis(t).to_string())
        })
}

/// A task with its steps: `{"id", "state", "steps": [{"name", "state", "attempts",
/// "started_at", "finished_at", "depends_on", ...}], ...}`. `edges` are `(parent, child)`.
pub fn task(task: &TaskRow, steps: &[StepRow], edges: &[(StepId, StepId)]) -> Value {
    let name = |id: StepId| steps.iter().find(|s| s.id == id).map(|s| s.name.clone());
    let depends_on = |s: &StepRow| -> Vec<String> {
        edges
            .iter()
            .filter(|(_, child)| *child == s.id)
            .filter_map(|(parent, _)| name(*parent))
            .collect()
    };
    json!({
        "id": task.id,
        "namespace": task.namespace,
        "name": task.name,
        "version": task.version,
        "state": task.state,
        "context": task.context,
        "idempotency_key": task.idempotency_key,
        "priority": task.priority,
        "created_at": timestamp(Some(task.created_at_ms)),
        "updated_at": timestamp(Some(task.updated_at_ms)),
        "finished_at": timestamp(task.finished_at_ms),
        "steps": steps
            .iter()
            .map(|s| {
                let mut v = step(s);
                v["depends_on"] = json!(depends_on(s));
                v
            })
            .collect::<Vec<_>>(),
    })
}

/// One step.
pub fn step(s: &StepRow) -> Value {
    let mut view = json!({
        "id": s.id,
        "name": s.name,
        "handler": s.handler,
        "state": s.state,
        "attempts": s.attempts,
        "max_attempts": s.max_attempts,
        "started_at": timestamp(s.started_at_ms),
        "finished_at": timestamp(s.finished_at_ms),
        "next_attempt_at": timestamp(s.next_attempt_at_ms),
        "result": s.result,
        "error": s.last_error,
    });
    if let Some(branches) = &s.branches {
        // A decision: the children its output chooses among.
        view["branches"] = json!(branches);
    }
    match (&s.map, &s.map_instance) {
        (Some(map), None) => view["map"] = json!(map),
        (_, Some(instance)) => {
            view["instance_of"] = json!(instance.of);
            view["index"] = json!(instance.index);
        }
        (None, None) => {}
    }
    view
}

/// A task without its steps (for lists).
pub fn task_summary(task: &TaskRow) -> Value {
    json!({
        "id": task.id,
        "namespace": task.namespace,
        "name": task.name,
        "version": task.version,
        "state": task.state,
        "priority": task.priority,
        "created_at": timestamp(Some(task.created_at_ms)),
        "finished_at": timestamp(task.finished_at_ms),
    })
}

/// One audit row.
pub fn transition(t: &TransitionRow) -> Value {
    json!({
        "entity": t.entity,
        "step_id": t.step_id,
        "from": t.from_state,
        "to": t.to_state,
        "event": t.event,
        "reason": t.reason,
        "instance_id": t.instance_id,
        "at": timestamp(Some(t.at_ms)),
    })
}
