//! Remote workers, in any language: claim step messages of a namespace with a lease, extend
//! it with heartbeats, complete or fail. The HTTP layer (`tasker-api`) is a thin skin over
//! these functions.
//!
//! A lease token names the queue message, the attempt and the delivery's own token
//! (`<message>.<attempt>.<token>`). Every call after the claim first proves the lease is still
//! held and was issued for the step the call names (one claim's deliveries share a delivery
//! token, so the message itself must name the step; a token used on another step is refused
//! with [`RemoteError::WrongStep`] before anything moves), then extends it. A late call for a
//! step whose message was re-leased (its lease expired and another worker claimed it) or
//! finished is refused with [`RemoteError::LeaseLost`] and changes nothing. A result is published before the message is acknowledged, so a crash
//! in between delivers the step again rather than losing it; the result processor ignores a
//! result whose attempt is no longer current.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tasker_store::{QueueAckParams, QueueLeaseParams, StepMessage, StoreError};
use tasker_types::{StepId, StepRow, StepState, TaskId};

use crate::{
    pipeline::executor::{ExecutorContext, ExecutorError},
    pipeline::messages::{StepOutcome, StepResult, STEP_RESULTS},
    pipeline::worker::begin_attempt,
};

/// A claim request.
#[derive(Debug, Clone, Deserialize)]
pub struct ClaimRequest {
    /// The namespace whose steps to claim.
    pub namespace: String,
    /// Who claims (for logs).
    pub worker_id: String,
    /// At most this many steps.
    pub max: u32,
    /// Lease in milliseconds; heartbeats extend it.
    pub lease_ms: u64,
    /// Only steps with these handlers (all when absent).
    #[serde(default)]
    pub handlers: Option<Vec<String>>,
}

/// One claimed step, with everything its handler needs.
#[derive(Debug, Clone, Serialize)]
pub struct ClaimedStep {
    /// The step.
    pub step_id: StepId,
    /// Its task.
    pub task_id: TaskId,
    /// Step name.
    pub name: String,
    /// Handler name.
    pub handler: String,
    /// Handler config.
    pub config: Value,
    /// Task context.
    pub context: Value,
    /// Parents' outputs by name.
    pub parents: Map<String, Value>,
    /// This attempt's number.
    pub attempt: u32,
    /// Present it on heartbeat, complete and fail.
    pub lease_token: String,
}

/// Why a worker call was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The lease expired and the step was re-leased, or the step finished: nothing changed.
    #[error("lease on step {0} is no longer held")]
    LeaseLost(StepId),
    /// The lease token is not one this server issued.
    #[error("malformed lease token")]
    BadToken,
    /// The lease token was issued for another step: nothing changed, on either step.
    #[error("lease token was not issued for step {0}")]
    WrongStep(StepId),
    /// A bad request (an empty namespace, a zero lease).
    #[error("{0}")]
    Invalid(String),
    /// The engine failed.
    #[error(transparent)]
    Executor(#[from] ExecutorError),
}

impl From<StoreError> for RemoteError {
    fn from(e: StoreError) -> Self {
        RemoteError::Executor(ExecutorError::Store(e))
    }
}

/// A parsed lease token.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    message_id: i64,
    attempt: u32,
    token: String,
}

impl Lease {
    fn encode(&self) -> String {
        format!("{}.{}.{}", self.message_id, self.attempt, self.token)
    }

    fn decode(s: &str) -> Result<Self, RemoteError> {
        let mut parts = s.splitn(3, '.');
        let (Some(id), Some(attempt), Some(token)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(RemoteError::BadToken);
        };
        Ok(Self {
            message_id: id.parse().map_err(|_| RemoteError::BadToken)?,
            attempt: attempt.parse().map_err(|_| RemoteError::BadToken)?,
            token: token.to_owned(),
        })
    }
}

/// Longest lease a worker may ask for.
const MAX_LEASE: Duration = Duration::from_secs(3600);

/// Claims up to `max` steps of a namespace.
///
/// # Errors
///
/// [`RemoteError::Invalid`] for a bad request; store failures.
pub(crate) async fn claim(
    ctx: &ExecutorContext,
    request: &ClaimRequest,
) -> Result<Vec<ClaimedStep>, RemoteError> {
    if !tasker_template::is_namespace(&request.namespace) {
        return Err(RemoteError::Invalid(format!(
            "namespace: {:?} is not a template namespace ([a-z0-9][a-z0-9_-]*); \
             the engine's own queues are not claimable",
            request.namespace
        )));
    }
    if request.lease_ms == 0 {
        return Err(RemoteError::Invalid(
            "lease_ms: must be greater than 0".into(),
        ));
    }
    let lease = Duration::from_millis(request.lease_ms).min(MAX_LEASE);
    let messages = ctx
        .dequeue_leased(&request.namespace, request.max.min(1000), lease)
        .await?;
    let mut claimed = Vec::with_capacity(messages.len());
    for message in messages {
        let Some(step_message) = ctx.decode_or_reject::<StepMessage>(&message).await? else {
            continue;
        };
        if let Some(handlers) = &request.handlers {
            let step = ctx.store.step_get(step_message.step_id).await?;
            if !handlers.contains(&step.handler) {
                // Not this worker's kind: back to the queue for another.
                ctx.release(&message, Duration::ZERO).await?;
                continue;
            }
        }
        let Some((step, input)) = begin_attempt(ctx, step_message.step_id).await? else {
            // Nothing to run any more (finished or cancelled): the message is spent.
            ctx.ack(&message).await?;
            continue;
        };
        tracing::debug!(worker = %request.worker_id, step_id = %step.id, attempt = step.attempts, "step claimed");
        let lease = Lease {
            message_id: message.id,
            attempt: step.attempts,
            token: message.lease_token.clone(),
        };
        claimed.push(ClaimedStep {
            step_id: step.id,
            task_id: step.task_id,
            name: step.name,
            handler: step.handler,
            config: input.config,
            context: input.context,
            parents: input.parents,
            attempt: step.attempts,
            lease_token: lease.encode(),
        });
    }
    Ok(claimed)
}

/// Proves the lease is held, that it was issued for `step_id`, and that the step is still in
/// the attempt the lease was issued for; extends it on the way. A token of another step is
/// refused before anything moves. Returns the lease and the step as read.
async fn hold(
    ctx: &ExecutorContext,
    step_id: StepId,
    token: &str,
    extend: Duration,
) -> Result<(Lease, StepRow), RemoteError> {
    // A delivery that is gone, or a step that is, means the lease is no longer held.
    let lost = |e: StoreError| match e {
        StoreError::LeaseLost { .. } | StoreError::NotFound { .. } => {
            RemoteError::LeaseLost(step_id)
        }
        e => e.into(),
    };
    let lease = Lease::decode(token)?;
    let held = QueueAckParams {
        id: lease.message_id,
        lease_token: lease.token.clone(),
    };
    let message = ctx.store.queue_get(&held).await.map_err(lost)?;
    // The delivery's lease token is shared by the messages of one claim, so the message itself
    // must name the step.
    match serde_json::from_value::<StepMessage>(message.payload) {
        Ok(m) if m.step_id == step_id => {}
        _ => return Err(RemoteError::WrongStep(step_id)),
    }
    ctx.store
        .queue_extend(&QueueLeaseParams {
            id: lease.message_id,
            lease_token: lease.token.clone(),
            delay: extend,
        })
        .await
        .map_err(lost)?;
    let step = ctx.store.step_get(step_id).await.map_err(lost)?;
    if step.state != StepState::InProgress || step.attempts != lease.attempt {
        return Err(RemoteError::LeaseLost(step_id));
    }
    Ok((lease, step))
}

/// Extends the lease by `lease`.
///
/// # Errors
///
/// [`RemoteError::LeaseLost`] when the lease is no longer held.
pub(crate) async fn heartbeat(
    ctx: &ExecutorContext,
    step_id: StepId,
    token: &str,
    lease: Duration,
) -> Result<(), RemoteError> {
    hold(ctx, step_id, token, lease.min(MAX_LEASE))
        .await
        .map(|_| ())
}

/// Reports the attempt's outcome: published to the result processor and the step message
/// acknowledged, in one transaction.
///
/// # Errors
///
/// [`RemoteError::LeaseLost`] when the lease is no longer held; nothing changes then.
pub(crate) async fn finish(
    ctx: &ExecutorContext,
    step_id: StepId,
    token: &str,
    outcome: StepOutcome,
) -> Result<(), RemoteError> {
    // A short extension covers the writes below.
    let (lease, step) = hold(ctx, step_id, token, Duration::from_secs(30)).await?;
    let result = StepResult {
        task_id: step.task_id,
        step_id,
        attempt: lease.attempt,
        outcome,
    };
    // Should the lease expire in between, the message is left for its redelivery, which the
    // attempt check absorbs.
    ctx.store
        .queue_forward(&tasker_store::QueueForwardParams {
            consumed: vec![tasker_store::QueueAckParams {
                id: lease.message_id,
                lease_token: lease.token,
            }],
            queue: STEP_RESULTS.to_owned(),
            payloads: vec![serde_json::to_value(&result).expect("step results serialize")],
        })
        .await?;
    ctx.wakeups.wake(STEP_RESULTS);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_engine_queue_can_be_named_as_a_namespace() {
        use crate::pipeline::messages::*;
        for queue in [
            TASK_REQUESTS,
            TASK_WORK,
            STEP_RESULTS,
            LOCAL_STEPS,
            TASK_FINALIZE,
        ] {
            assert!(!tasker_template::is_namespace(queue), "{queue}");
        }
        assert!(tasker_template::is_namespace("greeting"));
    }

    #[test]
    fn lease_tokens_round_trip_and_reject_garbage() {
        let lease = Lease {
            message_id: 42,
            attempt: 3,
            token: "ab-cd.ef".into(),
        };
        assert_eq!(Lease::decode(&lease.encode()).unwrap(), lease);
        for bad in ["", "1", "1.2", "x.2.t", "1.y.t"] {
            assert!(
                matches!(Lease::decode(bad), Err(RemoteError::BadToken)),
                "{bad}"
            );
        }
    }
}
