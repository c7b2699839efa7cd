//! TaskRequestProcessor: validates task requests against their template and its context schema,
//! and creates the task with its steps and edges in one transaction (idempotently), which also
//! starts it: its root steps wait in their queues from that same transaction.

use std::time::Duration;

use async_trait::async_trait;
use tasker_store::{retry_contended, StoreError, TaskCreateParams, TaskCreated};
use tasker_types::{TaskEvent, TaskState};

use super::{ExecutorContext, ExecutorError, ExecutorType, OrchestrationExecutor};
use crate::pipeline::messages::{TaskRef, TaskRequest, TASK_REQUESTS, TASK_WORK};
use crate::pipeline::templates::ResolveError;

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
/// idempotency key), started in the creating transaction. Shared by the executor and by callers
/// that create tasks synchronously (the CLI, the API).
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
    let mut created = create_tasks(ctx, std::slice::from_ref(request)).await?;
    created.pop().ok_or_else(|| {
        RequestError::Store(StoreError::Corrupt {
            what: "task create",
            message: "no task for the request".into(),
        })
    })
}

/// Creates the tasks of several requests in one transaction, as [`create_task`] does for one:
/// all of them, or none when any request is refused.
///
/// # Errors
///
/// [`RequestError`] for the first request refused, or a store failure.
///
/// # Cancel safety
///
/// As [`create_task`].
pub async fn create_tasks(
    ctx: &ExecutorContext,
    requests: &[TaskRequest],
) -> Result<Vec<TaskCreated>, RequestError> {
    let mut params = Vec::with_capacity(requests.len());
    for request in requests {
        params.push(task_params(ctx, request).await?);
    }
    insert(ctx, &params).await
}

/// Creates the tasks of the requests that pass validation, in one transaction, and answers
/// each request on its own, in order: its task (new or existing), or why it was refused. A
/// refused request does not stop the others.
///
/// # Errors
///
/// [`RequestError::Store`] when storage fails: then nothing was created.
///
/// # Cancel safety
///
/// As [`create_task`].
pub async fn create_each(
    ctx: &ExecutorContext,
    requests: &[TaskRequest],
) -> Result<Vec<Result<TaskCreated, RequestError>>, RequestError> {
    let mut answers = Vec::with_capacity(requests.len());
    let mut params = Vec::new();
    for request in requests {
        match task_params(ctx, request).await {
            Ok(p) => {
                params.push(p);
                answers.push(None);
            }
            Err(RequestError::Store(e)) => return Err(RequestError::Store(e)),
            Err(refused) => answers.push(Some(Err(refused))),
        }
    }
    let created = insert(ctx, &params).await?;
    let mut created = created.into_iter();
    Ok(answers
        .into_iter()
        .map(|answer| match answer {
            Some(refused) => refused,
            None => created.next().ok_or_else(|| {
                RequestError::Store(StoreError::Corrupt {
                    what: "task create",
                    message: "fewer tasks than valid requests".into(),
                })
            }),
        })
        .collect())
}

/// Creates the validated tasks in one transaction (run again if it lost a conflict), then moves
/// each on ([`after_create`]).
async fn insert(
    ctx: &ExecutorContext,
    params: &[TaskCreateParams],
) -> Result<Vec<TaskCreated>, RequestError> {
    let created = retry_contended(|| ctx.store.task_create_many(params)).await?;
    for task in &created {
        after_create(ctx, task).await?;
    }
    Ok(created)
}

/// Finds the request's template (from the process's cache) and validates the context
/// against it.
async fn task_params(
    ctx: &ExecutorContext,
    request: &TaskRequest,
) -> Result<TaskCreateParams, RequestError> {
    let template = ctx
        .templates
        .resolve(
            ctx.store.as_ref(),
            &request.namespace,
            &request.name,
            request.version.as_deref(),
        )
        .await
        .map_err(|e| match e {
            ResolveError::Unknown(id) => RequestError::UnknownTemplate(id),
            ResolveError::Unreadable(name, why) => RequestError::BadTemplate(name, why),
            ResolveError::Store(e) => RequestError::Store(e),
        })?;
    template
        .context
        .validate(&request.context)
        .map_err(|e| RequestError::InvalidContext(e.problems_lines().join("; ")))?;
    Ok(TaskCreateParams {
        template_id: template.id,
        steps: template.steps.clone(),
        context: request.context.clone(),
        idempotency_key: request.idempotency_key.clone(),
        priority: request.priority,
        instance_id: ctx.instance_id.clone(),
        start: Some(ctx.routing.clone()),
    })
}

/// Wakes the queues a new task's first steps went to; moves on an earlier request's task left
/// before it started (created by a version that left new tasks `Pending`, or interrupted).
async fn after_create(ctx: &ExecutorContext, created: &TaskCreated) -> Result<(), RequestError> {
    if created.created {
        for queue in &created.queues {
            ctx.wakeups.wake(queue);
        }
        return Ok(());
    }
    // Pending: move it on. Initializing: its work may never have been queued (a crash between
    // the two writes). Either way queue the work; a duplicate `task_work` message is harmless
    // (claims and compare-and-swap absorb it).
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
    Ok(())
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
