use std::{collections::HashSet, sync::Arc, time::Duration};

use serde_json::json;
use tasker_types::{StepEvent, StepId, StepState, TaskEvent, TaskId, TaskRow, TaskState};

use crate::{
    conformance::{claim, create_task, diamond, template},
    QueueAckParams, QueueDequeueParams, QueueEnqueueManyParams, QueueForwardParams,
    StepApplyResultsParams, StepEnqueueManyParams, StepResultApply, StepRouting, Store,
    TaskCreateParams, TaskMessage, TaskTransitionParams, TemplateRegisterParams,
};

const LEASE: Duration = Duration::from_secs(300);

/// Moves a task along `events` from `from`; returns the state it ends in.
pub(super) async fn walk(
    store: &dyn Store,
    task: TaskId,
    mut from: TaskState,
    events: &[TaskEvent],
) -> TaskState {
    for &event in events {
        from = store
            .task_transition(&TaskTransitionParams {
                task_id: task,
                from,
                event,
                reason: None,
                instance_id: "conformance".into(),
            })
            .await
            .unwrap()
            .state;
    }
    from
}

/// Moves a new task to `StepsInProcess`, as the claimer and enqueuer would.
pub(super) async fn running(store: &dyn Store, task: &TaskRow) {
    let events = [
        TaskEvent::Initialize,
        TaskEvent::BeginEnqueue,
        TaskEvent::StepsEnqueued,
    ];
    let to = walk(store, task.id, TaskState::Pending, &events).await;
    assert_eq!(to, TaskState::StepsInProcess);
}

pub(super) async fn step_id(store: &dyn Store, task: TaskId, name: &str) -> StepId {
    let steps = store.step_list(task).await.unwrap();
    steps.into_iter().find(|s| s.name == name).unwrap().id
}

pub(super) async fn state_of(store: &dyn Store, task: TaskId, name: &str) -> StepState {
    let id = step_id(store, task, name).await;
    store.step_get(id).await.unwrap().state
}

/// Enqueues (when `Pending`) and claims a step, which must be the oldest waiting in its
/// queue; returns the attempt started.
pub(super) async fn start(store: &dyn Store, task: TaskId, name: &str) -> (StepId, u32) {
    let id = step_id(store, task, name).await;
    if store.step_get(id).await.unwrap().state == StepState::Pending {
        store
            .step_enqueue_many(&StepEnqueueManyParams {
                task_id: task,
                steps: vec![(id, StepState::Pending)],
                queue: "elsewhere".into(),
                instance_id: "conformance".into(),
            })
            .await
            .unwrap();
    }
    let queue = store.step_get(id).await.unwrap().queue.expect("a queue");
    let started = claim(store, &queue, 1, LEASE).await;
    assert_eq!(started.len(), 1, "an enqueued step is claimed");
    assert_eq!(
        started[0].step.id, id,
        "the oldest step of {queue} is {name}"
    );
    (id, started[0].step.attempts)
}

/// Steps ready to claim in `queue`.
pub(super) async fn ready(store: &dyn Store, queue: &str) -> u64 {
    store.queue_depth(queue).await.unwrap().ready
}

pub(super) fn success(task: TaskId, (step_id, attempt): (StepId, u32)) -> StepResultApply {
    StepResultApply {
        task_id: task,
        step_id,
        attempt,
        event: StepEvent::Complete,
        output: Some(json!({ "step": step_id.0 })),
        error: None,
        backoff: None,
        lease_token: None,
        unchosen: Vec::new(),
        instances: Vec::new(),
    }
}

pub(super) fn apply(results: Vec<StepResultApply>, routing: StepRouting) -> StepApplyResultsParams {
    StepApplyResultsParams {
        results,
        consumed: Vec::new(),
        routing,
        evaluate_queue: "evaluate".into(),
        instance_id: "conformance".into(),
        chain: None,
        lock_wait: None,
    }
}

pub(super) fn local_noop() -> StepRouting {
    StepRouting {
        local_queue: "local".into(),
        local_handlers: Arc::new(HashSet::from(["noop".to_owned()])),
    }
}

async fn drain(store: &dyn Store, queue: &str) -> Vec<serde_json::Value> {
    store
        .queue_dequeue(&QueueDequeueParams {
            queue: queue.into(),
            max: 100,
            visibility_timeout: LEASE,
            max_deliveries: 5,
            holder: "conformance".into(),
        })
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.payload)
        .collect()
}

/// A batch of results applied together: each completed step's children that have no
/// unfinished parent left wait in the queue `routing` picks, a duplicate or stale result
/// changes nothing, the consumed deliveries are deleted, and the result that completes
/// the last step completes the task, with its audit rows.
pub async fn step_apply_results_enqueues_children_and_finishes_the_task(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let task = create_task(s, &diamond(), None).await;
    running(s, &task).await;
    let first = start(s, task.id, "start").await;

    s.queue_enqueue_many(&QueueEnqueueManyParams {
        queue: "results".into(),
        payloads: vec![json!({"result": 1})],
        delay: Duration::ZERO,
    })
    .await
    .unwrap();
    let delivery = &s
        .queue_dequeue(&QueueDequeueParams {
            queue: "results".into(),
            max: 1,
            visibility_timeout: LEASE,
            max_deliveries: 5,
            holder: "conformance".into(),
        })
        .await
        .unwrap()[0];
    let mut params = apply(vec![success(task.id, first)], local_noop());
    params.consumed = vec![QueueAckParams {
        id: delivery.id,
        lease_token: delivery.lease_token.clone(),
    }];
    let applied = s.step_apply_results(&params).await.unwrap();
    assert_eq!(applied.steps.len(), 1);
    assert_eq!(applied.steps[0].state, StepState::Complete);
    assert!(applied.finished.is_empty());
    assert_eq!(applied.queues, ["local"]);
    assert_eq!(s.queue_depth("results").await.unwrap().ready, 0);
    assert_eq!(s.queue_depth("results").await.unwrap().invisible, 0);
    for name in ["left", "right"] {
        let child = s.step_get(step_id(s, task.id, name).await).await.unwrap();
        assert_eq!(child.state, StepState::Enqueued);
        assert_eq!(child.queue.as_deref(), Some("local"));
    }
    assert_eq!(state_of(s, task.id, "join").await, StepState::Pending);
    assert_eq!(ready(s, "local").await, 2);

    let duplicate = s
        .step_apply_results(&apply(vec![success(task.id, first)], local_noop()))
        .await
        .unwrap();
    assert!(duplicate.steps.is_empty() && duplicate.queues.is_empty());

    // Both parents of `join` in one batch, in either order: `join` is enqueued once.
    let left = start(s, task.id, "left").await;
    let right = start(s, task.id, "right").await;
    let both = s
        .step_apply_results(&apply(
            vec![success(task.id, right), success(task.id, left)],
            local_noop(),
        ))
        .await
        .unwrap();
    assert_eq!(both.steps.len(), 2);
    assert_eq!(ready(s, "local").await, 1);
    assert!(drain(s, "evaluate").await.is_empty());

    let join = start(s, task.id, "join").await;
    let last = s
        .step_apply_results(&apply(vec![success(task.id, join)], local_noop()))
        .await
        .unwrap();
    assert_eq!(last.finished.len(), 1);
    assert_eq!(last.finished[0].state, TaskState::Complete);
    assert!(last.finished[0].finished_at_ms.is_some());
    assert_eq!(
        s.task_get(task.id).await.unwrap().state,
        TaskState::Complete
    );
    let log = s.transition_list(task.id).await.unwrap();
    let tail: Vec<_> = log
        .iter()
        .rev()
        .take(2)
        .map(|t| (t.from_state.clone(), t.to_state.clone()))
        .collect();
    assert_eq!(
        tail,
        [
            (Some("EvaluatingResults".into()), "Complete".into()),
            (Some("StepsInProcess".into()), "EvaluatingResults".into()),
        ]
    );
    assert!(drain(s, "evaluate").await.is_empty());
}

/// What a result cannot settle alone goes to the evaluator: a failure, a completion that
/// leaves nothing running, any result for a task not in `StepsInProcess` (whose children are
/// counted but not enqueued). Steps without a local handler go to their namespace's queue.
pub async fn step_apply_results_hands_the_rest_to_the_evaluator(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let t = template(
        "namespace: demo\nname: pair\nversion: 1.0.0\nsteps:\n\
         - {name: a, handler: noop}\n- {name: b, handler: noop}\n\
         - {name: c, handler: noop, depends_on: [a]}\n",
    );
    let remote = StepRouting::default();
    let task = create_task(s, &t, None).await;
    running(s, &task).await;
    let a = start(s, task.id, "a").await;
    let b = start(s, task.id, "b").await;
    let retry = StepResultApply {
        event: StepEvent::Fail { will_retry: true },
        output: None,
        error: Some("boom".into()),
        backoff: Some(Duration::from_secs(3600)),
        ..success(task.id, b)
    };
    let applied = s
        .step_apply_results(&apply(vec![retry, success(task.id, a)], remote.clone()))
        .await
        .unwrap();
    assert_eq!(applied.steps.len(), 2);
    assert_eq!(state_of(s, task.id, "b").await, StepState::WaitingForRetry);
    assert_eq!(state_of(s, task.id, "c").await, StepState::Enqueued);
    assert_eq!(
        ready(s, "demo").await,
        1,
        "c waits in its namespace's queue"
    );
    assert_eq!(
        drain(s, "evaluate").await,
        [json!(TaskMessage { task_id: task.id })]
    );

    // Completing the only running step leaves a retry waiting: the evaluator decides.
    let c = start(s, task.id, "c").await;
    let applied = s
        .step_apply_results(&apply(vec![success(task.id, c)], remote.clone()))
        .await
        .unwrap();
    assert!(applied.finished.is_empty());
    assert_eq!(drain(s, "evaluate").await.len(), 1);

    // A task being evaluated: children are counted, not enqueued.
    let other = create_task(s, &t, Some("other")).await;
    running(s, &other).await;
    let a = start(s, other.id, "a").await;
    s.task_transition(&TaskTransitionParams {
        task_id: other.id,
        from: TaskState::StepsInProcess,
        event: TaskEvent::StepResultReceived,
        reason: None,
        instance_id: "conformance".into(),
    })
    .await
    .unwrap();
    s.step_apply_results(&apply(vec![success(other.id, a)], remote))
        .await
        .unwrap();
    let c = s.step_get(step_id(s, other.id, "c").await).await.unwrap();
    assert_eq!((c.state, c.pending_parents), (StepState::Pending, 0));
    assert_eq!(drain(s, "evaluate").await.len(), 1);
    assert_eq!(ready(s, "demo").await, 0);
}

/// `queue_forward` publishes and deletes the consumed deliveries in one transaction; a
/// delivery whose lease token is no longer current stays.
pub async fn queue_forward_publishes_and_consumes_together(store: Arc<dyn Store>) {
    let s = store.as_ref();
    s.queue_enqueue_many(&QueueEnqueueManyParams {
        queue: "in".into(),
        payloads: vec![json!(1), json!(2)],
        delay: Duration::ZERO,
    })
    .await
    .unwrap();
    let taken = s
        .queue_dequeue(&QueueDequeueParams {
            queue: "in".into(),
            max: 2,
            visibility_timeout: LEASE,
            max_deliveries: 5,
            holder: "conformance".into(),
        })
        .await
        .unwrap();
    let ids = s
        .queue_forward(&QueueForwardParams {
            consumed: vec![
                QueueAckParams {
                    id: taken[0].id,
                    lease_token: taken[0].lease_token.clone(),
                },
                QueueAckParams {
                    id: taken[1].id,
                    lease_token: "not-the-current-lease".into(),
                },
            ],
            queue: "out".into(),
            payloads: vec![json!({"done": 1})],
            settled: Vec::new(),
            settle_within: Duration::ZERO,
        })
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(drain(s, "out").await, [json!({"done": 1})]);
    let left = s.queue_depth("in").await.unwrap();
    assert_eq!((left.ready, left.invisible), (0, 1));
}

/// A task created with `start` begins in the creating transaction: `StepsInProcess`, its root
/// steps `Enqueued` in the queues the routing names (announced to other processes where the
/// backend can), the whole way there in its audit trail. A repeat of its idempotency key
/// returns it without enqueueing anything again.
pub async fn task_create_can_start_the_task(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let t = template(
        "namespace: demo\nname: roots\nversion: 1.0.0\nsteps:\n\
         - {name: local, handler: noop}\n- {name: remote, handler: shell}\n\
         - {name: after, handler: noop, depends_on: [local, remote]}\n",
    );
    let record = s
        .template_register(&TemplateRegisterParams {
            template: t.to_definition(),
        })
        .await
        .unwrap();
    let params = TaskCreateParams {
        template_id: record.id,
        steps: t.step_specs(),
        context: json!({}),
        idempotency_key: Some("once".into()),
        priority: 0,
        instance_id: "conformance".into(),
        start: Some(local_noop()),
    };
    let mut announcements = store.wakeup_subscribe().await.unwrap();
    let created = s.task_create(&params).await.unwrap();
    if let Some(rx) = &mut announcements {
        // Other processes learn of the first steps' queues.
        let mut heard = Vec::new();
        while heard.len() < 2 {
            let queue = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("announcements within 10 s")
                .expect("listener alive");
            heard.push(queue);
        }
        heard.sort();
        assert_eq!(heard, ["demo", "local"]);
    }
    assert!(created.created);
    let task = created.task;
    assert_eq!(task.state, TaskState::StepsInProcess);
    assert_eq!(created.queues, ["demo", "local"]);
    for (name, state) in [
        ("local", StepState::Enqueued),
        ("remote", StepState::Enqueued),
        ("after", StepState::Pending),
    ] {
        assert_eq!(state_of(s, task.id, name).await, state, "{name}");
    }
    for (name, queue) in [("local", "local"), ("remote", "demo")] {
        let step = s.step_get(step_id(s, task.id, name).await).await.unwrap();
        assert_eq!(step.queue.as_deref(), Some(queue), "{name}");
        assert_eq!(ready(s, queue).await, 1, "{queue}");
    }
    let log = s.transition_list(task.id).await.unwrap();
    let task_path: Vec<_> = log
        .iter()
        .filter(|t| t.step_id.is_none())
        .map(|t| t.to_state.as_str())
        .collect();
    assert_eq!(
        task_path,
        [
            "Pending",
            "Initializing",
            "EnqueuingSteps",
            "StepsInProcess"
        ]
    );
    let enqueues = log.iter().filter(|t| t.event == "enqueue").count();
    assert_eq!(enqueues, 2);

    let again = s.task_create(&params).await.unwrap();
    assert!(!again.created && again.queues.is_empty());
    assert_eq!(again.task.id, task.id);
    assert_eq!(ready(s, "local").await, 1);
}

/// `demo/shipping@1.0.0`: `route` decides between `express` and `standard`; `pack` and
/// `label` follow `standard` only; `notify` joins `express` and `pack`; `mixed` follows
/// `route` and the root `side`.
fn shipping() -> tasker_template::TaskTemplate {
    template(
        "namespace: demo\nname: shipping\nversion: 1.0.0\nsteps:\n\
         - {name: route, handler: noop, decision: true}\n\
         - {name: side, handler: noop}\n\
         - {name: express, handler: noop, depends_on: [route]}\n\
         - {name: standard, handler: noop, depends_on: [route]}\n\
         - {name: pack, handler: noop, depends_on: [standard]}\n\
         - {name: label, handler: noop, depends_on: [pack]}\n\
         - {name: notify, handler: noop, depends_on: [express, pack]}\n\
         - {name: mixed, handler: noop, depends_on: [route, side]}\n",
    )
}

/// A decision's result skips the children it left out, and the skip travels down their
/// branch in the same transaction, audited, until a join another branch reaches: that join
/// runs once the chosen branch completes. A child left out that another parent chose runs.
/// A decision that chooses nothing skips every step that only it leads to.
pub async fn step_apply_results_skips_what_a_decision_left_out(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let task = create_task(s, &shipping(), None).await;
    let route = s
        .step_get(step_id(s, task.id, "route").await)
        .await
        .unwrap();
    assert_eq!(
        route.branches.as_deref(),
        Some(
            &[
                "express".to_owned(),
                "standard".to_owned(),
                "mixed".to_owned()
            ][..]
        )
    );
    running(s, &task).await;
    let decided = start(s, task.id, "route").await;
    let choice = StepResultApply {
        output: Some(json!({"next": ["express"]})),
        unchosen: vec!["standard".into(), "mixed".into()],
        ..success(task.id, decided)
    };
    let applied = s
        .step_apply_results(&apply(vec![choice], local_noop()))
        .await
        .unwrap();
    let mut skipped: Vec<&str> = applied
        .steps
        .iter()
        .filter(|st| st.state == StepState::Skipped)
        .map(|st| st.name.as_str())
        .collect();
    skipped.sort_unstable();
    assert_eq!(skipped, ["label", "pack", "standard"]);
    for (name, state) in [
        ("express", StepState::Enqueued),
        ("standard", StepState::Skipped),
        ("pack", StepState::Skipped),
        ("label", StepState::Skipped),
        ("notify", StepState::Pending),
        ("mixed", StepState::Pending),
    ] {
        assert_eq!(state_of(s, task.id, name).await, state, "{name}");
    }
    let log = s.transition_list(task.id).await.unwrap();
    let skips: Vec<(Option<String>, String, String)> = log
        .iter()
        .filter(|t| t.event == "skip")
        .map(|t| (t.from_state.clone(), t.to_state.clone(), t.event.clone()))
        .collect();
    assert_eq!(skips.len(), 3, "{log:?}");
    assert!(skips
        .iter()
        .all(|(from, to, _)| from.as_deref() == Some("Pending") && to == "Skipped"));

    // `mixed` was left out by `route` but `side` chooses it.
    let side = start(s, task.id, "side").await;
    s.step_apply_results(&apply(vec![success(task.id, side)], local_noop()))
        .await
        .unwrap();
    assert_eq!(state_of(s, task.id, "mixed").await, StepState::Enqueued);
    for name in ["express", "mixed"] {
        let ran = start(s, task.id, name).await;
        s.step_apply_results(&apply(vec![success(task.id, ran)], local_noop()))
            .await
            .unwrap();
    }
    assert_eq!(state_of(s, task.id, "notify").await, StepState::Enqueued);
    let notify = start(s, task.id, "notify").await;
    let last = s
        .step_apply_results(&apply(vec![success(task.id, notify)], local_noop()))
        .await
        .unwrap();
    assert_eq!(last.finished.len(), 1, "the task completes");
    assert_eq!(last.finished[0].state, TaskState::Complete);

    // Choosing nothing skips every step that only the decision leads to.
    let other = create_task(s, &shipping(), Some("choose-nothing")).await;
    running(s, &other).await;
    let side = start(s, other.id, "side").await;
    let decided = start(s, other.id, "route").await;
    let nothing = StepResultApply {
        output: Some(json!({"next": []})),
        unchosen: vec!["express".into(), "standard".into(), "mixed".into()],
        ..success(other.id, decided)
    };
    s.step_apply_results(&apply(vec![nothing], local_noop()))
        .await
        .unwrap();
    assert_eq!(state_of(s, other.id, "mixed").await, StepState::Pending);
    let done = s
        .step_apply_results(&apply(vec![success(other.id, side)], local_noop()))
        .await
        .unwrap();
    assert_eq!(state_of(s, other.id, "mixed").await, StepState::Enqueued);
    assert!(done.finished.is_empty());
    let steps = s.step_list(other.id).await.unwrap();
    let skipped = steps
        .iter()
        .filter(|st| st.state == StepState::Skipped)
        .count();
    assert_eq!(skipped, 5, "{steps:?}");
    let mixed = start(s, other.id, "mixed").await;
    let last = s
        .step_apply_results(&apply(vec![success(other.id, mixed)], local_noop()))
        .await
        .unwrap();
    assert_eq!(last.finished.len(), 1);
    assert_eq!(last.finished[0].state, TaskState::Complete);
}

/// `demo/charges@1.0.0`: `load`, then `charge` mapped over its `items` two at a time
/// (`on_failure` as given), then `total`.
fn charges(on_failure: &str) -> tasker_template::TaskTemplate {
    template(&format!(
        "namespace: demo\nname: charges-{on_failure}\nversion: 1.0.0\nsteps:\n\
         - {{name: load, handler: noop}}\n\
         - {{name: charge, handler: noop, depends_on: [load], \
             map: {{over: parents.load.items, max_parallel: 2, on_failure: {on_failure}}}}}\n\
         - {{name: total, handler: noop, depends_on: [charge]}}\n"
    ))
}

/// Runs `name` of `task` to the given end (`None`: success with output `n * 10`).
async fn finish(
    s: &dyn Store,
    task: TaskId,
    name: &str,
    n: i64,
    failure: bool,
) -> crate::ResultsApplied {
    let ran = start(s, task, name).await;
    let result = if failure {
        StepResultApply {
            event: StepEvent::Fail { will_retry: false },
            output: None,
            error: Some("declined".into()),
            ..success(task, ran)
        }
    } else {
        StepResultApply {
            output: Some(json!(n * 10)),
            ..success(task, ran)
        }
    };
    s.step_apply_results(&apply(vec![result], local_noop()))
        .await
        .unwrap()
}

/// A mapped step's expansion creates its instances, `Enqueued` up to `max_parallel` and the
/// rest waiting; each one that finishes starts the next; the last completes the mapped step
/// with their outputs in item order, its children run and the task completes. With
/// `on_failure: continue`, a failed instance contributes `null` and the task still completes.
pub async fn step_apply_results_expands_a_map_and_gathers_its_outputs(store: Arc<dyn Store>) {
    let s = store.as_ref();
    for on_failure in ["fail", "continue"] {
        let task = create_task(s, &charges(on_failure), None).await;
        running(s, &task).await;
        let load = start(s, task.id, "load").await;
        let loaded = StepResultApply {
            output: Some(json!({"items": ["a", "b", "c"]})),
            ..success(task.id, load)
        };
        s.step_apply_results(&apply(vec![loaded], local_noop()))
            .await
            .unwrap();
        let mapped = s
            .step_get(step_id(s, task.id, "charge").await)
            .await
            .unwrap();
        assert_eq!(mapped.state, StepState::Enqueued);
        assert_eq!(
            mapped.queue.as_deref(),
            Some("local"),
            "expanded in-process"
        );

        let expanding = start(s, task.id, "charge").await;
        let inputs: Vec<serde_json::Value> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(index, item)| json!({"item": item, "index": index}))
            .collect();
        let expand = StepResultApply {
            event: StepEvent::Expand,
            output: None,
            instances: inputs.clone(),
            ..success(task.id, expanding)
        };
        let applied = s
            .step_apply_results(&apply(vec![expand], local_noop()))
            .await
            .unwrap();
        assert_eq!(applied.queues, ["local"]);
        assert_eq!(state_of(s, task.id, "charge").await, StepState::Mapped);
        let steps = s.step_list(task.id).await.unwrap();
        let instances: Vec<_> = steps
            .iter()
            .filter(|st| st.map_instance.is_some())
            .collect();
        assert_eq!(instances.len(), 3);
        for (i, instance) in instances.iter().enumerate() {
            let expected = if i < 2 {
                StepState::Enqueued
            } else {
                StepState::Pending
            };
            assert_eq!(instance.name, format!("charge[{i}]"));
            assert_eq!(instance.state, expected, "{}", instance.name);
            let of = instance.map_instance.as_ref().unwrap();
            assert_eq!((of.of, of.input.clone()), (mapped.id, inputs[i].clone()));
        }

        finish(s, task.id, "charge[0]", 0, false).await;
        assert_eq!(
            state_of(s, task.id, "charge[2]").await,
            StepState::Enqueued,
            "a slot freed"
        );
        finish(s, task.id, "charge[1]", 1, on_failure == "continue").await;
        let last = finish(s, task.id, "charge[2]", 2, false).await;
        let gathered = s.step_get(mapped.id).await.unwrap();
        if on_failure == "fail" {
            assert_eq!(gathered.state, StepState::Complete, "{last:?}");
            assert_eq!(gathered.result, Some(json!([0, 10, 20])));
        } else {
            assert_eq!(gathered.state, StepState::Complete, "{last:?}");
            assert_eq!(gathered.result, Some(json!([0, null, 20])));
            assert_eq!(state_of(s, task.id, "charge[1]").await, StepState::Error);
        }
        let done = finish(s, task.id, "total", 0, false).await;
        assert_eq!(done.finished.len(), 1, "{on_failure}: the task completes");
        assert_eq!(done.finished[0].state, TaskState::Complete);
        let events: Vec<String> = s
            .transition_list(task.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|t| t.step_id == Some(mapped.id))
            .map(|t| t.event)
            .collect();
        assert_eq!(
            events,
            ["create", "enqueue", "start", "expand", "gather"],
            "{on_failure}"
        );
        drain(s, "evaluate").await;
    }
}

/// `task_count` counts tasks per state under the list's filters, and `step_progress_many`
/// counts each task's steps and those done with it (complete, resolved or skipped).
pub async fn task_count_and_step_progress(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let other = template(
        "namespace: etl\nname: load\nversion: 1.0.0\nsteps:\n- {name: a, handler: noop}\n",
    );
    let task = create_task(s, &diamond(), None).await;
    let idle = create_task(s, &diamond(), None).await;
    let etl = create_task(s, &other, None).await;
    running(s, &task).await;
    let first = start(s, task.id, "start").await;
    s.step_apply_results(&apply(vec![success(task.id, first)], local_noop()))
        .await
        .unwrap();

    let counts = s
        .task_count(&crate::TaskCountParams::default())
        .await
        .unwrap();
    let count_of = |state: TaskState| {
        counts
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(count_of(TaskState::Pending), 2, "{counts:?}");
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), 3, "{counts:?}");
    assert!(counts.iter().all(|(_, n)| *n > 0), "{counts:?}");
    let etl_only = s
        .task_count(&crate::TaskCountParams {
            namespace: Some("etl".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(etl_only, [(TaskState::Pending, 1)]);
    let none = s
        .task_count(&crate::TaskCountParams {
            created_before_ms: Some(0),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");

    let mut progress = s
        .step_progress_many(&[task.id, idle.id, etl.id, TaskId(i64::MAX)])
        .await
        .unwrap();
    progress.sort_by_key(|p| p.task_id);
    let seen: Vec<_> = progress
        .iter()
        .map(|p| (p.task_id, p.done, p.total))
        .collect();
    assert_eq!(
        seen,
        [(task.id, 1, 4), (idle.id, 0, 4), (etl.id, 0, 1)],
        "a task that does not exist has no row"
    );
    assert!(s.step_progress_many(&[]).await.unwrap().is_empty());
}
