//! The in-process worker: claims a batch of the steps whose handlers this process has (one
//! store call leases them and starts their attempts), and runs each handler on its own task in
//! a [`tokio::task::JoinSet`] (each with its step's timeout). The batch's loop only collects
//! what the tasks answer, applies finished results, and keeps the batch's leases:
//!
//! - Results are applied together (`executor::apply_results`); a step's lease ends with its
//!   move. Fast handlers share one transaction; once a batch has run for [`FLUSH_AFTER`], the
//!   results finished so far are applied without waiting for the handlers still running, and
//!   again every [`FLUSH_AFTER`] after that.
//! - The transaction that applies results also claims the steps they make ready in this
//!   worker's queue, while the batch has room (its size counts every step it took): a task's
//!   next step starts at once, without a claim or a wake-up of its own.
//! - Every third of the visibility timeout, the leases of the steps whose results are not yet
//!   applied are extended, so a long handler keeps its step and the finished steps waiting for
//!   the next flush are not claimed again.
//! - Neither awaiting a flush nor a lease extension stalls a handler: handlers progress on
//!   their own tasks meanwhile, and their answers wait in the `JoinSet`.
//! - A handler that panics fails its attempt (retryable, so the step's retry policy decides)
//!   with an error naming the panic; the worker goes on, and that result is applied like any
//!   other.
//! - A result transaction waits at most [`LOCK_WAIT`] for a row lock. Results that meet a
//!   lock held longer (by another session) are handed to the result processors through
//!   `step_results`, as a remote worker's are, and the worker goes on claiming.
//! - A claimed step whose earlier lease ran out (its worker died with the attempt) is not run
//!   at once: that attempt is reported failed, and settlement decides by the step's retry
//!   policy whether, and after what backoff, another follows.
//!
//! Remote workers' results cross the `step_results` queue instead; the same
//! `executor::apply_results` applies both. A worker that dies before its results are applied
//! leaves its steps to their leases; whoever claims them next reports those attempts lost, and
//! the retry policy runs them again.

use std::{any::Any, collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use tasker_store::{
    QueueForwardParams, StepChain, StepClaimed, StepLease, StepLeaseExtendParams, StoreError,
};
use tasker_types::{StepId, StepRow, TaskId};
use tokio::task::{Id as TaskHandle, JoinError, JoinSet};
use tracing::Instrument;

use crate::{
    handler::{HandlerRegistry, StepHandler, StepInput},
    pipeline::executor::{
        apply_results, ExecutorContext, ExecutorError, ExecutorType, OrchestrationExecutor,
    },
    pipeline::messages::{StepOutcome, StepResult, STEP_RESULTS},
};

/// A batch running longer than this applies its finished results before going on, and again
/// each time this much longer has passed.
const FLUSH_AFTER: Duration = Duration::from_millis(500);

/// Longest wait of a worker's result transaction for a row lock. Result transactions of the
/// engine hold their locks for milliseconds; a wait this long means another session (an
/// operator's open transaction, a stuck client) holds the row, and waiting on would stop this
/// worker claiming anything else.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Runs the steps of some namespaces in this process.
#[derive(Debug, Clone)]
pub struct InProcessWorker {
    pub(crate) ctx: ExecutorContext,
    pub(crate) handlers: Arc<HandlerRegistry>,
    /// The queue its steps wait in ([`crate::pipeline::messages::LOCAL_STEPS`]).
    pub(crate) queue: String,
}

/// A batch in progress: the steps it claimed, the attempts running, the results not yet
/// applied.
struct Batch {
    /// Most steps the batch takes, the chained ones included.
    size: u32,
    /// Steps taken so far.
    count: usize,
    /// The leases of the steps whose results are not applied yet.
    held: HashMap<StepId, StepLease>,
    /// Results not yet applied.
    finished: Vec<StepResult>,
    /// The running attempts. Dropped with the batch, the set aborts its tasks (see
    /// `run_batch`'s "Cancellation").
    tasks: JoinSet<StepOutcome>,
    running: HashMap<TaskHandle, Running>,
}

/// What the batch's loop knows of an attempt running on a task of its `JoinSet`: enough to
/// make its result whatever the task answers (a panic included).
struct Running {
    task_id: TaskId,
    step_id: StepId,
    attempt: u32,
    lease_token: String,
    /// A decision's children, which its output chooses among.
    branches: Option<Vec<String>>,
}

impl InProcessWorker {
    /// Claims and runs up to `batch` steps of its queue; returns how many.
    ///
    /// # Errors
    ///
    /// Store failures; steps whose results are not yet applied are claimed again later.
    ///
    /// # Cancellation
    ///
    /// Dropping the future (a pool aborting an executor that did not stop in time) drops the
    /// batch's `JoinSet`, which aborts the handlers still running: their futures are dropped as
    /// when an attempt times out. Nothing is lost: the steps whose results were not applied
    /// keep their leases until they run out; those attempts are then reported lost and run
    /// again by the retry policy.
    pub async fn run_batch(&self, batch: u32) -> Result<usize, ExecutorError> {
        // The leases run from about now: the first extension counts from here, not from when
        // the attempts have started.
        let leased_at = tokio::time::Instant::now();
        let claimed = self
            .ctx
            .claim(
                &self.queue,
                batch,
                self.ctx.visibility_timeout,
                None,
                &self.ctx.instance_id,
            )
            .await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let mut batch = Batch {
            size: batch,
            count: 0,
            held: HashMap::with_capacity(claimed.len()),
            finished: Vec::new(),
            tasks: JoinSet::new(),
            running: HashMap::with_capacity(claimed.len()),
        };
        self.start(&mut batch, claimed);
        let period = (self.ctx.visibility_timeout / 3).max(Duration::from_millis(10));
        let mut extend = tokio::time::interval_at(leased_at + period, period);
        // After a long flush, one extension at once rather than one per missed period.
        extend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let flush_at = tokio::time::sleep(FLUSH_AFTER);
        tokio::pin!(flush_at);
        loop {
            while !batch.tasks.is_empty() {
                tokio::select! {
                    joined = batch.tasks.join_next_with_id() => {
                        // Never `None`: the set is not empty.
                        if let Some(joined) = joined {
                            batch.finished.push(collect(joined, &mut batch.running));
                        }
                    }
                    // Once the batch has run a while, the results so far are applied without
                    // waiting for the rest, which keep running on their tasks meanwhile.
                    () = &mut flush_at, if !batch.finished.is_empty() => {
                        self.flush(&mut batch).await?;
                        flush_at.as_mut().reset(tokio::time::Instant::now() + FLUSH_AFTER);
                    }
                    // Long handlers neither lose their own step nor let the steps waiting
                    // behind them be claimed by another worker.
                    _ = extend.tick() => self.extend_leases(&batch.held).await,
                }
            }
            // The last results may have claimed the next steps of their tasks.
            self.flush(&mut batch).await?;
            if batch.tasks.is_empty() && batch.finished.is_empty() {
                return Ok(batch.count);
            }
        }
    }

    /// Starts the attempts of `claimed` on the batch's tasks (a step whose lease ran out has
    /// its lost attempt reported instead).
    fn start(&self, batch: &mut Batch, claimed: Vec<StepClaimed>) {
        batch.count += claimed.len();
        for claim in claimed {
            batch.held.insert(
                claim.step.id,
                StepLease {
                    step_id: claim.step.id,
                    lease_token: claim.lease_token.clone(),
                },
            );
            if claim.lease_ran_out {
                batch
                    .finished
                    .push(lost_attempt(&claim.step, &claim.lease_token));
                continue;
            }
            if tasker_types::settle::is_mapped(&claim.step) {
                batch.finished.push(expansion(&claim));
                continue;
            }
            let lease_token = claim.lease_token.clone();
            let (step, input) = handler_input(claim);
            let handle = batch.tasks.spawn(self.attempt(&step, input));
            batch.running.insert(
                handle.id(),
                Running {
                    task_id: step.task_id,
                    step_id: step.id,
                    attempt: step.attempts,
                    lease_token,
                    branches: step.branches.clone(),
                },
            );
        }
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

    /// Applies the finished results in one transaction; their steps' leases end with it. While
    /// the batch has room, the steps those results make ready in this worker's queue are
    /// claimed in that transaction too, and start at once.
    async fn flush(&self, batch: &mut Batch) -> Result<(), ExecutorError> {
        if batch.finished.is_empty() {
            return Ok(());
        }
        let room = u32::try_from(batch.count).map_or(0, |count| batch.size.saturating_sub(count));
        let chain = (room > 0).then(|| StepChain {
            queue: self.queue.clone(),
            max: room,
            lease: self.ctx.visibility_timeout,
        });
        let applied = apply_results(
            &self.ctx,
            &batch.finished,
            Vec::new(),
            chain,
            Some(LOCK_WAIT),
        )
        .await;
        let claimed = match applied {
            Ok(claimed) => claimed,
            Err(ExecutorError::Store(error @ StoreError::Locked { .. })) => {
                tracing::warn!(
                    %error,
                    results = batch.finished.len(),
                    "a row these results move is locked by another session; handing them to \
                     the result processors"
                );
                self.hand_over(batch).await?;
                Vec::new()
            }
            Err(error) => return Err(error),
        };
        for result in batch.finished.drain(..) {
            batch.held.remove(&result.step_id);
        }
        self.start(batch, claimed);
        Ok(())
    }

    /// Publishes the batch's finished results to `step_results`, each step's lease handed
    /// over to its result's message as a remote worker's is: the result processors apply them
    /// (waiting for the lock as long as it takes) while this worker goes on claiming. A result
    /// whose lease was lost meanwhile is dropped: its step runs again elsewhere, and the
    /// result would be refused as stale.
    async fn hand_over(&self, batch: &Batch) -> Result<(), ExecutorError> {
        let forward = |results: &[StepResult]| {
            // Every finished result's lease is held until its result is applied or handed over.
            let (payloads, settled) = results
                .iter()
                .filter_map(|r| {
                    let lease = batch.held.get(&r.step_id)?.clone();
                    let handed = StepResult {
                        lease_token: None,
                        ..r.clone()
                    };
                    Some((
                        serde_json::to_value(&handed).expect("step results serialize"),
                        lease,
                    ))
                })
                .unzip();
            QueueForwardParams {
                consumed: Vec::new(),
                queue: STEP_RESULTS.to_owned(),
                payloads,
                settled,
                settle_within: self.ctx.visibility_timeout,
            }
        };
        match self
            .ctx
            .store
            .queue_forward(&forward(&batch.finished))
            .await
        {
            Ok(_) => {}
            // One lease lost fails them all: forward one by one, dropping the lost.
            Err(StoreError::LeaseLost { .. }) => {
                for result in &batch.finished {
                    match self
                        .ctx
                        .store
                        .queue_forward(&forward(std::slice::from_ref(result)))
                        .await
                    {
                        Ok(_) => {}
                        Err(StoreError::LeaseLost { .. }) => tracing::warn!(
                            step_id = %result.step_id,
                            "a step's lease was lost before its result was handed over"
                        ),
                        Err(error) => return Err(error.into()),
                    }
                }
            }
            Err(error) => return Err(error.into()),
        }
        self.ctx.wakeups.wake(STEP_RESULTS);
        Ok(())
    }

    /// Extends the leases of the batch's steps whose results are not applied yet, in one store
    /// call. Handlers are not held up meanwhile (they run on their own tasks); only the loop's
    /// next flush waits. A lease found lost is logged: its step runs again elsewhere, and this
    /// attempt's result will be refused as stale.
    async fn extend_leases(&self, held: &HashMap<StepId, StepLease>) {
        if held.is_empty() {
            return;
        }
        let params = StepLeaseExtendParams {
            leases: held.values().cloned().collect(),
            lease: self.ctx.visibility_timeout,
        };
        match self.ctx.store.step_lease_extend(&params).await {
            Ok(lost) => {
                for step_id in lost {
                    tracing::warn!(%step_id, "a step's lease was lost while its handler ran");
                }
            }
            Err(error) => {
                tracing::warn!(%error, steps = params.leases.len(), "could not extend the steps' leases");
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

/// The result of an attempt whose task ended. A task that panicked
/// (or was cancelled, which only the runtime shutting down does) failed its attempt: retryable,
/// as it would have run again had the panic taken the worker down with it.
fn collect(
    joined: Result<(TaskHandle, StepOutcome), JoinError>,
    running: &mut HashMap<TaskHandle, Running>,
) -> StepResult {
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
    StepResult {
        lease_token: Some(attempt.lease_token),
        ..StepResult::new(
            attempt.task_id,
            attempt.step_id,
            attempt.attempt,
            attempt.branches.as_deref(),
            outcome,
        )
    }
}

/// What a panic said, when it said it with a string.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// The failed result of an attempt whose lease ran out (the worker running it stopped
/// answering), reported by whoever claimed the step next under `lease_token`. Retryable:
/// settlement decides by the step's retry policy, as for any failure.
pub(crate) fn lost_attempt(step: &StepRow, lease_token: &str) -> StepResult {
    let outcome = StepOutcome::Failure {
        error: format!(
            "attempt {} of {} got no result: its lease ran out (the worker running it \
             stopped or lost its connection)",
            step.attempts, step.max_attempts
        ),
        retryable: true,
    };
    StepResult {
        lease_token: Some(lease_token.to_owned()),
        ..StepResult::new(step.task_id, step.id, step.attempts, None, outcome)
    }
}

/// The result of a mapped step's attempt, which runs no handler: its instances' inputs, from
/// the array its `map.over` names in the claimed input (`settle::expand`); none completes it at
/// once with `[]`; no such array fails it for good, naming the path.
fn expansion(claim: &StepClaimed) -> StepResult {
    let step = &claim.step;
    let spec = step.map.as_ref().expect("a mapped step has its map");
    let (outcome, instances) =
        match tasker_types::settle::expand(spec, &claim.context, &claim.parents) {
            Ok(inputs) if inputs.is_empty() => (
                StepOutcome::Success {
                    output: serde_json::json!([]),
                },
                inputs,
            ),
            Ok(inputs) => (
                StepOutcome::Success {
                    output: serde_json::Value::Null,
                },
                inputs,
            ),
            Err(error) => (
                StepOutcome::Failure {
                    error,
                    retryable: false,
                },
                Vec::new(),
            ),
        };
    StepResult {
        lease_token: Some(claim.lease_token.clone()),
        instances,
        ..StepResult::new(step.task_id, step.id, step.attempts, None, outcome)
    }
}

/// A claimed step and what its handler is called with.
pub(crate) fn handler_input(claim: StepClaimed) -> (StepRow, StepInput) {
    let StepClaimed {
        step,
        context,
        parents,
        parents_meta,
        ..
    } = claim;
    let input = StepInput {
        context,
        config: step.handler_config.clone(),
        parents: parents
            .into_iter()
            .map(|(name, output)| (name, output.unwrap_or(serde_json::Value::Null)))
            .collect(),
        attempt: step.attempts,
        map_input: step.map_instance.as_ref().map(|m| m.input.clone()),
        parents_meta: parents_meta.into_iter().collect(),
    };
    (step, input)
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
