//! The built-in handlers.

mod command;
mod http;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

pub use command::Command;
pub use http::Http;

use crate::{StepFailure, StepHandler, StepInput};

/// The scope `{{ … }}` placeholders are rendered against.
pub(crate) fn scope(input: &StepInput) -> Value {
    json!({"context": input.context, "parents": input.parents, "attempt": input.attempt})
}

/// `noop`: succeeds at once with `{}`.
///
/// ```yaml
/// - {name: start, handler: noop}
/// ```
#[derive(Debug)]
pub struct Noop;

#[async_trait]
impl StepHandler for Noop {
    async fn call(&self, _input: StepInput) -> Result<Value, StepFailure> {
        Ok(Value::Object(serde_json::Map::new()))
    }
}

/// `echo`: returns `config.value` rendered against the context and parents, or, without a
/// value, `{"context": …, "parents": …}`.
///
/// ```yaml
/// - name: greet
///   handler: {name: echo, config: {value: {greeting: "hello {{ context.name }}"}}}
/// ```
#[derive(Debug)]
pub struct Echo;

#[async_trait]
impl StepHandler for Echo {
    async fn call(&self, input: StepInput) -> Result<Value, StepFailure> {
        let scope = scope(&input);
        Ok(match input.config.get("value") {
            Some(template) => crate::render(template, &scope),
            None => json!({"context": input.context, "parents": input.parents}),
        })
    }
}

/// `sleep`: waits `config.ms` milliseconds (default 100), then returns `{"slept_ms": ms}`.
///
/// ```yaml
/// - {name: wait, handler: {name: sleep, config: {ms: 250}}}
/// ```
#[derive(Debug)]
pub struct Sleep;

#[async_trait]
impl StepHandler for Sleep {
    async fn call(&self, input: StepInput) -> Result<Value, StepFailure> {
        let ms = input
            .config
            .get("ms")
            .and_then(Value::as_u64)
            .unwrap_or(100);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(json!({"slept_ms": ms}))
    }
}

/// `fail`: fails its first `times` attempts (every attempt when `times` is absent), then
/// succeeds; `retryable` (default true) says how it fails.
///
/// ```yaml
/// - {name: flaky, handler: {name: fail, config: {times: 2, retryable: true}}}
/// ```
#[derive(Debug)]
pub struct Fail;

#[async_trait]
impl StepHandler for Fail {
    async fn call(&self, input: StepInput) -> Result<Value, StepFailure> {
        let times = input.config.get("times").and_then(Value::as_u64);
        let retryable = input
            .config
            .get("retryable")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        if times.is_none_or(|n| u64::from(input.attempt) <= n) {
            Err(StepFailure {
                error: format!(
                    "fail handler: attempt {} fails as configured",
                    input.attempt
                ),
                retryable,
            })
        } else {
            Ok(json!({"succeeded_on_attempt": input.attempt}))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HandlerRegistry;

    fn input(config: Value, attempt: u32) -> StepInput {
        StepInput {
            config,
            attempt,
            ..StepInput::default()
        }
    }

    #[tokio::test]
    async fn fail_fails_its_first_n_attempts_then_succeeds() {
        let fail = HandlerRegistry::with_builtins().get("fail").unwrap();
        let cfg = json!({"times": 2, "retryable": true});
        assert!(
            fail.call(input(cfg.clone(), 1))
                .await
                .unwrap_err()
                .retryable
        );
        assert!(fail.call(input(cfg.clone(), 2)).await.is_err());
        assert!(fail.call(input(cfg, 3)).await.is_ok());
        let always = fail.call(input(json!({"retryable": false}), 9)).await;
        assert!(!always.unwrap_err().retryable);
    }

    #[tokio::test]
    async fn noop_returns_an_empty_object() {
        let noop = HandlerRegistry::with_builtins().get("noop").unwrap();
        assert_eq!(noop.call(input(Value::Null, 1)).await.unwrap(), json!({}));
    }

    #[tokio::test]
    async fn echo_renders_its_value_or_returns_its_input() {
        let echo = Echo;
        let mut i = input(
            json!({"value": {"hi": "{{ context.name }}", "sum": "{{ parents.a.n }}"}}),
            1,
        );
        i.context = json!({"name": "ann"});
        i.parents.insert("a".into(), json!({"n": 3}));
        assert_eq!(
            echo.call(i.clone()).await.unwrap(),
            json!({"hi": "ann", "sum": 3})
        );
        i.config = Value::Null;
        assert_eq!(
            echo.call(i).await.unwrap(),
            json!({"context": {"name": "ann"}, "parents": {"a": {"n": 3}}})
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_waits_its_configured_time() {
        let started = tokio::time::Instant::now();
        assert_eq!(
            Sleep.call(input(json!({"ms": 250}), 1)).await.unwrap(),
            json!({"slept_ms": 250})
        );
        assert_eq!(started.elapsed(), Duration::from_millis(250));
    }
}
