//! StepResultProcessor: applies a batch of step results in one transaction. Each result moves
//! its step (complete, retry with backoff, fail); a completed step's newly ready children are
//! enqueued and a task whose last step completed is finished in that same transaction, so the
//! common path needs no other executor. Duplicates and stale attempts are no-ops; anything
//! else that needs deciding (a failure, nothing left running) goes to the TaskFinalizer.
//!
//! It consumes `step_results`, where remote workers' results arrive; in-process workers apply
//! theirs with the same [`apply_results`].

use std::time::Duration;

use async_trait::async_trait;
use tasker_store::{
    retry_contended, QueueAckParams, StepApplyResultsParams, StepChain, StepClaimed,
    StepResultApply, StoreError,
};
use tasker_types::{settle, StepEvent, StepState};

use super::{ExecutorContext, ExecutorError, ExecutorType, OrchestrationExecutor};
use crate::{
    pipeline::backoff,
    pipeline::events::EngineEvent,
    pipeline::messages::{StepOutcome, StepResult, STEP_RESULTS, TASK_FINALIZE},
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
}

/// What the store applies for `result`; `None` when it is already known to be stale.
///
/// A success needs nothing read first: the store applies it only while the step runs the
/// result's attempt. A failure reads the step for its retry policy (failures are rare).
async fn prepare(
    ctx: &ExecutorContext,
    result: &StepResult,
) -> Result<Option<StepResultApply>, ExecutorError> {
    let mut apply = StepResultApply {
        task_id: result.task_id,
        step_id: result.step_id,
        attempt: result.attempt,
        event: StepEvent::Complete,
        output: None,
        error: None,
        backoff: None,
        lease_token: result.lease_token.clone(),
        unchosen: result.unchosen.clone(),
        instances: result.instances.clone(),
    };
    match &result.outcome {
        // A mapped step expands; its output comes when its instances have finished.
        StepOutcome::Success { .. } if !result.instances.is_empty() => {
            apply.event = StepEvent::Expand;
        }
        StepOutcome::Success { output } => apply.output = Some(output.clone()),
        StepOutcome::Failure { error, retryable } => {
            let step = match ctx.store.step_get(result.step_id).await {
                Ok(s) => s,
                Err(StoreError::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            if step.state != StepState::InProgress || step.attempts != result.attempt {
                tracing::debug!(step_id = %step.id, state = %step.state, attempt = result.attempt, "ignoring stale step result");
                return Ok(None);
            }
            apply.event = settle::failure_event(&step, *retryable);
            apply.error = Some(error.clone());
            if apply.event == (StepEvent::Fail { will_retry: true }) {
                apply.backoff = Some(backoff::delay(
                    step.attempts,
                    Duration::from_millis(step.retry_base_ms),
                    Duration::from_millis(step.retry_max_ms),
                    step.retry_jitter,
                    rand::random::<f64>(),
                ));
            }
        }
    }
    Ok(Some(apply))
}

/// Applies `results` and deletes the `consumed` deliveries they came in, in one transaction
/// (see [`tasker_store::StepStore::step_apply_results`]), then wakes the queues that received
/// work and announces the moved steps and finished tasks. Shared by the StepResultProcessor
/// (results from remote workers) and the in-process workers, which apply their own results
/// rather than cross a queue to this process, and may `chain`: claim the children the results
/// make ready in their own queue, returned to run next. `lock_wait` bounds the wait for a row
/// lock another session holds (see [`StepApplyResultsParams::lock_wait`]).
///
/// # Errors
///
/// Store failures; nothing is applied or deleted then, and the deliveries come back.
pub(crate) async fn apply_results(
    ctx: &ExecutorContext,
    results: &[StepResult],
    consumed: Vec<QueueAckParams>,
    chain: Option<StepChain>,
    lock_wait: Option<Duration>,
) -> Result<Vec<StepClaimed>, ExecutorError> {
    let mut apply = Vec::with_capacity(results.len());
    for result in results {
        apply.extend(prepare(ctx, result).await?);
    }
    let params = StepApplyResultsParams {
        results: apply,
        consumed,
        routing: ctx.routing.clone(),
        evaluate_queue: TASK_FINALIZE.to_owned(),
        instance_id: ctx.instance_id.clone(),
        chain,
        lock_wait,
    };
    let applied = retry_contended(|| ctx.store.step_apply_results(&params)).await?;
    for queue in &applied.queues {
        ctx.wakeups.wake(queue);
    }
    // Events are advisory: a full channel only means nobody is watching closely.
    for step in &applied.steps {
        let _ = ctx.events.send(EngineEvent::StepFinished {
            task_id: step.task_id,
            name: step.name.clone(),
            state: step.state,
            attempts: step.attempts,
        });
    }
    for task in &applied.finished {
        tracing::info!(task_id = %task.id, state = %task.state, "task finished");
        let _ = ctx.events.send(EngineEvent::TaskFinished {
            task_id: task.id,
            state: task.state,
        });
    }
    Ok(applied.claimed)
}

#[async_trait]
impl OrchestrationExecutor for StepResultProcessor {
    fn executor_type(&self) -> ExecutorType {
        ExecutorType::StepResultProcessor
    }

    async fn process_batch(&self, batch_size: u32) -> Result<usize, ExecutorError> {
        let messages = self.ctx.dequeue(STEP_RESULTS, batch_size).await?;
        let mut results = Vec::with_capacity(messages.len());
        let mut consumed = Vec::with_capacity(messages.len());
        for message in &messages {
            let Some(result) = self.ctx.decode_or_reject::<StepResult>(message).await? else {
                continue;
            };
            results.push(result);
            consumed.push(QueueAckParams {
                id: message.id,
                lease_token: message.lease_token.clone(),
            });
        }
        if !consumed.is_empty() {
            apply_results(&self.ctx, &results, consumed, None, None).await?;
        }
        Ok(messages.len())
    }
}
