//! TaskClaimer: claims tasks that have steps to enqueue, with a lease.
//!
//! A claim has two halves. The `task_work` message is leased (its visibility timeout), so no
//! other consumer receives that message; and the task row itself is claimed
//! (`task_claim`), so no other claimer in any instance holds the *task*, whatever messages
//! point at it. If this instance dies, both end once the leader declares it dead (or with
//! their lease, whichever comes first), and another claimer takes over. The enqueuer releases
//! the claim when it is done.

use std::time::Duration;

use async_trait::async_trait;
use tasker_store::{TaskClaimParams, TaskReleaseParams};
use tasker_types::QueueMessage;

use super::{ExecutorContext, ExecutorError, ExecutorType, OrchestrationExecutor, CLAIMS};
use crate::pipeline::messages::{TaskRef, TASK_WORK};

/// A claimed task, handed to the step enqueuers.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The task.
    pub task: TaskRef,
    /// The leased message; acknowledged when the enqueuer is done.
    pub message: QueueMessage,
    /// Who holds the task's claim; released when the enqueuer is done.
    pub claimer: String,
}

impl Claim {
    /// Gives the claim back at once: releases the task and returns its message to the queue
    /// after `delay`.
    ///
    /// # Errors
    ///
    /// Store failures; the claim then simply expires with its lease.
    pub async fn give_back(
        &self,
        ctx: &ExecutorContext,
        delay: Duration,
    ) -> Result<(), ExecutorError> {
        ctx.store
            .task_release(&TaskReleaseParams {
                task_id: self.task.task_id,
                claimer: self.claimer.clone(),
            })
            .await?;
        ctx.release(&self.message, delay).await
    }
}

/// How long a task_work message held by another claimer waits before it is tried again.
const CONTENDED_RETRY: Duration = Duration::from_millis(50);

/// Claims tasks from the `task_work` queue.
#[derive(Debug)]
pub struct TaskClaimer {
    ctx: ExecutorContext,
    /// Unique per claimer, so two claimers of one instance exclude each other too.
    claimer: String,
}

impl TaskClaimer {
    /// A claimer over `ctx`.
    pub fn new(ctx: ExecutorContext) -> Self {
        let claimer = format!("{}/{}", ctx.instance_id, uuid::Uuid::new_v4().simple());
        Self { ctx, claimer }
    }
}

#[async_trait]
impl OrchestrationExecutor for TaskClaimer {
    fn executor_type(&self) -> ExecutorType {
        ExecutorType::TaskClaimer
    }

    async fn process_batch(&self, batch_size: u32) -> Result<usize, ExecutorError> {
        // Claim no more than the enqueuers have room for: a full channel means saturation,
        // and the claimer stops claiming.
        let room = u32::try_from(self.ctx.claims_tx.capacity()).unwrap_or(u32::MAX);
        let max = batch_size.min(room);
        if max == 0 {
            return Ok(0);
        }
        let messages = self
            .ctx
            .dequeue_leased(TASK_WORK, max, self.ctx.claim_lease)
            .await?;
        let claimed = messages.len();
        for message in messages {
            let Some(task) = self.ctx.decode_or_reject::<TaskRef>(&message).await? else {
                continue;
            };
            let held = self
                .ctx
                .store
                .task_claim(&TaskClaimParams {
                    task_id: task.task_id,
                    claimer: self.claimer.clone(),
                    instance_id: self.ctx.instance_id.clone(),
                    lease: self.ctx.claim_lease,
                })
                .await?;
            if !held {
                // Another claimer holds the task; try this message again once it is done.
                self.ctx.release(&message, CONTENDED_RETRY).await?;
                continue;
            }
            let claim = Claim {
                task,
                message,
                claimer: self.claimer.clone(),
            };
            if let Err(full) = self.ctx.claims_tx.try_send(claim) {
                // Other claimers may have filled the room measured above: give it back.
                full.into_inner()
                    .give_back(&self.ctx, Duration::ZERO)
                    .await?;
            }
        }
        if claimed > 0 {
            self.ctx.wakeups.wake(CLAIMS);
        }
        Ok(claimed)
    }
}
