//! Remote workers, in any language: claim steps of a namespace with a lease, extend it with
//! heartbeats, complete or fail. The HTTP layer (`tasker-api`) is a thin skin over these
//! functions.
//!
//! A lease token names the step, the attempt and the step's lease token in the store
//! (`<step>.<attempt>.<token>`), which is the step's own. Every call after the claim first
//! proves the lease is still held for the step the call names (a token used on another step is
//! refused with [`RemoteError::WrongStep`] before anything moves), then extends it. A late call
//! for a step that was claimed again (its lease ran out) or finished is refused with
//! [`RemoteError::LeaseLost`] and changes nothing. A result is published to the result
//! processor in the transaction that hands the step's lease over to its message: no heartbeat
//! holds the step after that, and the step waits for that message; should the message be
//! dead-lettered instead of applied, the step is claimed again (its attempt reported lost); the
//! result processor ignores a result whose attempt is no longer current.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tasker_store::{StepLease, StepLeaseExtendParams, StoreError};
use tasker_types::{StepId, TaskId};

use crate::{
    pipeline::executor::{apply_results, ExecutorContext, ExecutorError},
    pipeline::messages::{StepOutcome, StepResult, STEP_RESULTS},
    pipeline::worker::{handler_input, lost_attempt},
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
    /// For parents that are mapped steps: `{"failed": n}` by name.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub parents_meta: Map<String, Value>,
    /// This attempt's number.
    pub attempt: u32,
    /// Present it on heartbeat, complete and fail.
    pub lease_token: String,
    /// An instance of a mapped step: `item` (or `items`) and `index`, beside the fields above.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub map_input: Option<Map<String, Value>>,
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
    step_id: i64,
    attempt: u32,
    token: String,
}

impl Lease {
    fn encode(&self) -> String {
        format!("{}.{}.{}", self.step_id, self.attempt, self.token)
    }

    fn decode(s: &str) -> Result<Self, RemoteError> {
        let mut parts = s.splitn(3, '.');
        let (Some(id), Some(attempt), Some(token)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(RemoteError::BadToken);
        };
        Ok(Self {
            step_id: id.parse().map_err(|_| RemoteError::BadToken)?,
            attempt: attempt.parse().map_err(|_| RemoteError::BadToken)?,
            token: token.to_owned(),
        })
    }
}

/// The lease holder a remote worker's claims record: never an instance's id, so failing an
/// instance over never takes a remote worker's steps.
fn remote_holder(worker_id: &str) -> String {
    format!("remote:{worker_id}")
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
    let claims = ctx
        .claim(
            &request.namespace,
            request.max.min(1000),
            lease,
            request.handlers.clone(),
            &remote_holder(&request.worker_id),
        )
        .await?;
    let mut claimed = Vec::with_capacity(claims.len());
    let mut ran_out = Vec::new();
    for claim in claims {
        if claim.lease_ran_out {
            // The worker that ran it stopped answering: nothing to hand out, a failure to
            // settle.
            ran_out.push(lost_attempt(&claim.step, &claim.lease_token));
            continue;
        }
        let lease = Lease {
            step_id: claim.step.id.0,
            attempt: claim.step.attempts,
            token: claim.lease_token.clone(),
        };
        let (step, input) = handler_input(claim);
        tracing::debug!(worker = %request.worker_id, step_id = %step.id, attempt = step.attempts, "step claimed");
        claimed.push(ClaimedStep {
            step_id: step.id,
            task_id: step.task_id,
            name: step.name,
            handler: step.handler,
            config: input.config,
            context: input.context,
            parents: input.parents,
            parents_meta: input.parents_meta,
            attempt: step.attempts,
            lease_token: lease.encode(),
            map_input: match input.map_input {
                Some(Value::Object(fields)) => Some(fields),
                _ => None,
            },
        });
    }
    if !ran_out.is_empty() {
        // Best effort: the claimed steps are this worker's now, whatever happens here; a lost
        // attempt not settled now is claimed again when its new lease runs out.
        if let Err(error) = apply_results(ctx, &ran_out, Vec::new(), None, None).await {
            tracing::warn!(%error, steps = ran_out.len(), "could not settle lost attempts");
        }
    }
    Ok(claimed)
}

/// Proves the lease is held for `step_id` and extends it to `extend` from now. A token of
/// another step is refused before anything moves. Returns the lease.
async fn hold(
    ctx: &ExecutorContext,
    step_id: StepId,
    token: &str,
    extend: Duration,
) -> Result<Lease, RemoteError> {
    let lease = Lease::decode(token)?;
    if lease.step_id != step_id.0 {
        return Err(RemoteError::WrongStep(step_id));
    }
    let lost = ctx
        .store
        .step_lease_extend(&StepLeaseExtendParams {
            leases: vec![StepLease {
                step_id,
                lease_token: lease.token.clone(),
            }],
            lease: extend,
        })
        .await?;
    if !lost.is_empty() {
        return Err(RemoteError::LeaseLost(step_id));
    }
    Ok(lease)
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

/// Reports the attempt's outcome: published to the result processor, in the transaction that
/// hands the step's lease over to it.
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
    let lease = Lease::decode(token)?;
    if lease.step_id != step_id.0 {
        return Err(RemoteError::WrongStep(step_id));
    }
    let step = match ctx.store.step_get(step_id).await {
        Ok(step) => step,
        Err(StoreError::NotFound { .. }) => return Err(RemoteError::LeaseLost(step_id)),
        Err(e) => return Err(e.into()),
    };
    if step.attempts != lease.attempt {
        return Err(RemoteError::LeaseLost(step_id));
    }
    let result = StepResult::new(
        step.task_id,
        step_id,
        lease.attempt,
        step.branches.as_deref(),
        outcome,
    );
    // The step waits for the result's message; gone without moving the step (dead-lettered),
    // the step is claimed again once this much has passed since the hand-over.
    let forwarded = ctx
        .store
        .queue_forward(&tasker_store::QueueForwardParams {
            consumed: Vec::new(),
            queue: STEP_RESULTS.to_owned(),
            payloads: vec![serde_json::to_value(&result).expect("step results serialize")],
            settled: vec![StepLease {
                step_id,
                lease_token: lease.token,
            }],
            settle_within: ctx.visibility_timeout,
        })
        .await;
    match forwarded {
        Ok(_) => {}
        Err(StoreError::LeaseLost { .. }) => return Err(RemoteError::LeaseLost(step_id)),
        Err(e) => return Err(e.into()),
    }
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
            step_id: 42,
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
