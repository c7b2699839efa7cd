use std::{sync::Arc, time::Duration};

use tasker_types::{settle, StepEvent, StepId, StepRow, StepState, TaskId};

use crate::{
    conformance::claim,
    conformance::{create_task, diamond, template},
    StepEnqueueManyParams, StepTransitionParams, StepViableManyParams, Store, StoreError,
};

fn step_move(step: StepId, from: StepState, event: StepEvent) -> StepTransitionParams {
    StepTransitionParams {
        step_id: step,
        from,
        event,
        output: None,
        error: None,
        backoff: None,
        instance_id: "conformance".into(),
        attempt: None,
    }
}

async fn viable(store: &dyn Store, task: TaskId) -> Vec<String> {
    store
        .step_viable_many(&StepViableManyParams {
            task_id: task,
            limit: 100,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect()
}

async fn by_name(store: &dyn Store, task: TaskId, name: &str) -> StepRow {
    store
        .step_list(task)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap()
}

/// Runs one step through Enqueue, Start and Complete (with `output`).
async fn run_step(store: &dyn Store, step: StepId, output: serde_json::Value) -> StepRow {
    for (from, event) in [
        (StepState::Pending, StepEvent::Enqueue),
        (StepState::Enqueued, StepEvent::Start),
    ] {
        store
            .step_transition(&step_move(step, from, event))
            .await
            .unwrap();
    }
    let mut done = step_move(step, StepState::InProgress, StepEvent::Complete);
    done.output = Some(output);
    store.step_transition(&done).await.unwrap()
}

/// In a diamond, only `start` is viable at first; once it completes `left` and `right` are;
/// `join` becomes viable only after both complete, and sees both parents' outputs. Completion records the output, one attempt,
/// start and finish times.
pub async fn step_readiness_follows_completed_parents(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let task = create_task(s, &diamond(), None).await;
    assert_eq!(viable(s, task.id).await, ["start"]);

    let start = by_name(s, task.id, "start").await;
    let done = run_step(s, start.id, serde_json::json!({"ok": true})).await;
    assert_eq!(done.state, StepState::Complete);
    assert_eq!(done.attempts, 1);
    assert_eq!(done.result, Some(serde_json::json!({"ok": true})));
    assert!(done.started_at_ms.is_some() && done.finished_at_ms.is_some());
    assert_eq!(viable(s, task.id).await, ["left", "right"]);

    let left = by_name(s, task.id, "left").await;
    run_step(s, left.id, serde_json::json!(1)).await;
    assert_eq!(viable(s, task.id).await, ["right"]);
    assert_eq!(by_name(s, task.id, "join").await.pending_parents, 1);

    let right = by_name(s, task.id, "right").await;
    run_step(s, right.id, serde_json::json!(2)).await;
    assert_eq!(viable(s, task.id).await, ["join"]);

    let join = by_name(s, task.id, "join").await;
    s.step_enqueue_many(&StepEnqueueManyParams {
        task_id: task.id,
        steps: vec![(join.id, StepState::Pending)],
        queue: "joins".into(),
        instance_id: "conformance".into(),
    })
    .await
    .unwrap();
    let started = claim(s, "joins", 10, Duration::from_secs(30)).await;
    assert_eq!(
        started[0].parents,
        [
            ("left".to_owned(), Some(serde_json::json!(1))),
            ("right".to_owned(), Some(serde_json::json!(2)))
        ]
    );
}

/// The viable-steps query is the index-shaped form of [`settle::is_viable`]: over steps in
/// every state (retries due and not due, attempts spent, parents finished and not), it returns
/// exactly the steps that function accepts, in position order.
pub async fn step_viable_query_agrees_with_settlement(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let t = template(
        "namespace: demo\nname: viable\nversion: 1.0.0\nsteps:\n\
         - {name: pending, handler: noop}\n- {name: enqueued, handler: noop}\n\
         - {name: running, handler: noop}\n- {name: complete, handler: noop}\n\
         - {name: retry_due, handler: noop}\n- {name: retry_later, handler: noop}\n\
         - {name: error, handler: noop}\n\
         - {name: spent, handler: noop, retry: {max_attempts: 1}}\n\
         - {name: after_complete, handler: noop, depends_on: [complete]}\n\
         - {name: after_pending, handler: noop, depends_on: [pending]}\n\
         - {name: after_both, handler: noop, depends_on: [complete, retry_due]}\n",
    );
    let task = create_task(s, &t, None).await;
    // Each step's moves from Pending, and the backoff of its failure.
    type Moves = &'static [(StepState, StepEvent)];
    const RETRY: StepEvent = StepEvent::Fail { will_retry: true };
    let plan: [(&str, Moves, Duration); 7] = [
        (
            "enqueued",
            &[(StepState::Pending, StepEvent::Enqueue)],
            Duration::ZERO,
        ),
        (
            "running",
            &[
                (StepState::Pending, StepEvent::Enqueue),
                (StepState::Enqueued, StepEvent::Start),
            ],
            Duration::ZERO,
        ),
        (
            "complete",
            &[
                (StepState::Pending, StepEvent::Enqueue),
                (StepState::Enqueued, StepEvent::Start),
                (StepState::InProgress, StepEvent::Complete),
            ],
            Duration::ZERO,
        ),
        (
            "retry_due",
            &[
                (StepState::Pending, StepEvent::Enqueue),
                (StepState::Enqueued, StepEvent::Start),
                (StepState::InProgress, RETRY),
            ],
            Duration::ZERO,
        ),
        (
            "retry_later",
            &[
                (StepState::Pending, StepEvent::Enqueue),
                (StepState::Enqueued, StepEvent::Start),
                (StepState::InProgress, RETRY),
            ],
            Duration::from_secs(3600),
        ),
        (
            "error",
            &[
                (StepState::Pending, StepEvent::Enqueue),
                (StepState::Enqueued, StepEvent::Start),
                (StepState::InProgress, StepEvent::Fail { will_retry: false }),
            ],
            Duration::ZERO,
        ),
        (
            "spent",
            &[
                (StepState::Pending, StepEvent::Enqueue),
                (StepState::Enqueued, StepEvent::Start),
                (StepState::InProgress, RETRY),
            ],
            Duration::ZERO,
        ),
    ];
    for (name, moves, backoff) in plan {
        let step = by_name(s, task.id, name).await;
        for &(from, event) in moves {
            let mut params = step_move(step.id, from, event);
            if matches!(event, StepEvent::Fail { will_retry: true }) {
                params.backoff = Some(backoff);
            }
            s.step_transition(&params).await.unwrap();
        }
    }
    // The database and this test share a machine; a minute's margin either way keeps "due now"
    // due and "due in an hour" not.
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
        + 60_000;
    let expected: Vec<String> = s
        .step_list(task.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|step| settle::is_viable(step, now))
        .map(|step| step.name)
        .collect();
    assert_eq!(expected, ["pending", "retry_due", "after_complete"]);
    assert_eq!(viable(s, task.id).await, expected);
}

/// A retryable failure waits for its retry time (a step due now is viable again, one due in an
/// hour is not); a permanent failure is `Error`, which only an operator's `Retry` (attempts reset)
/// or `ResolveManually` (children unblocked) leaves.
pub async fn step_retry_and_error_paths(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let t = template(
        "namespace: demo\nname: retry\nversion: 1.0.0\nsteps:\n\
         - {name: now, handler: noop}\n- {name: later, handler: noop}\n\
         - {name: after, handler: noop, depends_on: [later]}\n",
    );
    let task = create_task(s, &t, None).await;
    for (name, delay) in [
        ("now", Duration::ZERO),
        ("later", Duration::from_secs(3600)),
    ] {
        let step = by_name(s, task.id, name).await;
        s.step_transition(&step_move(step.id, StepState::Pending, StepEvent::Enqueue))
            .await
            .unwrap();
        s.step_transition(&step_move(step.id, StepState::Enqueued, StepEvent::Start))
            .await
            .unwrap();
        let mut fail = step_move(
            step.id,
            StepState::InProgress,
            StepEvent::Fail { will_retry: true },
        );
        fail.error = Some("boom".into());
        fail.backoff = Some(delay);
        let failed = s.step_transition(&fail).await.unwrap();
        assert_eq!(failed.state, StepState::WaitingForRetry);
        assert_eq!(failed.last_error.as_deref(), Some("boom"));
        assert!(failed.next_attempt_at_ms.is_some());
        assert!(failed.finished_at_ms.is_none());
    }
    assert_eq!(viable(s, task.id).await, ["now"]);

    let later = by_name(s, task.id, "later").await;
    s.step_transition(&step_move(
        later.id,
        StepState::WaitingForRetry,
        StepEvent::Enqueue,
    ))
    .await
    .unwrap();
    s.step_transition(&step_move(later.id, StepState::Enqueued, StepEvent::Start))
        .await
        .unwrap();
    let errored = s
        .step_transition(&step_move(
            later.id,
            StepState::InProgress,
            StepEvent::Fail { will_retry: false },
        ))
        .await
        .unwrap();
    assert_eq!((errored.state, errored.attempts), (StepState::Error, 2));
    assert!(errored.finished_at_ms.is_some());
    let refused = s
        .step_transition(&step_move(later.id, StepState::Error, StepEvent::Enqueue))
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::Transition(_)), "{refused}");

    let retried = s
        .step_transition(&step_move(later.id, StepState::Error, StepEvent::Retry))
        .await
        .unwrap();
    assert_eq!((retried.state, retried.attempts), (StepState::Pending, 0));
    assert!(retried.finished_at_ms.is_none());
    assert_eq!(viable(s, task.id).await, ["now", "later"]);

    s.step_transition(&step_move(later.id, StepState::Pending, StepEvent::Enqueue))
        .await
        .unwrap();
    s.step_transition(&step_move(later.id, StepState::Enqueued, StepEvent::Start))
        .await
        .unwrap();
    s.step_transition(&step_move(
        later.id,
        StepState::InProgress,
        StepEvent::Fail { will_retry: false },
    ))
    .await
    .unwrap();
    let resolved = s
        .step_transition(&step_move(
            later.id,
            StepState::Error,
            StepEvent::ResolveManually,
        ))
        .await
        .unwrap();
    assert_eq!(resolved.state, StepState::ResolvedManually);
    assert_eq!(viable(s, task.id).await, ["now", "after"]);
}

/// Two actors moving the same step from the same state: exactly one wins, the other gets
/// `StaleState` naming the state it found; a move fenced to another attempt is `StaleState`
/// too; an unknown step is `NotFound`.
pub async fn step_transition_is_compare_and_swap(store: Arc<dyn Store>) {
    let task = create_task(store.as_ref(), &diamond(), None).await;
    let start = by_name(store.as_ref(), task.id, "start").await;
    let attempts = (0..2).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .step_transition(&step_move(start.id, StepState::Pending, StepEvent::Enqueue))
                .await
        })
    });
    let results = futures::future::join_all(attempts).await;
    let (won, lost): (Vec<_>, Vec<_>) = results
        .into_iter()
        .map(|r| r.unwrap())
        .partition(Result::is_ok);
    assert_eq!((won.len(), lost.len()), (1, 1));
    let err = lost.into_iter().next().unwrap().unwrap_err();
    assert!(
        matches!(&err, StoreError::StaleState { actual, .. } if actual == "Enqueued"),
        "{err}"
    );
    // A move fenced to an attempt the step is not in is refused the same way.
    store
        .step_transition(&step_move(start.id, StepState::Enqueued, StepEvent::Start))
        .await
        .unwrap();
    let mut fenced = step_move(start.id, StepState::InProgress, StepEvent::Complete);
    fenced.attempt = Some(7);
    let err = store.step_transition(&fenced).await.unwrap_err();
    assert!(matches!(err, StoreError::StaleState { .. }), "{err}");
    fenced.attempt = Some(1);
    assert_eq!(
        store.step_transition(&fenced).await.unwrap().state,
        StepState::Complete
    );
    let missing = store
        .step_transition(&step_move(
            StepId(987_654),
            StepState::Pending,
            StepEvent::Enqueue,
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(missing, StoreError::NotFound { entity: "step", .. }),
        "{missing}"
    );
    let enqueues = store
        .transition_list(task.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.step_id == Some(start.id) && t.event == "enqueue")
        .count();
    assert_eq!(enqueues, 1);
}

/// `step_enqueue_many` marks viable steps `Enqueued` in the given queue and writes their audit
/// rows; steps that are no longer in the stated state are skipped, and wait nowhere.
pub async fn step_enqueue_many_queues_in_one_transaction(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let task = create_task(s, &diamond(), None).await;
    let start = by_name(s, task.id, "start").await;
    let join = by_name(s, task.id, "join").await;
    let params = StepEnqueueManyParams {
        task_id: task.id,
        steps: vec![
            (start.id, StepState::Pending),
            (join.id, StepState::Pending),
        ],
        queue: "demo".into(),
        instance_id: "conformance".into(),
    };
    // `join` still has unfinished parents: only `start` is enqueued.
    assert_eq!(s.step_enqueue_many(&params).await.unwrap(), [start.id]);
    assert_eq!(
        by_name(s, task.id, "start").await.state,
        StepState::Enqueued
    );
    assert_eq!(by_name(s, task.id, "join").await.state, StepState::Pending);
    // A second enqueue of the same step finds it moved on and publishes nothing.
    assert!(s.step_enqueue_many(&params).await.unwrap().is_empty());

    assert_eq!(
        by_name(s, task.id, "start").await.queue.as_deref(),
        Some("demo")
    );
    assert_eq!(s.queue_depth("demo").await.unwrap().ready, 1);
    let claimed = claim(s, "demo", 10, Duration::from_secs(30)).await;
    let ids: Vec<StepId> = claimed.iter().map(|c| c.step.id).collect();
    assert_eq!(ids, [start.id]);
    let enqueue_rows = s
        .transition_list(task.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.event == "enqueue")
        .count();
    assert_eq!(enqueue_rows, 1);
}
