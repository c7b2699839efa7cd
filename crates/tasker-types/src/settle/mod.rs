//! Settlement: what moving some steps means for the rest of their task. This module is the one
//! home of the rules "which step may run", "which children become ready", "which are
//! skipped", "which children a decision chose", "when a task is finished" and "when a task
//! goes to the evaluator"; the store keeps the counters these rules read and applies the
//! changes they return, guarded by the states they were decided on.
//!
//! Control flow rests on two counters per step: `pending_parents` (parents that still hold it
//! back) and `live_parents` (parents that finished choosing it). A finished parent chooses
//! every child, except a decision, which chooses those its output names ([`unchosen`]); a
//! skipped parent chooses none. Once no parent holds a step back, it runs if some parent chose
//! it and is skipped otherwise ([`is_skippable`]), so a skip travels down a branch until it
//! meets a join that another branch reached.
//!
//! Two callers decide here:
//! - the store, when it applies a batch of step results: [`settle`] turns the moved steps, their
//!   tasks' counters and their children's counters into [`Effects`];
//! - the task evaluator, which judges a whole task by its steps with [`verdict`].
//!
//! The SQL that finds viable steps filters by the same predicate as [`is_viable`] so that a
//! partial index serves it; the conformance suite checks the two agree on random rows.

use std::collections::{BTreeMap, BTreeSet};

use crate::{StepEvent, StepId, StepRow, StepState, TaskEvent, TaskId, TaskState, UnixMillis};

mod map;
#[cfg(test)]
pub(crate) mod tests;

pub use map::{expand, first_slots, is_mapped, is_tolerated_failure, map_progress, MapProgress};

/// A step may be enqueued now: it waits for nothing and has attempts left. (A step whose
/// parents all finished without choosing it never waits `Pending`: the transaction that
/// finished its last parent skipped it, see [`is_skippable`].)
pub fn is_ready(step: &StepRow) -> bool {
    step.state == StepState::Pending && step.pending_parents == 0 && has_attempts_left(step)
}

/// A step may be enqueued at `now_ms` (database clock): it is ready, or its retry is due.
pub fn is_viable(step: &StepRow, now_ms: UnixMillis) -> bool {
    let retry_due = step.state == StepState::WaitingForRetry
        && step.pending_parents == 0
        && step.next_attempt_at_ms.is_some_and(|due| due <= now_ms)
        && has_attempts_left(step);
    is_ready(step) || retry_due
}

/// A child (a step with parents) that none of them holds back any more and none chose: it is
/// skipped, not run. Only children are asked; a root chose itself when its task started.
pub fn is_skippable(child: &StepRow) -> bool {
    child.state == StepState::Pending && child.pending_parents == 0 && child.live_parents == 0
}

/// The children a decision step's `output` leaves out: its output must be an object whose
/// `next` lists names of the step's direct children (`branches`), possibly none.
///
/// # Errors
///
/// Why the output is not such a choice, naming the bad entry: the step then fails
/// permanently.
pub fn unchosen(branches: &[String], output: &serde_json::Value) -> Result<Vec<String>, String> {
    let Some(next) = output.get("next") else {
        return Err(format!(
            "a decision's output must be an object with \"next\": the list of children to run \
             (of {}), got {}",
            branches.join(", "),
            abbreviate(output)
        ));
    };
    let Some(next) = next.as_array() else {
        return Err(format!(
            "a decision's \"next\" must be a list of step names, got {}",
            abbreviate(next)
        ));
    };
    let mut chosen = BTreeSet::new();
    for entry in next {
        let name = entry.as_str().filter(|n| branches.iter().any(|b| b == n));
        let Some(name) = name else {
            return Err(format!(
                "a decision's \"next\" names {}, which is not a direct child of the step (its \
                 children: {})",
                abbreviate(entry),
                branches.join(", ")
            ));
        };
        chosen.insert(name);
    }
    Ok(branches
        .iter()
        .filter(|b| !chosen.contains(b.as_str()))
        .cloned()
        .collect())
}

/// `value` as JSON, cut short for an error message.
fn abbreviate(value: &serde_json::Value) -> String {
    const MOST: usize = 120;
    let text = value.to_string();
    match text.char_indices().nth(MOST) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

fn has_attempts_left(step: &StepRow) -> bool {
    step.attempts < step.max_attempts
}

/// The event a failed attempt of `step` takes: a retry while the policy allows another attempt
/// and the handler called the failure retryable, a permanent failure otherwise.
pub fn failure_event(step: &StepRow, retryable: bool) -> StepEvent {
    StepEvent::Fail {
        will_retry: retryable && has_attempts_left(step),
    }
}

/// The task transitions, in order, that take a running task whose last step just completed to
/// `Complete` without a trip through the evaluator. The store records each in the audit trail.
pub const COMPLETE_FROM_RUNNING: [(TaskState, TaskEvent); 2] = [
    (TaskState::StepsInProcess, TaskEvent::StepResultReceived),
    (TaskState::EvaluatingResults, TaskEvent::Complete),
];

/// A step a batch moved out of `InProgress`, and where to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Its task.
    pub task_id: TaskId,
    /// The step.
    pub step_id: StepId,
    /// Its new state.
    pub to: StepState,
}

/// A task's state and counter after the store counted the batch's finished steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCount {
    /// The task.
    pub task_id: TaskId,
    /// Its state (the batch does not change it).
    pub state: TaskState,
    /// Its steps not yet finished for their dependents, this batch counted.
    pub unfinished_steps: i64,
}

/// What the store must do after moving a batch of steps, each change guarded by the state it
/// was decided on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// Children to enqueue (`Pending` → `Enqueued`).
    pub enqueue: Vec<StepId>,
    /// Children to skip (`Pending` → `Skipped`). Skipping finishes them for their own
    /// children: the store moves them, counts them like [`Moved`] steps and settles again,
    /// until a round skips nothing.
    pub skip: Vec<StepId>,
    /// Running tasks to complete along [`COMPLETE_FROM_RUNNING`].
    pub complete: Vec<TaskId>,
    /// Tasks to hand to the evaluator.
    pub evaluate: Vec<TaskId>,
    /// Tasks to hand to the evaluator unless one of their steps is still `Enqueued` or
    /// `InProgress` (then a later result settles them): whether any is, only the store can say.
    pub evaluate_if_idle: Vec<TaskId>,
}

/// Settles a batch: `moved` are the steps it moved, `tasks` the counters of their tasks, and
/// `children` the children of its newly finished steps with their parent counters already
/// lowered.
///
/// - A child that no parent holds back or chose is skipped, whatever its unfinished task's
///   state ([`is_skippable`]).
/// - A child is enqueued when it is ready and its task is running (`StepsInProcess`); in any
///   other state the task's evaluator decides what runs next.
/// - A running task whose last unfinished step completed or was skipped is complete.
/// - A running task with a step that failed goes to the evaluator, which decides between a
///   retry, a block and a failure.
/// - A running task whose batch completed steps but enqueued no child, with steps still
///   unfinished, goes to the evaluator once nothing of it runs: its remaining steps wait on a
///   retry or on a failure.
/// - A task in any other unfinished state goes to the evaluator: whoever moves it on decides.
pub fn settle(moved: &[Moved], tasks: &[TaskCount], children: &[StepRow]) -> Effects {
    let counts: BTreeMap<TaskId, &TaskCount> = tasks.iter().map(|t| (t.task_id, t)).collect();
    let running = |task: TaskId| {
        counts
            .get(&task)
            .is_some_and(|t| t.state == TaskState::StepsInProcess)
    };
    let mut effects = Effects::default();
    let mut woke: BTreeSet<TaskId> = BTreeSet::new();
    let unfinished = |task: TaskId| counts.get(&task).is_some_and(|t| !t.state.is_terminal());
    for child in children {
        if is_skippable(child) {
            if unfinished(child.task_id) {
                effects.skip.push(child.id);
            }
        } else if is_ready(child) && running(child.task_id) {
            effects.enqueue.push(child.id);
            woke.insert(child.task_id);
        }
    }
    // Per task: (steps completed, a step failed), in task order.
    let mut batch: BTreeMap<TaskId, (u32, bool)> = BTreeMap::new();
    for m in moved {
        let entry = batch.entry(m.task_id).or_default();
        if m.to.releases_dependents() {
            entry.0 += 1;
        } else if m.to != StepState::Mapped {
            // A retry or a failure; a step that expanded into instances waits for them.
            entry.1 = true;
        }
    }
    for (task, (completed, failed)) in batch {
        let Some(count) = counts.get(&task) else {
            continue;
        };
        if count.state != TaskState::StepsInProcess {
            if !count.state.is_terminal() {
                effects.evaluate.push(task);
            }
        } else if failed {
            effects.evaluate.push(task);
        } else if count.unfinished_steps == 0 {
            effects.complete.push(task);
        } else if completed > 0 && !woke.contains(&task) {
            effects.evaluate_if_idle.push(task);
        }
    }
    effects
}

/// What the steps of a task say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every step is complete, resolved or skipped (or a failed instance of a mapped step
    /// that tolerates failures).
    Complete,
    /// A step failed permanently and nothing runs any more.
    Fail,
    /// A step failed permanently; others still run.
    Block,
    /// Some steps can be enqueued now.
    Enqueue,
    /// Steps are running.
    AwaitSteps,
    /// Only retries remain; the earliest is due at this time (database clock, ms).
    AwaitRetry(UnixMillis),
}

impl Verdict {
    /// The event that moves an `EvaluatingResults` task on by this verdict.
    pub fn event(self) -> TaskEvent {
        match self {
            Verdict::Complete => TaskEvent::Complete,
            Verdict::Fail => TaskEvent::Fail,
            Verdict::Block => TaskEvent::Block,
            Verdict::Enqueue => TaskEvent::BeginEnqueue,
            Verdict::AwaitSteps => TaskEvent::AwaitSteps,
            Verdict::AwaitRetry(_) => TaskEvent::AwaitRetry,
        }
    }
}

/// Judges a task by all of its steps.
pub fn verdict(steps: &[StepRow]) -> Verdict {
    let running = steps
        .iter()
        .any(|s| matches!(s.state, StepState::Enqueued | StepState::InProgress));
    if steps
        .iter()
        .all(|s| s.state.releases_dependents() || is_tolerated_failure(s))
    {
        return Verdict::Complete;
    }
    if steps
        .iter()
        .any(|s| s.state == StepState::Error && !is_tolerated_failure(s))
    {
        return if running {
            Verdict::Block
        } else {
            Verdict::Fail
        };
    }
    if steps.iter().any(is_ready) {
        return Verdict::Enqueue;
    }
    if running {
        return Verdict::AwaitSteps;
    }
    match steps
        .iter()
        .filter(|s| s.state == StepState::WaitingForRetry)
        .filter_map(|s| s.next_attempt_at_ms)
        .min()
    {
        Some(due) => Verdict::AwaitRetry(due),
        // Pending steps behind unfinished parents with nothing running cannot happen while
        // the counters hold; fail loudly rather than wait forever.
        None => Verdict::Fail,
    }
}
