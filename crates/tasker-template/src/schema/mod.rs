//! JSON Schema for the task context: checking a template's `context_schema` and validating a
//! context against it.
//!
//! The draft is detected from `$schema` (2020-12 when absent). Only the bundled meta-schemas
//! are known and remote references are never fetched: a schema naming an unknown `$schema` or
//! a remote `$ref` is rejected as invalid.

use jsonschema::error::ValidationErrorKind;
use jsonschema::ValidationError;
use serde_json::Value;

use crate::error::{ContextError, ContextProblem, ProblemKind};

#[cfg(test)]
mod tests;

/// Every reason `schema` is not a usable JSON Schema: first the meta-schema violations, then,
/// if there are none, the error from compiling it (for instance an unresolvable `$ref`).
pub(crate) fn schema_problems(schema: &Value) -> Vec<ProblemKind> {
    let meta_problems: Vec<ProblemKind> = match jsonschema::meta::validator_for(schema) {
        Ok(meta) => meta
            .iter_errors(schema)
            .map(|error| ProblemKind::InvalidSchema {
                pointer: error.instance_path().as_str().to_owned(),
                message: error.to_string(),
            })
            .collect(),
        Err(error) => vec![ProblemKind::InvalidSchema {
            pointer: String::new(),
            message: error.to_string(),
        }],
    };
    if !meta_problems.is_empty() {
        return meta_problems;
    }
    match jsonschema::validator_for(schema) {
        Ok(_) => Vec::new(),
        Err(error) => vec![ProblemKind::InvalidSchema {
            pointer: error.instance_path().as_str().to_owned(),
            message: error.to_string(),
        }],
    }
}

/// A template's context schema, compiled once to validate many contexts.
#[derive(Debug)]
pub struct ContextValidator {
    /// `None`: the template has no schema, and every context passes.
    validator: Option<jsonschema::Validator>,
}

impl ContextValidator {
    /// Compiles `schema` (none: every context passes).
    ///
    /// # Errors
    ///
    /// [`ContextError`] naming why the schema does not compile (a template validated at
    /// registration has a schema that does).
    pub fn new(schema: Option<&Value>) -> Result<Self, ContextError> {
        let validator = schema
            .map(|schema| {
                jsonschema::validator_for(schema).map_err(|error| ContextError {
                    problems: vec![ContextProblem {
                        instance_path: String::new(),
                        message: format!("the template's context schema is invalid: {error}"),
                    }],
                })
            })
            .transpose()?;
        Ok(Self { validator })
    }

    /// Validates `context`, collecting every error.
    ///
    /// # Errors
    ///
    /// [`ContextError`] with one problem per violation.
    pub fn validate(&self, context: &Value) -> Result<(), ContextError> {
        let Some(validator) = &self.validator else {
            return Ok(());
        };
        let problems: Vec<ContextProblem> =
            validator.iter_errors(context).map(to_problem).collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ContextError { problems })
        }
    }
}

/// Converts a validation error; a missing required property gets the pointer of the property
/// itself rather than of the object lacking it.
fn to_problem(error: ValidationError<'_>) -> ContextProblem {
    let mut instance_path = error.instance_path().as_str().to_owned();
    if let ValidationErrorKind::Required { property } = error.kind() {
        let name = match property {
            Value::String(name) => name.clone(),
            other => other.to_string(),
        };
        instance_path.push('/');
        instance_path.push_str(&name.replace('~', "~0").replace('/', "~1"));
    }
    ContextProblem {
        instance_path,
        message: error.to_string(),
    }
}
