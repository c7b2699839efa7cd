//! What Tasker's SQL backends share, so that each backend crate holds only its SQL and its
//! connection handling: decoding rows into `tasker-types` values through the small [`RowExt`]
//! trait, the column lists those decoders expect, and the normalization of sqlx errors into
//! [`StoreError`] kinds.
//!
//! Both backends give their tables the same column names and kinds (integers, text, JSON), so
//! one decoder per row type serves both.

mod store_impl;

use sqlx::{types::Json, ColumnIndex, Decode, Row, Type};
use tasker_store::{Result, StoreError};
use tasker_types::{
    DeadLetter, Entity, QueueMessage, StepId, StepRow, TaskId, TaskRow, TemplateRecord,
    TransitionRow,
};

/// A backend's database error codes that [`map_err`] sorts into kinds.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCodes {
    /// "Try again later": busy, too many connections, shutdown, connection lost.
    pub unavailable: &'static [&'static str],
    /// The transaction was rolled back to resolve a conflict with another one (deadlock,
    /// serialization failure): safe to run again at once.
    pub contended: &'static [&'static str],
}

/// Normalizes a sqlx error into a [`StoreError`] kind, keeping it as the source.
pub fn map_err(err: sqlx::Error, codes: &ErrorCodes) -> StoreError {
    let code_in = |list: &[&str]| match &err {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| list.contains(&code.as_ref())),
        _ => false,
    };
    let message = match &err {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    };
    let unique = matches!(&err, sqlx::Error::Database(db) if db.is_unique_violation());
    let contended = code_in(codes.contended);
    let unavailable = code_in(codes.unavailable)
        || matches!(
            err,
            sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
        );
    let source = Some(Box::new(err) as tasker_store::BoxError);
    if unique {
        StoreError::Conflict { message, source }
    } else if contended {
        StoreError::Contended { message, source }
    } else if unavailable {
        StoreError::Unavailable { message, source }
    } else {
        StoreError::Other { message, source }
    }
}

/// Typed column access; every sqlx row type whose database decodes these types has it.
pub trait RowExt {
    /// A non-null integer column.
    fn int(&self, column: &str) -> Result<i64>;
    /// A nullable integer column.
    fn opt_int(&self, column: &str) -> Result<Option<i64>>;
    /// A non-null text column.
    fn text(&self, column: &str) -> Result<String>;
    /// A nullable text column.
    fn opt_text(&self, column: &str) -> Result<Option<String>>;
    /// A non-null boolean column.
    fn flag(&self, column: &str) -> Result<bool>;
    /// A nullable JSON column.
    fn opt_json(&self, column: &str) -> Result<Option<Json<serde_json::Value>>>;

    /// A non-null JSON column.
    fn json(&self, column: &str) -> Result<serde_json::Value> {
        self.opt_json(column)?
            .map(|j| j.0)
            .ok_or_else(|| corrupt("json column", format!("{column} is null")))
    }
}

impl<R> RowExt for R
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Json<serde_json::Value>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn int(&self, column: &str) -> Result<i64> {
        self.try_get(column).map_err(decode_err)
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>> {
        self.try_get(column).map_err(decode_err)
    }

    fn text(&self, column: &str) -> Result<String> {
        self.try_get(column).map_err(decode_err)
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        self.try_get(column).map_err(decode_err)
    }

    fn flag(&self, column: &str) -> Result<bool> {
        self.try_get(column).map_err(decode_err)
    }

    fn opt_json(&self, column: &str) -> Result<Option<Json<serde_json::Value>>> {
        self.try_get(column).map_err(decode_err)
    }
}

fn decode_err(err: sqlx::Error) -> StoreError {
    corrupt("row", err)
}

/// A [`StoreError::Corrupt`] for data that did not decode.
pub fn corrupt(what: &'static str, message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what,
        message: message.to_string(),
    }
}

fn get_u32(row: &impl RowExt, column: &str) -> Result<u32> {
    let v = row.int(column)?;
    u32::try_from(v).map_err(|e| corrupt("integer column", format!("{column}: {e}")))
}

fn get_u64(row: &impl RowExt, column: &str) -> Result<u64> {
    let v = row.int(column)?;
    u64::try_from(v).map_err(|e| corrupt("integer column", format!("{column}: {e}")))
}

fn get_state<S: std::str::FromStr>(row: &impl RowExt, what: &'static str) -> Result<S>
where
    S::Err: std::fmt::Display,
{
    let s = row.text("state")?;
    s.parse().map_err(|e| corrupt(what, e))
}

/// The columns [`template`] reads, for `SELECT` and `RETURNING` lists.
pub const TEMPLATE_COLUMNS: &str = "id, namespace, name, version, definition, created_at_ms";

/// Decodes a `templates` row.
pub fn template(row: &impl RowExt) -> Result<TemplateRecord> {
    Ok(TemplateRecord {
        id: row.int("id")?,
        namespace: row.text("namespace")?,
        name: row.text("name")?,
        version: row.text("version")?,
        definition: row.json("definition")?,
        created_at_ms: row.int("created_at_ms")?,
    })
}

/// The columns [`task`] reads, for `SELECT` and `RETURNING` lists.
pub const TASK_COLUMNS: &str = "id, template_id, namespace, name, version, state, context, \
     idempotency_key, priority, created_at_ms, updated_at_ms, finished_at_ms";

/// Decodes a `tasks` row.
pub fn task(row: &impl RowExt) -> Result<TaskRow> {
    let priority = row.int("priority")?;
    Ok(TaskRow {
        id: TaskId(row.int("id")?),
        template_id: row.int("template_id")?,
        namespace: row.text("namespace")?,
        name: row.text("name")?,
        version: row.text("version")?,
        state: get_state(row, "task state")?,
        context: row.json("context")?,
        idempotency_key: row.opt_text("idempotency_key")?,
        priority: i32::try_from(priority).map_err(|e| corrupt("priority", e))?,
        created_at_ms: row.int("created_at_ms")?,
        updated_at_ms: row.int("updated_at_ms")?,
        finished_at_ms: row.opt_int("finished_at_ms")?,
    })
}

/// The columns [`step`] reads, for `SELECT` and `RETURNING` lists.
pub const STEP_COLUMNS: &str = "id, task_id, name, handler, handler_config, state, attempts, \
     max_attempts, retry_base_ms, retry_max_ms, retry_jitter, pending_parents, next_attempt_at_ms, timeout_ms, result, last_error, \
     started_at_ms, finished_at_ms";

/// `columns` (a comma-separated list such as [`STEP_COLUMNS`]) each qualified with `table`,
/// for `RETURNING` lists of statements that join another relation.
pub fn qualified(table: &str, columns: &str) -> String {
    columns
        .split(',')
        .map(|c| format!("{table}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decodes a `steps` row.
pub fn step(row: &impl RowExt) -> Result<StepRow> {
    let timeout_ms = row.opt_int("timeout_ms")?;
    Ok(StepRow {
        id: StepId(row.int("id")?),
        task_id: TaskId(row.int("task_id")?),
        name: row.text("name")?,
        handler: row.text("handler")?,
        handler_config: row.json("handler_config")?,
        state: get_state(row, "step state")?,
        attempts: get_u32(row, "attempts")?,
        max_attempts: get_u32(row, "max_attempts")?,
        retry_base_ms: get_u64(row, "retry_base_ms")?,
        retry_max_ms: get_u64(row, "retry_max_ms")?,
        retry_jitter: row.flag("retry_jitter")?,
        pending_parents: get_u32(row, "pending_parents")?,
        next_attempt_at_ms: row.opt_int("next_attempt_at_ms")?,
        timeout_ms: timeout_ms
            .map(u64::try_from)
            .transpose()
            .map_err(|e| corrupt("timeout_ms", e))?,
        result: row.opt_json("result")?.map(|j| j.0),
        last_error: row.opt_text("last_error")?,
        started_at_ms: row.opt_int("started_at_ms")?,
        finished_at_ms: row.opt_int("finished_at_ms")?,
    })
}

/// The columns [`transition`] reads, for `SELECT` and `RETURNING` lists.
pub const TRANSITION_COLUMNS: &str =
    "id, entity, task_id, step_id, from_state, to_state, event, reason, instance_id, at_ms";

/// Decodes a `transitions` row.
pub fn transition(row: &impl RowExt) -> Result<TransitionRow> {
    let entity = row.text("entity")?;
    Ok(TransitionRow {
        id: row.int("id")?,
        entity: Entity::parse(&entity).ok_or_else(|| corrupt("transition entity", &entity))?,
        task_id: TaskId(row.int("task_id")?),
        step_id: row.opt_int("step_id")?.map(StepId),
        from_state: row.opt_text("from_state")?,
        to_state: row.text("to_state")?,
        event: row.text("event")?,
        reason: row.opt_text("reason")?,
        instance_id: row.text("instance_id")?,
        at_ms: row.int("at_ms")?,
    })
}

/// The columns [`message`] reads, for `SELECT` and `RETURNING` lists.
pub const MESSAGE_COLUMNS: &str = "id, queue, payload, deliveries, enqueued_at_ms, lease_token";

/// Decodes a `queue_messages` row.
pub fn message(row: &impl RowExt) -> Result<QueueMessage> {
    Ok(QueueMessage {
        id: row.int("id")?,
        queue: row.text("queue")?,
        payload: row.json("payload")?,
        deliveries: get_u32(row, "deliveries")?,
        enqueued_at_ms: row.int("enqueued_at_ms")?,
        lease_token: row.opt_text("lease_token")?.unwrap_or_default(),
    })
}

/// Decodes a `dead_letters` row.
pub fn dead_letter(row: &impl RowExt) -> Result<DeadLetter> {
    Ok(DeadLetter {
        id: row.int("id")?,
        queue: row.text("queue")?,
        payload: row.json("payload")?,
        deliveries: get_u32(row, "deliveries")?,
        dead_at_ms: row.int("dead_at_ms")?,
    })
}

/// The record with the highest semantic version (unparseable versions rank lowest).
pub fn highest_version(records: Vec<TemplateRecord>) -> Option<TemplateRecord> {
    records
        .into_iter()
        .max_by_key(|r| semver::Version::parse(&r.version).ok())
}

/// An audit row about to be written; `at_ms` comes from the database clock.
#[derive(Debug, Clone)]
pub struct NewTransition<'a> {
    /// Task or step.
    pub entity: tasker_types::Entity,
    /// The task.
    pub task_id: tasker_types::TaskId,
    /// The step, for step transitions.
    pub step_id: Option<tasker_types::StepId>,
    /// State before; `None` on creation.
    pub from_state: Option<&'a str>,
    /// State after.
    pub to_state: &'a str,
    /// Event name.
    pub event: &'a str,
    /// Optional note.
    pub reason: Option<&'a str>,
    /// Acting instance.
    pub instance_id: &'a str,
}

/// Messages to publish in a transaction, by queue.
pub type Outbox = std::collections::BTreeMap<String, Vec<serde_json::Value>>;

/// Rows per multi-row `INSERT`, well under both backends' bound-parameter limits
/// (SQLite 32,766; PostgreSQL 65,535) for the widest insert (13 columns).
pub const INSERT_CHUNK: usize = 1000;

/// The error for a compare-and-swap that matched no row: the row is gone, or moved on.
pub fn stale_or_missing(
    entity: &'static str,
    id: i64,
    expected: &str,
    actual: Option<String>,
) -> StoreError {
    match actual {
        None => StoreError::NotFound {
            entity,
            id: id.to_string(),
        },
        Some(actual) => StoreError::StaleState {
            entity,
            id,
            expected: expected.to_owned(),
            actual,
        },
    }
}

/// One `steps` row to insert, derived from a template step.
#[derive(Debug, Clone)]
pub struct PlannedStep<'a> {
    /// Index in the template.
    pub position: i64,
    /// Step name.
    pub name: &'a str,
    /// Handler name.
    pub handler: &'a str,
    /// Handler config.
    pub handler_config: &'a serde_json::Value,
    /// Retry policy: attempts.
    pub max_attempts: i64,
    /// Retry policy: base delay.
    pub retry_base_ms: i64,
    /// Retry policy: cap.
    pub retry_max_ms: i64,
    /// Retry policy: jitter.
    pub retry_jitter: bool,
    /// Per-attempt timeout.
    pub timeout_ms: Option<i64>,
    /// Number of parents: the readiness counter's start value.
    pub pending_parents: i64,
}

impl PlannedStep<'_> {
    /// Runs as soon as its task starts: it has no parent.
    pub fn is_root(&self) -> bool {
        self.pending_parents == 0
    }
}

/// The rows `task_create` writes for a template, backend-neutral.
#[derive(Debug)]
pub struct StepPlan<'a> {
    template: &'a tasker_template::TaskTemplate,
    /// One row per step, in template order.
    pub steps: Vec<PlannedStep<'a>>,
}

/// Template durations are far below `i64::MAX` milliseconds; saturate rather than wrap.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl<'a> StepPlan<'a> {
    /// Plans the step rows of `template`.
    pub fn new(template: &'a tasker_template::TaskTemplate) -> Self {
        let steps = template
            .steps
            .iter()
            .zip(0_i64..)
            .map(|(s, position)| PlannedStep {
                position,
                name: &s.name,
                handler: &s.handler.name,
                handler_config: &s.handler.config,
                max_attempts: i64::from(s.retry.max_attempts),
                retry_base_ms: to_i64(s.retry.base_ms),
                retry_max_ms: to_i64(s.retry.max_ms),
                retry_jitter: s.retry.jitter,
                timeout_ms: s.timeout_ms.map(to_i64),
                pending_parents: i64::try_from(s.depends_on.len()).unwrap_or(i64::MAX),
            })
            .collect();
        Self { template, steps }
    }

    /// `(parent, child)` step ids, given the ids the step insert returned by name.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when a step name has no id (the insert returned too few rows).
    pub fn edges(
        &self,
        ids: &std::collections::HashMap<String, tasker_types::StepId>,
    ) -> Result<Vec<(tasker_types::StepId, tasker_types::StepId)>> {
        let id = |name: &str| {
            ids.get(name)
                .copied()
                .ok_or_else(|| corrupt("step insert", format!("no id for step {name:?}")))
        };
        let mut edges = Vec::new();
        for step in &self.template.steps {
            let child = id(&step.name)?;
            for parent in &step.depends_on {
                edges.push((id(parent)?, child));
            }
        }
        Ok(edges)
    }

    /// The creation audit rows: the task's and every step's initial `Pending`; for a task
    /// started at creation also the task's way to `StepsInProcess` and each
    /// root step's `Enqueue`.
    pub fn initial_transitions<'b>(
        &'b self,
        task_id: tasker_types::TaskId,
        ids: &std::collections::HashMap<String, tasker_types::StepId>,
        instance_id: &'b str,
        start: bool,
    ) -> Result<Vec<NewTransition<'b>>> {
        use tasker_types::{Entity, StepEvent, StepState, TaskEvent, TaskState};
        let row = |entity, step_id, from: Option<&'static str>, to, event| NewTransition {
            entity,
            task_id,
            step_id,
            from_state: from,
            to_state: to,
            event,
            reason: None,
            instance_id,
        };
        let mut rows = vec![row(
            Entity::Task,
            None,
            None,
            TaskState::Pending.as_str(),
            "create",
        )];
        rows.extend(self.steps.iter().map(|s| {
            row(
                Entity::Step,
                ids.get(s.name).copied(),
                None,
                StepState::Pending.as_str(),
                "create",
            )
        }));
        if start {
            let mut from = TaskState::Pending;
            for event in [
                TaskEvent::Initialize,
                TaskEvent::BeginEnqueue,
                TaskEvent::StepsEnqueued,
            ] {
                let to = from.transition(event)?;
                rows.push(row(
                    Entity::Task,
                    None,
                    Some(from.as_str()),
                    to.as_str(),
                    event.name(),
                ));
                from = to;
            }
            rows.extend(self.steps.iter().filter(|s| s.is_root()).map(|s| {
                row(
                    Entity::Step,
                    ids.get(s.name).copied(),
                    Some(StepState::Pending.as_str()),
                    StepState::Enqueued.as_str(),
                    StepEvent::Enqueue.name(),
                )
            }));
        }
        Ok(rows)
    }
}

/// Decodes a `(ready, invisible, dead)` count row.
///
/// # Errors
///
/// [`StoreError::Corrupt`] for a negative count.
pub fn queue_depth(row: &impl RowExt) -> Result<tasker_store::QueueDepth> {
    let count = |column: &str| -> Result<u64> {
        u64::try_from(row.int(column)?).map_err(|e| corrupt("queue depth", e))
    };
    Ok(tasker_store::QueueDepth {
        ready: count("ready")?,
        invisible: count("invisible")?,
        dead: count("dead")?,
    })
}

/// The columns after a started step's own in [`started_steps`]' rows: its task's context and
/// one parent's name and output, for a `SELECT` whose steps are aliased `s`, tasks `t` and
/// parents `p`.
pub const STARTED_INPUT_COLUMNS: &str =
    "t.context, p.name AS parent_name, p.result AS parent_result";

/// Groups rows of started steps into each step with its handler's input. Each row holds the
/// step's columns and [`STARTED_INPUT_COLUMNS`]: one row per parent (`parent_name` NULL for a
/// step without any), ordered by step id, then parent position.
///
/// # Errors
///
/// [`StoreError::Corrupt`] for a row that does not decode.
pub fn started_steps(rows: &[impl RowExt]) -> Result<Vec<tasker_store::StepStarted>> {
    let mut started: Vec<tasker_store::StepStarted> = Vec::new();
    for row in rows {
        let id = row.int("id")?;
        if started.last().is_none_or(|s| s.step.id.0 != id) {
            started.push(tasker_store::StepStarted {
                step: step(row)?,
                context: row.json("context")?,
                parents: Vec::new(),
            });
        }
        if let (Some(name), Some(last)) = (row.opt_text("parent_name")?, started.last_mut()) {
            last.parents
                .push((name, row.opt_json("parent_result")?.map(|j| j.0)));
        }
    }
    Ok(started)
}

/// Decodes the rows a dequeue leased into the messages to hand out, oldest first, and those
/// that used up `max_deliveries` (to be moved to the dead letters instead).
///
/// # Errors
///
/// [`StoreError::Corrupt`] for a row that does not decode.
pub fn leased_messages(
    rows: &[impl RowExt],
    max_deliveries: u32,
) -> Result<(Vec<QueueMessage>, Vec<QueueMessage>)> {
    let messages = rows.iter().map(message).collect::<Result<Vec<_>>>()?;
    let (mut live, dead): (Vec<_>, Vec<_>) = messages
        .into_iter()
        .partition(|m| m.deliveries <= max_deliveries);
    live.sort_unstable_by_key(|m| m.id);
    Ok((live, dead))
}

/// A duration as whole milliseconds for a `*_ms` column (saturating).
pub fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A sqlx migrator over migrations embedded with `include_str!` as `(version, description,
/// sql)`. Built by hand because sqlx's `migrate!` macro needs its proc-macro feature, which
/// this workspace leaves off to keep builds lean.
pub fn migrator(migrations: &[(i64, &'static str, &'static str)]) -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let migrations = migrations
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                description.into(),
                MigrationType::Simple,
                sql.into(),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: migrations.into(),
        ..Migrator::DEFAULT
    }
}

/// Size and use of one sqlx pool.
pub fn pool_stats<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> tasker_store::ConnectionPoolStats {
    let open = pool.size();
    // sqlx's idle counter can read transiently wrapped (a huge value) while a connection is
    // being returned; an idle count can never exceed the open connections.
    let idle = u32::try_from(pool.num_idle()).map_or(0, |idle| idle.min(open));
    tasker_store::ConnectionPoolStats {
        max_connections: pool.options().get_max_connections(),
        open,
        idle,
    }
}
