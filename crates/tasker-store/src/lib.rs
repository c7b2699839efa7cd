//! Tasker's storage seam: the store traits, their parameter types, [`StoreError`] and the
//! conformance suite every backend runs.
//!
//! # Shape
//!
//! The traits are split by aggregate ([`TemplateStore`], [`TaskStore`], [`StepStore`],
//! [`QueueStore`], [`TransitionLog`]); [`Store`] is their union plus [`Capabilities`]. Each
//! method takes one params struct and returns `tasker-types` rows, so no database type leaves a
//! backend crate. Components ask only for the traits they use.
//!
//! # Dynamic dispatch
//!
//! The engine passes an `Arc<dyn Store>` around. A boxed future costs nanoseconds, a database
//! round trip costs tens of microseconds at least, and a generic backend parameter would spread
//! through every orchestrator type. Hence `async-trait`.
//!
//! # Guarantees every backend keeps
//!
//! - Every state change names its expected from-state (compare-and-swap) and writes its audit
//!   row in the same transaction; a lost race is [`StoreError::StaleState`], never a silent win.
//! - Creating a task writes the task, its steps, edges and initial transitions in one transaction.
//! - A step is its own queue entry: enqueueing marks it `Enqueued` in a queue, claiming leases
//!   it (holder token, expiry) and starts its attempt in the same statement, and a result ends
//!   the lease with the move. No message row is written per step.
//! - Queue leases, visibility timeouts and "now" come from the database clock, so several
//!   processes agree on time.
//! - Readiness is a per-step counter of unfinished parents, maintained when a parent completes,
//!   so finding viable steps costs what changed, not the size of the task.

mod error;
mod params;
mod retry;
pub mod statements;
mod traits;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::{BoxError, Result, StoreError};
pub use params::*;
pub use retry::{
    retry_contended, retry_while_unavailable, AsStoreError, CONTENDED_ATTEMPTS, FOLLOW_UP_PATIENCE,
};
pub use traits::{
    Capabilities, ConnectionPoolStats, InstanceStore, QueueStore, StepStore, Store, TaskStore,
    TemplateStore, TransitionLog,
};
