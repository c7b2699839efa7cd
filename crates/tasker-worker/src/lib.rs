//! Step handlers: what runs a step. A handler gets the task context, its own step config and
//! its parents' outputs, and returns an output (JSON) or a failure that says whether a retry
//! may help. Handlers are found by name in a [`HandlerRegistry`].
//!
//! Built-ins, usable without writing Rust (each documented on its type):
//! [`builtin::Noop`] `noop`, [`builtin::Echo`] `echo`, [`builtin::Sleep`] `sleep`,
//! [`builtin::Fail`] `fail`, [`builtin::Command`] `command`, [`builtin::Http`] `http`.
//!
//! Per-attempt timeouts (`timeout_ms` of the step) are enforced by the worker that calls the
//! handler, not by the handler.
//!
//! Config is checked when a template is registered, not first at run time:
//! [`HandlerRegistry::check_config`] asks the named handler ([`StepHandler::check_config`]);
//! each built-in declares what its config accepts as a typed struct read by [`read_config`],
//! refusing unknown keys, and reads it the same way when it runs.

pub mod builtin;
mod config;
mod render;

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use serde_json::{Map, Value};

pub use config::{read_config, ConfigProblem};
pub use render::render;

/// What a handler is given for one attempt.
#[derive(Debug, Clone, Default)]
pub struct StepInput {
    /// The task context.
    pub context: Value,
    /// The step's handler config (`null` when absent).
    pub config: Value,
    /// Outputs of the step's parents, by parent step name.
    pub parents: Map<String, Value>,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// An instance of a mapped step: `{"item": …, "index": i}`, or `items` for a batch.
    pub map_input: Option<Value>,
    /// For parents that are mapped steps, by name: `{"failed": n}`, the instances that failed
    /// (with `on_failure: continue`; they contributed `null`).
    pub parents_meta: Map<String, Value>,
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    /// What went wrong.
    pub error: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

impl StepFailure {
    /// A failure a retry may fix.
    pub fn retryable(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            retryable: true,
        }
    }

    /// A failure no retry will fix.
    pub fn permanent(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            retryable: false,
        }
    }
}

/// Runs one kind of step.
#[async_trait]
pub trait StepHandler: Send + Sync + std::fmt::Debug {
    /// Checks a step's handler configuration when its template is registered, so a bad one is
    /// refused then rather than failing at run time. The default accepts anything.
    ///
    /// # Errors
    ///
    /// [`ConfigProblem`] naming the key and what it should be.
    fn check_config(&self, _config: &Value) -> Result<(), ConfigProblem> {
        Ok(())
    }

    /// Runs one attempt.
    ///
    /// # Errors
    ///
    /// [`StepFailure`], saying whether a retry may help.
    ///
    /// # Cancel safety
    ///
    /// The worker drops the future when the attempt times out; handlers that start processes
    /// kill them on drop.
    async fn call(&self, input: StepInput) -> Result<Value, StepFailure>;
}

/// Handlers by name.
#[derive(Debug, Clone, Default)]
pub struct HandlerRegistry {
    handlers: HashMap<String, Arc<dyn StepHandler>>,
}

impl HandlerRegistry {
    /// The built-in handlers: `noop`, `echo`, `sleep`, `fail`, `command`, `http`.
    pub fn with_builtins() -> Self {
        let mut r = Self::default();
        r.register("noop", Arc::new(builtin::Noop));
        r.register("echo", Arc::new(builtin::Echo));
        r.register("sleep", Arc::new(builtin::Sleep));
        r.register("fail", Arc::new(builtin::Fail));
        r.register("command", Arc::new(builtin::Command));
        r.register("http", Arc::new(builtin::Http::default()));
        r
    }

    /// Adds (or replaces) a handler.
    pub fn register(&mut self, name: &str, handler: Arc<dyn StepHandler>) {
        self.handlers.insert(name.to_owned(), handler);
    }

    /// The handler called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn StepHandler>> {
        self.handlers.get(name).cloned()
    }

    /// Whether a handler called `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.handlers.contains_key(name)
    }

    /// Checks `config` with the handler called `handler`; a name not registered here (a
    /// remote worker's handler) is not this process's to judge, so it passes.
    ///
    /// # Errors
    ///
    /// The handler's [`ConfigProblem`].
    pub fn check_config(&self, handler: &str, config: &Value) -> Result<(), ConfigProblem> {
        match self.handlers.get(handler) {
            Some(h) => h.check_config(config),
            None => Ok(()),
        }
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<_> = self.handlers.keys().cloned().collect();
        names.sort();
        names
    }
}
