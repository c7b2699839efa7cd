//! The cluster's instances: registration, heartbeats, the leases each holds, the leadership
//! and the leader-only changes (failover, retention).

use std::{sync::Arc, time::Duration};

use tasker_types::{InstanceState, TaskEvent, TaskState};

use super::{
    claims::enqueue,
    results::{running, walk},
};
use crate::{
    conformance::{create_task, dead_in, template},
    InstanceHeartbeatParams, InstanceRegisterParams, RetentionSweepParams, RetentionSwept,
    StepClaimParams, Store,
};

fn register(id: &str) -> InstanceRegisterParams {
    InstanceRegisterParams {
        id: id.into(),
        host: "host-1".into(),
        pid: 4242,
        version: "0.1.0".into(),
        connections: 12,
    }
}

/// Instances register `Running`, heartbeat (with their state) on the database clock, list
/// oldest first, and once deregistered their heartbeat says so.
pub async fn instance_register_heartbeat_list_deregister(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let a = s.instance_register(&register("a")).await.unwrap();
    assert_eq!((a.id.as_str(), a.state), ("a", InstanceState::Running));
    assert_eq!(
        (a.host.as_str(), a.pid, a.version.as_str(), a.connections),
        ("host-1", 4242, "0.1.0", 12)
    );
    assert!(a.heartbeat_at_ms <= a.read_at_ms && a.started_at_ms <= a.heartbeat_at_ms);
    assert_eq!(a.leases, 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.instance_register(&register("b")).await.unwrap();
    let ids: Vec<String> = s
        .instance_list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, ["a", "b"], "oldest first");

    tokio::time::sleep(Duration::from_millis(20)).await;
    let beat = InstanceHeartbeatParams {
        id: "a".into(),
        state: InstanceState::Draining,
    };
    assert!(s.instance_heartbeat(&beat).await.unwrap());
    let after = s
        .instance_list()
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.id == "a")
        .unwrap();
    assert_eq!(after.state, InstanceState::Draining);
    assert!(
        after.heartbeat_at_ms > a.heartbeat_at_ms,
        "the heartbeat moved"
    );
    assert_eq!(after.started_at_ms, a.started_at_ms);

    s.instance_deregister("a").await.unwrap();
    assert!(
        !s.instance_heartbeat(&beat).await.unwrap(),
        "no longer registered"
    );
    let again = s.instance_register(&register("a")).await.unwrap();
    assert_eq!(again.state, InstanceState::Running, "registers again");
    assert_eq!(s.instance_list().await.unwrap().len(), 2);
}

/// A claim records who holds each lease; releasing a holder's leases makes exactly its running
/// steps claimable at once (their next claimer reports the attempts lost) and frees its task
/// claims, and the instance list counts the step leases each instance holds.
pub async fn instance_release_leases_frees_what_it_holds_only(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let t = template(
        "namespace: demo\nname: held\nversion: 1.0.0\nsteps:\n\
         - {name: a1, handler: noop}\n- {name: a2, handler: noop}\n- {name: b1, handler: noop}\n",
    );
    let task = create_task(s, &t, None).await;
    running(s, &task).await;
    for (name, queue) in [("a1", "qa"), ("a2", "qa"), ("b1", "qb")] {
        enqueue(s, task.id, name, queue).await;
    }
    let claim = |queue: &str, holder: &str| StepClaimParams {
        queue: queue.into(),
        max: 10,
        lease: Duration::from_secs(300),
        handlers: None,
        instance_id: "conformance".into(),
        holder: holder.into(),
    };
    s.instance_register(&register("a")).await.unwrap();
    s.instance_register(&register("b")).await.unwrap();
    assert_eq!(s.step_claim(&claim("qa", "a")).await.unwrap().len(), 2);
    assert_eq!(s.step_claim(&claim("qb", "b")).await.unwrap().len(), 1);
    let leases: Vec<(String, u64)> = s
        .instance_list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.id, i.leases))
        .collect();
    assert_eq!(leases, [("a".to_owned(), 2), ("b".to_owned(), 1)]);
    // a also claims the task.
    let claim_task = |instance: &str| crate::TaskClaimParams {
        task_id: task.id,
        claimer: format!("{instance}/claimer"),
        instance_id: instance.into(),
        lease: Duration::from_secs(300),
    };
    assert!(s.task_claim(&claim_task("a")).await.unwrap());
    assert!(!s.task_claim(&claim_task("b")).await.unwrap(), "a holds it");

    assert_eq!(
        s.instance_release_leases("a").await.unwrap(),
        3,
        "two steps and a task claim"
    );
    assert!(
        s.task_claim(&claim_task("b")).await.unwrap(),
        "a's claim was released, though a is still registered"
    );
    assert_eq!(
        s.instance_release_leases("a").await.unwrap(),
        0,
        "nothing left"
    );
    let taken = s.step_claim(&claim("qa", "c")).await.unwrap();
    assert_eq!(taken.len(), 2);
    assert!(
        taken.iter().all(|c| c.lease_ran_out),
        "their attempts were lost"
    );
    assert!(
        s.step_claim(&claim("qb", "c")).await.unwrap().is_empty(),
        "b's lease holds"
    );
}

/// One leader at a time: the leadership is taken when free (each holding with the next
/// epoch), renewed in the same epoch, taken over once it lapses, given up at once; only the
/// leader in its epoch can fail the silent instances over.
pub async fn leadership_is_exclusive_and_fences_failover(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let short = Duration::from_millis(300);
    assert_eq!(s.leader_get().await.unwrap().leader(), None);
    assert_eq!(s.leader_acquire("a", short).await.unwrap(), Some(1));
    assert_eq!(s.leader_acquire("b", short).await.unwrap(), None, "a leads");
    assert_eq!(
        s.leader_acquire("a", short).await.unwrap(),
        Some(1),
        "renewed"
    );
    let lease = s.leader_get().await.unwrap();
    assert_eq!((lease.leader(), lease.epoch), (Some("a"), 1));

    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(s.leader_get().await.unwrap().leader(), None, "lapsed");
    // Held long enough that the failover below, however slow the machine, runs in epoch 2.
    assert_eq!(
        s.leader_acquire("b", Duration::from_secs(30))
            .await
            .unwrap(),
        Some(2),
        "taken over"
    );
    assert_eq!(s.leader_acquire("a", short).await.unwrap(), None);

    // A silent instance holding a lease: only the leader, in its epoch, fails it over.
    let t = template(
        "namespace: demo\nname: lead\nversion: 1.0.0\nsteps:\n- {name: only, handler: noop}\n",
    );
    let task = create_task(s, &t, None).await;
    running(s, &task).await;
    enqueue(s, task.id, "only", "lead").await;
    s.instance_register(&register("c")).await.unwrap();
    s.instance_register(&register("b")).await.unwrap();
    let claim = StepClaimParams {
        queue: "lead".into(),
        max: 1,
        lease: Duration::from_secs(300),
        handlers: None,
        instance_id: "conformance".into(),
        holder: "c".into(),
    };
    assert_eq!(s.step_claim(&claim).await.unwrap().len(), 1);
    // c also holds a message delivery, for five minutes.
    s.queue_enqueue_many(&crate::QueueEnqueueManyParams {
        queue: "lead-messages".into(),
        payloads: vec![serde_json::json!("held by c")],
        delay: Duration::ZERO,
    })
    .await
    .unwrap();
    let deliver = |holder: &str| crate::QueueDequeueParams {
        queue: "lead-messages".into(),
        max: 1,
        visibility_timeout: Duration::from_secs(300),
        max_deliveries: 5,
        holder: holder.into(),
    };
    assert_eq!(s.queue_dequeue(&deliver("c")).await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.leader_acquire("b", Duration::from_secs(30))
        .await
        .unwrap();
    let dead_after = Duration::from_millis(100);
    assert!(
        s.instance_fail_over("a", 1, dead_after)
            .await
            .unwrap()
            .is_empty(),
        "a no longer leads"
    );
    assert!(
        s.instance_fail_over("b", 1, dead_after)
            .await
            .unwrap()
            .is_empty(),
        "b's epoch is 2"
    );
    assert_eq!(
        s.instance_fail_over("b", 2, dead_after).await.unwrap(),
        [("c".to_owned(), 2)],
        "c is silent (a step lease and a delivery); the leader itself is not declared dead"
    );
    let ids: Vec<String> = s
        .instance_list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, ["b"]);
    let taken = s
        .step_claim(&StepClaimParams {
            holder: "b".into(),
            ..claim
        })
        .await
        .unwrap();
    assert!(taken[0].lease_ran_out, "c's lease was released");
    let again = s.queue_dequeue(&deliver("b")).await.unwrap();
    assert_eq!(again.len(), 1, "c's delivery was ended");
    assert_eq!(again[0].deliveries, 2, "the lost delivery still counts");

    s.leader_release("b").await.unwrap();
    assert_eq!(s.leader_get().await.unwrap().leader(), None, "given up");
    assert_eq!(s.leader_acquire("a", short).await.unwrap(), Some(3));
}

/// Retention, leader-only, a batch a call: finished tasks older than `complete` go with their
/// steps, edges and audit rows, tasks in `Error` older than `error` likewise, old dead letters
/// too; running tasks and what a `None` keeps stay.
pub async fn retention_sweep_deletes_what_is_kept_no_longer(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let t = template(
        "namespace: demo\nname: old\nversion: 1.0.0\nsteps:\n\
         - {name: a, handler: noop}\n- {name: b, handler: noop, depends_on: [a]}\n",
    );
    let done = [
        create_task(s, &t, Some("done-1")).await,
        create_task(s, &t, Some("done-2")).await,
    ];
    let failed = create_task(s, &t, Some("failed")).await;
    let live = create_task(s, &t, Some("live")).await;
    let to_running = [
        TaskEvent::Initialize,
        TaskEvent::BeginEnqueue,
        TaskEvent::StepsEnqueued,
        TaskEvent::StepResultReceived,
    ];
    for task in &done {
        walk(s, task.id, TaskState::Pending, &to_running).await;
        walk(
            s,
            task.id,
            TaskState::EvaluatingResults,
            &[TaskEvent::Complete],
        )
        .await;
    }
    walk(s, failed.id, TaskState::Pending, &to_running).await;
    walk(
        s,
        failed.id,
        TaskState::EvaluatingResults,
        &[TaskEvent::Fail],
    )
    .await;
    walk(s, live.id, TaskState::Pending, &to_running[..3]).await;
    s.queue_enqueue_many(&crate::QueueEnqueueManyParams {
        queue: "dl".into(),
        payloads: vec![serde_json::json!(1)],
        delay: Duration::ZERO,
    })
    .await
    .unwrap();
    let dequeue = crate::QueueDequeueParams {
        queue: "dl".into(),
        max: 1,
        visibility_timeout: Duration::ZERO,
        max_deliveries: 1,
        holder: "conformance".into(),
    };
    s.queue_dequeue(&dequeue).await.unwrap();
    s.queue_dequeue(&dequeue).await.unwrap();
    assert_eq!(s.dead_letter_list(&dead_in("dl")).await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;

    let epoch = s
        .leader_acquire("l", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let sweep = |leader: &str, epoch, error| RetentionSweepParams {
        leader: leader.into(),
        epoch,
        complete: Some(Duration::from_millis(10)),
        error,
        dead_letters: Some(Duration::from_millis(10)),
        batch: 1,
    };
    let nobody = s.retention_sweep(&sweep("x", epoch, None)).await.unwrap();
    assert_eq!(nobody, RetentionSwept::default(), "not the leader");
    let first = s.retention_sweep(&sweep("l", epoch, None)).await.unwrap();
    assert_eq!(
        first,
        RetentionSwept {
            tasks: 1,
            dead_letters: 1
        },
        "a batch of one"
    );
    assert!(matches!(
        s.task_get(done[0].id).await,
        Err(crate::StoreError::NotFound { .. })
    ));
    assert!(s.step_list(done[0].id).await.unwrap().is_empty());
    assert!(s.step_edges(done[0].id).await.unwrap().is_empty());
    assert!(s.transition_list(done[0].id).await.unwrap().is_empty());
    assert!(s.dead_letter_list(&dead_in("dl")).await.unwrap().is_empty());
    let second = s.retention_sweep(&sweep("l", epoch, None)).await.unwrap();
    assert_eq!(second.tasks, 1);
    let kept = s.retention_sweep(&sweep("l", epoch, None)).await.unwrap();
    assert_eq!(kept.tasks, 0, "errors are kept without an error retention");
    let errors = s
        .retention_sweep(&sweep("l", epoch, Some(Duration::from_millis(10))))
        .await
        .unwrap();
    assert_eq!(errors.tasks, 1);
    assert!(s.task_get(failed.id).await.is_err());
    let after = s
        .retention_sweep(&sweep("l", epoch, Some(Duration::from_millis(10))))
        .await
        .unwrap();
    assert_eq!(after, RetentionSwept::default(), "the running task stays");
    assert_eq!(
        s.task_get(live.id).await.unwrap().state,
        TaskState::StepsInProcess
    );
    assert_eq!(s.step_list(live.id).await.unwrap().len(), 2);
}
