//! Step handlers run by the in-process worker: a small trait, a registry keyed by handler name,
//! and the built-ins the pipeline's tests and demos need (`noop`, `fail`). The full handler
//! story (command, http, remote workers) is its own piece of work.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use serde_json::Value;

/// What a handler is given for one attempt.
#[derive(Debug, Clone)]
pub struct StepInput {
    /// The task context.
    pub context: Value,
    /// The step's handler config (`null` when absent).
    pub config: Value,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    /// What went wrong.
    pub error: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

/// Runs one kind of step.
#[async_trait]
pub trait StepHandler: Send + Sync + std::fmt::Debug {
    /// Runs one attempt.
    ///
    /// # Errors
    ///
    /// [`StepFailure`], saying whether a retry may help.
    async fn call(&self, input: StepInput) -> Result<Value, StepFailure>;
}

/// Handlers by name.
#[derive(Debug, Clone, Default)]
pub struct HandlerRegistry {
    handlers: HashMap<String, Arc<dyn StepHandler>>,
}

impl HandlerRegistry {
    /// The built-in handlers: `noop` and `fail`.
    pub fn with_builtins() -> Self {
        let mut r = Self::default();
        r.register("noop", Arc::new(Noop));
        r.register("fail", Arc::new(Fail));
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
}

/// Succeeds at once with `{}`.
#[derive(Debug)]
struct Noop;

#[async_trait]
impl StepHandler for Noop {
    async fn call(&self, _input: StepInput) -> Result<Value, StepFailure> {
        Ok(Value::Object(serde_json::Map::new()))
    }
}

/// Fails its first `times` attempts (every attempt when `times` is absent), then succeeds.
/// `retryable` (default true) says how it fails.
#[derive(Debug)]
struct Fail;

#[async_trait]
impl StepHandler for Fail {
    async fn call(&self, input: StepInput) -> Result<Value, StepFailure> {
        let times = input.config.get("times").and_then(Value::as_u64);
        let retryable = input
            .config
            .get("retryable")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let failing = times.is_none_or(|n| u64::from(input.attempt) <= n);
        if failing {
            Err(StepFailure {
                error: format!(
                    "fail handler: attempt {} fails as configured",
                    input.attempt
                ),
                retryable,
            })
        } else {
            Ok(serde_json::json!({"succeeded_on_attempt": input.attempt}))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(config: Value, attempt: u32) -> StepInput {
        StepInput {
            context: Value::Null,
            config,
            attempt,
        }
    }

    #[tokio::test]
    async fn fail_fails_its_first_n_attempts_then_succeeds() {
        let fail = HandlerRegistry::with_builtins().get("fail").unwrap();
        let cfg = serde_json::json!({"times": 2, "retryable": true});
        assert!(
            fail.call(input(cfg.clone(), 1))
                .await
                .unwrap_err()
                .retryable
        );
        assert!(fail.call(input(cfg.clone(), 2)).await.is_err());
        assert!(fail.call(input(cfg, 3)).await.is_ok());
        let always = fail
            .call(input(serde_json::json!({"retryable": false}), 9))
            .await;
        assert!(!always.unwrap_err().retryable);
    }

    #[tokio::test]
    async fn noop_returns_an_empty_object() {
        let noop = HandlerRegistry::with_builtins().get("noop").unwrap();
        assert_eq!(
            noop.call(input(Value::Null, 1)).await.unwrap(),
            serde_json::json!({})
        );
    }
}
