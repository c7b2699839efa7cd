//! The `command` handler.

use std::{collections::BTreeMap, time::Duration};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use crate::{config, read_config, ConfigProblem, StepFailure, StepHandler, StepInput};

/// `command`: runs a program.
///
/// Config: `program` (required), `args` (list), `env` (map), `shell` (run `program` through
/// `sh -c`, default false), `timeout_ms`, `retryable_exit_codes` (list; other non-zero exits
/// are permanent failures). Placeholders `{{ context.… }}` / `{{ parents.… }}` in args and env
/// are rendered. The program also gets `TASKER_CONTEXT` and `TASKER_PARENTS` (JSON) in its
/// environment. Stdout is the output: parsed as JSON when it is JSON, else kept as text.
///
/// ```yaml
/// - name: report
///   handler:
///     name: command
///     config: {program: /bin/echo, args: ['{"order": "{{ context.order_id }}"}']}
/// ```
#[derive(Debug)]
pub struct Command;

/// The config `command` accepts. `program` is used as given; `args` and `env` values may be any
/// JSON (strings with placeholders, usually), rendered at run time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandConfig {
    #[serde(deserialize_with = "config::required")]
    program: String,
    #[serde(default, deserialize_with = "config::or_default")]
    args: Vec<Value>,
    #[serde(default, deserialize_with = "config::or_default")]
    env: BTreeMap<String, Value>,
    #[serde(default, deserialize_with = "config::or_default")]
    shell: bool,
    #[serde(default, deserialize_with = "config::optional")]
    timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "config::or_default")]
    retryable_exit_codes: Vec<i32>,
}

fn text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

#[async_trait]
impl StepHandler for Command {
    fn check_config(&self, config: &Value) -> Result<(), ConfigProblem> {
        read_config::<CommandConfig>(config).map(drop)
    }

    async fn call(&self, input: StepInput) -> Result<Value, StepFailure> {
        let config: CommandConfig = config::load("command", &input.config)?;
        let scope = super::scope(&input);
        let args: Vec<String> = config
            .args
            .iter()
            .map(|a| text(crate::render(a, &scope)))
            .collect();
        let mut cmd = if config.shell {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c").arg(&config.program).arg("sh").args(&args);
            c
        } else {
            let mut c = tokio::process::Command::new(&config.program);
            c.args(&args);
            c
        };
        cmd.env("TASKER_CONTEXT", input.context.to_string())
            .env(
                "TASKER_PARENTS",
                Value::Object(input.parents.clone()).to_string(),
            )
            .envs(
                config
                    .env
                    .iter()
                    .map(|(k, v)| (k, text(crate::render(v, &scope)))),
            )
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let run = cmd.output();
        let output = match config.timeout_ms {
            Some(ms) => tokio::time::timeout(Duration::from_millis(ms), run)
                .await
                .map_err(|_| {
                    StepFailure::retryable(format!("{} timed out after {ms} ms", config.program))
                })?,
            None => run.await,
        }
        .map_err(|e| StepFailure::permanent(format!("cannot run {}: {e}", config.program)))?;
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if output.status.success() {
            return Ok(serde_json::from_str(&stdout).unwrap_or(Value::String(stdout)));
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let code = output.status.code();
        let error = match code {
            Some(c) => format!("{} exited with {c}: {}", config.program, stderr.trim()),
            None => format!(
                "{} was killed by a signal: {}",
                config.program,
                stderr.trim()
            ),
        };
        let retryable = code.is_some_and(|c| config.retryable_exit_codes.contains(&c));
        Err(StepFailure { error, retryable })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn input(config: Value) -> StepInput {
        let mut i = StepInput {
            config,
            attempt: 1,
            context: json!({"order_id": 7}),
            ..StepInput::default()
        };
        i.parents.insert("prev".into(), json!({"ok": true}));
        i
    }

    #[tokio::test]
    async fn json_stdout_is_parsed_and_placeholders_rendered() {
        let out = Command
            .call(input(
                json!({"program": "/bin/echo", "args": ["{\"order\": {{ context.order_id }}}"]}),
            ))
            .await
            .unwrap();
        assert_eq!(out, json!({"order": 7}));
    }

    #[tokio::test]
    async fn text_stdout_is_kept_and_the_environment_carries_context_and_parents() {
        let out = Command
            .call(input(json!({"program": "printf '%s|%s' \"$TASKER_CONTEXT\" \"$TASKER_PARENTS\"", "shell": true})))
            .await
            .unwrap();
        assert_eq!(out, json!("{\"order_id\":7}|{\"prev\":{\"ok\":true}}"));
    }

    #[tokio::test]
    async fn exit_codes_decide_retryability() {
        let retry = Command
            .call(input(
                json!({"program": "exit 75", "shell": true, "retryable_exit_codes": [75]}),
            ))
            .await
            .unwrap_err();
        assert!(
            retry.retryable && retry.error.contains("exited with 75"),
            "{retry:?}"
        );
        let permanent = Command
            .call(input(json!({"program": "exit 1", "shell": true})))
            .await
            .unwrap_err();
        assert!(!permanent.retryable);
        let missing = Command
            .call(input(json!({"program": "/no/such/program"})))
            .await
            .unwrap_err();
        assert!(!missing.retryable && missing.error.contains("cannot run"));
        let bad = Command
            .call(input(json!({"progam": "x"})))
            .await
            .unwrap_err();
        assert!(bad.error.contains("progam"), "{bad:?}");
    }

    #[tokio::test]
    async fn a_timeout_is_a_retryable_failure() {
        let err = Command
            .call(input(
                json!({"program": "/bin/sleep", "args": ["5"], "timeout_ms": 50}),
            ))
            .await
            .unwrap_err();
        assert!(err.retryable && err.error.contains("timed out"), "{err:?}");
    }
}
