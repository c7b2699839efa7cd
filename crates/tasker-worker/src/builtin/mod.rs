//! The built-in handlers.

mod command;
mod http;

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

pub use command::Command;
pub use http::Http;

use crate::{read_config, ConfigProblem, StepFailure, StepHandler, StepInput};

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

/// The config `sleep` accepts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepConfig {
    /// Milliseconds to wait.
    #[serde(default = "default_sleep_ms")]
    ms: u64,
}

fn default_sleep_ms() -> u64 {
    100
}

#[async_trait]
impl StepHandler for Sleep {
    fn check_config(&self, config: &Value) -> Result<(), ConfigProblem> {
        read_config::<SleepConfig>(config).map(|_| ())
    }

    async fn call(&self, input: StepInput) -> Result<Value, StepFailure> {
        let ms = read_config::<SleepConfig>(&input.config)
            .map_err(|e| StepFailure::permanent(format!("sleep handler config: {e}")))?
            .ms;
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

/// The config `fail` accepts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailConfig {
    /// Attempts that fail before one succeeds; every attempt fails when absent.
    times: Option<u64>,
    /// How the failures are reported.
    #[serde(default = "yes")]
    retryable: bool,
}

fn yes() -> bool {
    true
}

#[async_trait]
impl StepHandler for Fail {
    fn check_config(&self, config: &Value) -> Result<(), ConfigProblem> {
        read_config::<FailConfig>(config).map(|_| ())
    }

    async fn call(&self, input: StepInput) -> Result<Value, StepFailure> {
        let config = read_config::<FailConfig>(&input.config)
            .map_err(|e| StepFailure::permanent(format!("fail handler config: {e}")))?;
        if config.times.is_none_or(|n| u64::from(input.attempt) <= n) {
            Err(StepFailure {
                error: format!(
                    "fail handler: attempt {} fails as configured",
                    input.attempt
                ),
                retryable: config.retryable,
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

    #[test]
    fn built_in_configs_are_checked_naming_the_key() {
        let r = HandlerRegistry::with_builtins();
        for (handler, config) in [
            ("sleep", json!({"ms": 250})),
            ("sleep", Value::Null),
            ("fail", json!({"times": 2, "retryable": true})),
            ("fail", json!({"retryable": false})),
            ("noop", json!({"anything": 1})),
            (
                "echo",
                json!({"value": {"greeting": "hello {{ context.name }}"}}),
            ),
            (
                "command",
                json!({"program": "/bin/echo", "args": ["{{ context.x }}"]}),
            ),
            (
                "http",
                json!({"method": "POST", "url": "http://127.0.0.1:9000/charge", "body": {"order": "{{ context.order_id }}"}}),
            ),
            ("py_remote", json!({"ms": "not ours to judge"})),
        ] {
            assert_eq!(
                r.check_config(handler, &config),
                Ok(()),
                "{handler} {config}"
            );
        }
        for (handler, config, key) in [
            ("sleep", json!({"ms": "abc"}), "ms"),
            ("sleep", json!({"ms": -1}), "ms"),
            ("sleep", json!({"sec": 1}), "sec"),
            ("sleep", json!("abc"), "config"),
            ("fail", json!({"times": "two"}), "times"),
            ("fail", json!({"retryable": "no"}), "retryable"),
            ("command", json!({"args": []}), "config"),
            ("command", json!({"program": 7}), "program"),
            (
                "http",
                json!({"url": "http://x", "timeout_ms": "soon"}),
                "timeout_ms",
            ),
        ] {
            let problem = r.check_config(handler, &config).unwrap_err();
            assert_eq!(problem.key, key, "{handler} {config}: {problem}");
            assert!(
                problem.to_string().starts_with(&format!("{key}: ")),
                "{problem}"
            );
        }
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
