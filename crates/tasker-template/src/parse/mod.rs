//! Loading templates from YAML text, YAML files and JSON values.
//!
//! Decoding rejects unknown keys everywhere (a misspelt `retry` key is an error, not a silent
//! default) and stops at the first decoding error; the decoded template is then checked
//! against every rule in [`crate::validate`], which reports all problems at once.

use std::path::Path;

use serde::Deserialize;

use crate::error::TemplateError;
use crate::model::{StepTemplate, TaskTemplate};

#[cfg(test)]
mod tests;

/// A decoded template whose version is still the string written in the document, so that a bad
/// version is reported with the other problems, in our words.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UncheckedTemplate {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) version: String,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) context_schema: Option<serde_json::Value>,
    pub(crate) steps: Vec<StepTemplate>,
}

impl TaskTemplate {
    /// Parses and fully validates a YAML template. `origin` is the file name (or other label)
    /// used in messages.
    ///
    /// # Errors
    ///
    /// [`TemplateError::Parse`] for YAML syntax errors, wrong types, missing or unknown keys
    /// (the first one only, with its key path, line and column); [`TemplateError::Invalid`]
    /// with every broken rule otherwise.
    pub fn from_yaml_str(source: &str, origin: &str) -> Result<TaskTemplate, TemplateError> {
        let unchecked = serde_yaml_ng::from_str::<UncheckedTemplate>(source)
            .map_err(|error| yaml_parse_error(&error, origin))?;
        check(unchecked, origin)
    }

    /// Reads and parses a YAML template file; the path, as given, is the origin in messages.
    ///
    /// # Errors
    ///
    /// [`TemplateError::Io`] when the file cannot be read, otherwise as
    /// [`from_yaml_str`](Self::from_yaml_str).
    pub fn from_path(path: &Path) -> Result<TaskTemplate, TemplateError> {
        let source = std::fs::read_to_string(path).map_err(|source| TemplateError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml_str(&source, &path.display().to_string())
    }

    /// Parses and fully validates a template given as JSON (the REST API accepts these), with
    /// the same rules and messages as YAML, minus line and column.
    ///
    /// # Errors
    ///
    /// As [`from_yaml_str`](Self::from_yaml_str).
    pub fn from_json_value(
        value: serde_json::Value,
        origin: &str,
    ) -> Result<TaskTemplate, TemplateError> {
        // JSON is a subset of YAML's data model. Going through the YAML decoder (rather than
        // `serde_json::from_value`) gives JSON input the same key paths in messages
        // (`steps[1].retry: unknown field ...`). Line and column would point into the
        // intermediate text, so they are dropped.
        let text = serde_yaml_ng::to_string(&value).map_err(|error| TemplateError::Parse {
            origin: origin.to_owned(),
            message: error.to_string(),
            line: None,
            column: None,
        })?;
        let unchecked = serde_yaml_ng::from_str::<UncheckedTemplate>(&text).map_err(|error| {
            let message = match error.location() {
                Some(location) => {
                    let message = error.to_string();
                    let suffix =
                        format!(" at line {} column {}", location.line(), location.column());
                    message
                        .strip_suffix(&suffix)
                        .map_or(message.clone(), str::to_owned)
                }
                None => error.to_string(),
            };
            TemplateError::Parse {
                origin: origin.to_owned(),
                message,
                line: None,
                column: None,
            }
        })?;
        check(unchecked, origin)
    }
}

fn check(unchecked: UncheckedTemplate, origin: &str) -> Result<TaskTemplate, TemplateError> {
    crate::validate::validate(unchecked).map_err(|problems| TemplateError::Invalid {
        origin: origin.to_owned(),
        problems,
    })
}

fn yaml_parse_error(error: &serde_yaml_ng::Error, origin: &str) -> TemplateError {
    let location = error.location();
    TemplateError::Parse {
        origin: origin.to_owned(),
        message: error.to_string(),
        line: location.as_ref().map(serde_yaml_ng::Location::line),
        column: location.as_ref().map(serde_yaml_ng::Location::column),
    }
}
