//! TaskFinalizer: evaluates a task after its steps changed and moves it on: enqueue newly viable
//! steps, wait for running steps or a retry, block on or fail with a permanent failure, or
//! complete it.

use std::time::Duration;

use async_trait::async_trait;
use tasker_store::StoreError;
use tasker_types::{
    settle::{verdict, Verdict},
    StepRow, StepState, TaskEvent, TaskId, TaskRow, TaskState,
};

use super::{ExecutorContext, ExecutorError, ExecutorType, OrchestrationExecutor};
use crate::{
    pipeline::events::EngineEvent,
    pipeline::messages::{TaskRef, TASK_FINALIZE, TASK_WORK},
};

/// How long an evaluation request waits, per delivery so far, while a claimer is enqueuing the
/// task's steps (50 ms, 100 ms, 150 ms, ...).
const BUSY_RETRY: Duration = Duration::from_millis(50);

/// Deliveries of one evaluation request that found the task still before enqueueing (about
/// 0.75 s of waiting), after which its `task_work` is presumed lost and queued again.
const RECOVER_AFTER_DELIVERIES: u32 = 6;

/// Evaluates and finalizes tasks.
#[derive(Debug)]
pub struct TaskFinalizer {
    ctx: ExecutorContext,
}

/// What became of one evaluation request.
enum Evaluated {
    Done,
    Later,
}

impl TaskFinalizer {
    /// A finalizer over `ctx`.
    pub fn new(ctx: ExecutorContext) -> Self {
        Self { ctx }
    }

    async fn evaluate(&self, task_id: TaskId, deliveries: u32) -> Result<Evaluated, ExecutorError> {
        let store = &self.ctx.store;
        let task = match store.task_get(task_id).await {
            Ok(t) => t,
            Err(StoreError::NotFound { .. }) => return Ok(Evaluated::Done),
            Err(e) => return Err(e.into()),
        };
        match task.state {
            s if s.is_terminal() => return Ok(Evaluated::Done),
            // A claimer is enqueuing its steps: evaluate once it is done. If that keeps not
            // happening, the `task_work` message was lost (a crash between a state change and
            // its publish): queue the work again, which the claim and the enqueuer absorb if
            // it was a false alarm.
            TaskState::Pending | TaskState::Initializing | TaskState::EnqueuingSteps => {
                if deliveries < RECOVER_AFTER_DELIVERIES {
                    return Ok(Evaluated::Later);
                }
                tracing::warn!(task_id = %task_id, state = %task.state, "task stuck before enqueueing; queueing its work again");
                self.ctx
                    .publish(TASK_WORK, &[TaskRef { task_id }], Duration::ZERO)
                    .await?;
                return Ok(Evaluated::Done);
            }
            TaskState::EvaluatingResults => {}
            from => {
                let moved = self
                    .ctx
                    .task_move(task_id, from, TaskEvent::StepResultReceived, None)
                    .await?;
                if moved.is_none() {
                    return Ok(Evaluated::Later);
                }
            }
        }
        let steps = store.step_list(task_id).await?;
        let verdict = verdict(&steps);
        let reason = match verdict {
            Verdict::Fail | Verdict::Block => failure_reason(&steps),
            _ => None,
        };
        let event = verdict.event();
        let Some(moved) = self
            .ctx
            .task_move(task_id, TaskState::EvaluatingResults, event, reason)
            .await?
        else {
            return Ok(Evaluated::Later);
        };
        match verdict {
            Verdict::Enqueue => {
                self.ctx
                    .publish(TASK_WORK, &[TaskRef { task_id }], Duration::ZERO)
                    .await?;
            }
            Verdict::AwaitRetry(due_ms) => {
                let wait = u64::try_from(due_ms.saturating_sub(moved.updated_at_ms)).unwrap_or(0);
                self.ctx
                    .publish(
                        TASK_WORK,
                        &[TaskRef { task_id }],
                        Duration::from_millis(wait),
                    )
                    .await?;
            }
            Verdict::Complete | Verdict::Fail => self.finished(&moved),
            Verdict::Block | Verdict::AwaitSteps => {}
        }
        Ok(Evaluated::Done)
    }

    fn finished(&self, task: &TaskRow) {
        tracing::info!(task_id = %task.id, state = %task.state, "task finished");
        let _ = self.ctx.events.send(EngineEvent::TaskFinished {
            task_id: task.id,
            state: task.state,
        });
    }
}

fn failure_reason(steps: &[StepRow]) -> Option<String> {
    steps.iter().find(|s| s.state == StepState::Error).map(|s| {
        format!(
            "step {} failed: {}",
            s.name,
            s.last_error.as_deref().unwrap_or("unknown error")
        )
    })
}

#[async_trait]
impl OrchestrationExecutor for TaskFinalizer {
    fn executor_type(&self) -> ExecutorType {
        ExecutorType::TaskFinalizer
    }

    async fn process_batch(&self, batch_size: u32) -> Result<usize, ExecutorError> {
        let messages = self.ctx.dequeue(TASK_FINALIZE, batch_size).await?;
        for message in &messages {
            let Some(task) = self.ctx.decode_or_reject::<TaskRef>(message).await? else {
                continue;
            };
            match self.evaluate(task.task_id, message.deliveries).await? {
                Evaluated::Done => self.ctx.ack(message).await?,
                // A nack, so each wait counts toward the recovery above.
                Evaluated::Later => {
                    self.ctx
                        .nack(message, BUSY_RETRY * message.deliveries)
                        .await?;
                }
            }
        }
        Ok(messages.len())
    }
}
