//! The in-process worker: takes the step messages whose handlers this process has, runs their
//! handlers with the step's timeout, and applies the results in the transaction that
//! acknowledges the step messages. Remote workers' results cross the `step_results` queue
//! instead; the same `executor::apply_results` applies both. A worker that dies before that
//! transaction leaves its messages to their visibility timeout; the step is then delivered
//! again (`lease_expired`) and run again.

use std::{sync::Arc, time::Duration};

use tasker_store::{
    QueueAckParams, QueueNackParams, StepMessage, StepStartParams, StepStarted, StoreError,
};
use tasker_types::{QueueMessage, StepEvent, StepId, StepRow, StepState};

use async_trait::async_trait;

use crate::{
    executor::{
        apply_results, ExecutorContext, ExecutorError, ExecutorType, OrchestrationExecutor,
    },
    handler::{HandlerRegistry, StepInput},
    messages::{StepOutcome, StepResult},
};

/// A batch running longer than this publishes its finished results before going on.
const FLUSH_AFTER: Duration = Duration::from_millis(500);

/// Runs the steps of some namespaces in this process.
#[derive(Debug, Clone)]
pub struct InProcessWorker {
    pub(crate) ctx: ExecutorContext,
    pub(crate) handlers: Arc<HandlerRegistry>,
    /// The queue it consumes ([`crate::messages::LOCAL_STEPS`]).
    pub(crate) queue: String,
}

impl InProcessWorker {
    /// Takes and runs up to `batch` step messages of its namespace; returns how many.
    ///
    /// # Errors
    ///
    /// Store failures; messages not yet acknowledged are delivered again later.
    pub async fn run_batch(&self, batch: u32) -> Result<usize, ExecutorError> {
        let messages = self.ctx.dequeue(&self.queue, batch).await?;
        let started = tokio::time::Instant::now();
        let mut results = Vec::new();
        let mut done = 0;
        for (i, message) in messages.iter().enumerate() {
            if let Some(result) = self.run_one(message, &messages[i..]).await? {
                results.push(result);
            }
            // Fast handlers share one publish per batch; once the batch has run a while, its
            // finished results are made durable (and acked) without waiting for the rest.
            if started.elapsed() >= FLUSH_AFTER {
                self.flush(&mut results, &messages[done..=i]).await?;
                done = i + 1;
            }
        }
        self.flush(&mut results, &messages[done..]).await?;
        Ok(messages.len())
    }

    /// Publishes `results`, then acknowledges the messages they came from.
    async fn flush(
        &self,
        results: &mut Vec<StepResult>,
        messages: &[QueueMessage],
    ) -> Result<(), ExecutorError> {
        if messages.is_empty() {
            return Ok(());
        }
        // The results are applied with the acknowledgement of their step messages, in one
        // transaction: a crash before it leaves the messages to be delivered again, never a
        // result without its step or the other way round.
        let consumed = messages
            .iter()
            .map(|m| QueueAckParams {
                id: m.id,
                lease_token: m.lease_token.clone(),
            })
            .collect();
        apply_results(&self.ctx, results, consumed).await?;
        results.clear();
        Ok(())
    }

    /// Runs `work` while extending the leases of the batch's messages not yet finished
    /// (`leased`) every third of the visibility timeout, so a long handler neither loses its
    /// own step nor lets the steps queued behind it be delivered to another worker.
    async fn keep_leased<T>(
        &self,
        leased: &[QueueMessage],
        work: impl std::future::Future<Output = T>,
    ) -> T {
        tokio::pin!(work);
        let period = (self.ctx.visibility_timeout / 3).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = tick.tick() => {
                    for message in leased {
                        let extend = QueueNackParams {
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
        }
    }

    /// Runs the step of `message`; `leased` is it and the batch's messages after it.
    async fn run_one(
        &self,
        message: &QueueMessage,
        leased: &[QueueMessage],
    ) -> Result<Option<StepResult>, ExecutorError> {
        let Some(step_message) = self.ctx.decode_or_reject::<StepMessage>(message).await? else {
            return Ok(None);
        };
        let Some((step, input)) = begin_attempt(&self.ctx, step_message.step_id).await? else {
            return Ok(None);
        };
        let run = async {
            match self.handlers.get(&step.handler) {
                None => StepOutcome::Failure {
                    error: format!("no handler named {:?} in this worker", step.handler),
                    retryable: false,
                },
                Some(handler) => {
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
            }
        };
        let outcome = self.keep_leased(leased, run).await;
        Ok(Some(StepResult {
            task_id: step.task_id,
            step_id: step.id,
            attempt: step.attempts,
            outcome,
        }))
    }
}

/// Starts a new attempt of a delivered step: moves it to `InProgress` (through
/// `lease_expired` when an earlier delivery's worker lost its lease) and gathers what its
/// handler needs. `None` when there is nothing to run (the step moved on or is gone).
pub(crate) async fn begin_attempt(
    ctx: &ExecutorContext,
    step_id: StepId,
) -> Result<Option<(StepRow, StepInput)>, ExecutorError> {
    let start = StepStartParams {
        step_id,
        instance_id: ctx.instance_id.clone(),
    };
    let mut started = ctx.store.step_start(&start).await?;
    if started.is_none() {
        // Not `Enqueued`: gone, moved on, or redelivered because the worker holding the
        // earlier attempt lost its lease, which is then taken back first.
        let step = match ctx.store.step_get(step_id).await {
            Ok(s) => s,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if step.state != StepState::InProgress {
            return Ok(None);
        }
        let moved = ctx
            .step_move(&ctx.step_event(step.id, step.state, StepEvent::LeaseExpired))
            .await?;
        if moved.is_none() {
            return Ok(None);
        }
        started = ctx.store.step_start(&start).await?;
    }
    let Some(StepStarted {
        step,
        context,
        parents,
    }) = started
    else {
        return Ok(None);
    };
    let input = StepInput {
        context,
        config: step.handler_config.clone(),
        parents: parents
            .into_iter()
            .map(|(name, output)| (name, output.unwrap_or(serde_json::Value::Null)))
            .collect(),
        attempt: step.attempts,
    };
    Ok(Some((step, input)))
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
