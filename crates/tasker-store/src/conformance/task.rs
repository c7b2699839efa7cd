use std::{collections::HashSet, sync::Arc};

use tasker_types::{Entity, StepState, TaskEvent, TaskId, TaskState};

use crate::{
    conformance::{create_task, diamond, template},
    Store, StoreError, TaskCreateParams, TaskListParams, TaskTransitionParams,
    TemplateRegisterParams,
};

/// A diamond task is created `Pending` with 4 `Pending` steps in template order, 4 edges,
/// unfinished-parent counters 0/1/1/2, and 5 creation transitions (task + steps).
pub async fn task_create_writes_steps_edges_transitions(store: Arc<dyn Store>) {
    let task = create_task(store.as_ref(), &diamond(), None).await;
    assert_eq!(task.state, TaskState::Pending);
    assert_eq!(task.context, serde_json::json!({"n": 1}));
    assert_eq!(
        (task.namespace.as_str(), task.name.as_str()),
        ("demo", "diamond")
    );
    assert_eq!(store.task_get(task.id).await.unwrap(), task);

    let steps = store.step_list(task.id).await.unwrap();
    let names: Vec<_> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["start", "left", "right", "join"]);
    let parents: Vec<_> = steps.iter().map(|s| s.pending_parents).collect();
    assert_eq!(parents, [0, 1, 1, 2]);
    assert!(steps
        .iter()
        .all(|s| s.state == StepState::Pending && s.attempts == 0));
    assert!(steps
        .iter()
        .all(|s| s.max_attempts == 3 && s.handler == "noop"));

    let id = |name: &str| steps.iter().find(|s| s.name == name).unwrap().id;
    let edges: HashSet<_> = store
        .step_edges(task.id)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let expected: HashSet<_> = [
        (id("start"), id("left")),
        (id("start"), id("right")),
        (id("left"), id("join")),
        (id("right"), id("join")),
    ]
    .into_iter()
    .collect();
    assert_eq!(edges, expected);

    let log = store.transition_list(task.id).await.unwrap();
    assert_eq!(log.len(), 5);
    assert!(log
        .iter()
        .all(|t| t.from_state.is_none() && t.event == "create"));
    assert_eq!(log.iter().filter(|t| t.entity == Entity::Task).count(), 1);
}

/// A repeated idempotency key for the same template returns the existing task with
/// `created == false`; another key or no key creates a new task; an unknown template id is
/// `NotFound`.
pub async fn task_create_is_idempotent_per_key(store: Arc<dyn Store>) {
    let t = diamond();
    let rec = store
        .template_register(&TemplateRegisterParams {
            template: t.to_definition(),
        })
        .await
        .unwrap();
    let params = |key: Option<&str>| TaskCreateParams {
        template_id: rec.id,
        steps: t.step_specs(),
        context: serde_json::json!({}),
        idempotency_key: key.map(str::to_owned),
        priority: 0,
        instance_id: "conformance".into(),
        start: None,
    };
    let first = store.task_create(&params(Some("k1"))).await.unwrap();
    assert!(first.created);
    let again = store.task_create(&params(Some("k1"))).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.task.id, first.task.id);
    assert_eq!(store.step_list(first.task.id).await.unwrap().len(), 4);
    let other = store.task_create(&params(Some("k2"))).await.unwrap();
    assert!(other.created && other.task.id != first.task.id);
    let a = store.task_create(&params(None)).await.unwrap();
    let b = store.task_create(&params(None)).await.unwrap();
    assert!(a.created && b.created && a.task.id != b.task.id);

    let mut unknown = params(None);
    unknown.template_id = rec.id + 1000;
    let err = store.task_create(&unknown).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                entity: "template",
                ..
            }
        ),
        "{err}"
    );
}

/// A fan-out of 2,500 steps (more rows than one multi-row insert carries) is created whole.
pub async fn task_create_large_task_in_chunks(store: Arc<dyn Store>) {
    let mut yaml = String::from(
        "namespace: big\nname: fan\nversion: 1.0.0\nsteps:\n- {name: root, handler: noop}\n",
    );
    for i in 0..2_499 {
        yaml.push_str(&format!(
            "- {{name: s{i}, handler: noop, depends_on: [root]}}\n"
        ));
    }
    let task = create_task(store.as_ref(), &template(&yaml), None).await;
    let steps = store.step_list(task.id).await.unwrap();
    assert_eq!(steps.len(), 2_500);
    assert_eq!(store.step_edges(task.id).await.unwrap().len(), 2_499);
    assert_eq!(store.transition_list(task.id).await.unwrap().len(), 2_501);
}

fn move_task(id: TaskId, from: TaskState, event: TaskEvent) -> TaskTransitionParams {
    TaskTransitionParams {
        task_id: id,
        from,
        event,
        reason: Some("test".into()),
        instance_id: "conformance".into(),
    }
}

/// A task transition succeeds only from the state the caller names; a stale from-state is
/// `StaleState`, an illegal event `Transition`, an unknown task `NotFound`. Each success appends
/// exactly one audit row; failures append none.
pub async fn task_transition_is_compare_and_swap(store: Arc<dyn Store>) {
    let task = create_task(store.as_ref(), &diamond(), None).await;
    let moved = store
        .task_transition(&move_task(
            task.id,
            TaskState::Pending,
            TaskEvent::Initialize,
        ))
        .await
        .unwrap();
    assert_eq!(moved.state, TaskState::Initializing);
    assert!(moved.finished_at_ms.is_none());

    let stale = store
        .task_transition(&move_task(
            task.id,
            TaskState::Pending,
            TaskEvent::Initialize,
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&stale, StoreError::StaleState { actual, .. } if actual == "Initializing"),
        "{stale}"
    );
    let illegal = store
        .task_transition(&move_task(
            task.id,
            TaskState::Initializing,
            TaskEvent::Complete,
        ))
        .await
        .unwrap_err();
    assert!(matches!(illegal, StoreError::Transition(_)), "{illegal}");
    let missing = store
        .task_transition(&move_task(
            TaskId(999_999),
            TaskState::Pending,
            TaskEvent::Initialize,
        ))
        .await
        .unwrap_err();
    assert!(matches!(missing, StoreError::NotFound { .. }), "{missing}");

    let cancelled = store
        .task_transition(&move_task(
            task.id,
            TaskState::Initializing,
            TaskEvent::Cancel,
        ))
        .await
        .unwrap();
    assert_eq!(cancelled.state, TaskState::Cancelled);
    assert!(cancelled.finished_at_ms.is_some());

    let log: Vec<_> = store
        .transition_list(task.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.entity == Entity::Task)
        .map(|t| (t.from_state, t.to_state, t.event))
        .collect();
    assert_eq!(
        log,
        [
            (None, "Pending".into(), "create".into()),
            (
                Some("Pending".into()),
                "Initializing".into(),
                "initialize".into()
            ),
            (
                Some("Initializing".into()),
                "Cancelled".into(),
                "cancel".into()
            ),
        ]
    );
}

/// `task_list` filters by state, namespace, name and creation time, returns newest first and
/// pages by id.
pub async fn task_list_filters_and_pages(store: Arc<dyn Store>) {
    let d = diamond();
    let other = template(
        "namespace: etl\nname: load\nversion: 1.0.0\nsteps:\n- {name: a, handler: noop}\n",
    );
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(create_task(store.as_ref(), &d, None).await.id);
    }
    create_task(store.as_ref(), &other, None).await;
    store
        .task_transition(&move_task(ids[0], TaskState::Pending, TaskEvent::Cancel))
        .await
        .unwrap();

    let all = store
        .task_list(&TaskListParams {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 6);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");

    let demo = TaskListParams {
        namespace: Some("demo".into()),
        name: Some("diamond".into()),
        limit: 2,
        ..Default::default()
    };
    let page1 = store.task_list(&demo).await.unwrap();
    assert_eq!(
        page1.iter().map(|t| t.id).collect::<Vec<_>>(),
        [ids[4], ids[3]]
    );
    let page2 = store
        .task_list(&TaskListParams {
            before_id: Some(ids[3]),
            ..demo.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|t| t.id).collect::<Vec<_>>(),
        [ids[2], ids[1]]
    );

    let cancelled = store
        .task_list(&TaskListParams {
            state: Some(TaskState::Cancelled),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(cancelled.iter().map(|t| t.id).collect::<Vec<_>>(), [ids[0]]);

    // `all` is newest first: its first task was created last.
    let newest = all.iter().map(|t| t.created_at_ms).max().unwrap();
    let window = |after: Option<i64>, before: Option<i64>| TaskListParams {
        created_after_ms: after,
        created_before_ms: before,
        limit: 100,
        ..Default::default()
    };
    let in_window = store.task_list(&window(Some(newest), None)).await.unwrap();
    assert!(in_window.iter().all(|t| t.created_at_ms >= newest));
    assert!(in_window.iter().any(|t| t.id == all[0].id));
    let before_epoch = store.task_list(&window(None, Some(0))).await.unwrap();
    assert!(before_epoch.is_empty());
    let everything = store
        .task_list(&window(Some(0), Some(newest + 1)))
        .await
        .unwrap();
    assert_eq!(everything.len(), 6);
}

/// A claim is exclusive while its lease holds and its instance is registered: a second
/// claimer is refused, the holder may renew, a release frees it, an expired lease lets another
/// claimer take over, and so does its instance's leaving.
pub async fn task_claim_is_exclusive_until_released_or_expired(store: Arc<dyn Store>) {
    use crate::{
        conformance::eventually, InstanceRegisterParams, TaskClaimParams, TaskReleaseParams,
    };
    let task = create_task(store.as_ref(), &diamond(), None).await;
    for id in ["instance-a", "instance-b"] {
        store
            .instance_register(&InstanceRegisterParams {
                id: id.into(),
                host: "host".into(),
                pid: 1,
                version: "0".into(),
                connections: 1,
            })
            .await
            .unwrap();
    }
    let claim = |who: &str, lease_ms: u64| TaskClaimParams {
        task_id: task.id,
        claimer: who.into(),
        instance_id: format!("instance-{who}"),
        lease: std::time::Duration::from_millis(lease_ms),
    };
    let release = |who: &str| TaskReleaseParams {
        task_id: task.id,
        claimer: who.into(),
    };
    assert!(store.task_claim(&claim("a", 60_000)).await.unwrap());
    assert!(
        !store.task_claim(&claim("b", 60_000)).await.unwrap(),
        "held by a"
    );
    assert!(
        store.task_claim(&claim("a", 60_000)).await.unwrap(),
        "a renews"
    );
    assert!(
        !store.task_release(&release("b")).await.unwrap(),
        "b holds nothing"
    );
    assert!(store.task_release(&release("a")).await.unwrap());
    assert!(
        store.task_claim(&claim("b", 200)).await.unwrap(),
        "free after release"
    );
    assert!(!store.task_claim(&claim("a", 60_000)).await.unwrap());
    eventually(
        std::time::Duration::from_secs(10),
        "b's lease to expire",
        || async {
            store
                .task_claim(&claim("a", 60_000))
                .await
                .unwrap()
                .then_some(())
        },
    )
    .await;
    assert!(
        !store.task_release(&release("b")).await.unwrap(),
        "b's claim was taken over"
    );
    // a's instance leaves (or is declared dead): its claim is free before its lease ends.
    assert!(!store.task_claim(&claim("b", 60_000)).await.unwrap());
    store.instance_deregister("instance-a").await.unwrap();
    assert!(
        store.task_claim(&claim("b", 60_000)).await.unwrap(),
        "a's instance is gone"
    );
    let unknown = TaskClaimParams {
        task_id: TaskId(999_999),
        ..claim("a", 1000)
    };
    assert!(!store.task_claim(&unknown).await.unwrap());
}

/// `task_create_many` creates every task in one transaction, answering in request order and
/// honouring idempotency keys, also a key repeated within the batch; one bad request (an
/// unknown template) creates none of them.
pub async fn task_create_many_is_all_or_nothing(store: Arc<dyn Store>) {
    let t = diamond();
    let rec = store
        .template_register(&TemplateRegisterParams {
            template: t.to_definition(),
        })
        .await
        .unwrap();
    let params = |template_id: i64, key: &str| TaskCreateParams {
        template_id,
        steps: t.step_specs(),
        context: serde_json::json!({ "key": key }),
        idempotency_key: Some(key.to_owned()),
        priority: 0,
        instance_id: "conformance".into(),
        start: None,
    };
    let first = store.task_create(&params(rec.id, "a")).await.unwrap();
    let many = store
        .task_create_many(&[
            params(rec.id, "b"),
            params(rec.id, "a"),
            params(rec.id, "c"),
        ])
        .await
        .unwrap();
    let keys: Vec<_> = many
        .iter()
        .map(|c| (c.task.idempotency_key.clone().unwrap(), c.created))
        .collect();
    assert_eq!(
        keys,
        [("b".into(), true), ("a".into(), false), ("c".into(), true)]
    );
    assert_eq!(many[1].task.id, first.task.id);
    for created in &many {
        assert_eq!(store.step_list(created.task.id).await.unwrap().len(), 4);
    }

    // The same key twice in one batch: one task; requests without a key: one task each.
    let mut unkeyed = params(rec.id, "-");
    unkeyed.idempotency_key = None;
    let repeated = store
        .task_create_many(&[
            params(rec.id, "x"),
            unkeyed.clone(),
            params(rec.id, "x"),
            unkeyed,
        ])
        .await
        .unwrap();
    let created: Vec<_> = repeated.iter().map(|c| c.created).collect();
    assert_eq!(created, [true, true, false, true]);
    assert_eq!(repeated[0].task.id, repeated[2].task.id);
    assert_ne!(repeated[1].task.id, repeated[3].task.id);

    let refused = store
        .task_create_many(&[params(rec.id, "d"), params(rec.id + 1000, "e")])
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::NotFound { .. }), "{refused}");
    let all = store
        .task_list(&TaskListParams {
            limit: 100,
            ..TaskListParams::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 6, "the refused batch created nothing");
}
