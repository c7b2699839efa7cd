//! The in-process worker: takes a batch of the step messages whose handlers this process has,
//! starts their attempts together, runs the handlers concurrently (each with its step's
//! timeout), and applies the results in the transaction that acknowledges the step messages.
//! Remote workers' results cross the `step_results` queue instead; the same
//! `executor::apply_results` applies both. A worker that dies before that transaction leaves
//! its messages to their visibility timeout; the steps are then delivered again
//! (`lease_expired`) and run again.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use futures::{stream::FuturesUnordered, StreamExt};
use tasker_store::{
    retry_contended, QueueAckParams, QueueLeaseParams, StepMessage, StepStartManyParams,
    StepStarted, StoreError,
};
use tasker_types::{QueueMessage, StepEvent, StepId, StepRow, StepState};
use tracing::Instrument;

use crate::{
    handler::{HandlerRegistry, StepInput},
    pipeline::executor::{
        apply_results, ExecutorContext, ExecutorError, ExecutorType, OrchestrationExecutor,
    },
    pipeline::messages::{StepOutcome, StepResult},
};

/// A batch running longer than this applies its finished results before going on.
const FLUSH_AFTER: Duration = Duration::from_millis(500);

/// Runs the steps of some namespaces in this process.
#[derive(Debug, Clone)]
pub struct InProcessWorker {
    pub(crate) ctx: ExecutorContext,
    pub(crate) handlers: Arc<HandlerRegistry>,
    /// The queue it consumes ([`crate::pipeline::messages::LOCAL_STEPS`]).
    pub(crate) queue: String,
}

impl InProcessWorker {
    /// Takes and runs up to `batch` step messages of its queue; returns how many.
    ///
    /// # Errors
    ///
    /// Store failures; messages not yet acknowledged are delivered again later.
    pub async fn run_batch(&self, batch: u32) -> Result<usize, ExecutorError> {
        let messages = self.ctx.dequeue(&self.queue, batch).await?;
        if messages.is_empty() {
            return Ok(0);
        }
        // The step of each message, by index; a malformed message goes back toward the dead
        // letters (its lease is gone then, so the acknowledgement below leaves it alone).
        let mut steps: Vec<Option<StepId>> = Vec::with_capacity(messages.len());
        for message in &messages {
            let decoded = self.ctx.decode_or_reject::<StepMessage>(message).await?;
            steps.push(decoded.map(|m| m.step_id));
        }
        let ids: Vec<StepId> = steps.iter().flatten().copied().collect();
        let mut started = begin_attempts(&self.ctx, &ids).await?;
        // Messages whose step did not start (finished, cancelled, gone) are spent: acknowledged
        // with the first results.
        let mut finished: Vec<(usize, Option<StepResult>)> = Vec::new();
        let mut running = FuturesUnordered::new();
        for (i, step_id) in steps.iter().enumerate() {
            match step_id.and_then(|id| started.remove(&id)) {
                Some((step, input)) => running.push(async move {
                    let outcome = self.run(&step, input).await;
                    let result = StepResult {
                        task_id: step.task_id,
                        step_id: step.id,
                        attempt: step.attempts,
                        outcome,
                    };
                    (i, Some(result))
                }),
                None => finished.push((i, None)),
            }
        }
        let mut unflushed: Vec<bool> = vec![true; messages.len()];
        let period = (self.ctx.visibility_timeout / 3).max(Duration::from_millis(10));
        let mut extend = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut flush_at = tokio::time::Instant::now() + FLUSH_AFTER;
        loop {
            tokio::select! {
                next = running.next() => {
                    let Some(done) = next else { break };
                    finished.push(done);
                    // Fast handlers share one transaction per batch; once the batch has run a
                    // while, finished results are applied without waiting for the rest.
                    if tokio::time::Instant::now() >= flush_at {
                        self.flush(&messages, &mut finished, &mut unflushed).await?;
                        flush_at = tokio::time::Instant::now() + FLUSH_AFTER;
                    }
                }
                // Long handlers neither lose their own step nor let the steps waiting behind
                // them be delivered to another worker.
                _ = extend.tick() => self.extend_leases(&messages, &unflushed).await,
            }
        }
        self.flush(&messages, &mut finished, &mut unflushed).await?;
        Ok(messages.len())
    }

    /// Runs one step's handler with the step's timeout, in a span naming the task, step and
    /// attempt.
    async fn run(&self, step: &StepRow, input: StepInput) -> StepOutcome {
        let span = tracing::debug_span!(
            "step.attempt",
            task_id = %step.task_id,
            step_id = %step.id,
            step = %step.name,
            attempt = step.attempts
        );
        let outcome = self.attempt(step, input).instrument(span.clone()).await;
        span.in_scope(|| match &outcome {
            StepOutcome::Success { .. } => tracing::debug!("attempt succeeded"),
            StepOutcome::Failure { error, retryable } => {
                tracing::debug!(%error, retryable, "attempt failed");
            }
        });
        outcome
    }

    async fn attempt(&self, step: &StepRow, input: StepInput) -> StepOutcome {
        let Some(handler) = self.handlers.get(&step.handler) else {
            return StepOutcome::Failure {
                error: format!("no handler named {:?} in this worker", step.handler),
                retryable: false,
            };
        };
        let call = handler.call(input);
        let result = match step.timeout_ms {
            Some(ms) => tokio::time::timeout(Duration::from_millis(ms), call)
                .await
                .unwrap_or_else(|_| {
                    Err(crate::handler::StepFailure {
                        error: format!("attempt timed out after {ms} ms"),
                        retryable: true,
                    })
                }),
            None => call.await,
        };
        match result {
            Ok(output) => StepOutcome::Success { output },
            Err(f) => StepOutcome::Failure {
                error: f.error,
                retryable: f.retryable,
            },
        }
    }

    /// Applies the `finished` results with the acknowledgement of their messages, in one
    /// transaction.
    async fn flush(
        &self,
        messages: &[QueueMessage],
        finished: &mut Vec<(usize, Option<StepResult>)>,
        unflushed: &mut [bool],
    ) -> Result<(), ExecutorError> {
        if finished.is_empty() {
            return Ok(());
        }
        let mut results = Vec::with_capacity(finished.len());
        let mut consumed = Vec::with_capacity(finished.len());
        for (i, result) in finished.drain(..) {
            results.extend(result);
            consumed.push(QueueAckParams {
                id: messages[i].id,
                lease_token: messages[i].lease_token.clone(),
            });
            unflushed[i] = false;
        }
        apply_results(&self.ctx, &results, consumed).await
    }

    /// Extends the leases of the batch's messages not yet acknowledged.
    async fn extend_leases(&self, messages: &[QueueMessage], unflushed: &[bool]) {
        for (message, _) in messages.iter().zip(unflushed).filter(|(_, &u)| u) {
            let extend = QueueLeaseParams {
                id: message.id,
                lease_token: message.lease_token.clone(),
                delay: self.ctx.visibility_timeout,
            };
            if let Err(error) = self.ctx.store.queue_extend(&extend).await {
                tracing::warn!(%error, message = message.id, "could not extend a step message's lease");
            }
        }
    }
}

/// Starts a new attempt of one delivered step; see [`begin_attempts`].
pub(crate) async fn begin_attempt(
    ctx: &ExecutorContext,
    step_id: StepId,
) -> Result<Option<(StepRow, StepInput)>, ExecutorError> {
    Ok(begin_attempts(ctx, &[step_id]).await?.remove(&step_id))
}

/// Starts new attempts of delivered steps, together: each moves to `InProgress` (through
/// `lease_expired` first when an earlier delivery's worker lost its lease) with what its
/// handler needs. Steps with nothing to run (moved on, gone) are missing from the answer.
pub(crate) async fn begin_attempts(
    ctx: &ExecutorContext,
    step_ids: &[StepId],
) -> Result<HashMap<StepId, (StepRow, StepInput)>, ExecutorError> {
    let mut start = StepStartManyParams {
        step_ids: step_ids.to_vec(),
        instance_id: ctx.instance_id.clone(),
    };
    let mut started = retry_contended(|| ctx.store.step_start_many(&start)).await?;
    if started.len() < step_ids.len() {
        // Not `Enqueued`: gone, moved on, or redelivered because the worker holding the
        // earlier attempt lost its lease, which is then taken back first (rare).
        let mut retake = Vec::new();
        for &id in step_ids {
            if started.iter().any(|s| s.step.id == id) {
                continue;
            }
            let step = match ctx.store.step_get(id).await {
                Ok(s) => s,
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            if step.state != StepState::InProgress {
                continue;
            }
            let moved = ctx
                .step_move(&ctx.step_event(id, step.state, StepEvent::LeaseExpired))
                .await?;
            if moved.is_some() {
                retake.push(id);
            }
        }
        if !retake.is_empty() {
            start.step_ids = retake;
            started.extend(retry_contended(|| ctx.store.step_start_many(&start)).await?);
        }
    }
    Ok(started
        .into_iter()
        .map(
            |StepStarted {
                 step,
                 context,
                 parents,
             }| {
                let input = StepInput {
                    context,
                    config: step.handler_config.clone(),
                    parents: parents
                        .into_iter()
                        .map(|(name, output)| (name, output.unwrap_or(serde_json::Value::Null)))
                        .collect(),
                    attempt: step.attempts,
                };
                (step.id, (step, input))
            },
        )
        .collect())
}

#[async_trait]
impl OrchestrationExecutor for InProcessWorker {
    fn executor_type(&self) -> ExecutorType {
        ExecutorType::InProcessWorker
    }

    async fn process_batch(&self, batch_size: u32) -> Result<usize, ExecutorError> {
        self.run_batch(batch_size).await
    }
}
