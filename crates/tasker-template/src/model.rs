//! The template data model: [`TaskTemplate`], [`StepTemplate`], [`HandlerSpec`], [`RetryPolicy`].

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ContextError;

/// A validated workflow definition: `namespace/name@version`, a DAG of steps and an optional
/// JSON Schema for the task context.
///
/// Build one with [`from_yaml_str`](Self::from_yaml_str), [`from_path`](Self::from_path) or
/// [`from_json_value`](Self::from_json_value), which check every rule. The derived
/// `Deserialize` only decodes (it is what a store uses to read back a template it saved
/// earlier) and does not validate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskTemplate {
    /// Group of templates and worker queue for their steps; an identifier (`[a-z0-9][a-z0-9_-]*`).
    pub namespace: String,
    /// Template name within the namespace; an identifier like the namespace.
    pub name: String,
    /// Semantic version of the template.
    pub version: semver::Version,
    /// Free-form description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema that every task context must satisfy; `None` accepts any context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_schema: Option<serde_json::Value>,
    /// The steps; names are unique and dependencies form a DAG.
    pub steps: Vec<StepTemplate>,
}

/// One step of a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepTemplate {
    /// Step name, unique within the template.
    pub name: String,
    /// The handler that runs the step. In YAML either `handler: noop` or
    /// `handler: {name: http, config: {...}}`.
    pub handler: HandlerSpec,
    /// Names of the parent steps that must complete before this one runs. Defaults to empty.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Retry policy; every field is optional in YAML (see [`RetryPolicy`] defaults).
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Per-attempt timeout in milliseconds; an attempt running longer counts as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Overrides whether failures of this step may be retried; `None` lets the handler decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// A decision step: its output's `next` lists which of its direct children run; the
    /// others are skipped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub decision: bool,
    /// A mapped step: one instance per batch of the array at `map.over`, each running the
    /// handler on its `item` (or `items`) and `index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<tasker_types::MapSpec>,
}

/// Which handler runs a step, and its configuration.
///
/// Deserializes from a plain string (the handler name, `config` is `Null`) or from a
/// `{name, config}` map; always serializes as the map.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HandlerSpec {
    /// Handler name as registered with the worker (`noop`, `http`).
    pub name: String,
    /// Handler-specific configuration; `Null` when absent.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub config: serde_json::Value,
}

impl HandlerSpec {
    /// A handler spec with no configuration.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            config: serde_json::Value::Null,
        }
    }
}

/// The map form of [`HandlerSpec`], decoded with unknown keys rejected.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HandlerMap {
    name: String,
    #[serde(default)]
    config: serde_json::Value,
}

impl<'de> Deserialize<'de> for HandlerSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HandlerVisitor;

        impl<'de> Visitor<'de> for HandlerVisitor {
            type Value = HandlerSpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a handler name or a map with `name` and optional `config`")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<HandlerSpec, E> {
                Ok(HandlerSpec::new(value))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<HandlerSpec, A::Error> {
                let HandlerMap { name, config } =
                    HandlerMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(HandlerSpec { name, config })
            }
        }

        deserializer.deserialize_any(HandlerVisitor)
    }
}

/// How a failed step is retried: up to `max_attempts` attempts in total, waiting an exponential
/// backoff of `base_ms * 2^(attempt - 1)` capped at `max_ms`, optionally with jitter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Total attempts, the first included; at least 1. Default 3.
    pub max_attempts: u32,
    /// Backoff before the second attempt, in milliseconds. Default 100.
    pub base_ms: u64,
    /// Cap on the backoff, in milliseconds; at least `base_ms`. Default 30000.
    pub max_ms: u64,
    /// Whether to randomize the backoff. Default true.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_ms: 100,
            max_ms: 30_000,
            jitter: true,
        }
    }
}

impl TaskTemplate {
    /// The template's key, `namespace/name@version`.
    pub fn key(&self) -> String {
        format!("{}/{}@{}", self.namespace, self.name, self.version)
    }

    /// What the store registers for this template: its identity and its JSON definition.
    ///
    /// # Panics
    ///
    /// Never: a template is plain data that always serializes.
    pub fn to_definition(&self) -> tasker_types::TemplateDefinition {
        tasker_types::TemplateDefinition {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            version: self.version.to_string(),
            definition: serde_json::to_value(self).expect("a template serializes"),
        }
    }

    /// The steps a task of this template is created with, in template order.
    pub fn step_specs(&self) -> Vec<tasker_types::StepSpec> {
        self.steps
            .iter()
            .map(|s| tasker_types::StepSpec {
                name: s.name.clone(),
                handler: s.handler.name.clone(),
                handler_config: s.handler.config.clone(),
                max_attempts: s.retry.max_attempts,
                retry_base_ms: s.retry.base_ms,
                retry_max_ms: s.retry.max_ms,
                retry_jitter: s.retry.jitter,
                timeout_ms: s.timeout_ms,
                depends_on: s.depends_on.clone(),
                decision: s.decision,
                map: s.map.clone(),
            })
            .collect()
    }

    /// Index of the step called `name`, if any (the first one, should names repeat in a
    /// template that was not validated).
    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|step| step.name == name)
    }

    /// Indices into `steps` in an order where every parent comes before its children.
    ///
    /// Among steps whose parents are all placed, the lowest index goes first, so a template
    /// whose steps are already listed parents-first yields `0..steps.len()`.
    ///
    /// A validated template is acyclic. For one that is not (built by hand or decoded without
    /// validation), steps on a cycle and their descendants are left out, and dependencies on
    /// unknown steps are ignored.
    pub fn topological_order(&self) -> Vec<usize> {
        crate::graph::topological_order(&self.steps)
    }

    /// Checks a task context against `context_schema`; `Ok` when there is no schema.
    ///
    /// The schema is compiled on each call ([`Self::context_validator`] compiles it once). A
    /// schema that does not compile (possible only for a template that was not validated) is
    /// reported as a problem at the root.
    ///
    /// # Errors
    ///
    /// [`ContextError`] with every problem found, each naming the JSON pointer of the offending
    /// field.
    pub fn validate_context(&self, context: &serde_json::Value) -> Result<(), ContextError> {
        self.context_validator()?.validate(context)
    }

    /// The context schema compiled, to validate many contexts (see
    /// [`Self::validate_context`]).
    ///
    /// # Errors
    ///
    /// [`ContextError`] at the root when the schema does not compile.
    pub fn context_validator(&self) -> Result<crate::ContextValidator, ContextError> {
        crate::ContextValidator::new(self.context_schema.as_ref())
    }
}
