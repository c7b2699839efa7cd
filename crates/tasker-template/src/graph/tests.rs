use proptest::prelude::*;

use super::{find_cycles, topological_order};
use crate::error::{ProblemKind, TemplateError};
use crate::model::{HandlerSpec, RetryPolicy, StepTemplate, TaskTemplate};

fn step(name: &str, depends_on: &[&str]) -> StepTemplate {
    StepTemplate {
        name: name.to_owned(),
        handler: HandlerSpec::new("noop"),
        depends_on: depends_on.iter().map(|&d| d.to_owned()).collect(),
        retry: RetryPolicy::default(),
        timeout_ms: None,
        retryable: None,
        decision: false,
        map: None,
    }
}

fn name(i: usize) -> String {
    format!("s{i}")
}

/// A template of `n` steps with the given `(parent, child)` edges.
fn template(n: usize, edges: &[(usize, usize)]) -> TaskTemplate {
    let mut steps: Vec<StepTemplate> = (0..n).map(|i| step(&name(i), &[])).collect();
    for &(parent, child) in edges {
        if !steps[child].depends_on.contains(&name(parent)) {
            steps[child].depends_on.push(name(parent));
        }
    }
    TaskTemplate {
        namespace: "demo".to_owned(),
        name: "random".to_owned(),
        version: semver::Version::new(1, 0, 0),
        description: None,
        context_schema: None,
        steps,
    }
}

/// Runs the full validation through the JSON entry point.
fn validate(template: &TaskTemplate) -> Result<TaskTemplate, TemplateError> {
    let value = serde_json::to_value(template).expect("serialize");
    TaskTemplate::from_json_value(value, "random.json")
}

/// Random DAGs: `n` steps and edges only from a lower to a higher index.
fn dag() -> impl Strategy<Value = (usize, Vec<(usize, usize)>)> {
    (2usize..16).prop_flat_map(|n| {
        let edge = (0..n - 1).prop_flat_map(move |parent| (Just(parent), parent + 1..n));
        (Just(n), proptest::collection::vec(edge, 0..40))
    })
}

#[test]
fn topological_order_of_listed_order_is_identity() {
    let t = template(4, &[(0, 1), (1, 2), (2, 3)]);
    assert_eq!(t.topological_order(), [0, 1, 2, 3]);
}

#[test]
fn topological_order_moves_parents_first() {
    let steps = vec![
        step("join", &["left", "right"]),
        step("left", &["start"]),
        step("right", &["start"]),
        step("start", &[]),
    ];
    assert_eq!(topological_order(&steps), [3, 1, 2, 0]);
}

#[test]
fn topological_order_leaves_out_cycles() {
    let steps = vec![step("a", &["b"]), step("b", &["a"]), step("c", &[])];
    assert_eq!(topological_order(&steps), [2]);
}

#[test]
fn self_loops_are_not_cycles_here() {
    // Validation reports a self-dependency as its own problem.
    assert!(find_cycles(&[step("a", &["a"])]).is_empty());
}

proptest! {
    #[test]
    fn random_dags_validate_and_order_parents_first((n, edges) in dag()) {
        let t = template(n, &edges);
        let validated = validate(&t);
        prop_assert!(validated.is_ok(), "{:?}", validated.err().map(|e| e.problems_lines()));
        let order = t.topological_order();
        prop_assert_eq!(order.len(), n);
        let mut position = vec![usize::MAX; n];
        for (at, &i) in order.iter().enumerate() {
            prop_assert_eq!(position[i], usize::MAX, "step {} appears twice", i);
            position[i] = at;
        }
        for &(parent, child) in &edges {
            prop_assert!(position[parent] < position[child]);
        }
    }

    #[test]
    fn a_back_edge_closing_a_cycle_is_detected(
        (n, edges, pick) in dag().prop_flat_map(|(n, edges)| {
            let len = edges.len().max(1);
            (Just(n), Just(edges), 0..len)
        })
    ) {
        // Make sure there is a path to close: use an existing edge, or add 0 -> n-1.
        let mut edges = edges;
        if edges.is_empty() {
            edges.push((0, n - 1));
        }
        let (low, high) = edges[pick % edges.len()];
        // Back edge high -> low: `low` now depends on `high`, closing low -> .. -> high -> low.
        let mut with_back_edge = edges.clone();
        with_back_edge.push((high, low));
        let t = template(n, &with_back_edge);

        let error = validate(&t).expect_err("a cycle must be rejected");
        let cycles: Vec<&Vec<String>> = error
            .problems()
            .iter()
            .filter_map(|p| match &p.kind {
                ProblemKind::Cycle { path } => Some(path),
                _ => None,
            })
            .collect();
        prop_assert!(!cycles.is_empty(), "{:?}", error.problems_lines());
        prop_assert_eq!(cycles.len(), error.problems().len(), "only cycles are wrong");
        for path in cycles {
            prop_assert!(path.len() >= 3);
            prop_assert_eq!(path.first(), path.last());
            for pair in path.windows(2) {
                let child = t.step_index(&pair[1]).expect("known step");
                prop_assert!(
                    t.steps[child].depends_on.contains(&pair[0]),
                    "{} -> {} is not an edge", pair[0], pair[1]
                );
            }
            // A simple cycle: no step repeats except the closing one.
            let mut inner: Vec<&String> = path[..path.len() - 1].iter().collect();
            inner.sort();
            inner.dedup();
            prop_assert_eq!(inner.len(), path.len() - 1);
        }
        // The DAG had no cycle, so exactly one strongly connected component is non-trivial.
        prop_assert_eq!(find_cycles(&t.steps).len(), 1);
    }
}
