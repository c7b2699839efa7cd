//! What the store is asked to write when a template is registered or a task created: plain
//! data, so storage depends on no template parser. `tasker-template` produces these from a
//! validated template.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A template version to register: its identity and its definition as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateDefinition {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Semantic version, as text.
    pub version: String,
    /// The whole template as JSON: what a task is later created from.
    pub definition: Value,
}

impl TemplateDefinition {
    /// `namespace/name@version`, for messages.
    pub fn key(&self) -> String {
        format!("{}/{}@{}", self.namespace, self.name, self.version)
    }
}

/// One step of a task to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    /// Step name, unique in its task.
    pub name: String,
    /// Handler name.
    pub handler: String,
    /// Handler config (`null` when absent).
    pub handler_config: Value,
    /// Attempts before the step fails for good.
    pub max_attempts: u32,
    /// Backoff base, in milliseconds.
    pub retry_base_ms: u64,
    /// Backoff cap, in milliseconds.
    pub retry_max_ms: u64,
    /// Whether backoff is jittered.
    pub retry_jitter: bool,
    /// Per-attempt timeout, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Names of the steps it waits for.
    pub depends_on: Vec<String>,
    /// A decision: its output's `next` chooses which of its children run.
    #[serde(default)]
    pub decision: bool,
    /// A mapped step: it runs as one instance per batch of the array at `map.over`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapSpec>,
}

/// How a mapped step fans out (the template's `map:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapSpec {
    /// Where the array is: `context.<path>` or `parents.<parent>[.<path>]`, keys separated by
    /// dots (a number indexes an array).
    pub over: String,
    /// Elements per instance.
    #[serde(default = "MapSpec::default_batch_size")]
    pub batch_size: u32,
    /// Most instances `Enqueued`, `InProgress` or waiting for a retry at once; none means no
    /// limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// What a failed instance does to the step's children.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Most elements the array may have.
    #[serde(default = "MapSpec::default_max_items")]
    pub max_items: u32,
}

impl MapSpec {
    /// `batch_size` when the template gives none.
    pub const DEFAULT_BATCH_SIZE: u32 = 1;
    /// `max_items` when the template gives none.
    pub const DEFAULT_MAX_ITEMS: u32 = 10_000;

    fn default_batch_size() -> u32 {
        Self::DEFAULT_BATCH_SIZE
    }

    fn default_max_items() -> u32 {
        Self::DEFAULT_MAX_ITEMS
    }
}

/// [`MapSpec::on_failure`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// An instance in `Error` holds the children back, as any failed step does.
    #[default]
    Fail,
    /// The children run once every instance has finished; a failed one contributes `null`.
    Continue,
}
