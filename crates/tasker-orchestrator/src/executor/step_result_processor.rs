//! StepResultProcessor: applies step results (complete, retry with backoff, fail), treats
//! duplicates and stale attempts as no-ops, and asks the finalizer to evaluate the task.

use std::time::Duration;

use async_trait::async_trait;
use tasker_store::StoreError;
use tasker_types::{StepEvent, StepState};

use super::{ExecutorContext, ExecutorError, ExecutorType, OrchestrationExecutor};
use crate::{
    backoff,
    engine::TaskEvent as EngineEvent,
    messages::{StepOutcome, StepResult, TaskRef, STEP_RESULTS, TASK_FINALIZE},
};

/// Applies worker results.
#[derive(Debug)]
pub struct StepResultProcessor {
    ctx: ExecutorContext,
}

impl StepResultProcessor {
    /// A processor over `ctx`.
    pub fn new(ctx: ExecutorContext) -> Self {
        Self { ctx }
    }

    /// Applies one result; `false` when it was a duplicate or stale.
    async fn apply(&self, result: &StepResult) -> Result<bool, ExecutorError> {
        let step = match self.ctx.store.step_get(result.step_id).await {
            Ok(s) => s,
            Err(StoreError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if step.state != StepState::InProgress || step.attempts != result.attempt {
            tracing::debug!(step_id = %step.id, state = %step.state, attempt = result.attempt, "ignoring stale step result");
            return Ok(false);
        }
        let mut params = self
            .ctx
            .step_event(step.id, StepState::InProgress, StepEvent::Complete);
        // Fenced to the attempt the result is for: a redelivery that restarted the step in the
        // meantime makes this result stale.
        params.attempt = Some(result.attempt);
        match &result.outcome {
            StepOutcome::Success { output } => params.output = Some(output.clone()),
            StepOutcome::Failure { error, retryable } => {
                let will_retry = *retryable && step.attempts < step.max_attempts;
                params.event = StepEvent::Fail { will_retry };
                params.error = Some(error.clone());
                if will_retry {
                    params.retry_after = Some(backoff::delay(
                        step.attempts,
                        Duration::from_millis(step.retry_base_ms),
                        Duration::from_millis(step.retry_max_ms),
                        step.retry_jitter,
                        rand::random::<f64>(),
                    ));
                }
            }
        }
        // `None`: another processor applied a copy of this result first.
        let Some(applied) = self.ctx.step_move(&params).await? else {
            return Ok(false);
        };
        // A full channel only means nobody is watching closely; events are advisory.
        let _ = self.ctx.events.send(EngineEvent::StepFinished {
            task_id: applied.task_id,
            name: applied.name.clone(),
            state: applied.state,
            attempts: applied.attempts,
        });
        Ok(true)
    }
}

#[async_trait]
impl OrchestrationExecutor for StepResultProcessor {
    fn executor_type(&self) -> ExecutorType {
        ExecutorType::StepResultProcessor
    }

    async fn process_batch(&self, batch_size: u32) -> Result<usize, ExecutorError> {
        let messages = self.ctx.dequeue(STEP_RESULTS, batch_size).await?;
        let mut evaluate: Vec<TaskRef> = Vec::new();
        let mut done = Vec::with_capacity(messages.len());
        for message in &messages {
            let Some(result) = self.ctx.decode_or_reject::<StepResult>(message).await? else {
                continue;
            };
            self.apply(&result).await?;
            // Evaluate even after a duplicate: the first copy's evaluation may be the one that
            // was lost.
            let task = TaskRef {
                task_id: result.task_id,
            };
            if !evaluate.contains(&task) {
                evaluate.push(task);
            }
            done.push(message);
        }
        // The evaluation requests are durable before any result message is acknowledged.
        self.ctx
            .publish(TASK_FINALIZE, &evaluate, Duration::ZERO)
            .await?;
        for message in done {
            self.ctx.ack(message).await?;
        }
        Ok(messages.len())
    }
}
