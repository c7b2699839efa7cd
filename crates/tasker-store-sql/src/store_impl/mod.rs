//! The store implementation both SQL backends share, as macros expanded in each backend crate:
//! one per aggregate ([`templates`], [`tasks`], [`steps`], [`queues`]), behind
//! [`impl_sql_store!`](crate::impl_sql_store).
//!
//! The backends run the same SQL (SQLite accepts PostgreSQL's `$N` placeholders, `RETURNING`
//! and `ON CONFLICT … DO NOTHING`); they differ in the `now_ms!()` expression, in how a write
//! transaction begins (SQLite: `BEGIN IMMEDIATE` on its single writer), in their pools, and in
//! dequeueing (PostgreSQL: `FOR UPDATE SKIP LOCKED`). A macro rather than generic code, because
//! sqlx's per-database encode and executor bounds would have to be spelled out on every
//! function; expanded per backend, every query is type-checked against concrete types.
//!
//! The invoking module must have in scope: `now_ms!()` (the database clock in milliseconds as a
//! string literal), `map_err` (sqlx error to `StoreError`), and on `$store`: `count(n)`,
//! `async fn begin_write(&self) -> Result<sqlx::Transaction<'_, $db>>`,
//! `async fn dequeue_leased(&self, &QueueDequeueParams) -> Result<Vec<QueueMessage>>` and
//! `async fn announce_enqueued(&mut $conn, queue: &str) -> Result<u64>` (tell other processes
//! that `queue` has new work, in the enqueueing transaction; ) and
//! `async fn lock_tasks(&mut $conn, ids: &[i64]) -> Result<u64>` (lock task rows in id order
//! for the rest of the transaction where writers run concurrently; returns the statements
//! sent) and `async fn start_steps(&self, &StepStartManyParams) -> Result<Vec<StepStarted>>`
//! (`StepStore::step_start_many` for a non-empty list: PostgreSQL does it in one statement),
//! and `async fn write_effects(&mut $conn, &[NewTransition], &Outbox, &[QueueAckParams]) ->
//! Result<u64>` (append audit rows, publish messages visible at once and announce them,
//! delete consumed deliveries; ).

mod queues;
mod steps;
mod tasks;
mod templates;

/// The imports every part needs (each part uses some of them).
#[doc(hidden)]
#[macro_export]
macro_rules! __sql_store_imports {
    () => {
        #[allow(unused_imports)]
        use std::{collections::HashMap, time::Duration};

        #[allow(unused_imports)]
        use ::sqlx::{types::Json, QueryBuilder, Row};
        #[allow(unused_imports)]
        use ::tasker_store::{
            QueueAckParams, QueueDepth, QueueDequeueParams, QueueEnqueueManyParams,
            QueueExtendManyParams, QueueForwardParams, QueueLeaseParams, QueueStore, Result,
            ResultsApplied, StepApplyResultsParams, StepEnqueueManyParams, StepMessage,
            StepResultApply, StepStartManyParams, StepStarted, StepStore, StepTransitionParams,
            StepViableManyParams, StoreError, TaskClaimParams, TaskCreateParams, TaskCreated,
            TaskListParams, TaskMessage, TaskReleaseParams, TaskStore, TaskTransitionParams,
            TemplateGetParams, TemplateRegisterParams, TemplateStore, TransitionLog,
        };
        #[allow(unused_imports)]
        use ::tasker_types::{
            settle, DeadLetter, Entity, QueueMessage, StepEvent, StepId, StepRow, StepState,
            TaskEvent, TaskId, TaskRow, TaskState, TemplateRecord, TransitionRow,
        };
        #[allow(unused_imports)]
        use $crate::{
            corrupt, dead_letter, duration_ms, message, qualified, step as decode_step,
            task as decode_task, template as decode_template, transition as decode_transition,
            NewTransition, INSERT_CHUNK, MESSAGE_COLUMNS, STEP_COLUMNS, TASK_COLUMNS,
            TEMPLATE_COLUMNS, TRANSITION_COLUMNS,
        };
    };
}

/// Implements every store trait but [`tasker_store::Store`] itself for a SQL backend.
#[macro_export]
macro_rules! impl_sql_store {
    (store = $store:ty, db = $db:ty, conn = $conn:ty, reader = $reader:ident, writer = $writer:ident $(,)?) => {
        $crate::__sql_store_templates!(
            store = $store,
            db = $db,
            conn = $conn,
            reader = $reader,
            writer = $writer
        );
        $crate::__sql_store_tasks!(
            store = $store,
            db = $db,
            conn = $conn,
            reader = $reader,
            writer = $writer
        );
        $crate::__sql_store_steps!(
            store = $store,
            db = $db,
            conn = $conn,
            reader = $reader,
            writer = $writer
        );
        $crate::__sql_store_queues!(
            store = $store,
            db = $db,
            conn = $conn,
            reader = $reader,
            writer = $writer
        );
    };
}
