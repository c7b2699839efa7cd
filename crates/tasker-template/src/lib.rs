//! Task templates: the workflow definitions Tasker runs.
//!
//! This crate owns the template format and its rules. A [`TaskTemplate`]
//! (`namespace/name@version`) is a DAG of named [`StepTemplate`]s, each run by a handler
//! ([`HandlerSpec`]) under a [`RetryPolicy`] and an optional per-attempt timeout, plus an
//! optional JSON Schema that every task context must satisfy.
//!
//! It sits near the bottom of the crate map, with no I/O beyond reading a template file: the
//! store persists templates as JSON, the orchestrator walks their DAG, and the API and CLI load
//! them from JSON and YAML through this crate.
//!
//! ```yaml
//! namespace: shop
//! name: order_fulfillment
//! version: 1.0.0
//! context_schema: {type: object, required: [order_id]}
//! steps:
//!   - name: validate_order
//!     handler: noop
//!   - name: charge_payment
//!     handler: {name: noop, config: {note: "stand-in for a payment call"}}
//!     depends_on: [validate_order]
//!     retry: {max_attempts: 5, base_ms: 200}
//!     timeout_ms: 10000
//! ```
//!
//! # Guarantees
//!
//! - A template returned by [`TaskTemplate::from_yaml_str`], [`TaskTemplate::from_path`] or
//!   [`TaskTemplate::from_json_value`] satisfies every rule:
//!   - `namespace` and `name` are non-empty identifiers, `[a-z0-9][a-z0-9_-]*`;
//!   - `version` is a semantic version (`1.0.0`, not `1.0`);
//!   - `context_schema`, when present, is a valid JSON Schema that compiles (draft detected
//!     from `$schema`, 2020-12 by default; remote references are never fetched);
//!   - there is at least one step; step names are non-empty and unique; handler names are
//!     non-empty;
//!   - `depends_on` names existing steps other than the step itself, each at most once, and
//!     the dependencies form no cycle;
//!   - `retry.max_attempts >= 1`, `retry.base_ms <= retry.max_ms`, `timeout_ms > 0` when given.
//! - Unknown keys are errors at every level, never silently ignored.
//! - Validation reports every problem at once ([`TemplateError::Invalid`]), each naming the
//!   origin, the step and the field.
//! - A template survives a round trip through `serde_json` unchanged.
//!
//! # Current behaviour (may change)
//!
//! - Decoding errors ([`TemplateError::Parse`]) stop at the first one.
//! - [`TaskTemplate::validate_context`] compiles the schema on every call; a
//!   [`ContextValidator`] compiles it once.
//! - The derived `Deserialize` does not validate; it is meant for reading back templates that
//!   were validated before being stored.

#![forbid(unsafe_code)]

mod error;
mod graph;
mod model;
mod parse;
mod schema;
mod validate;

pub use error::{ContextError, ContextProblem, ProblemKind, TemplateError, TemplateProblem};
pub use model::{HandlerSpec, RetryPolicy, StepTemplate, TaskTemplate};
pub use schema::ContextValidator;
pub use validate::is_namespace;

/// `Result` with [`TemplateError`] as the default error.
pub type Result<T, E = TemplateError> = std::result::Result<T, E>;
