use std::{collections::HashMap, sync::Arc, time::Duration};

use serde_json::json;

use crate::{
    conformance::{dead_in, eventually},
    QueueAckParams, QueueDepth, QueueDequeueParams, QueueEnqueueManyParams, QueueExtendManyParams,
    QueueLeaseParams, Store, StoreError,
};

fn dequeue(queue: &str, max: u32, visibility: Duration, max_deliveries: u32) -> QueueDequeueParams {
    QueueDequeueParams {
        queue: queue.into(),
        max,
        visibility_timeout: visibility,
        max_deliveries,
        holder: "conformance".into(),
    }
}

async fn enqueue(store: &dyn Store, queue: &str, n: usize) -> Vec<i64> {
    store
        .queue_enqueue_many(&QueueEnqueueManyParams {
            queue: queue.into(),
            payloads: (0..n).map(|i| json!({ "i": i })).collect(),
            delay: Duration::ZERO,
        })
        .await
        .unwrap()
}

const LONG: Duration = Duration::from_secs(300);

/// Messages come out oldest first, at most `max` per call, only from their own queue; an ack
/// deletes; an ack with a wrong token is `LeaseLost`; depth counts ready and invisible messages.
pub async fn queue_enqueue_dequeue_ack(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let ids = enqueue(s, "q", 5).await;
    assert_eq!(ids.len(), 5);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    enqueue(s, "other", 1).await;
    assert_eq!(
        s.queue_depth("q").await.unwrap(),
        QueueDepth {
            ready: 5,
            invisible: 0,
            dead: 0
        }
    );

    let got = s.queue_dequeue(&dequeue("q", 3, LONG, 5)).await.unwrap();
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), ids[..3]);
    assert_eq!(got[0].payload, json!({"i": 0}));
    assert!(got
        .iter()
        .all(|m| m.deliveries == 1 && m.queue == "q" && !m.lease_token.is_empty()));
    assert_eq!(
        s.queue_depth("q").await.unwrap(),
        QueueDepth {
            ready: 2,
            invisible: 3,
            dead: 0
        }
    );

    let wrong = s
        .queue_ack(&QueueAckParams {
            id: got[0].id,
            lease_token: "not-mine".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(wrong, StoreError::LeaseLost { .. }), "{wrong}");
    for m in &got {
        s.queue_ack(&QueueAckParams {
            id: m.id,
            lease_token: m.lease_token.clone(),
        })
        .await
        .unwrap();
    }
    let again = s
        .queue_ack(&QueueAckParams {
            id: got[0].id,
            lease_token: got[0].lease_token.clone(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(again, StoreError::LeaseLost { .. }),
        "acked twice: {again}"
    );
    let rest = s.queue_dequeue(&dequeue("q", 10, LONG, 5)).await.unwrap();
    assert_eq!(rest.iter().map(|m| m.id).collect::<Vec<_>>(), ids[3..]);
    assert!(s
        .queue_dequeue(&dequeue("q", 10, LONG, 5))
        .await
        .unwrap()
        .is_empty());
}

/// A leased message is invisible until its visibility timeout passes, then is delivered again
/// with a higher delivery count and a new lease token; the old token can no longer ack it.
pub async fn queue_visibility_timeout_redelivers(store: Arc<dyn Store>) {
    let s = store.as_ref();
    enqueue(s, "vt", 1).await;
    let first = s
        .queue_dequeue(&dequeue("vt", 1, Duration::from_millis(300), 5))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert!(s
        .queue_dequeue(&dequeue("vt", 1, LONG, 5))
        .await
        .unwrap()
        .is_empty());
    let second = eventually(Duration::from_secs(10), "redelivery", || async {
        let got = s.queue_dequeue(&dequeue("vt", 1, LONG, 5)).await.unwrap();
        got.into_iter().next()
    })
    .await;
    assert_eq!(second.id, first[0].id);
    assert_eq!(second.deliveries, 2);
    assert_ne!(second.lease_token, first[0].lease_token);
    let stale = s
        .queue_ack(&QueueAckParams {
            id: second.id,
            lease_token: first[0].lease_token.clone(),
        })
        .await
        .unwrap_err();
    assert!(matches!(stale, StoreError::LeaseLost { .. }), "{stale}");
    s.queue_ack(&QueueAckParams {
        id: second.id,
        lease_token: second.lease_token,
    })
    .await
    .unwrap();
}

/// A nack with no delay makes the message visible at once; with a delay it stays invisible.
pub async fn queue_nack_with_delay(store: Arc<dyn Store>) {
    let s = store.as_ref();
    enqueue(s, "n", 2).await;
    let got = s.queue_dequeue(&dequeue("n", 2, LONG, 5)).await.unwrap();
    s.queue_nack(&QueueLeaseParams {
        id: got[0].id,
        lease_token: got[0].lease_token.clone(),
        delay: Duration::ZERO,
    })
    .await
    .unwrap();
    s.queue_nack(&QueueLeaseParams {
        id: got[1].id,
        lease_token: got[1].lease_token.clone(),
        delay: LONG,
    })
    .await
    .unwrap();
    let again = s.queue_dequeue(&dequeue("n", 2, LONG, 5)).await.unwrap();
    assert_eq!(again.iter().map(|m| m.id).collect::<Vec<_>>(), [got[0].id]);
    assert_eq!(again[0].deliveries, 2);
    let stale = s
        .queue_nack(&QueueLeaseParams {
            id: got[0].id,
            lease_token: got[0].lease_token.clone(),
            delay: Duration::ZERO,
        })
        .await
        .unwrap_err();
    assert!(matches!(stale, StoreError::LeaseLost { .. }), "{stale}");
    assert_eq!(
        s.queue_depth("n").await.unwrap(),
        QueueDepth {
            ready: 0,
            invisible: 2,
            dead: 0
        }
    );
}

/// With `max_deliveries = 2`, a message returned twice is not delivered a third time: it moves
/// to the dead-letter table with its payload and delivery count.
pub async fn queue_dead_letters_after_max_deliveries(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let ids = enqueue(s, "dlq", 1).await;
    for delivery in 1..=2 {
        let got = s.queue_dequeue(&dequeue("dlq", 1, LONG, 2)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].deliveries, delivery);
        s.queue_nack(&QueueLeaseParams {
            id: got[0].id,
            lease_token: got[0].lease_token.clone(),
            delay: Duration::ZERO,
        })
        .await
        .unwrap();
    }
    assert!(s
        .queue_dequeue(&dequeue("dlq", 1, LONG, 2))
        .await
        .unwrap()
        .is_empty());
    let dead = s.dead_letter_list(&dead_in("dlq")).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id, dead[0].deliveries), (ids[0], 2));
    assert_eq!(dead[0].payload, json!({"i": 0}));
    assert_eq!(
        s.queue_depth("dlq").await.unwrap(),
        QueueDepth {
            ready: 0,
            invisible: 0,
            dead: 1
        }
    );
}

/// Eight consumers dequeue 2,000 messages concurrently in small batches, holding every lease:
/// each message is received exactly once before it is acked, and all of them are received.
pub async fn queue_concurrent_dequeuers_receive_each_message_once(store: Arc<dyn Store>) {
    const MESSAGES: usize = 2_000;
    let ids = enqueue(store.as_ref(), "race", MESSAGES).await;
    let consumers = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut received = Vec::new();
            loop {
                let batch = store
                    .queue_dequeue(&dequeue("race", 25, LONG, 5))
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return received;
                }
                received.extend(batch);
            }
        })
    });
    let mut seen: HashMap<i64, usize> = HashMap::new();
    let mut all = Vec::new();
    for consumer in futures::future::join_all(consumers).await {
        for m in consumer.unwrap() {
            *seen.entry(m.id).or_default() += 1;
            all.push(m);
        }
    }
    assert_eq!(seen.len(), MESSAGES, "every message received");
    assert!(seen.values().all(|&n| n == 1), "no message received twice");
    assert!(ids.iter().all(|id| seen.contains_key(id)));
    for m in all {
        store
            .queue_ack(&QueueAckParams {
                id: m.id,
                lease_token: m.lease_token,
            })
            .await
            .unwrap();
    }
    assert_eq!(
        store.queue_depth("race").await.unwrap(),
        QueueDepth::default()
    );
}

/// A backend that announces across processes (`listen_notify`) delivers the queue's name to a
/// subscriber when messages are enqueued without delay; one that cannot returns no subscription.
pub async fn queue_enqueue_announces_wakeups(store: Arc<dyn Store>) {
    let subscription = store.wakeup_subscribe().await.unwrap();
    if !store.capabilities().listen_notify {
        assert!(subscription.is_none());
        return;
    }
    let mut rx = subscription.expect("listen_notify backends subscribe");
    enqueue(store.as_ref(), "announced", 3).await;
    let name = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("announcement within 10 s")
        .expect("listener alive");
    assert_eq!(name, "announced");
}

/// Extending a lease keeps the message invisible past its first timeout; a wrong token is
/// `LeaseLost`.
pub async fn queue_extend_keeps_a_lease(store: Arc<dyn Store>) {
    let s = store.as_ref();
    enqueue(s, "ext", 1).await;
    let got = s
        .queue_dequeue(&dequeue("ext", 1, Duration::from_millis(200), 5))
        .await
        .unwrap();
    let m = &got[0];
    s.queue_extend(&QueueLeaseParams {
        id: m.id,
        lease_token: m.lease_token.clone(),
        delay: LONG,
    })
    .await
    .unwrap();
    assert_eq!(
        s.queue_depth("ext").await.unwrap(),
        QueueDepth {
            ready: 0,
            invisible: 1,
            dead: 0
        }
    );
    let wrong = s
        .queue_extend(&QueueLeaseParams {
            id: m.id,
            lease_token: "nope".into(),
            delay: LONG,
        })
        .await
        .unwrap_err();
    assert!(matches!(wrong, StoreError::LeaseLost { .. }), "{wrong}");
}

/// Extending many leases at once keeps every held message invisible past its first timeout
/// and names the ones whose token is not the current delivery's; those time out as usual.
pub async fn queue_extend_many_keeps_held_leases(store: Arc<dyn Store>) {
    let s = store.as_ref();
    enqueue(s, "ext_many", 3).await;
    let got = s
        .queue_dequeue(&dequeue("ext_many", 3, Duration::from_millis(300), 5))
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    let mut leases: Vec<QueueAckParams> = got
        .iter()
        .map(|m| QueueAckParams {
            id: m.id,
            lease_token: m.lease_token.clone(),
        })
        .collect();
    leases[2].lease_token = "stale".into();
    let lost = s
        .queue_extend_many(&QueueExtendManyParams {
            leases,
            visibility_timeout: LONG,
        })
        .await
        .unwrap();
    assert_eq!(lost, [got[2].id]);
    let depth = eventually(
        Duration::from_secs(10),
        "the stale lease to time out",
        || async {
            let depth = s.queue_depth("ext_many").await.unwrap();
            (depth.ready == 1).then_some(depth)
        },
    )
    .await;
    assert_eq!(depth.invisible, 2, "the extended leases still hold");
    let again = s
        .queue_dequeue(&dequeue("ext_many", 3, LONG, 5))
        .await
        .unwrap();
    assert_eq!(again.iter().map(|m| m.id).collect::<Vec<_>>(), [got[2].id]);
}

/// A released message is visible again without spending a delivery; a nacked one spends it.
pub async fn queue_release_does_not_count_a_delivery(store: Arc<dyn Store>) {
    let s = store.as_ref();
    enqueue(s, "rel", 1).await;
    for _ in 0..5 {
        let got = s.queue_dequeue(&dequeue("rel", 1, LONG, 2)).await.unwrap();
        assert_eq!(got[0].deliveries, 1, "released puts back do not add up");
        s.queue_release(&QueueLeaseParams {
            id: got[0].id,
            lease_token: got[0].lease_token.clone(),
            delay: Duration::ZERO,
        })
        .await
        .unwrap();
    }
    let got = s.queue_dequeue(&dequeue("rel", 1, LONG, 2)).await.unwrap();
    let stale = s
        .queue_release(&QueueLeaseParams {
            id: got[0].id,
            lease_token: "nope".into(),
            delay: Duration::ZERO,
        })
        .await
        .unwrap_err();
    assert!(matches!(stale, StoreError::LeaseLost { .. }), "{stale}");
    assert!(s
        .dead_letter_list(&dead_in("rel"))
        .await
        .unwrap()
        .is_empty());
}

/// `queue_get` returns the delivery a lease token holds, as it is, and changes nothing; a wrong
/// token, a released delivery or an acknowledged message is `LeaseLost`.
pub async fn queue_get_reads_the_held_delivery(store: Arc<dyn Store>) {
    let s = store.as_ref();
    enqueue(s, "q", 2).await;
    let got = s.queue_dequeue(&dequeue("q", 2, LONG, 5)).await.unwrap();
    let held = |m: &tasker_types::QueueMessage| QueueAckParams {
        id: m.id,
        lease_token: m.lease_token.clone(),
    };
    let read = s.queue_get(&held(&got[1])).await.unwrap();
    assert_eq!(read, got[1]);
    assert_eq!(read.payload, json!({"i": 1}));
    let depth = s.queue_depth("q").await.unwrap();
    assert_eq!(
        (depth.ready, depth.invisible),
        (0, 2),
        "reading leases nothing"
    );

    let wrong = QueueAckParams {
        id: got[0].id,
        lease_token: "not-the-token".into(),
    };
    assert!(matches!(
        s.queue_get(&wrong).await,
        Err(StoreError::LeaseLost { .. })
    ));
    s.queue_release(&QueueLeaseParams {
        id: got[0].id,
        lease_token: got[0].lease_token.clone(),
        delay: Duration::ZERO,
    })
    .await
    .unwrap();
    assert!(matches!(
        s.queue_get(&held(&got[0])).await,
        Err(StoreError::LeaseLost { .. })
    ));
    s.queue_ack(&held(&got[1])).await.unwrap();
    assert!(matches!(
        s.queue_get(&held(&got[1])).await,
        Err(StoreError::LeaseLost { .. })
    ));
}

/// A dead letter can be read, listed by queue in pages, put back in its queue as a fresh
/// message (once), or discarded; both answer `NotFound` for one that is gone.
pub async fn dead_letters_are_requeued_or_discarded(store: Arc<dyn Store>) {
    let s = store.as_ref();
    enqueue(s, "dlr", 3).await;
    enqueue(s, "other", 1).await;
    for queue in ["dlr", "other"] {
        // One delivery allowed: the first lease uses it, the next dequeue buries the rest.
        let got = s.queue_dequeue(&dequeue(queue, 10, LONG, 1)).await.unwrap();
        for m in got {
            s.queue_nack(&QueueLeaseParams {
                id: m.id,
                lease_token: m.lease_token,
                delay: Duration::ZERO,
            })
            .await
            .unwrap();
        }
        assert!(s
            .queue_dequeue(&dequeue(queue, 10, LONG, 1))
            .await
            .unwrap()
            .is_empty());
    }
    let all = s
        .dead_letter_list(&crate::DeadLetterListParams {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    let dead = s.dead_letter_list(&dead_in("dlr")).await.unwrap();
    assert_eq!(dead.len(), 3);
    let page = s
        .dead_letter_list(&crate::DeadLetterListParams {
            queue: Some("dlr".into()),
            after_id: Some(dead[0].id),
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(page, [dead[1].clone()]);
    assert_eq!(s.dead_letter_get(dead[2].id).await.unwrap(), dead[2]);

    let requeued = s.dead_letter_requeue(dead[0].id).await.unwrap();
    assert!(matches!(
        s.dead_letter_requeue(dead[0].id).await,
        Err(StoreError::NotFound { .. })
    ));
    let back = s.queue_dequeue(&dequeue("dlr", 10, LONG, 5)).await.unwrap();
    assert_eq!(back.len(), 1, "requeued once: {back:?}");
    assert_eq!(back[0].id, requeued);
    assert_eq!(back[0].payload, dead[0].payload);
    assert_eq!(back[0].deliveries, 1, "its count starts again");

    s.dead_letter_discard(dead[1].id).await.unwrap();
    for gone in [dead[0].id, dead[1].id] {
        assert!(matches!(
            s.dead_letter_get(gone).await,
            Err(StoreError::NotFound { .. })
        ));
    }
    assert!(matches!(
        s.dead_letter_discard(dead[1].id).await,
        Err(StoreError::NotFound { .. })
    ));
    let left: Vec<i64> = s
        .dead_letter_list(&dead_in("dlr"))
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(left, [dead[2].id]);
    assert_eq!(s.queue_depth("dlr").await.unwrap().dead, 1);
}
