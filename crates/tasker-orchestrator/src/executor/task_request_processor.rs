//! TaskRequestProcessor: validates task requests against their template and its context schema,
//! and creates the task with its steps and edges in one transaction (idempotently).

use std::time::Duration;

use async_trait::async_trait;
use tasker_store::{
    StoreError, TaskCreateParams, TaskCreated, TaskTransitionParams, TemplateGetParams,
};
use tasker_template::TaskTemplate;
use tasker_types::{TaskEvent, TaskState};

use super::{decode, ExecutorContext, ExecutorError, ExecutorType, OrchestrationExecutor};
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
        })
        .await?;
    if created.task.state == TaskState::Pending {
        match ctx
            .store
            .task_transition(&TaskTransitionParams {
                task_id: created.task.id,
                from: TaskState::Pending,
                event: TaskEvent::Initialize,
                reason: None,
                instance_id: ctx.instance_id.clone(),
            })
            .await
        {
            // Another request processor initialized it first; it also queued the work.
            Ok(_) | Err(StoreError::StaleState { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        ctx.publish(
            TASK_WORK,
            &[TaskRef {
                task_id: created.task.id,
            }],
            Duration::ZERO,
        )
        .await
        .map_err(|e| match e {
            ExecutorError::Store(s) => RequestError::Store(s),
            other => RequestError::Store(StoreError::Other {
                message: other.to_string(),
            }),
        })?;
    }
    Ok(created)
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
            let mut request: TaskRequest = match decode(message) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "dropping malformed task request to its dead letters");
                    self.ctx.nack(message, Duration::from_secs(1)).await?;
                    continue;
                }
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
