//! Tasker's orchestration executor system: the pipeline that moves tasks, and the runtime that
//! runs and watches the executors doing it. [`Engine`] is the one entry point.
//!
//! Orchestration work is done by executors of five types, each doing one part of the pipeline
//! over the store's durable queues:
//!
//! ```text
//! task_requests --TaskRequestProcessor--> task (Initializing) + task_work message
//! task_work     --TaskClaimer (lease = visibility timeout)--> claims channel
//! claims        --StepEnqueuer--> viable steps Enqueued in their queue (one transaction)
//! <namespace>   --worker claims steps (lease on the step row)--> step_results
//! step_results  --StepResultProcessor--> step Complete / WaitingForRetry / Error + task_finalize
//! task_finalize --TaskFinalizer--> Complete | Error | next enqueue | wait
//! ```
//!
//! Executors of one type form an [`runtime::pool::ExecutorPool`]; the
//! [`runtime::coordinator::OrchestrationLoopCoordinator`] owns one pool per type. An executor
//! only implements `process_batch`; the pool's loop adds timing, heartbeats, wake-ups and
//! stopping, once for all types. [`pipeline`] holds what a task is and how it moves;
//! [`runtime`] holds how executors run, whatever their work, and never the other way round.
//!
//! Every message is acknowledged only after what it caused is durable, and every state change
//! names its expected from-state, so a redelivered message or a second instance is harmless.

pub mod engine;
pub mod pipeline;
pub mod runtime;
pub mod telemetry;

pub use engine::{Engine, EngineConfig};
pub use pipeline::events::EngineEvent;
pub use pipeline::executor::{ExecutorError, ExecutorType, OrchestrationExecutor};
/// Step handlers (re-exported from `tasker-worker`).
pub use tasker_worker as handler;
