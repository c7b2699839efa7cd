//! The built-in handlers.

mod command;
mod http;

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

pub use command::Command;
pub use http::Http;

use crate::{
    config::{self, load},
    read_config, ConfigProblem, StepFailure, StepHandler, StepInput,
};

/// The scope `{{ … }}` placeholders are rendered against: `context`, `parents`, `parents_meta`,
/// `attempt`,
/// and for an instance of a mapped step `item` (or `items`) and `index`.
pub(crate) fn scope(input: &StepInput) -> Value {
    let mut scope = json!({"context": input.context, "parents": input.parents,
                           "parents_meta": input.parents_meta, "attempt": input.attempt});
    if let (Some(Value::Object(instance)), Value::Object(scope)) = (&input.map_input, &mut scope) {
        scope.extend(instance.clone());
    }
    scope
}

/// `noop`: succeeds at once with `{}`. Its config is not read, so any config passes (useful
/// for notes on what a real handler would do there).
///
/// ```yaml
/// - {name: start, handler: noop}
/// - {name: ship, handler: {name: noop, config: {note: create the shipment}}}
/// ```
#[derive(Debug)]
pub struct Noop;

#[async_trait]
impl StepHandler for Noop {
    async fn call(&self, _input: StepInput) -> Result<Value, StepFailure> {
        Ok(Value::Object(serde_json::Map::new()))
    }
}

/// `echo`: returns `config.value` (any JSON) rendered against the context and parents, or,
/// without a value, `{"context": …, "parents": …}`.
///
/// ```yaml
/// - name: greet
///   handler: {name: echo, config: {value: {greeting: "hello {{ context.name }}"}}}
/// ```
#[derive(Debug)]
pub struct Echo;

/// The config `echo` accepts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoConfig {
    /// What to return after rendering; `null` is returned as `null`.
    #[serde(default, deserialize_with = "config::present")]
    value: Option<Value>,
}

#[async_trait]
impl StepHandler for Echo {
    fn check_config(&self, config: &Value) -> Result<(), ConfigProblem> {
        read_config::<EchoConfig>(config).map(drop)
    }

    async fn call(&self, input: StepInput) -> Result<Value, StepFailure> {
        let config: EchoConfig = load("echo", &input.config)?;
        let scope = scope(&input);
        Ok(match &config.value {
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
    /// Milliseconds to wait; 100 when absent.
    #[serde(default, deserialize_with = "config::optional")]
    ms: Option<u64>,
}

#[async_trait]
impl StepHandler for Sleep {
    fn check_config(&self, config: &Value) -> Result<(), ConfigProblem> {
        read_config::<SleepConfig>(config).map(drop)
    }

    async fn call(&self, input: StepInput) -> Result<Value, StepFailure> {
        let config: SleepConfig = load("sleep", &input.config)?;
        let ms = config.ms.unwrap_or(100);
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
    #[serde(default, deserialize_with = "config::optional")]
    times: Option<u64>,
    /// How the failures are reported; true when absent.
    #[serde(default, deserialize_with = "config::optional")]
    retryable: Option<bool>,
}

#[async_trait]
impl StepHandler for Fail {
    fn check_config(&self, config: &Value) -> Result<(), ConfigProblem> {
        read_config::<FailConfig>(config).map(drop)
    }

    async fn call(&self, input: StepInput) -> Result<Value, StepFailure> {
        let config: FailConfig = load("fail", &input.config)?;
        if config.times.is_none_or(|n| u64::from(input.attempt) <= n) {
            Err(StepFailure {
                error: format!(
                    "fail handler: attempt {} fails as configured",
                    input.attempt
                ),
                retryable: config.retryable.unwrap_or(true),
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

    /// Configs every built-in must accept: the examples in their docs, in the README and in
    /// `examples/templates` (also checked file by file in `tests/example_configs.rs`).
    fn good_configs() -> Vec<(&'static str, Value)> {
        vec![
            ("noop", Value::Null),
            ("noop", json!({"note": "check the order exists"})),
            ("noop", json!("anything at all")),
            ("echo", Value::Null),
            ("echo", json!({})),
            (
                "echo",
                json!({"value": {"greeting": "hello {{ context.name }}"}}),
            ),
            (
                "echo",
                json!({"value": {"greeting": "hello {{ context.name }}", "n": "{{ context.n }}"}}),
            ),
            ("echo", json!({"value": null})),
            ("echo", json!({"value": [1, "two", {"3": false}]})),
            ("sleep", Value::Null),
            ("sleep", json!({})),
            ("sleep", json!({"ms": 0})),
            ("sleep", json!({"ms": 50})),
            ("sleep", json!({"ms": 250})),
            ("sleep", json!({"ms": 1500})),
            ("sleep", json!({"ms": null})),
            ("fail", Value::Null),
            ("fail", json!({"times": 2, "retryable": true})),
            ("fail", json!({"times": 1, "retryable": true})),
            ("fail", json!({"retryable": false})),
            ("fail", json!({"times": 0})),
            (
                "command",
                json!({"program": "/bin/echo", "args": ["{\"order\": \"{{ context.order_id }}\"}"]}),
            ),
            (
                "command",
                json!({"program": "/bin/echo", "args": ["{\"loud\": \"{{ parents.greet.greeting }}!\", \"n\": {{ parents.greet.n }}}"]}),
            ),
            (
                "command",
                json!({"program": "exit 75", "shell": true, "retryable_exit_codes": [75], "timeout_ms": 50}),
            ),
            (
                "command",
                json!({"program": "/bin/sh", "args": [1, "{{ context.x }}"], "env": {"N": 3, "WHO": "{{ context.who }}"}}),
            ),
            (
                "http",
                json!({"method": "POST", "url": "http://127.0.0.1:9000/charge", "body": {"order": "{{ context.order_id }}"}}),
            ),
            (
                "http",
                json!({"method": "POST", "url": "http://127.0.0.1:9000/charge"}),
            ),
            ("http", json!({"url": "http://{{ context.host }}/hook"})),
            (
                "http",
                json!({"url": "http://x/", "method": "get", "headers": {"X-Id": "7", "accept": "application/json"}, "timeout_ms": 500, "body": null}),
            ),
            ("py_remote", json!({"ms": "not ours to judge"})),
        ]
    }

    #[test]
    fn good_configs_pass() {
        let r = HandlerRegistry::with_builtins();
        for (handler, config) in good_configs() {
            assert_eq!(
                r.check_config(handler, &config),
                Ok(()),
                "{handler} {config}"
            );
        }
    }

    #[test]
    fn bad_configs_fail_naming_the_key_and_what_it_expects() {
        let r = HandlerRegistry::with_builtins();
        for (handler, config, want) in [
            (
                "sleep",
                json!({"ms": "abc"}),
                r#"ms: expected a non-negative integer, got "abc""#,
            ),
            (
                "sleep",
                json!({"ms": -1}),
                "ms: expected a non-negative integer, got -1",
            ),
            (
                "sleep",
                json!({"ms": 1.5}),
                "ms: expected a non-negative integer, got 1.5",
            ),
            ("sleep", json!({"sec": 1}), "sec: unknown field `sec`"),
            (
                "sleep",
                json!("abc"),
                r#"config: expected a map of settings, got "abc""#,
            ),
            ("echo", json!({"valeu": 1}), "valeu: unknown field `valeu`"),
            (
                "echo",
                json!([1]),
                "config: expected a map of settings, got [1]",
            ),
            (
                "fail",
                json!({"times": "two"}),
                r#"times: expected a non-negative integer, got "two""#,
            ),
            (
                "fail",
                json!({"retryable": "no"}),
                r#"retryable: expected true or false, got "no""#,
            ),
            (
                "command",
                json!({"args": []}),
                "program: required but missing",
            ),
            ("command", Value::Null, "program: required but missing"),
            (
                "command",
                json!({"program": 7}),
                "program: expected a non-empty string, got 7",
            ),
            (
                "command",
                json!({"program": ""}),
                r#"program: expected a non-empty string, got """#,
            ),
            (
                "command",
                json!({"program": "x", "args": "-l"}),
                r#"args: expected a list, got "-l""#,
            ),
            (
                "command",
                json!({"program": "x", "env": ["A=1"]}),
                r#"env: expected a map, got ["A=1"]"#,
            ),
            (
                "command",
                json!({"program": "x", "shell": "yes"}),
                r#"shell: expected true or false, got "yes""#,
            ),
            (
                "command",
                json!({"program": "x", "retryable_exit_codes": [75, "1"]}),
                r#"retryable_exit_codes: expected a list of integer exit codes, got [75,"1"]"#,
            ),
            (
                "command",
                json!({"progam": "x"}),
                "progam: unknown field `progam`",
            ),
            ("http", json!({}), "url: required but missing"),
            (
                "http",
                json!({"url": "http://x", "timeout_ms": "soon"}),
                r#"timeout_ms: expected a non-negative integer, got "soon""#,
            ),
            (
                "http",
                json!({"url": "http://x", "method": "PO ST"}),
                r#"method: expected an HTTP method such as GET or POST, got "PO ST""#,
            ),
            (
                "http",
                json!({"url": "http://x", "headers": {"x": 5}}),
                "headers.x: expected a string of visible ASCII, got 5",
            ),
            (
                "http",
                json!({"url": "http://x", "headers": {"x": "a\nb"}}),
                r#"headers.x: expected a string of visible ASCII, got "a\nb""#,
            ),
            (
                "http",
                json!({"url": "http://x", "headers": {"bad name": "v"}}),
                "headers.bad name: not a valid header name",
            ),
            (
                "http",
                json!({"url": "http://x", "headers": ["x"]}),
                "headers: expected a map of header names to strings, got sequence",
            ),
            (
                "http",
                json!({"uri": "http://x"}),
                "uri: unknown field `uri`",
            ),
        ] {
            let problem = r.check_config(handler, &config).unwrap_err();
            let key = want.split(": ").next().unwrap();
            assert_eq!(problem.key, key, "{handler} {config}: {problem}");
            assert!(
                problem.to_string().starts_with(want),
                "{handler} {config}: {problem}"
            );
        }
    }

    #[tokio::test]
    async fn a_bad_config_that_reaches_a_run_fails_it_for_good() {
        let r = HandlerRegistry::with_builtins();
        for (handler, config) in [
            ("sleep", json!({"ms": "abc"})),
            ("fail", json!({"times": -1})),
            ("echo", json!({"valeu": 1})),
            ("command", json!({"program": 7})),
            ("http", json!({"url": "http://x", "method": "PO ST"})),
        ] {
            let failure = r
                .get(handler)
                .unwrap()
                .call(input(config, 1))
                .await
                .unwrap_err();
            assert!(
                !failure.retryable
                    && failure
                        .error
                        .starts_with(&format!("{handler} handler config: ")),
                "{handler}: {failure:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_defaults_to_100_ms_without_a_config() {
        for config in [Value::Null, json!({}), json!({"ms": null})] {
            assert_eq!(
                Sleep.call(input(config, 1)).await.unwrap(),
                json!({"slept_ms": 100})
            );
        }
    }

    #[tokio::test]
    async fn echo_returns_a_null_value_as_null() {
        assert_eq!(
            Echo.call(input(json!({"value": null}), 1)).await.unwrap(),
            Value::Null
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
