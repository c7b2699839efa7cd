//! Tasker's configuration: typed, layered, validated.
//!
//! Sources apply in this order, later ones winning:
//! 1. built-in defaults ([`TaskerConfig::default`]);
//! 2. the `[default]` table of the TOML file (`tasker.toml`, or `--config`);
//! 3. the table of the selected environment, `[development]`, `[test]` or `[production]`
//!    (`TASKER_ENV`, default `development`);
//! 4. `TASKER_*` environment variables, `__` separating levels:
//!    `TASKER_DATABASE__URL`, `TASKER_POOLS__DEFAULT__BATCH_SIZE`;
//! 5. command-line flags (applied by the CLI).
//!
//! Unknown keys are errors, and every error names its key. `docs/configuration.md` lists every
//! key with its default.
//!
//! # One set of defaults
//!
//! The engine's own types hold the defaults ([`EngineConfig::default`] and what it is made
//! of); every section here takes its defaults from them, and [`TaskerConfig::engine_config`]
//! turns a configuration into the engine's types. The failure mode deserializes straight into
//! the engine's [`FailureMode`], and a pool's settings resolve into its [`PoolConfig`].

use std::{path::Path, time::Duration};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment, Profile,
};
use serde::{Deserialize, Serialize};
use tasker_orchestrator::{
    runtime::{
        backpressure::BackpressureConfig,
        coordinator::CoordinatorConfig,
        membership::{ClusterConfig, RetentionConfig},
        pool::PoolConfig,
        resources::FailureMode,
        scaling::ScalingConfig,
    },
    EngineConfig, ExecutorType,
};

/// Why configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value has the wrong type, a key is unknown, or the file does not parse. (Figment's
    /// message already names the key and the source; it is not repeated as a cause.)
    #[error("configuration: {0}")]
    Load(Box<figment::Error>),
    /// A value is out of its range or contradicts another.
    #[error("configuration: {key}: {message}")]
    Invalid {
        /// The offending key, dotted.
        key: String,
        /// What is wrong and what would be right.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TaskerConfig {
    /// Where state lives.
    pub database: DatabaseConfig,
    /// The HTTP server.
    pub server: ServerConfig,
    /// Engine-wide settings.
    pub engine: EngineSettings,
    /// Durable queues.
    pub queues: QueueConfig,
    /// The coordinator's monitor and scaling.
    pub coordinator: CoordinatorSettings,
    /// The global backpressure controller.
    pub backpressure: BackpressureSettings,
    /// Executor pools: `default` for all, then per executor type (`task_claimer`, …,
    /// `in_process_worker`), each key overriding the default.
    pub pools: PoolsConfig,
    /// Export of traces.
    pub telemetry: TelemetryConfig,
    /// The instances sharing one database.
    pub cluster: ClusterSettings,
    /// How long finished work is kept.
    pub retention: RetentionSettings,
    /// Stopping.
    pub shutdown: ShutdownSettings,
}

/// `[shutdown]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSettings {
    /// How long a stopping instance lets the work in flight finish before it aborts what is
    /// left and releases its leases.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            grace: EngineConfig::default().shutdown_grace,
        }
    }
}

/// `[retention]`: how long finished work is kept; `"0s"` keeps it forever.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Tasks finished `Complete`, `Cancelled` or `ResolvedManually`.
    #[serde(with = "humantime_serde")]
    pub complete: Duration,
    /// Tasks in `Error`.
    #[serde(with = "humantime_serde")]
    pub error: Duration,
    /// Dead letters.
    #[serde(with = "humantime_serde")]
    pub dead_letters: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        let keep = EngineConfig::default().cluster.retention;
        let days = |d: Option<Duration>| d.unwrap_or(Duration::ZERO);
        Self {
            complete: days(keep.complete),
            error: days(keep.error),
            dead_letters: days(keep.dead_letters),
        }
    }
}

/// A retention of zero keeps forever.
fn forever_if_zero(retention: Duration) -> Option<Duration> {
    (!retention.is_zero()).then_some(retention)
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// Time between an instance's heartbeats.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// An instance silent for longer is declared dead, and its leases are released.
    #[serde(with = "humantime_serde")]
    pub dead_after: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        let cluster = EngineConfig::default().cluster;
        Self {
            heartbeat: cluster.heartbeat,
            dead_after: cluster.dead_after,
        }
    }
}

/// `[database]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://…` or `sqlite:PATH`; empty means SQLite under `data_dir`.
    pub url: String,
    /// Directory of the embedded SQLite database.
    pub data_dir: String,
    /// Connection pool size (PostgreSQL).
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            data_dir: "tasker-data".into(),
            max_connections: 32,
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listen address.
    pub bind: String,
    /// Largest request body; larger ones get 413.
    pub body_limit_bytes: usize,
    /// Bearer token every route but `/health` requires; empty disables authentication.
    /// Prefer the environment (`TASKER_SERVER__AUTH_TOKEN` or `TASKER_API_TOKEN`) to the file.
    pub auth_token: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            body_limit_bytes: 1024 * 1024,
            auth_token: String::new(),
        }
    }
}

/// `[engine]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Run steps whose handler this process has.
    pub local_workers: bool,
    /// `fail_fast`, `degraded` or `best_effort` when pools do not fit the database pool.
    pub failure_mode: FailureMode,
    /// Lease on claimed tasks.
    #[serde(with = "humantime_serde")]
    pub claim_lease: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        let engine = EngineConfig::default();
        Self {
            local_workers: engine.local_workers,
            failure_mode: engine.failure_mode,
            claim_lease: engine.claim_lease,
        }
    }
}

/// `[queues]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// A delivered message not acknowledged within this is delivered again.
    #[serde(with = "humantime_serde")]
    pub visibility_timeout: Duration,
    /// Deliveries before a message moves to the dead letters.
    pub max_deliveries: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        let engine = EngineConfig::default();
        Self {
            visibility_timeout: engine.visibility_timeout,
            max_deliveries: engine.max_deliveries,
        }
    }
}

/// `[coordinator]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorSettings {
    /// Busy time over wall time the pools aim for, in (0, 1].
    pub target_utilization: f64,
    /// How often the monitor scales, heals and measures pressure.
    #[serde(with = "humantime_serde")]
    pub scaling_interval: Duration,
    /// Least time between two size changes of one pool.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// Queue items per executor above which a pool grows.
    pub queue_depth_per_executor: u64,
    /// An executor silent this long is unhealthy and replaced.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
}

impl Default for CoordinatorSettings {
    fn default() -> Self {
        let c = CoordinatorConfig::default();
        Self {
            target_utilization: c.scaling.target_utilization,
            scaling_interval: c.scaling.interval,
            cooldown: c.scaling.cooldown,
            queue_depth_per_executor: c.scaling.queue_depth_per_executor,
            heartbeat_timeout: c.heartbeat_timeout,
        }
    }
}

/// `[backpressure]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackpressureSettings {
    /// Weight of the newest sample in the moving average, in [0, 1].
    pub smoothing: f64,
    /// Hysteresis band around each level threshold.
    pub hysteresis: f64,
    /// Least time between two changes of the applied factor.
    #[serde(with = "humantime_serde")]
    pub min_dwell: Duration,
    /// Resident memory at which the memory signal reads 1.
    pub memory_budget_bytes: u64,
    /// Ready messages at which the queue signal reads 1.
    pub queue_high_watermark: u64,
    /// Mean batch latency at which the latency signal reads 1.
    #[serde(with = "humantime_serde")]
    pub latency_target: Duration,
}

impl Default for BackpressureSettings {
    fn default() -> Self {
        let c = CoordinatorConfig::default();
        Self {
            smoothing: c.backpressure.smoothing,
            hysteresis: c.backpressure.hysteresis,
            min_dwell: c.backpressure.min_dwell,
            memory_budget_bytes: c.memory_budget_bytes,
            queue_high_watermark: c.queue_high_watermark,
            latency_target: c.latency_target,
        }
    }
}

/// `[telemetry]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP receiver (`http://host:4318`); spans go to its `/v1/traces`.
    /// Empty: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` decides, and
    /// without them nothing is exported.
    pub otlp_endpoint: String,
}

/// `[pools]`: `default`, then per executor type; each key set on a type overrides `default`,
/// and each key set nowhere keeps the engine's default for that type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct PoolsConfig {
    /// Applied to every pool.
    pub default: PoolOverride,
    pub task_request_processor: PoolOverride,
    pub task_claimer: PoolOverride,
    pub step_enqueuer: PoolOverride,
    pub step_result_processor: PoolOverride,
    pub task_finalizer: PoolOverride,
    pub in_process_worker: PoolOverride,
}

/// One `[pools.*]` table: the keys it sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PoolOverride {
    /// Fewest executors.
    pub min_executors: Option<usize>,
    /// Most executors.
    pub max_executors: Option<usize>,
    /// Items per batch.
    pub batch_size: Option<u32>,
    /// Fallback sleep after an empty batch (wake-ups usually come first).
    #[serde(default, with = "humantime_serde")]
    pub polling_interval: Option<Duration>,
    /// How long a stopping executor may finish its batch before it is aborted.
    #[serde(default, with = "humantime_serde")]
    pub stop_timeout: Option<Duration>,
    /// Consecutive failed batches that make an executor unhealthy.
    pub unhealthy_after_errors: Option<u32>,
    /// Consecutive storage failures that open the circuit.
    pub breaker_failure_threshold: Option<u32>,
    /// How long an open circuit waits before a probe.
    #[serde(default, with = "humantime_serde")]
    pub breaker_open_timeout: Option<Duration>,
    /// Successful probes that close it.
    pub breaker_success_threshold: Option<u32>,
    /// How strongly the pool gives way to backpressure, 0–1000 (default per type).
    pub backpressure_weight_permille: Option<u32>,
}

impl PoolOverride {
    /// `pool` with the keys this table sets.
    fn apply(&self, mut pool: PoolConfig) -> PoolConfig {
        macro_rules! take {
            ($($key:ident => $($field:ident).+),+ $(,)?) => {
                $(if let Some(v) = self.$key { pool.$($field).+ = v; })+
            };
        }
        take!(
            min_executors => min_executors,
            max_executors => max_executors,
            batch_size => batch_size,
            polling_interval => polling_interval,
            stop_timeout => stop_timeout,
            unhealthy_after_errors => unhealthy_after_errors,
            breaker_failure_threshold => circuit_breaker.failure_threshold,
            breaker_open_timeout => circuit_breaker.open_timeout,
            breaker_success_threshold => circuit_breaker.success_threshold,
            backpressure_weight_permille => backpressure_weight_permille,
        );
        pool
    }
}

/// Executor types a `[pools.<type>]` table may name.
pub const POOL_TYPES: &[&str] = &[
    "task_request_processor",
    "task_claimer",
    "step_enqueuer",
    "step_result_processor",
    "task_finalizer",
    "in_process_worker",
];

impl PoolsConfig {
    /// The effective settings of pool `name`: the engine's default for its type, then
    /// `[pools.default]`, then `[pools.<name>]`. `"default"` alone resolves against the
    /// engine's generic pool default.
    pub fn resolve(&self, name: &str) -> PoolConfig {
        let Some(t) = ExecutorType::ALL
            .into_iter()
            .chain([ExecutorType::InProcessWorker])
            .find(|t| t.as_str() == name)
        else {
            return self.default.apply(PoolConfig::default());
        };
        let engine = EngineConfig::default();
        let base = match engine.pools.get(&t) {
            Some(pool) => pool.clone(),
            None => engine.worker_pool,
        };
        self.of(t).apply(self.default.apply(base))
    }

    /// The `[pools.<type>]` table of `t`.
    fn of(&self, t: ExecutorType) -> &PoolOverride {
        match t {
            ExecutorType::TaskRequestProcessor => &self.task_request_processor,
            ExecutorType::TaskClaimer => &self.task_claimer,
            ExecutorType::StepEnqueuer => &self.step_enqueuer,
            ExecutorType::StepResultProcessor => &self.step_result_processor,
            ExecutorType::TaskFinalizer => &self.task_finalizer,
            ExecutorType::InProcessWorker => &self.in_process_worker,
        }
    }
}

/// Keys that held milliseconds and now hold a duration under a new name, `(old, new)`.
const RENAMED: [(&str, &str); 7] = [
    ("engine.claim_lease_ms", "engine.claim_lease"),
    ("queues.visibility_timeout_ms", "queues.visibility_timeout"),
    (
        "coordinator.scaling_interval_ms",
        "coordinator.scaling_interval",
    ),
    ("coordinator.cooldown_ms", "coordinator.cooldown"),
    (
        "coordinator.heartbeat_timeout_ms",
        "coordinator.heartbeat_timeout",
    ),
    ("backpressure.min_dwell_ms", "backpressure.min_dwell"),
    (
        "backpressure.latency_target_ms",
        "backpressure.latency_target",
    ),
];

/// The same, for the keys of every `[pools.<type>]` table.
const RENAMED_POOL_KEYS: [(&str, &str); 3] = [
    ("polling_interval_ms", "polling_interval"),
    ("stop_timeout_ms", "stop_timeout"),
    ("breaker_open_timeout_ms", "breaker_open_timeout"),
];

/// An old `*_ms` key fails naming its new key, rather than as merely unknown.
fn refuse_renamed_keys(figment: &Figment) -> Result<(), ConfigError> {
    let pool_tables = std::iter::once("default").chain(POOL_TYPES.iter().copied());
    let pool_keys: Vec<(String, String)> = pool_tables
        .flat_map(|table| {
            RENAMED_POOL_KEYS.iter().map(move |(old, new)| {
                (
                    format!("pools.{table}.{old}"),
                    format!("pools.{table}.{new}"),
                )
            })
        })
        .collect();
    let keys = RENAMED
        .iter()
        .map(|(old, new)| ((*old).to_owned(), (*new).to_owned()))
        .chain(pool_keys);
    for (old, new) in keys {
        if figment.find_value(&old).is_ok() {
            return Err(ConfigError::Invalid {
                key: old,
                message: format!(
                    "renamed: set {new} to a duration such as \"250ms\", \"5s\" or \"1m\""
                ),
            });
        }
    }
    Ok(())
}

impl TaskerConfig {
    /// Loads defaults, the file (its `[default]` and `[<environment>]` tables) and `TASKER_*`
    /// variables, then validates. A missing file is fine when `path` is `None`
    /// (`tasker.toml` is then optional); a named file must exist.
    ///
    /// # Errors
    ///
    /// [`ConfigError`], naming the key.
    pub fn load(path: Option<&Path>, environment: &str) -> Result<Self, ConfigError> {
        let figment = Self::figment(path, environment)?;
        refuse_renamed_keys(&figment)?;
        figment
            .extract::<Self>()
            .map_err(Box::new)
            .map_err(ConfigError::Load)?
            .validated()
    }

    fn figment(path: Option<&Path>, environment: &str) -> Result<Figment, ConfigError> {
        if !["development", "test", "production"].contains(&environment) {
            return Err(ConfigError::Invalid {
                key: "TASKER_ENV".into(),
                message: format!("{environment:?} is not one of development, test, production"),
            });
        }
        let file = match path {
            Some(p) if !p.exists() => {
                return Err(ConfigError::Invalid {
                    key: "--config".into(),
                    message: format!("{} does not exist", p.display()),
                })
            }
            Some(p) => p.to_path_buf(),
            None => "tasker.toml".into(),
        };
        Ok(Figment::from(Serialized::defaults(TaskerConfig::default()))
            .merge(Toml::file(file).nested())
            .merge(
                Env::prefixed("TASKER_")
                    .split("__")
                    .ignore(&[
                        "ENV",
                        "URL",
                        "DATABASE_URL",
                        "DATA_DIR",
                        "BIND",
                        "API_TOKEN",
                        "LOG",
                        "TEST_DATABASE_URL",
                        "TEST_DB_PREFIX",
                        "TEST_PG_CTL",
                    ])
                    .global(),
            )
            .select(Profile::new(environment)))
    }

    /// The engine's settings from this configuration.
    pub fn engine_config(&self) -> EngineConfig {
        let c = &self.coordinator;
        let b = &self.backpressure;
        let defaults = EngineConfig::default();
        EngineConfig {
            pools: ExecutorType::ALL
                .into_iter()
                .map(|t| (t, self.pools.resolve(t.as_str())))
                .collect(),
            worker_pool: self.pools.resolve(ExecutorType::InProcessWorker.as_str()),
            local_workers: self.engine.local_workers,
            coordinator: CoordinatorConfig {
                scaling: ScalingConfig {
                    target_utilization: c.target_utilization,
                    queue_depth_per_executor: c.queue_depth_per_executor,
                    cooldown: c.cooldown,
                    interval: c.scaling_interval,
                },
                heartbeat_timeout: c.heartbeat_timeout,
                backpressure: BackpressureConfig {
                    smoothing: b.smoothing,
                    hysteresis: b.hysteresis,
                    min_dwell: b.min_dwell,
                    ..defaults.coordinator.backpressure.clone()
                },
                memory_budget_bytes: b.memory_budget_bytes,
                queue_high_watermark: b.queue_high_watermark,
                latency_target: b.latency_target,
                ..defaults.coordinator.clone()
            },
            failure_mode: self.engine.failure_mode,
            claim_lease: self.engine.claim_lease,
            visibility_timeout: self.queues.visibility_timeout,
            max_deliveries: self.queues.max_deliveries,
            shutdown_grace: self.shutdown.grace,
            cluster: ClusterConfig {
                heartbeat: self.cluster.heartbeat,
                dead_after: self.cluster.dead_after,
                retention: RetentionConfig {
                    complete: forever_if_zero(self.retention.complete),
                    error: forever_if_zero(self.retention.error),
                    dead_letters: forever_if_zero(self.retention.dead_letters),
                    ..defaults.cluster.retention
                },
            },
            ..defaults
        }
    }

    /// Checks ranges and cross-field rules.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the first offending key.
    pub fn validated(self) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message,
            })
        };
        if !(self.coordinator.target_utilization > 0.0
            && self.coordinator.target_utilization <= 1.0)
        {
            return invalid(
                "coordinator.target_utilization",
                format!("{} is outside (0, 1]", self.coordinator.target_utilization),
            );
        }
        if !(0.0..=1.0).contains(&self.backpressure.smoothing) {
            return invalid(
                "backpressure.smoothing",
                format!("{} is outside [0, 1]", self.backpressure.smoothing),
            );
        }
        for (key, value) in [
            ("queues.visibility_timeout", self.queues.visibility_timeout),
            ("engine.claim_lease", self.engine.claim_lease),
            (
                "coordinator.scaling_interval",
                self.coordinator.scaling_interval,
            ),
            (
                "coordinator.heartbeat_timeout",
                self.coordinator.heartbeat_timeout,
            ),
            ("cluster.heartbeat", self.cluster.heartbeat),
        ] {
            if value.is_zero() {
                return invalid(key, "must be greater than 0".into());
            }
        }
        if self.cluster.dead_after <= self.cluster.heartbeat {
            return invalid(
                "cluster.dead_after",
                format!(
                    "{:?} must be longer than cluster.heartbeat ({:?}), or every instance would \
                     be declared dead between two heartbeats",
                    self.cluster.dead_after, self.cluster.heartbeat
                ),
            );
        }
        if self.queues.max_deliveries == 0 {
            return invalid("queues.max_deliveries", "must be at least 1".into());
        }
        let endpoint = &self.telemetry.otlp_endpoint;
        if !(endpoint.is_empty()
            || endpoint.starts_with("http://")
            || endpoint.starts_with("https://"))
        {
            return invalid(
                "telemetry.otlp_endpoint",
                format!("{endpoint:?} is not an http:// URL such as \"http://localhost:4318\""),
            );
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections", "must be at least 1".into());
        }
        // `default` first, so a bad default is reported under its own key.
        for name in std::iter::once(&"default").chain(POOL_TYPES) {
            let p = self.pools.resolve(name);
            let key = |field: &str| format!("pools.{name}.{field}");
            if p.min_executors > p.max_executors {
                return invalid(
                    &key("min_executors"),
                    format!(
                        "{} exceeds max_executors {}",
                        p.min_executors, p.max_executors
                    ),
                );
            }
            if p.batch_size == 0 {
                return invalid(&key("batch_size"), "must be at least 1".into());
            }
            if p.polling_interval >= self.coordinator.heartbeat_timeout {
                return invalid(
                    &key("polling_interval"),
                    format!(
                        "{} must be below coordinator.heartbeat_timeout ({}), or idle executors look dead",
                        humantime_serde::re::humantime::format_duration(p.polling_interval),
                        humantime_serde::re::humantime::format_duration(self.coordinator.heartbeat_timeout)
                    ),
                );
            }
            if p.circuit_breaker.failure_threshold == 0 || p.circuit_breaker.success_threshold == 0
            {
                return invalid(
                    &key("breaker_failure_threshold"),
                    "breaker thresholds must be at least 1".into(),
                );
            }
            if p.backpressure_weight_permille > 1000 {
                return invalid(
                    &key("backpressure_weight_permille"),
                    "must be at most 1000".into(),
                );
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
// figment's `Jail` closures must return its (large) error type.
#[allow(clippy::result_large_err)]
mod tests;
