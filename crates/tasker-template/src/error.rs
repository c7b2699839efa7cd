//! Errors of this crate: [`TemplateError`] for loading a template, [`ContextError`] for checking
//! a task context against a template's schema.

use std::fmt;
use std::path::PathBuf;

/// Why a template could not be loaded.
///
/// Loading stops at the first [`Io`](Self::Io) or [`Parse`](Self::Parse) error (the document
/// must be read and decoded before it can be checked), but [`Invalid`](Self::Invalid) carries
/// every problem found in a well-formed document at once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// The template file could not be read.
    #[error("{}: cannot read template file", path.display())]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The document is not a well-formed template: YAML syntax, a value of the wrong type, a
    /// missing required key or an unknown key.
    #[error("{origin}: {message}")]
    Parse {
        /// The file name (or other label) of the document.
        origin: String,
        /// What went wrong, with the key path (`steps[1].retry: unknown field ...`) and, for
        /// YAML input, the position in the document (`at line 7 column 9`).
        message: String,
        /// 1-based line of the error, when the parser knows it (YAML input only).
        line: Option<usize>,
        /// 1-based column of the error, when the parser knows it (YAML input only).
        column: Option<usize>,
    },
    /// The document is well-formed but breaks one or more template rules.
    ///
    /// `Display` prints one line per problem, each prefixed with the origin.
    #[error("{}", ProblemLines { origin, problems })]
    Invalid {
        /// The file name (or other label) of the document.
        origin: String,
        /// Every problem found: template fields first, then steps in document order, then
        /// cycles.
        problems: Vec<TemplateProblem>,
    },
}

impl TemplateError {
    /// One human-readable line per problem, each prefixed with the origin (file name).
    ///
    /// Unlike `Display`, the [`Io`](Self::Io) line includes the underlying cause, so a caller
    /// printing only these lines (the CLI prints `error: <line>` for each) loses nothing.
    pub fn problems_lines(&self) -> Vec<String> {
        match self {
            Self::Io { path, source } => {
                vec![format!(
                    "{}: cannot read template file: {source}",
                    path.display()
                )]
            }
            Self::Parse { .. } => vec![self.to_string()],
            Self::Invalid { origin, problems } => problems
                .iter()
                .map(|problem| format!("{origin}: {problem}"))
                .collect(),
        }
    }

    /// The problems of an [`Invalid`](Self::Invalid) error; empty for the other variants.
    pub fn problems(&self) -> &[TemplateProblem] {
        match self {
            Self::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// Displays `origin: problem` lines separated by newlines.
struct ProblemLines<'a> {
    origin: &'a str,
    problems: &'a [TemplateProblem],
}

impl fmt::Display for ProblemLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {problem}", self.origin)?;
        }
        Ok(())
    }
}

/// One broken rule in a template: where it is (step and field) and what is wrong.
///
/// Displays as `step "charge": depends_on: unknown step "chrge"`, or without the step part for
/// template-level fields (`version: ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateProblem {
    /// The step the problem is in, if it is in a step.
    pub step: Option<String>,
    /// The field, as a dotted path relative to the step or template (`depends_on`,
    /// `retry.max_attempts`, `context_schema`).
    pub field: String,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl TemplateProblem {
    pub(crate) fn template(field: &str, kind: ProblemKind) -> Self {
        Self {
            step: None,
            field: field.to_owned(),
            kind,
        }
    }

    pub(crate) fn step(step: &str, field: &str, kind: ProblemKind) -> Self {
        Self {
            step: Some(step.to_owned()),
            field: field.to_owned(),
            kind,
        }
    }
}

impl fmt::Display for TemplateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(step) = &self.step {
            write!(f, "step \"{step}\": ")?;
        }
        write!(f, "{}: {}", self.field, self.kind)
    }
}

/// The kinds of template problem. `Display` gives the message without step or field.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The template has no steps.
    NoSteps,
    /// `version` is not a semantic version.
    InvalidVersion {
        /// The version as written.
        value: String,
        /// The semver parser's explanation.
        reason: String,
    },
    /// A required name (namespace, template name, step name, handler name) is empty.
    Empty,
    /// A namespace or template name is not an identifier.
    InvalidIdentifier {
        /// The name as written.
        value: String,
    },
    /// Two steps share a name.
    DuplicateStep {
        /// The shared name.
        name: String,
    },
    /// A step lists itself in `depends_on`.
    SelfDependency,
    /// A step depends on a step that does not exist.
    UnknownDependency {
        /// The missing step's name.
        name: String,
    },
    /// A step lists the same dependency more than once.
    DuplicateDependency {
        /// The repeated name.
        name: String,
    },
    /// Steps depend on each other in a cycle.
    Cycle {
        /// The cycle as `parent -> child` edges: consecutive names are edges (the second
        /// depends on the first) and the first name is repeated at the end.
        path: Vec<String>,
    },
    /// `retry.max_attempts` is 0.
    ZeroMaxAttempts,
    /// `retry.base_ms` is greater than `retry.max_ms`.
    BackoffBounds {
        /// The configured base delay.
        base_ms: u64,
        /// The configured cap.
        max_ms: u64,
    },
    /// `timeout_ms` is 0.
    ZeroTimeout,
    /// `decision: true` on a step no other step depends on: it has nothing to choose from.
    DecisionWithoutChildren,
    /// `map.over` is not `context.<path>` or `parents.<a parent>[.<path>]`.
    MapOver {
        /// The path given.
        over: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `map` count that must be at least 1 is 0.
    ZeroCount,
    /// `map.max_items` above what the engine accepts.
    TooManyItems {
        /// The value given.
        value: u32,
        /// The largest accepted.
        max: u32,
    },
    /// A step that is both a decision and mapped.
    DecisionAndMap,
    /// A step name with `[` or `]`, which name the instances of mapped steps.
    ReservedName {
        /// The name.
        name: String,
    },
    /// A duration beyond what the engine accepts.
    TooLong {
        /// The configured value in milliseconds.
        value_ms: u64,
        /// The largest accepted value in milliseconds.
        max_ms: u64,
    },
    /// `context_schema` is not a valid JSON Schema.
    InvalidSchema {
        /// The JSON pointer inside the schema where the problem is (empty for the root).
        pointer: String,
        /// What is wrong.
        message: String,
    },
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSteps => f.write_str("a template needs at least one step"),
            Self::InvalidVersion { value, reason } => {
                write!(f, "invalid semantic version \"{value}\": {reason}")
            }
            Self::Empty => f.write_str("must not be empty"),
            Self::InvalidIdentifier { value } => write!(
                f,
                "invalid identifier \"{value}\": use lowercase letters a-z, digits 0-9, '_' and \
                 '-', starting with a letter or digit"
            ),
            Self::DuplicateStep { name } => write!(f, "duplicate step name \"{name}\""),
            Self::SelfDependency => f.write_str("step depends on itself"),
            Self::UnknownDependency { name } => write!(f, "unknown step \"{name}\""),
            Self::DuplicateDependency { name } => {
                write!(f, "step \"{name}\" is listed more than once")
            }
            Self::Cycle { path } => write!(f, "cycle: {}", path.join(" -> ")),
            Self::ZeroMaxAttempts => f.write_str("must be at least 1"),
            Self::BackoffBounds { base_ms, max_ms } => write!(
                f,
                "base_ms ({base_ms}) must not be greater than max_ms ({max_ms})"
            ),
            Self::ZeroTimeout => f.write_str("must be greater than 0 when given"),
            Self::MapOver { over, reason } => write!(f, "{over:?}: {reason}"),
            Self::ZeroCount => f.write_str("must be at least 1"),
            Self::TooManyItems { value, max } => {
                write!(f, "{value} is more than the {max} allowed")
            }
            Self::DecisionAndMap => f.write_str("a step is a decision or mapped, not both"),
            Self::ReservedName { name } => write!(
                f,
                "{name:?}: `[` and `]` are kept for the instances of mapped steps (`step[0]`)"
            ),
            Self::DecisionWithoutChildren => {
                f.write_str("a decision step needs children to choose from: no step depends on it")
            }
            Self::TooLong { value_ms, max_ms } => {
                write!(f, "{value_ms} ms is longer than the {max_ms} ms allowed")
            }
            Self::InvalidSchema { pointer, message } => {
                if pointer.is_empty() {
                    write!(f, "invalid json schema: {message}")
                } else {
                    write!(f, "invalid json schema at \"{pointer}\": {message}")
                }
            }
        }
    }
}

/// A task context does not satisfy its template's `context_schema`.
///
/// Carries every problem, not only the first. `Display` joins them with `; `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "context does not match the template's schema: {}",
    join_problems(problems)
)]
pub struct ContextError {
    /// Every problem found, in the order the validator reported them.
    pub problems: Vec<ContextProblem>,
}

impl ContextError {
    /// One line per problem (`/order_id: "order_id" is a required property`).
    pub fn problems_lines(&self) -> Vec<String> {
        self.problems.iter().map(ToString::to_string).collect()
    }
}

fn join_problems(problems: &[ContextProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One way in which a context breaks the schema.
///
/// Displays as `<pointer>: <message>`, with `(root)` for the empty pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextProblem {
    /// JSON pointer of the offending field in the context (`/items/0/sku`). For a missing
    /// required property it points at the missing property itself (`/order_id`); the empty
    /// string is the whole context.
    pub instance_path: String,
    /// The validator's message.
    pub message: String,
}

impl fmt::Display for ContextProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.instance_path.is_empty() {
            write!(f, "(root): {}", self.message)
        } else {
            write!(f, "{}: {}", self.instance_path, self.message)
        }
    }
}
