//! What operators do to tasks: cancel a task, retry a failed step, resolve a failed step by
//! hand. Each change is a compare-and-swap transition with its audit row; the task is then
//! handed to the finalizer to be evaluated again.
//!
//! Once the first write of an action has committed, the rest of it (each step safe to repeat)
//! rides out a storage outage for [`FOLLOW_UP_PATIENCE`] rather than report a failure for an
//! action that took effect.

use std::time::Duration;

use serde_json::Value;
use tasker_store::{retry_while_unavailable, AsStoreError, StoreError, FOLLOW_UP_PATIENCE};
use tasker_types::{StepEvent, StepRow, StepState, TaskEvent, TaskId, TaskRow, TaskState};

use crate::{
    pipeline::executor::{ExecutorContext, ExecutorError},
    pipeline::messages::{TaskRef, TASK_FINALIZE},
};

/// Why an operator action was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// No such task or step.
    #[error("{0} not found")]
    NotFound(String),
    /// The task or step is in a state the action does not apply to.
    #[error("{0}")]
    Conflict(String),
    /// The engine failed.
    #[error(transparent)]
    Executor(#[from] ExecutorError),
}

impl AsStoreError for OperatorError {
    fn as_store_error(&self) -> Option<&StoreError> {
        match self {
            OperatorError::Executor(e) => e.as_store_error(),
            _ => None,
        }
    }
}

impl From<StoreError> for OperatorError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { entity, id } => {
                OperatorError::NotFound(format!("{entity} {id}"))
            }
            other => OperatorError::Executor(ExecutorError::Store(other)),
        }
    }
}

/// Attempts at a compare-and-swap move that keeps losing to other actors before giving up.
const CAS_ATTEMPTS: usize = 5;

/// Cancels a task and its unfinished steps.
///
/// # Errors
///
/// [`OperatorError::Conflict`] when the task already finished (or is in `Error`, which only
/// retry or resolve leave); [`OperatorError::NotFound`].
pub(crate) async fn cancel_task(
    ctx: &ExecutorContext,
    task_id: TaskId,
) -> Result<TaskRow, OperatorError> {
    let mut task = None;
    for _ in 0..CAS_ATTEMPTS {
        let current = ctx.store.task_get(task_id).await?;
        if current.state.is_terminal() {
            return Err(OperatorError::Conflict(format!(
                "task {task_id} is {} and cannot be cancelled",
                current.state
            )));
        }
        if let Some(moved) = ctx
            .task_move(
                task_id,
                current.state,
                TaskEvent::Cancel,
                Some("cancelled by operator".into()),
            )
            .await?
        {
            task = Some(moved);
            break;
        }
    }
    let task = task.ok_or_else(|| {
        OperatorError::Conflict(format!("task {task_id} kept changing; try again"))
    })?;
    // The task is cancelled: cancelling its steps follows, repeatable until it is done. A
    // mapped step that expanded meanwhile added instances the pass did not see: passes go on
    // until one finds no step the one before did not (a cancelled mapped step expands no more).
    retry_while_unavailable(FOLLOW_UP_PATIENCE, || async {
        let mut seen = 0;
        loop {
            let steps = ctx.store.step_list(task_id).await?;
            if steps.len() == seen {
                return Ok::<_, OperatorError>(());
            }
            seen = steps.len();
            for step in steps {
                cancel_step(ctx, step).await?;
            }
        }
    })
    .await?;
    Ok(task)
}

async fn cancel_step(ctx: &ExecutorContext, mut step: StepRow) -> Result<(), OperatorError> {
    for _ in 0..CAS_ATTEMPTS {
        if step.state.transition(StepEvent::Cancel).is_err() {
            return Ok(());
        }
        match ctx
            .step_move(&ctx.step_event(step.id, step.state, StepEvent::Cancel))
            .await?
        {
            Some(_) => return Ok(()),
            None => step = ctx.store.step_get(step.id).await?,
        }
    }
    Ok(())
}

/// The named step, if `event` may be applied to it: it is in `Error`, or the last change to
/// it was this very operator action (an earlier call that stopped before reopening the task:
/// the action is then resumed, not refused).
async fn step_for(
    ctx: &ExecutorContext,
    task_id: TaskId,
    name: &str,
    event: StepEvent,
) -> Result<(StepRow, bool), OperatorError> {
    let steps = ctx.store.step_list(task_id).await?;
    let step = steps
        .iter()
        .find(|s| s.name == name)
        .cloned()
        .ok_or_else(|| OperatorError::NotFound(format!("step {name:?} of task {task_id}")))?;
    // A failed instance whose map went on without it (`on_failure: continue`) was counted
    // done when the map completed: running or resolving it now would count it twice.
    if let Some(instance) = &step.map_instance {
        let mapped = steps.iter().find(|s| s.id == instance.of);
        if step.state == StepState::Error && mapped.is_some_and(|m| m.state != StepState::Mapped) {
            return Err(OperatorError::Conflict(format!(
                "step {name:?} failed, but its mapped step went on without it (on_failure: \
                 continue); retry or resolve the task's later steps instead"
            )));
        }
    }
    if step.state == StepState::Error {
        return Ok((step, false));
    }
    let last = ctx
        .store
        .transition_list(task_id)
        .await?
        .into_iter()
        .rev()
        .find(|t| t.step_id == Some(step.id));
    if last.is_some_and(|t| t.event == event.name() && t.to_state == step.state.as_str()) {
        return Ok((step, true));
    }
    Err(OperatorError::Conflict(format!(
        "step {name:?} is {}, not Error",
        step.state
    )))
}

/// Runs a failed step again (its attempts start over) and re-evaluates the task.
///
/// # Errors
///
/// [`OperatorError::Conflict`] unless the step is in `Error` (or this retry was interrupted
/// before; it is then completed); [`OperatorError::NotFound`].
pub(crate) async fn retry_step(
    ctx: &ExecutorContext,
    task_id: TaskId,
    name: &str,
) -> Result<StepRow, OperatorError> {
    operate(ctx, task_id, name, StepEvent::Retry, None).await
}

/// Marks a failed step as resolved by hand (its children may run) and re-evaluates the task.
/// `output`, when given, becomes the step's result, which its children receive as this
/// parent's output.
///
/// # Errors
///
/// [`OperatorError::Conflict`] unless the step is in `Error` (or this resolve was interrupted
/// before; it is then completed); [`OperatorError::NotFound`].
pub(crate) async fn resolve_step(
    ctx: &ExecutorContext,
    task_id: TaskId,
    name: &str,
    output: Option<Value>,
) -> Result<StepRow, OperatorError> {
    operate(ctx, task_id, name, StepEvent::ResolveManually, output).await
}

async fn operate(
    ctx: &ExecutorContext,
    task_id: TaskId,
    name: &str,
    event: StepEvent,
    output: Option<Value>,
) -> Result<StepRow, OperatorError> {
    let (step, resumed) = step_for(ctx, task_id, name, event).await?;
    let step = if resumed {
        step
    } else {
        let mut params = ctx.step_event(step.id, StepState::Error, event);
        params.error = Some(format!("{} by operator", event.name()));
        params.output = output;
        ctx.step_move(&params).await?.ok_or_else(|| {
            OperatorError::Conflict(format!("step {name:?} changed meanwhile; try again"))
        })?
    };
    // A task that gave up reopens; one still running just gets evaluated again. Both are safe
    // to repeat: the reopening is a compare-and-swap, a second evaluation finds nothing to do.
    retry_while_unavailable(FOLLOW_UP_PATIENCE, || async {
        let task = ctx.store.task_get(task_id).await?;
        if task.state == TaskState::Error {
            ctx.task_move(
                task_id,
                TaskState::Error,
                TaskEvent::Retry,
                Some(format!("step {name} {}", event.name())),
            )
            .await?;
        }
        ctx.publish(TASK_FINALIZE, &[TaskRef { task_id }], Duration::ZERO)
            .await?;
        Ok::<_, OperatorError>(())
    })
    .await?;
    Ok(step)
}
