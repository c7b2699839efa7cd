//! StepEnqueuer: for each claimed task, finds the viable steps and marks them `Enqueued` in
//! their queue (a step is its own queue entry) in one transaction, then releases the claim.

use std::time::Duration;

use async_trait::async_trait;
use tasker_store::{
    retry_contended, StepEnqueueManyParams, StepViableManyParams, StoreError, TaskReleaseParams,
};
use tasker_types::{TaskEvent, TaskState};

use super::{Claim, ExecutorContext, ExecutorError, ExecutorType, OrchestrationExecutor};
use crate::pipeline::messages::TASK_FINALIZE;

/// Most steps one task enqueues per claim; the rest follow on the next evaluation.
const MAX_STEPS_PER_CLAIM: u32 = 10_000;

/// Enqueues the viable steps of claimed tasks.
#[derive(Debug)]
pub struct StepEnqueuer {
    ctx: ExecutorContext,
}

impl StepEnqueuer {
    /// An enqueuer over `ctx`.
    pub fn new(ctx: ExecutorContext) -> Self {
        Self { ctx }
    }

    /// Enqueues the claimed task's steps, releases the claim and acknowledges its message.
    async fn finish(&self, claim: &Claim) -> Result<(), ExecutorError> {
        self.enqueue(claim).await?;
        self.ctx
            .store
            .task_release(&TaskReleaseParams {
                task_id: claim.task.task_id,
                claimer: claim.claimer.clone(),
            })
            .await?;
        self.ctx.ack(&claim.message).await
    }

    async fn enqueue(&self, claim: &Claim) -> Result<(), ExecutorError> {
        let store = &self.ctx.store;
        let task_id = claim.task.task_id;
        let mut task = match store.task_get(task_id).await {
            Ok(t) => t,
            Err(StoreError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if matches!(
            task.state,
            TaskState::Initializing | TaskState::WaitingForRetry
        ) {
            // Someone else moved it; their claim or evaluation carries on from there.
            let Some(moved) = self
                .ctx
                .task_move(task_id, task.state, TaskEvent::BeginEnqueue, None)
                .await?
            else {
                return Ok(());
            };
            task = moved;
        }
        if task.state != TaskState::EnqueuingSteps {
            return Ok(());
        }
        let viable = store
            .step_viable_many(&StepViableManyParams {
                task_id,
                limit: MAX_STEPS_PER_CLAIM,
            })
            .await?;
        // Local and remote steps go to different queues: one outbox transaction per queue.
        let mut by_queue: std::collections::BTreeMap<&str, Vec<_>> =
            std::collections::BTreeMap::new();
        for step in &viable {
            by_queue
                .entry(self.ctx.routing.queue_of(
                    &task.namespace,
                    &step.handler,
                    tasker_types::settle::is_mapped(step),
                ))
                .or_default()
                .push((step.id, step.state));
        }
        let mut enqueued = 0;
        for (queue, steps) in by_queue {
            let params = StepEnqueueManyParams {
                task_id,
                steps,
                queue: queue.to_owned(),
                instance_id: self.ctx.instance_id.clone(),
            };
            let ids = retry_contended(|| store.step_enqueue_many(&params)).await?;
            if !ids.is_empty() {
                self.ctx.wakeups.wake(queue);
            }
            enqueued += ids.len();
        }
        // `None`: another actor moved it on; it carries on from there.
        self.ctx
            .task_move(
                task_id,
                TaskState::EnqueuingSteps,
                TaskEvent::StepsEnqueued,
                None,
            )
            .await?;
        tracing::debug!(task_id = %task_id, steps = enqueued, "steps enqueued");
        if enqueued == 0 {
            // Nothing was ready after all (a retry not yet due, or a step enqueued by an
            // earlier attempt of this claim): let the finalizer decide what the task waits for.
            self.ctx
                .publish(TASK_FINALIZE, &[claim.task], Duration::ZERO)
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl OrchestrationExecutor for StepEnqueuer {
    fn executor_type(&self) -> ExecutorType {
        ExecutorType::StepEnqueuer
    }

    async fn process_batch(&self, batch_size: u32) -> Result<usize, ExecutorError> {
        let mut claims = Vec::new();
        {
            let mut rx = self.ctx.claims_rx.lock().await;
            while claims.len() < batch_size as usize {
                match rx.try_recv() {
                    Ok(claim) => claims.push(claim),
                    Err(_) => break,
                }
            }
        }
        for (i, claim) in claims.iter().enumerate() {
            if let Err(error) = self.finish(claim).await {
                // Give this and the remaining claims back now rather than let them wait out
                // their leases; if that fails too, the leases still expire.
                for left in &claims[i..] {
                    let _ = left.give_back(&self.ctx, Duration::ZERO).await;
                }
                return Err(error);
            }
        }
        Ok(claims.len())
    }
}
