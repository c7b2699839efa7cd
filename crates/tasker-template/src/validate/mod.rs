//! Template rules. Every rule is checked and every problem collected, so one run reports all
//! of them: template fields first, then each step in document order, then cycles.
//!
//! The rules themselves are listed in the crate docs.

use std::collections::HashSet;

use crate::error::{ProblemKind, TemplateProblem};
use crate::model::{StepTemplate, TaskTemplate};
use crate::parse::UncheckedTemplate;

#[cfg(test)]
mod tests;

/// Checks every rule, returning the template or all the problems found.
/// Longest retry delay: one day. (Times are milliseconds in 64-bit columns; an unbounded
/// delay added to "now" would overflow them.)
pub(crate) const MAX_RETRY_DELAY_MS: u64 = 24 * 60 * 60 * 1000;
/// Longest per-attempt timeout: seven days.
pub(crate) const MAX_TIMEOUT_MS: u64 = 7 * 24 * 60 * 60 * 1000;

pub(crate) fn validate(raw: UncheckedTemplate) -> Result<TaskTemplate, Vec<TemplateProblem>> {
    let mut problems = Vec::new();
    check_identifier(&mut problems, "namespace", &raw.namespace);
    check_identifier(&mut problems, "name", &raw.name);
    let version = match semver::Version::parse(raw.version.trim()) {
        Ok(version) => Some(version),
        Err(error) => {
            problems.push(TemplateProblem::template(
                "version",
                ProblemKind::InvalidVersion {
                    value: raw.version.clone(),
                    reason: error.to_string(),
                },
            ));
            None
        }
    };
    if let Some(schema) = &raw.context_schema {
        problems.extend(
            crate::schema::schema_problems(schema)
                .into_iter()
                .map(|kind| TemplateProblem::template("context_schema", kind)),
        );
    }
    if raw.steps.is_empty() {
        problems.push(TemplateProblem::template("steps", ProblemKind::NoSteps));
    }
    check_steps(&mut problems, &raw.steps);
    problems.extend(cycle_problems(&raw.steps));

    match version {
        Some(version) if problems.is_empty() => Ok(TaskTemplate {
            namespace: raw.namespace,
            name: raw.name,
            version,
            description: raw.description,
            context_schema: raw.context_schema,
            steps: raw.steps,
        }),
        _ => Err(problems),
    }
}

/// Whether `value` may name a template namespace (and so a worker queue): an identifier,
/// `[a-z0-9][a-z0-9_-]*`. The engine's own queues all contain a `.`, so no namespace can name
/// one of them: this rule is what reserves them.
pub fn is_namespace(value: &str) -> bool {
    is_identifier(value)
}

/// Whether `value` is an identifier: `[a-z0-9][a-z0-9_-]*`.
fn is_identifier(value: &str) -> bool {
    let mut chars = value.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn check_identifier(problems: &mut Vec<TemplateProblem>, field: &str, value: &str) {
    if value.is_empty() {
        problems.push(TemplateProblem::template(field, ProblemKind::Empty));
    } else if !is_identifier(value) {
        problems.push(TemplateProblem::template(
            field,
            ProblemKind::InvalidIdentifier {
                value: value.to_owned(),
            },
        ));
    }
}

fn check_steps(problems: &mut Vec<TemplateProblem>, steps: &[StepTemplate]) {
    let names: HashSet<&str> = steps.iter().map(|step| step.name.as_str()).collect();
    let parents: HashSet<&str> = steps
        .iter()
        .flat_map(|step| step.depends_on.iter().map(String::as_str))
        .collect();
    let mut seen_names = HashSet::new();
    for step in steps {
        let name = step.name.as_str();
        if name.is_empty() {
            problems.push(TemplateProblem::step(name, "name", ProblemKind::Empty));
        } else if !seen_names.insert(name) {
            problems.push(TemplateProblem::step(
                name,
                "name",
                ProblemKind::DuplicateStep {
                    name: name.to_owned(),
                },
            ));
        }
        if step.handler.name.trim().is_empty() {
            problems.push(TemplateProblem::step(
                name,
                "handler.name",
                ProblemKind::Empty,
            ));
        }
        check_dependencies(problems, step, &names);
        if step.retry.max_attempts == 0 {
            problems.push(TemplateProblem::step(
                name,
                "retry.max_attempts",
                ProblemKind::ZeroMaxAttempts,
            ));
        }
        if step.retry.base_ms > step.retry.max_ms {
            problems.push(TemplateProblem::step(
                name,
                "retry.base_ms",
                ProblemKind::BackoffBounds {
                    base_ms: step.retry.base_ms,
                    max_ms: step.retry.max_ms,
                },
            ));
        }
        for (field, value, max) in [
            ("retry.max_ms", Some(step.retry.max_ms), MAX_RETRY_DELAY_MS),
            ("timeout_ms", step.timeout_ms, MAX_TIMEOUT_MS),
        ] {
            if let Some(value_ms) = value.filter(|v| *v > max) {
                problems.push(TemplateProblem::step(
                    name,
                    field,
                    ProblemKind::TooLong {
                        value_ms,
                        max_ms: max,
                    },
                ));
            }
        }
        if name.contains(['[', ']']) {
            problems.push(TemplateProblem::step(
                name,
                "name",
                ProblemKind::ReservedName {
                    name: name.to_owned(),
                },
            ));
        }
        if let Some(map) = &step.map {
            check_map(problems, step, map);
        }
        if step.decision && !parents.contains(name) {
            problems.push(TemplateProblem::step(
                name,
                "decision",
                ProblemKind::DecisionWithoutChildren,
            ));
        }
        if step.timeout_ms == Some(0) {
            problems.push(TemplateProblem::step(
                name,
                "timeout_ms",
                ProblemKind::ZeroTimeout,
            ));
        }
    }
}

/// Most elements a mapped step may fan out over: each becomes a step row.
pub(crate) const MAX_MAP_ITEMS: u32 = 100_000;

fn check_map(
    problems: &mut Vec<TemplateProblem>,
    step: &StepTemplate,
    map: &tasker_types::MapSpec,
) {
    let name = step.name.as_str();
    let mut keys = map.over.split('.');
    let reason = match (keys.next(), keys.next()) {
        (Some("context"), Some(key)) if !key.is_empty() => None,
        (Some("parents"), Some(parent)) if step.depends_on.iter().any(|d| d == parent) => None,
        (Some("parents"), Some(parent)) => Some(format!(
            "{parent:?} is not a parent of this step (depends_on: [{}])",
            step.depends_on.join(", ")
        )),
        _ => Some("must start with `context.` or `parents.<a parent>`".to_owned()),
    };
    let empty_key = map.over.split('.').any(str::is_empty);
    if let Some(reason) = reason.or_else(|| empty_key.then(|| "has an empty key".to_owned())) {
        problems.push(TemplateProblem::step(
            name,
            "map.over",
            ProblemKind::MapOver {
                over: map.over.clone(),
                reason,
            },
        ));
    }
    for (field, value) in [
        ("map.batch_size", Some(map.batch_size)),
        ("map.max_parallel", map.max_parallel),
        ("map.max_items", Some(map.max_items)),
    ] {
        if value == Some(0) {
            problems.push(TemplateProblem::step(name, field, ProblemKind::ZeroCount));
        }
    }
    if map.max_items > MAX_MAP_ITEMS {
        problems.push(TemplateProblem::step(
            name,
            "map.max_items",
            ProblemKind::TooManyItems {
                value: map.max_items,
                max: MAX_MAP_ITEMS,
            },
        ));
    }
    if step.decision {
        problems.push(TemplateProblem::step(
            name,
            "map",
            ProblemKind::DecisionAndMap,
        ));
    }
}

fn check_dependencies(
    problems: &mut Vec<TemplateProblem>,
    step: &StepTemplate,
    names: &HashSet<&str>,
) {
    let name = step.name.as_str();
    let mut seen = HashSet::new();
    for dep in &step.depends_on {
        let kind = if !seen.insert(dep.as_str()) {
            ProblemKind::DuplicateDependency { name: dep.clone() }
        } else if dep == name {
            ProblemKind::SelfDependency
        } else if !names.contains(dep.as_str()) {
            ProblemKind::UnknownDependency { name: dep.clone() }
        } else {
            continue;
        };
        problems.push(TemplateProblem::step(name, "depends_on", kind));
    }
}

/// One problem per cycle, reported on the cycle's first step (whose `depends_on` holds the
/// edge that closes it).
fn cycle_problems(steps: &[StepTemplate]) -> Vec<TemplateProblem> {
    crate::graph::find_cycles(steps)
        .into_iter()
        .map(|cycle| {
            let path: Vec<String> = cycle.iter().map(|&i| steps[i].name.clone()).collect();
            let first = path.first().cloned().unwrap_or_default();
            TemplateProblem::step(&first, "depends_on", ProblemKind::Cycle { path })
        })
        .collect()
}
