//! The executor trait and the five executor types of the pipeline.
//!
//! An executor only knows how to process one batch of its part of the pipeline. Everything
//! around a batch (the loop, timing, heartbeats, wake-ups, stopping) belongs to the pool, so it
//! is written once, in the runtime's pool (`runtime::pool`).

mod step_enqueuer;
mod step_result_processor;
mod task_claimer;
mod task_finalizer;
mod task_request_processor;

use std::sync::Arc;

use async_trait::async_trait;
use tasker_store::{
    QueueAckParams, QueueEnqueueManyParams, QueueLeaseParams, StepRouting, StepTransitionParams,
    Store, StoreError, TaskTransitionParams,
};
use tasker_types::{
    QueueMessage, StepEvent, StepId, StepRow, StepState, TaskEvent, TaskId, TaskRow, TaskState,
};
use tokio::sync::{broadcast, mpsc, Mutex};

pub use step_enqueuer::StepEnqueuer;
pub(crate) use step_result_processor::apply_results;
pub use step_result_processor::StepResultProcessor;
pub use task_claimer::{Claim, TaskClaimer};
pub use task_finalizer::TaskFinalizer;
pub use task_request_processor::{
    create_each, create_task, create_tasks, RequestError, TaskRequestProcessor,
};

use crate::pipeline::{events::EngineEvent, wakeup::Wakeups};

/// The five executor types (and the in-process worker). Serialized as its
/// [`ExecutorType::as_str`] name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorType {
    /// Validates task requests and creates tasks.
    TaskRequestProcessor,
    /// Claims tasks that have steps to enqueue, with a lease.
    TaskClaimer,
    /// Enqueues the viable steps of claimed tasks.
    StepEnqueuer,
    /// Applies step results.
    StepResultProcessor,
    /// Evaluates tasks and finalizes finished ones.
    TaskFinalizer,
    /// Not an orchestration executor: the in-process worker, driven by the same pool loop.
    InProcessWorker,
}

impl std::fmt::Display for ExecutorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ExecutorType {
    /// Every type, in pipeline order.
    pub const ALL: [ExecutorType; 5] = [
        ExecutorType::TaskRequestProcessor,
        ExecutorType::TaskClaimer,
        ExecutorType::StepEnqueuer,
        ExecutorType::StepResultProcessor,
        ExecutorType::TaskFinalizer,
    ];

    /// Name for logs and metrics (`task_request_processor`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorType::TaskRequestProcessor => "task_request_processor",
            ExecutorType::TaskClaimer => "task_claimer",
            ExecutorType::StepEnqueuer => "step_enqueuer",
            ExecutorType::StepResultProcessor => "step_result_processor",
            ExecutorType::TaskFinalizer => "task_finalizer",
            ExecutorType::InProcessWorker => "in_process_worker",
        }
    }

    /// The wake-up channel the type waits on when it finds no work (workers wait on their
    /// namespace queue instead).
    pub fn wakes_on(self) -> &'static str {
        match self {
            ExecutorType::InProcessWorker => "tasker.workers",
            ExecutorType::TaskRequestProcessor => crate::pipeline::messages::TASK_REQUESTS,
            ExecutorType::TaskClaimer => crate::pipeline::messages::TASK_WORK,
            ExecutorType::StepEnqueuer => CLAIMS,
            ExecutorType::StepResultProcessor => crate::pipeline::messages::STEP_RESULTS,
            ExecutorType::TaskFinalizer => crate::pipeline::messages::TASK_FINALIZE,
        }
    }
}

/// Wake-up name of the in-memory channel from claimers to enqueuers.
pub(crate) const CLAIMS: &str = "tasker.claims";

/// Why a batch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutorError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl tasker_store::AsStoreError for ExecutorError {
    fn as_store_error(&self) -> Option<&StoreError> {
        match self {
            ExecutorError::Store(e) => Some(e),
        }
    }
}

impl ExecutorError {
    /// The database failed (as opposed to a domain answer): counts against circuit breakers.
    pub fn is_infrastructure(&self) -> bool {
        match self {
            ExecutorError::Store(e) => e.is_infrastructure(),
        }
    }
}

/// What an executor type does, one batch at a time.
#[async_trait]
pub trait OrchestrationExecutor: Send + Sync + std::fmt::Debug + 'static {
    /// Its type.
    fn executor_type(&self) -> ExecutorType;

    /// Processes up to `batch_size` items; returns how many it processed (0 = no work found).
    ///
    /// # Errors
    ///
    /// Store failures. Messages already taken are left to their visibility timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancelling mid-batch is safe: every message is acknowledged only after its effects
    /// committed, so an interrupted one is delivered again.
    async fn process_batch(&self, batch_size: u32) -> Result<usize, ExecutorError>;

    /// Asked before every batch: `false` ends this executor's loop for good (the pool's monitor
    /// starts a replacement if the pool falls below its minimum). The default never stops.
    fn should_continue(&self) -> bool {
        true
    }
}

/// A lost lease means another consumer holds the message now, which is fine for an ack, a
/// nack or a release: the message is that consumer's to settle.
fn lease_lost_is_fine(result: tasker_store::Result<()>) -> Result<(), ExecutorError> {
    match result {
        Ok(()) | Err(StoreError::LeaseLost { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What all executors share.
#[derive(Debug, Clone)]
pub struct ExecutorContext {
    /// The store.
    pub(crate) store: Arc<dyn Store>,
    /// In-process wake-ups.
    pub(crate) wakeups: Wakeups,
    /// This instance's id, recorded in audit rows.
    pub(crate) instance_id: String,
    /// Task and step events for observers (`tasker run`, tests).
    pub(crate) events: broadcast::Sender<EngineEvent>,
    /// Claims from claimers to enqueuers.
    pub(crate) claims_tx: mpsc::Sender<Claim>,
    /// Shared receiving end of the claims channel.
    pub(crate) claims_rx: Arc<Mutex<mpsc::Receiver<Claim>>>,
    /// Lease on a claimed task (visibility timeout of `task_work`).
    pub(crate) claim_lease: std::time::Duration,
    /// Visibility timeout of the internal queues' messages.
    pub(crate) visibility_timeout: std::time::Duration,
    /// Deliveries before a message is dead-lettered.
    pub(crate) max_deliveries: u32,
    /// Templates read for task creation, kept for the process.
    pub(crate) templates: Arc<crate::pipeline::templates::TemplateCache>,
    /// Which queue a ready step waits in: those whose handler the in-process workers run (none
    /// without local workers) in [`crate::pipeline::messages::LOCAL_STEPS`], the others in
    /// their namespace's queue.
    pub(crate) routing: StepRouting,
}

impl ExecutorContext {
    /// Leases up to `max` messages of `queue` for the usual visibility timeout.
    pub(crate) async fn dequeue(
        &self,
        queue: &str,
        max: u32,
    ) -> Result<Vec<QueueMessage>, ExecutorError> {
        self.dequeue_leased(queue, max, self.visibility_timeout)
            .await
    }

    /// Leases up to `max` messages of `queue` for `lease`.
    pub(crate) async fn dequeue_leased(
        &self,
        queue: &str,
        max: u32,
        lease: std::time::Duration,
    ) -> Result<Vec<QueueMessage>, ExecutorError> {
        Ok(self
            .store
            .queue_dequeue(&tasker_store::QueueDequeueParams {
                queue: queue.to_owned(),
                max,
                visibility_timeout: lease,
                max_deliveries: self.max_deliveries,
                holder: self.instance_id.clone(),
            })
            .await?)
    }

    /// Claims up to `max` steps waiting in `queue` (those with `handlers` only, when given),
    /// each leased for `lease` to `holder`, their attempts started.
    pub(crate) async fn claim(
        &self,
        queue: &str,
        max: u32,
        lease: std::time::Duration,
        handlers: Option<Vec<String>>,
        holder: &str,
    ) -> Result<Vec<tasker_store::StepClaimed>, ExecutorError> {
        let params = tasker_store::StepClaimParams {
            queue: queue.to_owned(),
            max,
            lease,
            handlers,
            instance_id: self.instance_id.clone(),
            holder: holder.to_owned(),
        };
        Ok(tasker_store::retry_contended(|| self.store.step_claim(&params)).await?)
    }

    /// Acknowledges a message; a lost lease means another consumer has it now, which is fine.
    pub(crate) async fn ack(&self, message: &QueueMessage) -> Result<(), ExecutorError> {
        lease_lost_is_fine(
            self.store
                .queue_ack(&QueueAckParams {
                    id: message.id,
                    lease_token: message.lease_token.clone(),
                })
                .await,
        )
    }

    /// Returns a message to its queue after `delay`.
    pub(crate) async fn nack(
        &self,
        message: &QueueMessage,
        delay: std::time::Duration,
    ) -> Result<(), ExecutorError> {
        lease_lost_is_fine(
            self.store
                .queue_nack(&QueueLeaseParams {
                    id: message.id,
                    lease_token: message.lease_token.clone(),
                    delay,
                })
                .await,
        )
    }

    /// Moves a task (compare-and-swap on `from`); `None` when another actor moved it first.
    pub(crate) async fn task_move(
        &self,
        task_id: TaskId,
        from: TaskState,
        event: TaskEvent,
        reason: Option<String>,
    ) -> Result<Option<TaskRow>, ExecutorError> {
        let params = TaskTransitionParams {
            task_id,
            from,
            event,
            reason,
            instance_id: self.instance_id.clone(),
        };
        match self.store.task_transition(&params).await {
            Ok(task) => Ok(Some(task)),
            Err(StoreError::StaleState { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves a step (compare-and-swap on `params.from`); `None` when another actor moved it
    /// first.
    pub(crate) async fn step_move(
        &self,
        params: &StepTransitionParams,
    ) -> Result<Option<StepRow>, ExecutorError> {
        match self.store.step_transition(params).await {
            Ok(step) => Ok(Some(step)),
            Err(StoreError::StaleState { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Transition params for a step event that carries no output, error or delay.
    pub(crate) fn step_event(
        &self,
        step_id: StepId,
        from: StepState,
        event: StepEvent,
    ) -> StepTransitionParams {
        StepTransitionParams {
            step_id,
            from,
            event,
            output: None,
            error: None,
            backoff: None,
            instance_id: self.instance_id.clone(),
            attempt: None,
        }
    }

    /// Decodes a message payload. A payload that does not decode is returned to its queue with
    /// a delay, so that after `max_deliveries` it lands in the dead letters instead of being
    /// lost; `None` then.
    pub(crate) async fn decode_or_reject<T: serde::de::DeserializeOwned>(
        &self,
        message: &QueueMessage,
    ) -> Result<Option<T>, ExecutorError> {
        match serde_json::from_value(message.payload.clone()) {
            Ok(value) => Ok(Some(value)),
            Err(error) => {
                tracing::warn!(queue = %message.queue, id = message.id, %error, "malformed message; returning it toward the dead letters");
                self.nack(message, std::time::Duration::from_secs(1))
                    .await?;
                Ok(None)
            }
        }
    }

    /// Puts a message back untried (another consumer's kind, a task someone else holds):
    /// visible again after `delay`, without spending one of its deliveries.
    pub(crate) async fn release(
        &self,
        message: &QueueMessage,
        delay: std::time::Duration,
    ) -> Result<(), ExecutorError> {
        lease_lost_is_fine(
            self.store
                .queue_release(&QueueLeaseParams {
                    id: message.id,
                    lease_token: message.lease_token.clone(),
                    delay,
                })
                .await,
        )
    }

    /// Enqueues payloads to `queue` (after `delay`) and wakes its consumers.
    pub(crate) async fn publish<T: serde::Serialize>(
        &self,
        queue: &str,
        payloads: &[T],
        delay: std::time::Duration,
    ) -> Result<(), ExecutorError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let payloads = payloads
            .iter()
            .map(|p| serde_json::to_value(p).expect("message payloads serialize"))
            .collect();
        self.store
            .queue_enqueue_many(&QueueEnqueueManyParams {
                queue: queue.to_owned(),
                payloads,
                delay,
            })
            .await?;
        if delay.is_zero() {
            self.wakeups.wake(queue);
        }
        Ok(())
    }
}
