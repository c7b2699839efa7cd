//! A step is its own queue entry: claims, their leases, and results handed over with a lease.

use std::{collections::HashSet, sync::Arc, time::Duration};

use serde_json::json;
use tasker_types::{StepEvent, StepId, StepState, TaskId};

use super::results::{apply, local_noop, ready, running, start, state_of, step_id, success};
use crate::{
    conformance::{claim, create_task, dead_in, diamond, template},
    QueueForwardParams, StepChain, StepClaimParams, StepEnqueueManyParams, StepLease,
    StepLeaseExtendParams, Store, StoreError,
};

const LONG: Duration = Duration::from_secs(300);

/// Enqueues a `Pending` step of `task` in `queue`.
pub(super) async fn enqueue(store: &dyn Store, task: TaskId, name: &str, queue: &str) -> StepId {
    let id = step_id(store, task, name).await;
    let done = store
        .step_enqueue_many(&StepEnqueueManyParams {
            task_id: task,
            steps: vec![(id, StepState::Pending)],
            queue: queue.into(),
            instance_id: "conformance".into(),
        })
        .await
        .unwrap();
    assert_eq!(done, [id]);
    id
}

/// The steps among `leases` whose lease a five-minute extension finds lost.
async fn extend(s: &dyn Store, leases: Vec<StepLease>) -> Vec<StepId> {
    s.step_lease_extend(&StepLeaseExtendParams {
        leases,
        lease: LONG,
    })
    .await
    .unwrap()
}

fn lease(step_id: StepId, token: &str) -> StepLease {
    StepLease {
        step_id,
        lease_token: token.into(),
    }
}

/// A claim takes the oldest waiting steps of its queue, starts their attempts (`InProgress`,
/// counted, audited, leased with a token of their own) and returns each with its task context
/// and its parents' outputs; a step already claimed is not claimed again while its lease holds.
pub async fn step_claim_begins_attempts_with_their_input(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let task = create_task(s, &diamond(), None).await;
    running(s, &task).await;
    let root = enqueue(s, task.id, "start", "elsewhere").await;
    let claimed = claim(s, "elsewhere", 10, LONG).await;
    assert_eq!(claimed.len(), 1);
    let first = &claimed[0];
    assert_eq!(first.step.id, root);
    assert_eq!(first.step.state, StepState::InProgress);
    assert_eq!(first.step.attempts, 1);
    assert_eq!(first.step.queue.as_deref(), Some("elsewhere"));
    assert!(first.parents.is_empty(), "a root step has no parents");
    assert!(!first.lease_token.is_empty() && !first.lease_ran_out);
    assert_eq!(first.context, json!({"n": 1}));
    assert!(
        claim(s, "elsewhere", 10, LONG).await.is_empty(),
        "a leased step is not claimed twice"
    );
    s.step_apply_results(&apply(
        vec![success(task.id, (root, first.step.attempts))],
        local_noop(),
    ))
    .await
    .unwrap();

    let claimed = claim(s, "local", 10, LONG).await;
    let ids: Vec<_> = claimed.iter().map(|c| c.step.id).collect();
    let expected = vec![
        step_id(s, task.id, "left").await,
        step_id(s, task.id, "right").await,
    ];
    assert_eq!(ids, expected, "the Pending join stays behind");
    let tokens: HashSet<&str> = claimed.iter().map(|c| c.lease_token.as_str()).collect();
    assert_eq!(tokens.len(), 2, "each step has a lease token of its own");
    for c in &claimed {
        assert_eq!(c.step.state, StepState::InProgress);
        assert_eq!(c.step.attempts, 1);
        assert!(c.step.started_at_ms.is_some());
        assert_eq!(
            c.parents,
            [("start".to_owned(), Some(json!({ "step": root.0 })))]
        );
    }
    assert_eq!(state_of(s, task.id, "join").await, StepState::Pending);
    let log = s.transition_list(task.id).await.unwrap();
    let starts = log.iter().filter(|t| t.event == "start").count();
    assert_eq!(starts, 3, "one audit row per started attempt");
}

/// A step whose lease ran out is claimed again under a new token, answered `lease_ran_out`:
/// leased as it is, no attempt started, no audit row; the old token holds nothing any more,
/// and a result under it is refused. The new holder reports the lost attempt, and its
/// failure settles by the retry policy.
pub async fn step_claim_takes_back_expired_leases(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let t = template(
        "namespace: demo\nname: lapse\nversion: 1.0.0\nsteps:\n\
         - {name: twice, handler: noop, retry: {max_attempts: 2}}\n",
    );
    let task = create_task(s, &t, None).await;
    running(s, &task).await;
    let id = enqueue(s, task.id, "twice", "lapse").await;
    let short = Duration::from_millis(200);
    let first = claim(s, "lapse", 1, short).await.remove(0);
    assert!(!first.lease_ran_out);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        ready(s, "lapse").await,
        1,
        "an expired lease counts as ready"
    );
    let second = claim(s, "lapse", 1, LONG).await.remove(0);
    assert_eq!(second.step.id, id);
    assert!(second.lease_ran_out, "leased as it is");
    assert_eq!(
        (second.step.state, second.step.attempts),
        (StepState::InProgress, 1)
    );
    assert_ne!(second.lease_token, first.lease_token);
    let lost = extend(s, vec![lease(id, &first.lease_token)]).await;
    assert_eq!(lost, [id], "the first claim's token holds nothing");

    // The first worker's late result is refused: its lease is gone.
    let mut late = success(task.id, (id, 1));
    late.lease_token = Some(first.lease_token.clone());
    let applied = s
        .step_apply_results(&apply(vec![late], local_noop()))
        .await
        .unwrap();
    assert!(
        applied.steps.is_empty(),
        "a result under a lost lease moves nothing"
    );

    // The new holder reports the lost attempt; the retry policy decides.
    let mut lost_attempt = success(task.id, (id, 1));
    lost_attempt.event = StepEvent::Fail { will_retry: true };
    lost_attempt.output = None;
    lost_attempt.error = Some("lease ran out".into());
    lost_attempt.backoff = Some(Duration::from_millis(1));
    lost_attempt.lease_token = Some(second.lease_token.clone());
    let applied = s
        .step_apply_results(&apply(vec![lost_attempt], local_noop()))
        .await
        .unwrap();
    assert_eq!(applied.steps.len(), 1);
    assert_eq!(applied.steps[0].state, StepState::WaitingForRetry);
    let events: Vec<String> = s
        .transition_list(task.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.step_id == Some(id))
        .map(|t| t.event)
        .collect();
    assert_eq!(
        events,
        ["create", "enqueue", "start", "fail_retryable"],
        "a claim that starts no attempt writes no audit row"
    );
    assert!(
        claim(s, "lapse", 1, LONG).await.is_empty(),
        "waiting for its retry"
    );
}

/// A claim with a handler filter takes only steps with those handlers, and leaves the others
/// waiting, in order.
pub async fn step_claim_filters_by_handler(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let t = template(
        "namespace: demo\nname: kinds\nversion: 1.0.0\nsteps:\n\
         - {name: a, handler: shell}\n- {name: b, handler: noop}\n- {name: c, handler: shell}\n",
    );
    let task = create_task(s, &t, None).await;
    running(s, &task).await;
    for name in ["a", "b", "c"] {
        enqueue(s, task.id, name, "kinds").await;
    }
    let only = |handlers: Vec<&str>| StepClaimParams {
        queue: "kinds".into(),
        max: 10,
        lease: LONG,
        handlers: Some(handlers.into_iter().map(str::to_owned).collect()),
        instance_id: "conformance".into(),
        holder: "conformance".into(),
    };
    assert!(s.step_claim(&only(vec![])).await.unwrap().is_empty());
    let names: Vec<String> = s
        .step_claim(&only(vec!["noop"]))
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.step.name)
        .collect();
    assert_eq!(names, ["b"]);
    assert_eq!(ready(s, "kinds").await, 2);
    let names: Vec<String> = claim(s, "kinds", 10, LONG)
        .await
        .into_iter()
        .map(|c| c.step.name)
        .collect();
    assert_eq!(names, ["a", "c"]);
}

/// Extending held leases keeps their steps from being claimed again; a wrong token, or a
/// step that moved on, is reported lost and extends nothing.
pub async fn step_lease_extend_keeps_held_leases(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let task = create_task(s, &diamond(), None).await;
    running(s, &task).await;
    let id = enqueue(s, task.id, "start", "ext").await;
    let held = claim(s, "ext", 1, Duration::from_millis(300))
        .await
        .remove(0);
    let left = step_id(s, task.id, "left").await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let lost = s
            .step_lease_extend(&StepLeaseExtendParams {
                leases: vec![lease(id, &held.lease_token), lease(left, &held.lease_token)],
                lease: Duration::from_millis(300),
            })
            .await
            .unwrap();
        assert_eq!(lost, [left], "a token holds only its own step");
    }
    assert!(claim(s, "ext", 1, LONG).await.is_empty(), "still held");
    s.step_apply_results(&apply(
        vec![success(task.id, (id, held.step.attempts))],
        local_noop(),
    ))
    .await
    .unwrap();
    let lost = extend(s, vec![lease(id, &held.lease_token)]).await;
    assert_eq!(lost, [id], "a finished step's lease is gone");
    assert!(extend(s, Vec::new()).await.is_empty());
}

/// Concurrent claimers never receive the same step, and together they receive every one.
pub async fn step_claim_concurrent_claimers_get_each_step_once(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let steps: String = (0..60)
        .map(|i| format!("- {{name: s{i}, handler: noop}}\n"))
        .collect();
    let t = template(&format!(
        "namespace: demo\nname: wide\nversion: 1.0.0\nsteps:\n{steps}"
    ));
    let task = create_task(s, &t, None).await;
    running(s, &task).await;
    let all: Vec<StepId> = s
        .step_list(task.id)
        .await
        .unwrap()
        .iter()
        .map(|st| st.id)
        .collect();
    s.step_enqueue_many(&StepEnqueueManyParams {
        task_id: task.id,
        steps: all.iter().map(|&id| (id, StepState::Pending)).collect(),
        queue: "race".into(),
        instance_id: "conformance".into(),
    })
    .await
    .unwrap();
    let claimers: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = claim(store.as_ref(), "race", 7, LONG).await;
                    if batch.is_empty() {
                        break got;
                    }
                    got.extend(batch.into_iter().map(|c| c.step.id));
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    for claimer in claimers {
        seen.extend(claimer.await.unwrap());
    }
    let unique: HashSet<StepId> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "a step was claimed twice");
    assert_eq!(unique, all.into_iter().collect::<HashSet<_>>());
}

/// `queue_forward` hands a step's lease over to the message of the result it publishes: no
/// call holds the lease after it, and the step waits for that message, however long; once the
/// message is gone without moving the step (dead-lettered, say) and `settle_within` has
/// passed, the step is claimed again, its attempt lost. A lease not held fails the call, and
/// nothing is published.
pub async fn queue_forward_settles_step_leases(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let task = create_task(s, &diamond(), None).await;
    running(s, &task).await;
    let id = enqueue(s, task.id, "start", "handover").await;
    let held = claim(s, "handover", 1, LONG).await.remove(0);
    let forward = |token: &str, within: Duration| QueueForwardParams {
        consumed: Vec::new(),
        queue: "handed".into(),
        payloads: vec![json!({"result": 1})],
        settled: vec![lease(id, token)],
        settle_within: within,
    };
    let refused = s
        .queue_forward(&forward("not-the-token", LONG))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::LeaseLost { .. }),
        "{refused:?}"
    );
    assert_eq!(ready(s, "handed").await, 0, "nothing published");

    s.queue_forward(&forward(&held.lease_token, Duration::from_millis(100)))
        .await
        .unwrap();
    assert_eq!(ready(s, "handed").await, 1);
    let lost = extend(s, vec![lease(id, &held.lease_token)]).await;
    assert_eq!(lost, [id], "the lease went with the result");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        claim(s, "handover", 1, LONG).await.is_empty(),
        "past its bound, the step still waits for its queued result"
    );

    // The result's message is dead-lettered: the step is claimed again, its attempt lost.
    let dequeue = crate::QueueDequeueParams {
        queue: "handed".into(),
        max: 1,
        visibility_timeout: Duration::ZERO,
        max_deliveries: 1,
        holder: "conformance".into(),
    };
    assert_eq!(s.queue_dequeue(&dequeue).await.unwrap().len(), 1);
    assert!(s.queue_dequeue(&dequeue).await.unwrap().is_empty());
    assert_eq!(
        s.dead_letter_list(&dead_in("handed")).await.unwrap().len(),
        1
    );
    let again = claim(s, "handover", 1, LONG).await;
    assert_eq!(
        again
            .iter()
            .map(|c| (c.step.id, c.step.attempts, c.lease_ran_out))
            .collect::<Vec<_>>(),
        [(id, 1, true)],
        "a result never applied: the attempt is lost"
    );
}

/// A result batch with a chain claims, in its own transaction, the children it makes ready in
/// the chain's queue, at most `max`, oldest first: leased, started and audited as a claim
/// would, with their handlers' input; the others wait in the queue as usual.
pub async fn step_apply_results_claims_what_it_makes_ready(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let task = create_task(s, &diamond(), None).await;
    running(s, &task).await;
    let root = start(s, task.id, "start").await;
    let chain = |max| StepChain {
        queue: "local".into(),
        max,
        lease: LONG,
    };
    let mut params = apply(vec![success(task.id, root)], local_noop());
    params.chain = Some(chain(1));
    let applied = s.step_apply_results(&params).await.unwrap();
    let left = step_id(s, task.id, "left").await;
    assert_eq!(
        applied
            .claimed
            .iter()
            .map(|c| c.step.id)
            .collect::<Vec<_>>(),
        [left],
        "one claimed, the oldest"
    );
    let claimed = &applied.claimed[0];
    assert_eq!(claimed.step.state, StepState::InProgress);
    assert_eq!(claimed.step.attempts, 1);
    assert_eq!(claimed.step.queue.as_deref(), Some("local"));
    assert!(claimed.step.started_at_ms.is_some());
    assert!(!claimed.lease_token.is_empty() && !claimed.lease_ran_out);
    assert_eq!(claimed.context, json!({"n": 1}));
    assert_eq!(
        claimed.parents,
        [("start".to_owned(), Some(json!({ "step": root.0 .0 })))]
    );
    assert_eq!(applied.queues, ["local"], "right waits in the queue");
    assert_eq!(state_of(s, task.id, "right").await, StepState::Enqueued);
    assert_eq!(ready(s, "local").await, 1);
    let events: Vec<String> = s
        .transition_list(task.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.step_id == Some(left))
        .map(|t| t.event)
        .collect();
    assert_eq!(events, ["create", "enqueue", "start"]);
    let lost = extend(s, vec![lease(left, &claimed.lease_token)]).await;
    assert!(lost.is_empty(), "the chained claim holds its lease");

    // Both parents of the join in one batch: the join is claimed with both outputs.
    let right = start(s, task.id, "right").await;
    let mut params = apply(
        vec![
            success(task.id, (left, claimed.step.attempts)),
            success(task.id, right),
        ],
        local_noop(),
    );
    params.chain = Some(chain(10));
    let applied = s.step_apply_results(&params).await.unwrap();
    assert_eq!(applied.claimed.len(), 1);
    assert_eq!(applied.claimed[0].step.name, "join");
    assert_eq!(
        applied.claimed[0].parents,
        [
            ("left".to_owned(), Some(json!({ "step": left.0 }))),
            ("right".to_owned(), Some(json!({ "step": right.0 .0 })))
        ]
    );
    assert!(
        applied.queues.is_empty(),
        "nothing left waiting: {:?}",
        applied.queues
    );
    assert_eq!(ready(s, "local").await, 0);
}
