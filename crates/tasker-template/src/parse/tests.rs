use std::path::Path;

use serde_json::json;

use crate::error::TemplateError;
use crate::model::{HandlerSpec, RetryPolicy, TaskTemplate};

const ORIGIN: &str = "t.yaml";

fn parse(yaml: &str) -> TaskTemplate {
    TaskTemplate::from_yaml_str(yaml, ORIGIN).expect("template should be valid")
}

/// Parses `yaml`, expecting a parse error, and returns its message and line.
fn parse_error(yaml: &str) -> (String, Option<usize>) {
    match TaskTemplate::from_yaml_str(yaml, ORIGIN) {
        Err(TemplateError::Parse {
            origin,
            message,
            line,
            ..
        }) => {
            assert_eq!(origin, ORIGIN);
            (message, line)
        }
        other => panic!("expected TemplateError::Parse, got {other:?}"),
    }
}

const FULL: &str = "\
namespace: shop
name: checkout
version: 2.1.0-beta.1
description: takes money
context_schema:
  type: object
  required: [order_id]
steps:
  - name: validate
    handler: noop
  - name: charge
    handler:
      name: http
      config: {url: 'https://pay.example/charge', method: POST}
    depends_on: [validate]
    retry: {max_attempts: 5, base_ms: 250, max_ms: 10000, jitter: false}
    timeout_ms: 15000
    retryable: true
";

#[test]
fn string_handler_form_has_null_config() {
    let template = parse(FULL);
    assert_eq!(template.steps[0].handler, HandlerSpec::new("noop"));
    assert!(template.steps[0].handler.config.is_null());
}

#[test]
fn object_handler_form_keeps_config() {
    let template = parse(FULL);
    let handler = &template.steps[1].handler;
    assert_eq!(handler.name, "http");
    assert_eq!(
        handler.config,
        json!({"url": "https://pay.example/charge", "method": "POST"})
    );
    // `config` is optional in the object form.
    let template =
        parse("namespace: a\nname: b\nversion: 0.1.0\nsteps: [{name: s, handler: {name: noop}}]\n");
    assert_eq!(template.steps[0].handler, HandlerSpec::new("noop"));
}

#[test]
fn all_fields_are_read() {
    let template = parse(FULL);
    assert_eq!(template.key(), "shop/checkout@2.1.0-beta.1");
    assert_eq!(template.description.as_deref(), Some("takes money"));
    assert_eq!(
        template.context_schema,
        Some(json!({"type": "object", "required": ["order_id"]}))
    );
    let charge = &template.steps[1];
    assert_eq!(charge.depends_on, ["validate"]);
    assert_eq!(
        charge.retry,
        RetryPolicy {
            max_attempts: 5,
            base_ms: 250,
            max_ms: 10_000,
            jitter: false
        }
    );
    assert_eq!(charge.timeout_ms, Some(15_000));
    assert_eq!(charge.retryable, Some(true));
}

#[test]
fn defaults_apply_when_keys_are_absent() {
    let template =
        parse("namespace: a\nname: b\nversion: 0.1.0\nsteps: [{name: s, handler: noop}]\n");
    assert_eq!(template.description, None);
    assert_eq!(template.context_schema, None);
    let step = &template.steps[0];
    assert!(step.depends_on.is_empty());
    assert_eq!(step.retry, RetryPolicy::default());
    assert_eq!(
        RetryPolicy::default(),
        RetryPolicy {
            max_attempts: 3,
            base_ms: 100,
            max_ms: 30_000,
            jitter: true
        }
    );
    assert_eq!(step.timeout_ms, None);
    assert_eq!(step.retryable, None);
}

#[test]
fn partial_retry_keeps_other_defaults() {
    let template = parse(
        "namespace: a\nname: b\nversion: 0.1.0\nsteps: [{name: s, handler: noop, retry: {max_attempts: 7}}]\n",
    );
    assert_eq!(
        template.steps[0].retry,
        RetryPolicy {
            max_attempts: 7,
            ..RetryPolicy::default()
        }
    );
}

#[test]
fn unknown_top_level_key_is_a_parse_error() {
    let (message, line) = parse_error(
        "namespace: a\nname: b\nversion: 0.1.0\ndescripton: typo\nsteps: [{name: s, handler: noop}]\n",
    );
    assert!(message.contains("unknown field `descripton`"), "{message}");
    assert_eq!(line, Some(4));
}

#[test]
fn unknown_step_key_is_a_parse_error() {
    let (message, line) = parse_error(
        "namespace: a\nname: b\nversion: 0.1.0\nsteps:\n  - name: s\n    handler: noop\n    depend_on: [x]\n",
    );
    assert!(
        message.starts_with("steps[0]: unknown field `depend_on`"),
        "{message}"
    );
    assert_eq!(line, Some(7));
}

#[test]
fn unknown_retry_key_is_a_parse_error() {
    let (message, line) = parse_error(
        "namespace: a\nname: b\nversion: 0.1.0\nsteps:\n  - name: s\n    handler: noop\n  - name: t\n    handler: noop\n    retry:\n      max_attemps: 5\n",
    );
    assert!(
        message.starts_with("steps[1].retry: unknown field `max_attemps`"),
        "{message}"
    );
    assert_eq!(line, Some(10));
}

#[test]
fn unknown_handler_key_is_a_parse_error() {
    let (message, _) = parse_error(
        "namespace: a\nname: b\nversion: 0.1.0\nsteps: [{name: s, handler: {name: noop, confg: {}}}]\n",
    );
    assert!(message.contains("unknown field `confg`"), "{message}");
}

#[test]
fn wrong_types_and_missing_keys_are_parse_errors() {
    let (message, _) = parse_error(
        "namespace: a\nname: b\nversion: 0.1.0\nsteps: [{name: s, handler: noop, timeout_ms: soon}]\n",
    );
    assert!(message.contains("steps[0].timeout_ms"), "{message}");
    let (message, _) = parse_error("namespace: a\nname: b\nsteps: [{name: s, handler: noop}]\n");
    assert!(message.contains("missing field `version`"), "{message}");
    let (message, _) =
        parse_error("namespace: a\nname: b\nversion: 0.1.0\nsteps: [{name: s, handler: 7}]\n");
    assert!(message.contains("handler name or a map"), "{message}");
}

#[test]
fn yaml_syntax_error_has_position() {
    let (message, line) = parse_error("namespace: a\nname: [b\n");
    assert!(!message.is_empty());
    assert!(line.is_some());
    let error = TaskTemplate::from_yaml_str("namespace: a\nname: [b\n", ORIGIN).expect_err("bad");
    let lines = error.problems_lines();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with("t.yaml: "), "{lines:?}");
}

#[test]
fn json_value_gets_same_rules_and_messages() {
    let yaml = parse(FULL);
    let value = serde_json::to_value(&yaml).expect("serialize");
    let from_json = TaskTemplate::from_json_value(value, "api").expect("valid json template");
    assert_eq!(from_json, yaml);

    let bad = json!({
        "namespace": "a", "name": "b", "version": "0.1.0",
        "steps": [{"name": "s", "handler": "noop"},
                  {"name": "t", "handler": "noop", "retry": {"max_attemps": 5}}]
    });
    match TaskTemplate::from_json_value(bad, "api") {
        Err(TemplateError::Parse {
            origin,
            message,
            line,
            column,
        }) => {
            assert_eq!(origin, "api");
            assert!(
                message.starts_with("steps[1].retry: unknown field `max_attemps`"),
                "{message}"
            );
            assert!(!message.contains(" at line "), "{message}");
            assert_eq!((line, column), (None, None));
        }
        other => panic!("expected a parse error, got {other:?}"),
    }

    let invalid = json!({
        "namespace": "a", "name": "b", "version": "1",
        "steps": [{"name": "s", "handler": "noop", "depends_on": ["zz"]}]
    });
    let error = TaskTemplate::from_json_value(invalid, "api").expect_err("invalid");
    let lines = error.problems_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("api: version: invalid semantic version \"1\""));
    assert_eq!(lines[1], "api: step \"s\": depends_on: unknown step \"zz\"");
}

#[test]
fn json_strings_that_look_like_yaml_stay_strings() {
    let value = json!({
        "namespace": "a", "name": "b", "version": "1.0.0",
        "description": "yes",
        "context_schema": {"type": "object", "properties": {"<<": {"type": "string"}, "null": {}}},
        "steps": [{"name": "123", "handler": {"name": "noop", "config": {"on": "~", "n": 1.5}}}]
    });
    let template = TaskTemplate::from_json_value(value.clone(), "api").expect("valid");
    assert_eq!(template.description.as_deref(), Some("yes"));
    assert_eq!(template.steps[0].name, "123");
    assert_eq!(
        template.steps[0].handler.config,
        json!({"on": "~", "n": 1.5})
    );
    assert_eq!(
        template.context_schema.as_ref(),
        value.get("context_schema")
    );
}

#[test]
fn serde_json_round_trip() {
    let template = parse(FULL);
    let text = serde_json::to_string(&template).expect("serialize");
    let back: TaskTemplate = serde_json::from_str(&text).expect("deserialize");
    assert_eq!(back, template);
    // The handler is stored in its object form.
    let value = serde_json::to_value(&template).expect("serialize");
    assert_eq!(value["steps"][1]["handler"]["name"], "http");
    assert_eq!(value["steps"][0]["handler"], json!({"name": "noop"}));
}

#[test]
fn from_path_reads_files_and_reports_io_errors() {
    let missing = Path::new("/nonexistent/dir/missing.yaml");
    let error = TaskTemplate::from_path(missing).expect_err("missing file");
    assert!(matches!(error, TemplateError::Io { .. }));
    assert_eq!(
        error.to_string(),
        "/nonexistent/dir/missing.yaml: cannot read template file"
    );
    let lines = error.problems_lines();
    assert!(
        lines[0].starts_with("/nonexistent/dir/missing.yaml: cannot read template file: "),
        "{lines:?}"
    );
    assert!(std::error::Error::source(&error).is_some());
}

#[test]
fn step_index_and_key() {
    let template = parse(FULL);
    assert_eq!(template.step_index("validate"), Some(0));
    assert_eq!(template.step_index("charge"), Some(1));
    assert_eq!(template.step_index("ship"), None);
}
