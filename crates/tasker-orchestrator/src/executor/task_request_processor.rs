//! TaskRequestProcessor: validates task requests against their template and its context schema,
//! and creates the task with its steps and edges in one transaction (idempotently), which also
//! starts it: its root steps are enqueued and published by that same transaction.

use std::time::Duration;

use async_trait::async_trait;
use tasker_store::{StoreError, TaskCreateParams, TaskCreated, TemplateGetParams};
use tasker_template::TaskTemplate;
use tasker_types::{TaskEvent, TaskState};

use super::{ExecutorContext, ExecutorError, ExecutorType, OrchestrationExecutor};
use crate::messages::{TaskRef, TaskRequest, TASK_REQUESTS, TASK_WORK};

/// Why a task request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No such template (version).
    #[error("unknown template {0}")]
    UnknownTemplate(String),
    /// The context breaks the template's schema.
    #[error("invalid context: {0}")]
    InvalidContext(String),
    /// The stored template no longer decodes.
    #[error("stored template {0} is unreadable: {1}")]
    BadTemplate(String, String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Validates `request` and creates its task (or returns the existing one for a repeated
/// idempotency key), then hands it to the claimers. Shared by the executor and by callers that
/// create tasks synchronously (the CLI, the API).
///
/// # Errors
///
/// [`RequestError`] as above.
///
/// # Cancel safety
///
/// Cancel safe: creation is one transaction and repeating a request with its key is idempotent.
pub async fn create_task(
    ctx: &ExecutorContext,
    request: &TaskRequest,
) -> Result<TaskCreated, RequestError> {
    let record = match ctx
        .store
        .template_get(&TemplateGetParams {
            namespace: request.namespace.clone(),
            name: request.name.clone(),
            version: request.version.clone(),
        })
        .await
    {
        Ok(r) => r,
        Err(StoreError::NotFound { id, .. }) => return Err(RequestError::UnknownTemplate(id)),
        Err(e) => return Err(e.into()),
    };
    let key = format!("{}/{}@{}", record.namespace, record.name, record.version);
    let template: TaskTemplate = serde_json::from_value(record.definition.clone())
        .map_err(|e| RequestError::BadTemplate(key, e.to_string()))?;
    template
        .validate_context(&request.context)
        .map_err(|e| RequestError::InvalidContext(e.problems_lines().join("; ")))?;
    let created = ctx
        .store
        .task_create(&TaskCreateParams {
            template_id: record.id,
            template,
            context: request.context.clone(),
            idempotency_key: request.idempotency_key.clone(),
            priority: request.priority,
            instance_id: ctx.instance_id.clone(),
            start: Some(ctx.routing.clone()),
        })
        .await?;
    if created.created {
        // Started in the creating transaction: its root steps are already queued.
        for queue in &created.queues {
            ctx.wakeups.wake(queue);
        }
        return Ok(created);
    }
    // An earlier request's task, left before it started (created by a version that left new
    // tasks `Pending`, or interrupted): move it on. Initializing: created before but its work may never have been
    // queued (a crash between the two writes). Either way queue the work; a duplicate
    // `task_work` message is harmless (claims and compare-and-swap absorb it).
    let mut state = created.task.state;
    if state == TaskState::Pending {
        // `None`: another request processor initialized it first.
        ctx.task_move(
            created.task.id,
            TaskState::Pending,
            TaskEvent::Initialize,
            None,
        )
        .await?;
        state = TaskState::Initializing;
    }
    if state == TaskState::Initializing {
        ctx.publish(
            TASK_WORK,
            &[TaskRef {
                task_id: created.task.id,
            }],
            Duration::ZERO,
        )
        .await?;
    }
    Ok(created)
}

impl From<ExecutorError> for RequestError {
    fn from(error: ExecutorError) -> Self {
        match error {
            ExecutorError::Store(e) => RequestError::Store(e),
        }
    }
}

/// Processes queued task requests.
#[derive(Debug)]
pub struct TaskRequestProcessor {
    ctx: ExecutorContext,
}

impl TaskRequestProcessor {
    /// A processor over `ctx`.
    pub fn new(ctx: ExecutorContext) -> Self {
        Self { ctx }
    }
}

#[async_trait]
impl OrchestrationExecutor for TaskRequestProcessor {
    fn executor_type(&self) -> ExecutorType {
        ExecutorType::TaskRequestProcessor
    }

    async fn process_batch(&self, batch_size: u32) -> Result<usize, ExecutorError> {
        let messages = self.ctx.dequeue(TASK_REQUESTS, batch_size).await?;
        for message in &messages {
            let Some(mut request) = self.ctx.decode_or_reject::<TaskRequest>(message).await? else {
                continue;
            };
            // A redelivered request must not create a second task.
            request
                .idempotency_key
                .get_or_insert_with(|| format!("request:{}", message.id));
            match create_task(&self.ctx, &request).await {
                Ok(_) => {}
                Err(RequestError::Store(e)) => return Err(e.into()),
                Err(refused) => {
                    tracing::warn!(error = %refused, namespace = %request.namespace, name = %request.name, "task request refused");
                }
            }
            self.ctx.ack(message).await?;
        }
        Ok(messages.len())
    }
}
