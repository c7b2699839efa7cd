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
}
