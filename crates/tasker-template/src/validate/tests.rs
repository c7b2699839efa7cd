use crate::error::{ProblemKind, TemplateError, TemplateProblem};
use crate::model::TaskTemplate;

const ORIGIN: &str = "examples/bad.yaml";

/// Parses `yaml`, expecting validation to fail, and returns the problems.
fn problems(yaml: &str) -> Vec<TemplateProblem> {
    match TaskTemplate::from_yaml_str(yaml, ORIGIN) {
        Err(TemplateError::Invalid { origin, problems }) => {
            assert_eq!(origin, ORIGIN);
            problems
        }
        other => panic!("expected TemplateError::Invalid, got {other:?}"),
    }
}

/// Parses `yaml`, expecting validation to fail, and returns the printed lines.
fn lines(yaml: &str) -> Vec<String> {
    match TaskTemplate::from_yaml_str(yaml, ORIGIN) {
        Err(error @ TemplateError::Invalid { .. }) => error.problems_lines(),
        other => panic!("expected TemplateError::Invalid, got {other:?}"),
    }
}

/// A valid header followed by `steps`.
fn with_steps(steps: &str) -> String {
    format!("namespace: demo\nname: t\nversion: 1.0.0\nsteps:\n{steps}")
}

#[test]
fn valid_template_passes() {
    let yaml =
        with_steps("  - {name: a, handler: noop}\n  - {name: b, handler: noop, depends_on: [a]}\n");
    let template = TaskTemplate::from_yaml_str(&yaml, ORIGIN).expect("valid");
    assert_eq!(template.key(), "demo/t@1.0.0");
    assert_eq!(template.steps.len(), 2);
}

#[test]
fn empty_step_list() {
    assert_eq!(
        lines("namespace: demo\nname: t\nversion: 1.0.0\nsteps: []\n"),
        ["examples/bad.yaml: steps: a template needs at least one step"]
    );
}

#[test]
fn invalid_version_names_the_field_and_value() {
    let found =
        problems("namespace: demo\nname: t\nversion: '1.0'\nsteps: [{name: a, handler: noop}]\n");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].field, "version");
    assert!(matches!(
        &found[0].kind,
        ProblemKind::InvalidVersion { value, .. } if value == "1.0"
    ));
    assert!(found[0]
        .to_string()
        .starts_with("version: invalid semantic version \"1.0\": "));
}

#[test]
fn unquoted_yaml_float_version_is_our_error_too() {
    let found =
        problems("namespace: demo\nname: t\nversion: 1.0\nsteps: [{name: a, handler: noop}]\n");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].field, "version");
}

#[test]
fn empty_and_invalid_identifiers() {
    let found = lines("namespace: ''\nname: Order Fulfillment\nversion: 1.0.0\nsteps: [{name: a, handler: noop}]\n");
    assert_eq!(
        found,
        [
            "examples/bad.yaml: namespace: must not be empty",
            "examples/bad.yaml: name: invalid identifier \"Order Fulfillment\": use lowercase \
             letters a-z, digits 0-9, '_' and '-', starting with a letter or digit",
        ]
    );
}

#[test]
fn identifiers_allow_digits_underscore_and_dash() {
    let yaml = "namespace: etl-2\nname: order_fulfillment_v2\nversion: 1.0.0\nsteps: [{name: a, handler: noop}]\n";
    assert!(TaskTemplate::from_yaml_str(yaml, ORIGIN).is_ok());
    let found =
        problems("namespace: _etl\nname: -x\nversion: 1.0.0\nsteps: [{name: a, handler: noop}]\n");
    assert_eq!(found.len(), 2);
}

#[test]
fn duplicate_step_names() {
    let found = lines(&with_steps(
        "  - {name: a, handler: noop}\n  - {name: a, handler: noop}\n",
    ));
    assert_eq!(
        found,
        ["examples/bad.yaml: step \"a\": name: duplicate step name \"a\""]
    );
}

#[test]
fn empty_step_and_handler_names() {
    let found = lines(&with_steps("  - {name: '', handler: ' '}\n"));
    assert_eq!(
        found,
        [
            "examples/bad.yaml: step \"\": name: must not be empty",
            "examples/bad.yaml: step \"\": handler.name: must not be empty",
        ]
    );
    let found = lines(&with_steps("  - {name: a, handler: {name: ''}}\n"));
    assert_eq!(
        found,
        ["examples/bad.yaml: step \"a\": handler.name: must not be empty"]
    );
}

#[test]
fn self_dependency() {
    let found = lines(&with_steps(
        "  - {name: a, handler: noop, depends_on: [a]}\n",
    ));
    assert_eq!(
        found,
        ["examples/bad.yaml: step \"a\": depends_on: step depends on itself"]
    );
}

#[test]
fn unknown_dependency() {
    let found = lines(&with_steps(
        "  - {name: charge, handler: noop}\n  - {name: ship, handler: noop, depends_on: [chrge]}\n",
    ));
    assert_eq!(
        found,
        ["examples/bad.yaml: step \"ship\": depends_on: unknown step \"chrge\""]
    );
}

#[test]
fn duplicate_dependency() {
    let found = lines(&with_steps(
        "  - {name: a, handler: noop}\n  - {name: b, handler: noop, depends_on: [a, a, a]}\n",
    ));
    assert_eq!(
        found,
        [
            "examples/bad.yaml: step \"b\": depends_on: step \"a\" is listed more than once",
            "examples/bad.yaml: step \"b\": depends_on: step \"a\" is listed more than once",
        ]
    );
}

#[test]
fn two_step_cycle() {
    let found = lines(&with_steps(
        "  - {name: a, handler: noop, depends_on: [b]}\n  - {name: b, handler: noop, depends_on: [a]}\n",
    ));
    assert_eq!(
        found,
        ["examples/bad.yaml: step \"a\": depends_on: cycle: a -> b -> a"]
    );
}

#[test]
fn three_step_cycle_prints_parent_to_child_path() {
    // b depends on a, c on b, a on c: edges a -> b -> c -> a.
    let found = problems(&with_steps(
        "  - {name: a, handler: noop, depends_on: [c]}\n  - {name: b, handler: noop, depends_on: [a]}\n  - {name: c, handler: noop, depends_on: [b]}\n  - {name: d, handler: noop, depends_on: [c]}\n",
    ));
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].to_string(),
        "step \"a\": depends_on: cycle: a -> b -> c -> a"
    );
}

#[test]
fn each_independent_cycle_reported_once() {
    let found = lines(&with_steps(
        "  - {name: a, handler: noop, depends_on: [b]}\n  - {name: b, handler: noop, depends_on: [a]}\n  - {name: c, handler: noop, depends_on: [d]}\n  - {name: d, handler: noop, depends_on: [c]}\n",
    ));
    assert_eq!(
        found,
        [
            "examples/bad.yaml: step \"a\": depends_on: cycle: a -> b -> a",
            "examples/bad.yaml: step \"c\": depends_on: cycle: c -> d -> c",
        ]
    );
}

#[test]
fn retry_max_attempts_zero() {
    let found = lines(&with_steps(
        "  - {name: a, handler: noop, retry: {max_attempts: 0}}\n",
    ));
    assert_eq!(
        found,
        ["examples/bad.yaml: step \"a\": retry.max_attempts: must be at least 1"]
    );
}

#[test]
fn retry_base_above_max() {
    let found = lines(&with_steps(
        "  - {name: a, handler: noop, retry: {base_ms: 500, max_ms: 100}}\n",
    ));
    assert_eq!(
        found,
        ["examples/bad.yaml: step \"a\": retry.base_ms: base_ms (500) must not be greater than max_ms (100)"]
    );
    // Equal bounds are fine, and the default max applies when only base is given.
    let ok = with_steps("  - {name: a, handler: noop, retry: {base_ms: 100, max_ms: 100}}\n");
    assert!(TaskTemplate::from_yaml_str(&ok, ORIGIN).is_ok());
    let found = problems(&with_steps(
        "  - {name: a, handler: noop, retry: {base_ms: 30001}}\n",
    ));
    assert_eq!(
        found[0].kind,
        ProblemKind::BackoffBounds {
            base_ms: 30_001,
            max_ms: 30_000
        }
    );
}

#[test]
fn zero_timeout() {
    let found = lines(&with_steps("  - {name: a, handler: noop, timeout_ms: 0}\n"));
    assert_eq!(
        found,
        ["examples/bad.yaml: step \"a\": timeout_ms: must be greater than 0 when given"]
    );
}

#[test]
fn invalid_context_schema() {
    let found = problems(
        "namespace: demo\nname: t\nversion: 1.0.0\ncontext_schema: {type: objekt}\nsteps: [{name: a, handler: noop}]\n",
    );
    assert!(!found.is_empty());
    assert!(found
        .iter()
        .all(|p| p.field == "context_schema" && p.step.is_none()));
    let text = found[0].to_string();
    assert!(
        text.starts_with("context_schema: invalid json schema at \"/type\": "),
        "{text}"
    );
}

#[test]
fn uncompilable_context_schema() {
    // Meta-valid, but the reference cannot be resolved.
    let found = problems(
        "namespace: demo\nname: t\nversion: 1.0.0\ncontext_schema: {$ref: '#/$defs/missing'}\nsteps: [{name: a, handler: noop}]\n",
    );
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].field, "context_schema");
    assert!(matches!(found[0].kind, ProblemKind::InvalidSchema { .. }));
}

#[test]
fn every_problem_in_one_file_is_reported() {
    let yaml = "\
namespace: Demo
name: ''
version: v1
context_schema: {type: 12}
steps:
  - name: a
    handler: noop
    depends_on: [b, a, ghost]
    retry: {max_attempts: 0, base_ms: 10, max_ms: 1}
    timeout_ms: 0
  - name: b
    handler: {name: ''}
    depends_on: [a, a]
  - name: b
    handler: noop
";
    let found = lines(yaml);
    let expected = [
        "examples/bad.yaml: namespace: invalid identifier \"Demo\"",
        "examples/bad.yaml: name: must not be empty",
        "examples/bad.yaml: version: invalid semantic version \"v1\"",
        "examples/bad.yaml: context_schema: invalid json schema",
        "examples/bad.yaml: step \"a\": depends_on: step depends on itself",
        "examples/bad.yaml: step \"a\": depends_on: unknown step \"ghost\"",
        "examples/bad.yaml: step \"a\": retry.max_attempts: must be at least 1",
        "examples/bad.yaml: step \"a\": retry.base_ms: base_ms (10) must not be greater than max_ms (1)",
        "examples/bad.yaml: step \"a\": timeout_ms: must be greater than 0 when given",
        "examples/bad.yaml: step \"b\": handler.name: must not be empty",
        "examples/bad.yaml: step \"b\": depends_on: step \"a\" is listed more than once",
        "examples/bad.yaml: step \"b\": name: duplicate step name \"b\"",
        "examples/bad.yaml: step \"a\": depends_on: cycle: a -> b -> a",
    ];
    for line in expected {
        assert!(
            found.iter().any(|f| f.starts_with(line)),
            "missing {line:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn invalid_display_has_one_line_per_problem() {
    let error = TaskTemplate::from_yaml_str(
        &with_steps("  - {name: a, handler: noop, timeout_ms: 0, depends_on: [x]}\n"),
        ORIGIN,
    )
    .expect_err("invalid");
    assert_eq!(
        error.to_string(),
        "examples/bad.yaml: step \"a\": depends_on: unknown step \"x\"\n\
         examples/bad.yaml: step \"a\": timeout_ms: must be greater than 0 when given"
    );
    assert_eq!(error.problems().len(), 2);
}

#[test]
fn durations_are_bounded() {
    let yaml = with_steps("  - {name: a, handler: noop, timeout_ms: 999999999999, retry: {base_ms: 1, max_ms: 999999999999}}\n");
    let err = TaskTemplate::from_yaml_str(&yaml, ORIGIN)
        .unwrap_err()
        .problems_lines();
    assert_eq!(
        err,
        [
            "examples/bad.yaml: step \"a\": retry.max_ms: 999999999999 ms is longer than the 86400000 ms allowed",
            "examples/bad.yaml: step \"a\": timeout_ms: 999999999999 ms is longer than the 604800000 ms allowed",
        ]
    );
}

#[test]
fn a_decision_needs_children() {
    assert_eq!(
        lines(&with_steps(
            "  - {name: route, handler: noop, decision: true}\n  - {name: other, handler: noop}\n"
        )),
        [
            "examples/bad.yaml: step \"route\": decision: a decision step needs children to \
          choose from: no step depends on it"
        ]
    );
    let yaml = with_steps(
        "  - {name: route, handler: noop, decision: true}\n\
         \x20 - {name: express, handler: noop, depends_on: [route]}\n",
    );
    let template = TaskTemplate::from_yaml_str(&yaml, ORIGIN).expect("valid");
    assert!(template.steps[0].decision && !template.steps[1].decision);
    let specs = template.step_specs();
    assert!(specs[0].decision);
}

#[test]
fn a_map_reads_from_the_context_or_a_parent_with_counts_of_at_least_one() {
    let found = lines(&with_steps(
        "  - {name: load, handler: noop}\n\
         \x20 - {name: a, handler: noop, depends_on: [load], map: {over: parents.other.items}}\n\
         \x20 - {name: b, handler: noop, map: {over: items, batch_size: 0}}\n\
         \x20 - {name: c, handler: noop, map: {over: context.xs, max_items: 200000}}\n\
         \x20 - {name: \"d[0]\", handler: noop}\n",
    ));
    assert_eq!(
        found,
        [
            "examples/bad.yaml: step \"a\": map.over: \"parents.other.items\": \"other\" is not a \
             parent of this step (depends_on: [load])",
            "examples/bad.yaml: step \"b\": map.over: \"items\": must start with `context.` or \
             `parents.<a parent>`",
            "examples/bad.yaml: step \"b\": map.batch_size: must be at least 1",
            "examples/bad.yaml: step \"c\": map.max_items: 200000 is more than the 100000 allowed",
            "examples/bad.yaml: step \"d[0]\": name: \"d[0]\": `[` and `]` are kept for the \
             instances of mapped steps (`step[0]`)",
        ]
    );
    let yaml = with_steps(
        "  - {name: load, handler: noop}\n\
         \x20 - {name: each, handler: noop, depends_on: [load], \
         map: {over: parents.load.items, max_parallel: 8, on_failure: continue}}\n",
    );
    let template = TaskTemplate::from_yaml_str(&yaml, ORIGIN).expect("valid");
    let map = template.step_specs()[1].map.clone().expect("mapped");
    assert_eq!(
        (map.batch_size, map.max_parallel, map.max_items),
        (1, Some(8), 10_000)
    );
    assert_eq!(map.on_failure, tasker_types::OnFailure::Continue);
}
