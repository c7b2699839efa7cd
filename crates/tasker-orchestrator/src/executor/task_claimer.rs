//! TaskClaimer: claims tasks that have steps to enqueue. A claim is a leased `task_work`
//! message: while the lease (its visibility timeout) holds, no other claimer in any instance
//! receives it; if this instance dies, the lease expires and another claimer takes the task.

use async_trait::async_trait;
use tasker_types::QueueMessage;

use super::{ExecutorContext, ExecutorError, ExecutorType, OrchestrationExecutor, CLAIMS};
use crate::messages::{TaskRef, TASK_WORK};

/// A claimed task, handed to the step enqueuers.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The task.
    pub task: TaskRef,
    /// The leased message; acknowledged when the enqueuer is done.
    pub message: QueueMessage,
}

/// Claims tasks from the `task_work` queue.
#[derive(Debug)]
pub struct TaskClaimer {
    ctx: ExecutorContext,
}

impl TaskClaimer {
    /// A claimer over `ctx`.
    pub fn new(ctx: ExecutorContext) -> Self {
        Self { ctx }
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
            if let Err(full) = self.ctx.claims_tx.try_send(Claim { task, message }) {
                // Only this claimer fills the room it measured, but others may too: return it.
                self.ctx
                    .nack(&full.into_inner().message, std::time::Duration::ZERO)
                    .await?;
            }
        }
        if claimed > 0 {
            self.ctx.wakeups.wake(CLAIMS);
        }
        Ok(claimed)
    }
}
