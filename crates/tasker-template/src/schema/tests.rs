use serde_json::json;

use super::schema_problems;
use crate::error::{ContextProblem, ProblemKind};
use crate::model::TaskTemplate;

const ORDER_TEMPLATE: &str = "\
namespace: shop
name: orders
version: 1.0.0
context_schema:
  type: object
  required: [order_id]
  properties:
    order_id: {type: string}
    items:
      type: array
      items:
        type: object
        required: [sku]
        properties:
          sku: {type: string}
          quantity: {type: integer, minimum: 1}
steps:
  - {name: a, handler: noop}
";

fn order_template() -> TaskTemplate {
    TaskTemplate::from_yaml_str(ORDER_TEMPLATE, "orders.yaml").expect("valid template")
}

#[test]
fn valid_context_passes() {
    let template = order_template();
    let context = json!({"order_id": "o-1", "items": [{"sku": "x", "quantity": 2}]});
    assert_eq!(template.validate_context(&context), Ok(()));
}

#[test]
fn missing_required_field_is_named() {
    let error = order_template()
        .validate_context(&json!({"items": []}))
        .expect_err("order_id is required");
    assert_eq!(
        error.problems,
        [ContextProblem {
            instance_path: "/order_id".to_owned(),
            message: "\"order_id\" is a required property".to_owned(),
        }]
    );
    assert_eq!(
        error.to_string(),
        "context does not match the template's schema: /order_id: \"order_id\" is a required property"
    );
}

#[test]
fn every_problem_is_reported_with_its_pointer() {
    let context = json!({"order_id": 17, "items": [{"sku": "x", "quantity": 0}, {"quantity": 1}]});
    let error = order_template()
        .validate_context(&context)
        .expect_err("three problems");
    let mut paths: Vec<&str> = error
        .problems
        .iter()
        .map(|p| p.instance_path.as_str())
        .collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/items/0/quantity", "/items/1/sku", "/order_id"]);
    assert_eq!(error.problems_lines().len(), 3);
}

#[test]
fn root_problems_display_as_root() {
    let error = order_template()
        .validate_context(&json!("not an object"))
        .expect_err("wrong type");
    assert_eq!(error.problems.len(), 1);
    assert!(error.problems_lines()[0].starts_with("(root): "));
}

#[test]
fn no_schema_accepts_anything() {
    let template = TaskTemplate::from_yaml_str(
        "namespace: a\nname: b\nversion: 1.0.0\nsteps: [{name: s, handler: noop}]\n",
        "t.yaml",
    )
    .expect("valid");
    assert_eq!(template.validate_context(&json!(null)), Ok(()));
    assert_eq!(template.validate_context(&json!({"x": 1})), Ok(()));
}

#[test]
fn unvalidated_template_with_broken_schema_reports_it() {
    let mut template = order_template();
    template.context_schema = Some(json!({"$ref": "#/$defs/missing"}));
    let error = template
        .validate_context(&json!({}))
        .expect_err("schema does not compile");
    assert_eq!(error.problems.len(), 1);
    assert!(error.problems[0]
        .message
        .starts_with("the template's context schema is invalid: "));
}

#[test]
fn schema_checks() {
    assert!(schema_problems(&json!({"type": "object"})).is_empty());
    assert!(schema_problems(&json!(true)).is_empty());
    assert!(schema_problems(&json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object"
    }))
    .is_empty());
    assert!(!schema_problems(&json!("object")).is_empty());
    assert!(!schema_problems(&json!({"minLength": -1})).is_empty());
    // Remote references are never fetched.
    let remote = schema_problems(&json!({"$ref": "https://example.invalid/schema.json"}));
    assert!(matches!(
        remote.as_slice(),
        [ProblemKind::InvalidSchema { .. }]
    ));
}
