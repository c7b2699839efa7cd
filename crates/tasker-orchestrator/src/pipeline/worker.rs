//! The in-process worker: takes a batch of the step messages whose handlers this process has,
//! starts their attempts together, and runs each handler on its own task in a
//! [`tokio::task::JoinSet`] (each with its step's timeout). The batch's loop only collects
//! what the tasks answer, applies finished results, and keeps the batch's leases:
//!
//! - Results are applied in the transaction that acknowledges their step messages
//!   (`executor::apply_results`). Fast handlers share one transaction; once a batch has run for
//!   [`FLUSH_AFTER`], the results finished so far are applied without waiting for the handlers
//!   still running, and again every [`FLUSH_AFTER`] after that. Every message is acknowledged
//!   exactly once: the messages whose step did not start with the first flush, every other one
//!   with its attempt's result.
//! - Every third of the visibility timeout, the leases of the messages not yet acknowledged are
//!   extended, so a long handler keeps its step and the finished steps waiting for the next
//!   flush are not delivered again.
//! - Neither awaiting a flush nor a lease extension stalls a handler: handlers progress on
//!   their own tasks meanwhile, and their answers wait in the `JoinSet`.
//! - A handler that panics fails its attempt (retryable, so the step's retry policy decides)
//!   with an error naming the panic; the worker goes on, and the message is acknowledged with
//!   that result like any other.
//!
//! Remote workers' results cross the `step_results` queue instead; the same
//! `executor::apply_results` applies both. A worker that dies before that transaction leaves
//! its messages to their visibility timeout; the steps are then delivered again
//! (`lease_expired`) and run again.

use std::{any::Any, collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use tasker_store::{
    retry_contended, QueueAckParams, QueueExtendManyParams, StepMessage, StepStartManyParams,
    StepStarted, StoreError,
};
use tasker_types::{QueueMessage, StepEvent, StepId, StepRow, StepState, TaskId};
use tokio::task::{Id as TaskHandle, JoinError, JoinSet};
use tracing::Instrument;

use crate::{
    handler::{HandlerRegistry, StepHandler, StepInput},
    pipeline::executor::{
        apply_results, ExecutorContext, ExecutorError, ExecutorType, OrchestrationExecutor,
    },
    pipeline::messages::{StepOutcome, StepResult},
};

/// A batch running longer than this applies its finished results before going on, and again
/// each time this much longer has passed.
const FLUSH_AFTER: Duration = Duration::from_millis(500);

/// Runs the steps of some namespaces in this process.
#[derive(Debug, Clone)]
pub struct InProcessWorker {
    pub(crate) ctx: ExecutorContext,
    pub(crate) handlers: Arc<HandlerRegistry>,
    /// The queue it consumes ([`crate::pipeline::messages::LOCAL_STEPS`]).
    pub(crate) queue: String,
}

/// What the batch's loop knows of an attempt running on a task of its `JoinSet`: enough to
/// make its result whatever the task answers (a panic included).
struct Running {
    /// Index of the step's message in the batch.
    message: usize,
    task_id: TaskId,
    step_id: StepId,
    attempt: u32,
}

impl InProcessWorker {
    /// Takes and runs up to `batch` step messages of its queue; returns how many.
    ///
    /// # Errors
    ///
    /// Store failures; messages not yet acknowledged are delivered again later.
    ///
    /// # Cancellation
    ///
    /// Dropping the future (a pool aborting an executor that did not stop in time) drops the
    /// batch's `JoinSet`, which aborts the handlers still running: their futures are dropped as
    /// when an attempt times out. Nothing is lost: the messages not yet acknowledged come back
    /// after their visibility timeout, and their steps run again (`lease_expired`).
    pub async fn run_batch(&self, batch: u32) -> Result<usize, ExecutorError> {
        // The leases run from about now: the first extension counts from here, not from when
        // the attempts have started.
        let leased_at = tokio::time::Instant::now();
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
        // Dropped with this future, the set aborts its tasks (see "Cancellation" above).
        let mut tasks: JoinSet<StepOutcome> = JoinSet::new();
        let mut running: HashMap<TaskHandle, Running> = HashMap::new();
        for (i, step_id) in steps.iter().enumerate() {
            match step_id.and_then(|id| started.remove(&id)) {
                Some((step, input)) => {
                    let handle = tasks.spawn(self.attempt(&step, input));
                    running.insert(
                        handle.id(),
                        Running {
                            message: i,
                            task_id: step.task_id,
                            step_id: step.id,
                            attempt: step.attempts,
                        },
                    );
                }
                None => finished.push((i, None)),
            }
        }
        let mut unflushed: Vec<bool> = vec![true; messages.len()];
        let period = (self.ctx.visibility_timeout / 3).max(Duration::from_millis(10));
        let mut extend = tokio::time::interval_at(leased_at + period, period);
        // After a long flush, one extension at once rather than one per missed period.
        extend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let flush_at = tokio::time::sleep(FLUSH_AFTER);
        tokio::pin!(flush_at);
        while !tasks.is_empty() {
            tokio::select! {
                joined = tasks.join_next_with_id() => {
                    // Never `None`: the set is not empty.
                    if let Some(joined) = joined {
                        finished.push(collect(joined, &mut running));
                    }
                }
                // Once the batch has run a while, the results so far are applied without
                // waiting for the rest, which keep running on their tasks meanwhile.
                () = &mut flush_at, if !finished.is_empty() => {
                    self.flush(&messages, &mut finished, &mut unflushed).await?;
                    flush_at.as_mut().reset(tokio::time::Instant::now() + FLUSH_AFTER);
                }
                // Long handlers neither lose their own step nor let the steps waiting behind
                // them be delivered to another worker.
                _ = extend.tick() => self.extend_leases(&messages, &unflushed).await,
            }
        }
        self.flush(&messages, &mut finished, &mut unflushed).await?;
        Ok(messages.len())
    }

    /// One step's attempt, to run on a task of its own: the handler with the step's timeout,
    /// in a span naming the task, step and attempt (a child of the batch's span).
    fn attempt(
        &self,
        step: &StepRow,
        input: StepInput,
    ) -> impl std::future::Future<Output = StepOutcome> + Send + 'static {
        let span = tracing::debug_span!(
            "step.attempt",
            task_id = %step.task_id,
            step_id = %step.id,
            step = %step.name,
            attempt = step.attempts
        );
        crate::telemetry::join_task_trace(&span, step.task_id);
        let handler = self.handlers.get(&step.handler);
        let name = step.handler.clone();
        let timeout_ms = step.timeout_ms;
        async move {
            let outcome = call(handler, &name, timeout_ms, input)
                .instrument(span.clone())
                .await;
            span.in_scope(|| match &outcome {
                StepOutcome::Success { .. } => tracing::debug!("attempt succeeded"),
                StepOutcome::Failure { error, retryable } => {
                    tracing::debug!(%error, retryable, "attempt failed");
                }
            });
            outcome
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

    /// Extends the leases of the batch's messages not yet acknowledged, in one store call.
    /// Handlers are not held up meanwhile (they run on their own tasks); only the loop's next
    /// flush waits. A lease found lost is logged: its step runs again elsewhere, and this
    /// attempt's result will be refused as stale.
    async fn extend_leases(&self, messages: &[QueueMessage], unflushed: &[bool]) {
        let leases: Vec<QueueAckParams> = messages
            .iter()
            .zip(unflushed)
            .filter(|(_, &u)| u)
            .map(|(m, _)| QueueAckParams {
                id: m.id,
                lease_token: m.lease_token.clone(),
            })
            .collect();
        if leases.is_empty() {
            return;
        }
        let params = QueueExtendManyParams {
            leases,
            visibility_timeout: self.ctx.visibility_timeout,
        };
        match self.ctx.store.queue_extend_many(&params).await {
            Ok(lost) => {
                for id in lost {
                    tracing::warn!(
                        message = id,
                        "a step message's lease was lost while its handler ran"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(%error, messages = params.leases.len(), "could not extend the step messages' leases");
            }
        }
    }
}

/// Calls a handler with the step's timeout.
async fn call(
    handler: Option<Arc<dyn StepHandler>>,
    name: &str,
    timeout_ms: Option<u64>,
    input: StepInput,
) -> StepOutcome {
    let Some(handler) = handler else {
        return StepOutcome::Failure {
            error: format!("no handler named {name:?} in this worker"),
            retryable: false,
        };
    };
    let call = handler.call(input);
    let result = match timeout_ms {
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

/// The result of an attempt whose task ended, with its message's index. A task that panicked
/// (or was cancelled, which only the runtime shutting down does) failed its attempt: retryable,
/// as it would have run again had the panic taken the worker down with it.
fn collect(
    joined: Result<(TaskHandle, StepOutcome), JoinError>,
    running: &mut HashMap<TaskHandle, Running>,
) -> (usize, Option<StepResult>) {
    let handle = match &joined {
        Ok((handle, _)) => *handle,
        Err(error) => error.id(),
    };
    let attempt = running
        .remove(&handle)
        .expect("every task of the set was recorded when spawned");
    let outcome = match joined {
        Ok((_, outcome)) => outcome,
        Err(error) => {
            let error = match error.try_into_panic() {
                Ok(payload) => format!("handler panicked: {}", panic_message(payload.as_ref())),
                Err(error) => format!("attempt ended without an answer: {error}"),
            };
            tracing::warn!(
                task_id = %attempt.task_id,
                step_id = %attempt.step_id,
                attempt = attempt.attempt,
                %error,
                "step attempt failed"
            );
            StepOutcome::Failure {
                error,
                retryable: true,
            }
        }
    };
    let result = StepResult {
        task_id: attempt.task_id,
        step_id: attempt.step_id,
        attempt: attempt.attempt,
        outcome,
    };
    (attempt.message, Some(result))
}

/// What a panic said, when it said it with a string.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
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
