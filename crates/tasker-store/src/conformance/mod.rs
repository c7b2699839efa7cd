//! The conformance suite: one set of behaviours every backend must show, run unchanged
//! against each of them.
//!
//! Each test is a `pub async fn` taking a fresh, empty, migrated store. Backend crates expand
//! the whole list into `#[tokio::test]`s with [`store_conformance!`](crate::store_conformance),
//! giving it an async factory that returns a [`TestStore`].

mod claims;
mod instances;
mod queue;
mod results;
pub mod statements;
mod step;
mod task;
mod template;

use std::{future::Future, sync::Arc, time::Duration};

pub use claims::*;
pub use instances::*;
pub use queue::*;
pub use results::*;
pub use step::*;
pub use task::*;
use tasker_template::TaskTemplate;
use tasker_types::TaskRow;
pub use template::*;

use crate::{StepClaimParams, StepClaimed, Store, TaskCreateParams, TemplateRegisterParams};

/// Claims up to `max` steps of `queue` for `lease`, all handlers.
pub async fn claim(store: &dyn Store, queue: &str, max: u32, lease: Duration) -> Vec<StepClaimed> {
    store
        .step_claim(&StepClaimParams {
            queue: queue.into(),
            max,
            lease,
            handlers: None,
            instance_id: "conformance".into(),
            holder: "conformance".into(),
        })
        .await
        .unwrap()
}

/// A store made for one test, with whatever must be cleaned up after it.
pub struct TestStore {
    /// The store under test.
    pub store: Arc<dyn Store>,
    /// Runs after the test body (drop the test database, say).
    pub cleanup: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl std::fmt::Debug for TestStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestStore")
            .field("backend", &self.store.backend_name())
            .finish_non_exhaustive()
    }
}

/// Expands every conformance test into a `#[tokio::test]` for one backend.
///
/// `$factory` is an async function returning a [`TestStore`].
#[macro_export]
macro_rules! store_conformance {
    ($factory:path) => {
        $crate::store_conformance!(@tests $factory;
            template_register_and_get_latest,
            template_register_conflict,
            task_create_writes_steps_edges_transitions,
            task_create_is_idempotent_per_key,
            task_create_large_task_in_chunks,
            task_create_many_is_all_or_nothing,
            task_transition_is_compare_and_swap,
            task_claim_is_exclusive_until_released_or_expired,
            task_list_filters_and_pages,
            task_count_and_step_progress,
            step_readiness_follows_completed_parents,
            step_retry_and_error_paths,
            step_viable_query_agrees_with_settlement,
            step_transition_is_compare_and_swap,
            step_enqueue_many_queues_in_one_transaction,
            step_claim_begins_attempts_with_their_input,
            step_claim_takes_back_expired_leases,
            step_claim_filters_by_handler,
            step_lease_extend_keeps_held_leases,
            step_claim_concurrent_claimers_get_each_step_once,
            queue_forward_settles_step_leases,
            step_apply_results_claims_what_it_makes_ready,
            instance_register_heartbeat_list_deregister,
            instance_release_leases_frees_what_it_holds_only,
            leadership_is_exclusive_and_fences_failover,
            retention_sweep_deletes_what_is_kept_no_longer,
            step_apply_results_enqueues_children_and_finishes_the_task,
            step_apply_results_hands_the_rest_to_the_evaluator,
            step_apply_results_skips_what_a_decision_left_out,
            step_apply_results_expands_a_map_and_gathers_its_outputs,
            queue_forward_publishes_and_consumes_together,
            task_create_can_start_the_task,
            queue_enqueue_dequeue_ack,
            queue_visibility_timeout_redelivers,
            queue_nack_with_delay,
            queue_extend_keeps_a_lease,
            queue_extend_many_keeps_held_leases,
            queue_get_reads_the_held_delivery,
            queue_release_does_not_count_a_delivery,
            queue_dead_letters_after_max_deliveries,
            dead_letters_are_requeued_or_discarded,
            queue_concurrent_dequeuers_receive_each_message_once,
            queue_enqueue_announces_wakeups,
        );
    };
    (@tests $factory:path; $($name:ident),+ $(,)?) => {
        /// A conformance test written but left off the list above would never run: this
        /// fails the suite instead.
        #[test]
        fn conformance_list_is_complete() {
            $crate::conformance::assert_listed(&[$(stringify!($name)),+]);
        }

        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let env = $factory().await;
                $crate::conformance::$name(env.store.clone()).await;
                env.store.close().await;
                if let Some(cleanup) = env.cleanup {
                    cleanup.await;
                }
            }
        )+
    };
}

/// The sources of the conformance tests, read for [`assert_listed`].
const SOURCES: [&str; 7] = [
    include_str!("claims.rs"),
    include_str!("instances.rs"),
    include_str!("queue.rs"),
    include_str!("results.rs"),
    include_str!("step.rs"),
    include_str!("task.rs"),
    include_str!("template.rs"),
];

/// Every conformance test: each `pub async fn NAME(store: Arc<dyn Store>)` of this module's
/// sources, in source order.
pub fn written() -> Vec<&'static str> {
    SOURCES
        .iter()
        .flat_map(|source| source.lines())
        .filter_map(|line| {
            let rest = line.strip_prefix("pub async fn ")?;
            let (name, params) = rest.split_once('(')?;
            params.starts_with("store: Arc<dyn Store>)").then_some(name)
        })
        .collect()
}

/// Asserts that `listed` (the names a backend's [`store_conformance!`](crate::store_conformance)
/// expands) holds every test [`written`] here, and nothing else.
///
/// # Panics
///
/// Naming the tests left off the list, or listed but not written.
pub fn assert_listed(listed: &[&str]) {
    let written = written();
    let missing: Vec<_> = written.iter().filter(|w| !listed.contains(w)).collect();
    let unknown: Vec<_> = listed.iter().filter(|l| !written.contains(l)).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "conformance tests written but not in store_conformance!: {missing:?}; \
         listed but not written: {unknown:?}"
    );
}

/// The first page of dead letters of `queue`.
pub fn dead_in(queue: &str) -> crate::DeadLetterListParams {
    crate::DeadLetterListParams {
        queue: Some(queue.to_owned()),
        after_id: None,
        limit: 100,
    }
}

/// Parses a template from YAML, panicking on problems (fixtures are trusted).
///
/// # Panics
///
/// When the fixture is invalid.
pub fn template(yaml: &str) -> TaskTemplate {
    TaskTemplate::from_yaml_str(yaml, "fixture")
        .unwrap_or_else(|e| panic!("fixture template: {}", e.problems_lines().join("; ")))
}

/// `demo/diamond@1.0.0`: start -> (left, right) -> join.
pub fn diamond() -> TaskTemplate {
    template(
        "namespace: demo\nname: diamond\nversion: 1.0.0\nsteps:\n\
         - {name: start, handler: noop}\n\
         - {name: left, handler: noop, depends_on: [start]}\n\
         - {name: right, handler: noop, depends_on: [start]}\n\
         - {name: join, handler: noop, depends_on: [left, right]}\n",
    )
}

/// Registers `template` and creates one task from it.
///
/// # Panics
///
/// When the store fails.
pub async fn create_task(
    store: &dyn Store,
    template: &TaskTemplate,
    idempotency_key: Option<&str>,
) -> TaskRow {
    let record = store
        .template_register(&TemplateRegisterParams {
            template: template.to_definition(),
        })
        .await
        .expect("register template");
    store
        .task_create(&TaskCreateParams {
            template_id: record.id,
            steps: template.step_specs(),
            context: serde_json::json!({"n": 1}),
            idempotency_key: idempotency_key.map(str::to_owned),
            priority: 0,
            instance_id: "conformance".into(),
            start: None,
        })
        .await
        .expect("create task")
        .task
}

/// Polls `probe` until it returns `Some`, for at most `within`. Used only where the awaited
/// event is the passage of database time (a visibility timeout), which no signal announces.
///
/// # Panics
///
/// When `within` passes first.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
