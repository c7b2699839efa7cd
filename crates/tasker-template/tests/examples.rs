//! Every template in `examples/templates/` parses, validates and has the expected shape.

use std::path::PathBuf;

use tasker_template::TaskTemplate;

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/templates")
}

/// Expected `(file name, key, step count)` of each example.
const EXPECTED: &[(&str, &str, usize)] = &[
    ("diamond.yaml", "demo/diamond@1.0.0", 4),
    ("greeting.yaml", "greeting/hello@1.0.0", 4),
    ("handlers.yaml", "demo/handlers@1.0.0", 4),
    ("line_items.yaml", "shop/line_items@1.0.0", 3),
    ("linear.yaml", "demo/linear@1.0.0", 4),
    ("order_fulfillment.yaml", "shop/order_fulfillment@1.0.0", 4),
    ("shipping.yaml", "shop/shipping@1.0.0", 5),
    ("tree.yaml", "demo/tree@1.0.0", 7),
];

/// The built-in handlers (tasker-worker) and those of `examples/workers/python_worker.py`.
const RUNNABLE_HANDLERS: &[&str] = &[
    "noop", "echo", "sleep", "fail", "command", "http", "py_greet", "py_total",
];

#[test]
fn every_example_template_validates() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples/templates exists")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no example templates found");

    for path in &files {
        let template = TaskTemplate::from_path(path).unwrap_or_else(|error| {
            panic!(
                "{} is invalid:\n{}",
                path.display(),
                error.problems_lines().join("\n")
            )
        });
        let file_name = path
            .file_name()
            .and_then(|name| name.to_str())
            .expect("utf-8 file name");
        let (_, key, steps) = EXPECTED
            .iter()
            .find(|(name, _, _)| *name == file_name)
            .unwrap_or_else(|| panic!("add {file_name} to EXPECTED in this test"));
        assert_eq!(template.key(), *key, "{file_name}");
        assert_eq!(template.steps.len(), *steps, "{file_name}");
        assert_eq!(template.topological_order().len(), *steps, "{file_name}");
        assert!(
            template
                .steps
                .iter()
                .all(|step| RUNNABLE_HANDLERS.contains(&step.handler.name.as_str())),
            "{file_name}: every example must run with a built-in or the example worker's handlers"
        );
    }
    let found: Vec<&str> = files
        .iter()
        .filter_map(|path| path.file_name().and_then(|name| name.to_str()))
        .collect();
    for (name, _, _) in EXPECTED {
        assert!(found.contains(name), "missing example {name}");
    }
}

#[test]
fn diamond_and_tree_shapes() {
    let diamond = TaskTemplate::from_path(&examples_dir().join("diamond.yaml")).expect("valid");
    let join = &diamond.steps[diamond.step_index("join").expect("join step")];
    assert_eq!(join.depends_on, ["left", "right"]);

    let tree = TaskTemplate::from_path(&examples_dir().join("tree.yaml")).expect("valid");
    let leaves = tree
        .steps
        .iter()
        .filter(|step| !tree.steps.iter().any(|s| s.depends_on.contains(&step.name)))
        .count();
    assert_eq!(leaves, 4);
}

#[test]
fn order_fulfillment_context_schema() {
    let template =
        TaskTemplate::from_path(&examples_dir().join("order_fulfillment.yaml")).expect("valid");
    let good = serde_json::json!({"order_id": "o-42", "items": [{"sku": "tea", "quantity": 2}]});
    assert_eq!(template.validate_context(&good), Ok(()));
    let bad = serde_json::json!({"items": [{"sku": "tea", "quantity": 0}]});
    let error = template
        .validate_context(&bad)
        .expect_err("invalid context");
    let paths: Vec<&str> = error
        .problems
        .iter()
        .map(|p| p.instance_path.as_str())
        .collect();
    assert!(paths.contains(&"/order_id"), "{paths:?}");
    assert!(paths.contains(&"/items/0/quantity"), "{paths:?}");
}
