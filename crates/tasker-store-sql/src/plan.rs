//! [`StepPlan`]: the `steps` and `step_edges` rows a task is created with, from its
//! [`StepSpec`]s.

use tasker_store::Result;
use tasker_types::StepSpec;

use crate::{corrupt, NewTransition};

/// One `steps` row to insert, derived from a step spec.
#[derive(Debug, Clone)]
pub struct PlannedStep<'a> {
    /// Index in the task's steps.
    pub position: i64,
    /// Step name.
    pub name: &'a str,
    /// Handler name.
    pub handler: &'a str,
    /// Handler config.
    pub handler_config: &'a serde_json::Value,
    /// Retry policy: attempts.
    pub max_attempts: i64,
    /// Retry policy: base delay.
    pub retry_base_ms: i64,
    /// Retry policy: cap.
    pub retry_max_ms: i64,
    /// Retry policy: jitter.
    pub retry_jitter: bool,
    /// Per-attempt timeout.
    pub timeout_ms: Option<i64>,
    /// Number of parents: the readiness counter's start value.
    pub pending_parents: i64,
    /// A decision's direct children, by name in template order (a JSON array); `None` for
    /// any other step.
    pub branches: Option<serde_json::Value>,
    /// A mapped step's fan-out (JSON); `None` for any other step.
    pub map: Option<serde_json::Value>,
}

impl PlannedStep<'_> {
    /// A mapped step waits in the in-process queue whatever its handler: the engine expands
    /// it there.
    pub fn queue<'r>(&self, routing: &'r tasker_store::StepRouting, namespace: &'r str) -> &'r str {
        routing.queue_of(namespace, self.handler, self.map.is_some())
    }
}

impl PlannedStep<'_> {
    /// Runs as soon as its task starts: it has no parent.
    pub fn is_root(&self) -> bool {
        self.pending_parents == 0
    }
}

/// The rows `task_create` writes for a task's steps, backend-neutral.
#[derive(Debug)]
pub struct StepPlan<'a> {
    specs: &'a [StepSpec],
    /// One row per step, in template order.
    pub steps: Vec<PlannedStep<'a>>,
}

/// Step durations are far below `i64::MAX` milliseconds; saturate rather than wrap.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl<'a> StepPlan<'a> {
    /// Plans the step rows of `specs`.
    pub fn new(specs: &'a [StepSpec]) -> Self {
        let steps = specs
            .iter()
            .zip(0_i64..)
            .map(|(s, position)| PlannedStep {
                position,
                name: &s.name,
                handler: &s.handler,
                handler_config: &s.handler_config,
                max_attempts: i64::from(s.max_attempts),
                retry_base_ms: to_i64(s.retry_base_ms),
                retry_max_ms: to_i64(s.retry_max_ms),
                retry_jitter: s.retry_jitter,
                timeout_ms: s.timeout_ms.map(to_i64),
                pending_parents: i64::try_from(s.depends_on.len()).unwrap_or(i64::MAX),
                map: s
                    .map
                    .as_ref()
                    .map(|m| serde_json::to_value(m).expect("a map spec serializes")),
                branches: s.decision.then(|| {
                    specs
                        .iter()
                        .filter(|child| child.depends_on.contains(&s.name))
                        .map(|child| serde_json::Value::from(child.name.as_str()))
                        .collect()
                }),
            })
            .collect();
        Self { specs, steps }
    }

    /// `(parent, child)` step ids, given the ids the step insert returned by name.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when a step name has no id (the insert returned too few rows).
    pub fn edges(
        &self,
        ids: &std::collections::HashMap<String, tasker_types::StepId>,
    ) -> Result<Vec<(tasker_types::StepId, tasker_types::StepId)>> {
        let id = |name: &str| {
            ids.get(name)
                .copied()
                .ok_or_else(|| corrupt("step insert", format!("no id for step {name:?}")))
        };
        let mut edges = Vec::new();
        for step in self.specs {
            let child = id(&step.name)?;
            for parent in &step.depends_on {
                edges.push((id(parent)?, child));
            }
        }
        Ok(edges)
    }

    /// The creation audit rows: the task's and every step's initial `Pending`; for a task
    /// started at creation also the task's way to `StepsInProcess` and each
    /// root step's `Enqueue`.
    pub fn initial_transitions<'b>(
        &'b self,
        task_id: tasker_types::TaskId,
        ids: &std::collections::HashMap<String, tasker_types::StepId>,
        instance_id: &'b str,
        start: bool,
    ) -> Result<Vec<NewTransition<'b>>> {
        use tasker_types::{Entity, StepEvent, StepState, TaskEvent, TaskState};
        let row = |entity, step_id, from: Option<&'static str>, to, event| NewTransition {
            entity,
            task_id,
            step_id,
            from_state: from,
            to_state: to,
            event,
            reason: None,
            instance_id,
        };
        let mut rows = vec![row(
            Entity::Task,
            None,
            None,
            TaskState::Pending.as_str(),
            "create",
        )];
        rows.extend(self.steps.iter().map(|s| {
            row(
                Entity::Step,
                ids.get(s.name).copied(),
                None,
                StepState::Pending.as_str(),
                "create",
            )
        }));
        if start {
            let mut from = TaskState::Pending;
            for event in [
                TaskEvent::Initialize,
                TaskEvent::BeginEnqueue,
                TaskEvent::StepsEnqueued,
            ] {
                let to = from.transition(event)?;
                rows.push(row(
                    Entity::Task,
                    None,
                    Some(from.as_str()),
                    to.as_str(),
                    event.name(),
                ));
                from = to;
            }
            rows.extend(self.steps.iter().filter(|s| s.is_root()).map(|s| {
                row(
                    Entity::Step,
                    ids.get(s.name).copied(),
                    Some(StepState::Pending.as_str()),
                    StepState::Enqueued.as_str(),
                    StepEvent::Enqueue.name(),
                )
            }));
        }
        Ok(rows)
    }
}
