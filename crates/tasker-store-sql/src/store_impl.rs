//! The store implementation both SQL backends share, as a macro expanded in each backend crate.
//!
//! The backends run the same SQL (SQLite accepts PostgreSQL's `$N` placeholders, `RETURNING`
//! and `ON CONFLICT … DO NOTHING`); they differ in the `now_ms!()` expression, in how a write
//! transaction begins (SQLite: `BEGIN IMMEDIATE` on its single writer), in their pools, and in
//! dequeueing (PostgreSQL: `FOR UPDATE SKIP LOCKED`). A macro rather than generic code, because
//! sqlx's per-database encode and executor bounds would have to be spelled out on every
//! function; expanded per backend, every query is type-checked against concrete types.
//!
//! The invoking module must have in scope: `now_ms!()` (the database clock in milliseconds as a
//! string literal), `map_err` (sqlx error to `StoreError`), and on `$store`: `count(n)`,
//! `async fn begin_write(&self) -> Result<sqlx::Transaction<'_, $db>>`,
//! `async fn dequeue_leased(&self, &QueueDequeueParams) -> Result<Vec<QueueMessage>>` and
//! `async fn announce_enqueued(&mut $conn, queue: &str) -> Result<u64>` (tell other processes
//! that `queue` has new work, in the enqueueing transaction; returns the statements sent).

/// Implements every store trait but [`tasker_store::Store`] itself for a SQL backend.
#[macro_export]
macro_rules! impl_sql_store {
    (store = $store:ty, db = $db:ty, conn = $conn:ty, reader = $reader:ident, writer = $writer:ident $(,)?) => {
        const _: () = {
            use std::{collections::HashMap, time::Duration};

            use ::sqlx::{types::Json, QueryBuilder, Row};
            use ::tasker_store::{
                QueueAckParams, QueueDepth, QueueDequeueParams, QueueEnqueueManyParams,
                QueueNackParams, QueueStore, Result, StepEnqueueManyParams, StepMessage, StepStore,
                StepTransitionParams, StepViableManyParams, StoreError, TaskClaimParams,
                TaskCreateParams, TaskCreated, TaskListParams, TaskReleaseParams, TaskStore,
                TaskTransitionParams, TemplateGetParams, TemplateRegisterParams, TemplateStore,
                TransitionLog,
            };
            use ::tasker_types::{
                DeadLetter, Entity, QueueMessage, StepEvent, StepId, StepRow, StepState, TaskId,
                TaskRow, TaskState, TemplateRecord, TransitionRow,
            };
            use $crate::{
                corrupt, dead_letter, duration_ms, message, step as decode_step,
                task as decode_task, template as decode_template, transition as decode_transition,
                NewTransition, INSERT_CHUNK, MESSAGE_COLUMNS, STEP_COLUMNS, TASK_COLUMNS,
                TEMPLATE_COLUMNS, TRANSITION_COLUMNS,
            };

            #[async_trait::async_trait]
            impl TemplateStore for $store {
                async fn template_register(&self, params: &TemplateRegisterParams) -> Result<TemplateRecord> {
                    let t = &params.template;
                    let definition = serde_json::to_value(t).map_err(|e| corrupt("template", e))?;
                    let version = t.version.to_string();
                    let mut tx = self.begin_write().await?;
                    self.count(1);
                    let existing = sqlx::query(&format!(
                        "SELECT {TEMPLATE_COLUMNS} FROM templates \
                         WHERE namespace = $1 AND name = $2 AND version = $3"
                    ))
                    .bind(&t.namespace)
                    .bind(&t.name)
                    .bind(&version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?;
                    if let Some(row) = existing {
                        let record = decode_template(&row)?;
                        return if record.definition == definition {
                            Ok(record)
                        } else {
                            Err(StoreError::Conflict {
                                message: format!(
                                    "template {} is already registered with a different definition",
                                    t.key()
                                ),
                            })
                        };
                    }
                    self.count(1);
                    let row = sqlx::query(&format!(
                        "INSERT INTO templates (namespace, name, version, definition, created_at_ms) \
                         VALUES ($1, $2, $3, $4, {}) RETURNING {TEMPLATE_COLUMNS}",
                        now_ms!()
                    ))
                    .bind(&t.namespace)
                    .bind(&t.name)
                    .bind(&version)
                    .bind(Json(&definition))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?;
                    tx.commit().await.map_err(map_err)?;
                    decode_template(&row)
                }

                async fn template_get(&self, params: &TemplateGetParams) -> Result<TemplateRecord> {
                    self.count(1);
                    let rows = sqlx::query(&format!(
                        "SELECT {TEMPLATE_COLUMNS} FROM templates WHERE namespace = $1 AND name = $2 \
                         AND ($3 IS NULL OR version = $3)"
                    ))
                    .bind(&params.namespace)
                    .bind(&params.name)
                    .bind(&params.version)
                    .fetch_all(&self.$reader)
                    .await
                    .map_err(map_err)?;
                    let records = rows
                        .iter()
                        .map(decode_template)
                        .collect::<Result<Vec<_>>>()?;
                    $crate::highest_version(records).ok_or_else(|| StoreError::NotFound {
                        entity: "template",
                        id: format!(
                            "{}/{}@{}",
                            params.namespace,
                            params.name,
                            params.version.as_deref().unwrap_or("latest")
                        ),
                    })
                }

                async fn template_list(&self) -> Result<Vec<TemplateRecord>> {
                    self.count(1);
                    let rows = sqlx::query(&format!(
                        "SELECT {TEMPLATE_COLUMNS} FROM templates ORDER BY namespace, name, id"
                    ))
                    .fetch_all(&self.$reader)
                    .await
                    .map_err(map_err)?;
                    rows.iter().map(decode_template).collect()
                }
            }

            impl $store {
                /// Appends audit rows in multi-row inserts. Returns the statements sent.
                pub(crate) async fn insert_transitions(
                    conn: &mut $conn,
                    rows: &[NewTransition<'_>],
                ) -> Result<u64> {
                    let mut statements = 0;
                    for chunk in rows.chunks(INSERT_CHUNK) {
                        let mut qb = QueryBuilder::<$db>::new(
                            "INSERT INTO transitions (entity, task_id, step_id, from_state, to_state, event, \
                             reason, instance_id, at_ms) ",
                        );
                        qb.push_values(chunk, |mut b, t| {
                            b.push_bind(t.entity.as_str())
                                .push_bind(t.task_id.0)
                                .push_bind(t.step_id.map(|s| s.0))
                                .push_bind(t.from_state)
                                .push_bind(t.to_state)
                                .push_bind(t.event)
                                .push_bind(t.reason)
                                .push_bind(t.instance_id)
                                .push(now_ms!());
                        });
                        qb.build().execute(&mut *conn).await.map_err(map_err)?;
                        statements += 1;
                    }
                    Ok(statements)
                }

                async fn task_fetch(conn: &mut $conn, id: TaskId) -> Result<Option<TaskRow>> {
                    let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"))
                        .bind(id.0)
                        .fetch_optional(conn)
                        .await
                        .map_err(map_err)?;
                    row.as_ref().map(decode_task).transpose()
                }
            }

            #[async_trait::async_trait]
            impl TaskStore for $store {
                async fn task_create(&self, params: &TaskCreateParams) -> Result<TaskCreated> {
                    let template = &params.template;
                    let mut tx = self.begin_write().await?;
                    // A repeated idempotency key hits the unique index: DO NOTHING, then read the winner
                    // (committed by now, since the insert waited on its index entry).
                    self.count(1);
                    let inserted = sqlx::query(&format!(
                        "INSERT INTO tasks (template_id, namespace, name, version, state, context, \
                         idempotency_key, priority, created_at_ms, updated_at_ms) \
                         SELECT id, namespace, name, version, $2, $3, $4, $5, {now}, {now} \
                         FROM templates WHERE id = $1 \
                         ON CONFLICT (template_id, idempotency_key) DO NOTHING RETURNING {TASK_COLUMNS}",
                        now = now_ms!()
                    ))
                    .bind(params.template_id)
                    .bind(TaskState::Pending.as_str())
                    .bind(Json(&params.context))
                    .bind(&params.idempotency_key)
                    .bind(i64::from(params.priority))
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?;
                    let Some(row) = inserted else {
                        let existing = match &params.idempotency_key {
                            Some(key) => {
                                self.count(1);
                                sqlx::query(&format!(
                                    "SELECT {TASK_COLUMNS} FROM tasks \
                                     WHERE template_id = $1 AND idempotency_key = $2"
                                ))
                                .bind(params.template_id)
                                .bind(key)
                                .fetch_optional(&mut *tx)
                                .await
                                .map_err(map_err)?
                            }
                            None => None,
                        };
                        return match existing {
                            Some(row) => Ok(TaskCreated {
                                task: decode_task(&row)?,
                                created: false,
                            }),
                            None => Err(StoreError::NotFound {
                                entity: "template",
                                id: params.template_id.to_string(),
                            }),
                        };
                    };
                    let task = decode_task(&row)?;

                    let plan = $crate::StepPlan::new(template);
                    let mut ids: HashMap<String, StepId> = HashMap::with_capacity(plan.steps.len());
                    for chunk in plan.steps.chunks(INSERT_CHUNK) {
                        let mut qb = QueryBuilder::<$db>::new(
                            "INSERT INTO steps (task_id, position, name, handler, handler_config, state, \
                             max_attempts, retry_base_ms, retry_max_ms, retry_jitter, timeout_ms, \
                             pending_parents) ",
                        );
                        qb.push_values(chunk, |mut b, s| {
                            b.push_bind(task.id.0)
                                .push_bind(s.position)
                                .push_bind(s.name)
                                .push_bind(s.handler)
                                .push_bind(Json(s.handler_config))
                                .push_bind(StepState::Pending.as_str())
                                .push_bind(s.max_attempts)
                                .push_bind(s.retry_base_ms)
                                .push_bind(s.retry_max_ms)
                                .push_bind(s.retry_jitter)
                                .push_bind(s.timeout_ms)
                                .push_bind(s.pending_parents);
                        });
                        qb.push(" RETURNING id, name");
                        self.count(1);
                        let rows = qb.build().fetch_all(&mut *tx).await.map_err(map_err)?;
                        for row in &rows {
                                        ids.insert(
                                row.try_get("name").map_err(map_err)?,
                                StepId(row.try_get("id").map_err(map_err)?),
                            );
                        }
                    }

                    let edges = plan.edges(&ids)?;
                    for chunk in edges.chunks(INSERT_CHUNK) {
                        let mut qb = QueryBuilder::<$db>::new(
                            "INSERT INTO step_edges (task_id, parent_id, child_id) ",
                        );
                        qb.push_values(chunk, |mut b, (parent, child)| {
                            b.push_bind(task.id.0)
                                .push_bind(parent.0)
                                .push_bind(child.0);
                        });
                        self.count(1);
                        qb.build().execute(&mut *tx).await.map_err(map_err)?;
                    }

                    let transitions = plan.initial_transitions(task.id, &ids, &params.instance_id);
                    let n = Self::insert_transitions(&mut tx, &transitions).await?;
                    self.count(n);
                    tx.commit().await.map_err(map_err)?;
                    Ok(TaskCreated {
                        task,
                        created: true,
                    })
                }

                async fn task_get(&self, id: TaskId) -> Result<TaskRow> {
                    self.count(1);
                    let mut conn = self.$reader.acquire().await.map_err(map_err)?;
                    Self::task_fetch(&mut conn, id)
                        .await?
                        .ok_or_else(|| StoreError::NotFound {
                            entity: "task",
                            id: id.to_string(),
                        })
                }

                async fn task_list(&self, params: &TaskListParams) -> Result<Vec<TaskRow>> {
                    let mut qb =
                        QueryBuilder::<$db>::new(format!("SELECT {TASK_COLUMNS} FROM tasks WHERE 1=1"));
                    if let Some(state) = params.state {
                        qb.push(" AND state = ").push_bind(state.as_str());
                    }
                    if let Some(ns) = &params.namespace {
                        qb.push(" AND namespace = ").push_bind(ns);
                    }
                    if let Some(name) = &params.name {
                        qb.push(" AND name = ").push_bind(name);
                    }
                    if let Some(after) = params.created_after_ms {
                        qb.push(" AND created_at_ms >= ").push_bind(after);
                    }
                    if let Some(before) = params.created_before_ms {
                        qb.push(" AND created_at_ms < ").push_bind(before);
                    }
                    if let Some(before) = params.before_id {
                        qb.push(" AND id < ").push_bind(before.0);
                    }
                    qb.push(" ORDER BY id DESC LIMIT ")
                        .push_bind(i64::from(params.limit));
                    self.count(1);
                    let rows = qb.build().fetch_all(&self.$reader).await.map_err(map_err)?;
                    rows.iter().map(decode_task).collect()
                }

                async fn task_transition(&self, params: &TaskTransitionParams) -> Result<TaskRow> {
                    let to = params.from.transition(params.event)?;
                    let mut tx = self.begin_write().await?;
                    self.count(1);
                    let row = sqlx::query(&format!(
                        "UPDATE tasks SET state = $1, updated_at_ms = {now}, \
                         finished_at_ms = CASE WHEN $2 THEN {now} ELSE NULL END \
                         WHERE id = $3 AND state = $4 RETURNING {TASK_COLUMNS}",
                        now = now_ms!()
                    ))
                    .bind(to.as_str())
                    .bind(to.is_terminal())
                    .bind(params.task_id.0)
                    .bind(params.from.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?;
                    let Some(row) = row else {
                        self.count(1);
                        let current = Self::task_fetch(&mut tx, params.task_id).await?;
                        return Err($crate::stale_or_missing(
                            "task",
                            params.task_id.0,
                            params.from.as_str(),
                            current.map(|t| t.state.as_str().to_owned()),
                        ));
                    };
                    let task = decode_task(&row)?;
                    let n = Self::insert_transitions(
                        &mut tx,
                        &[NewTransition {
                            entity: Entity::Task,
                            task_id: task.id,
                            step_id: None,
                            from_state: Some(params.from.as_str()),
                            to_state: to.as_str(),
                            event: params.event.name(),
                            reason: params.reason.as_deref(),
                            instance_id: &params.instance_id,
                        }],
                    )
                    .await?;
                    self.count(n);
                    tx.commit().await.map_err(map_err)?;
                    Ok(task)
                }

                async fn task_claim(&self, params: &TaskClaimParams) -> Result<bool> {
                    self.count(1);
                    let done = sqlx::query(&format!(
                        "UPDATE tasks SET claimed_by = $1, claim_expires_at_ms = {now} + $2 \
                         WHERE id = $3 AND (claimed_by IS NULL OR claimed_by = $1 \
                                            OR claim_expires_at_ms <= {now})",
                        now = now_ms!()
                    ))
                    .bind(&params.claimer)
                    .bind(duration_ms(params.lease))
                    .bind(params.task_id.0)
                    .execute(&self.$writer)
                    .await
                    .map_err(map_err)?;
                    Ok(done.rows_affected() == 1)
                }

                async fn task_release(&self, params: &TaskReleaseParams) -> Result<bool> {
                    self.count(1);
                    let done = sqlx::query(
                        "UPDATE tasks SET claimed_by = NULL, claim_expires_at_ms = NULL \
                         WHERE id = $1 AND claimed_by = $2",
                    )
                    .bind(params.task_id.0)
                    .bind(&params.claimer)
                    .execute(&self.$writer)
                    .await
                    .map_err(map_err)?;
                    Ok(done.rows_affected() == 1)
                }
            }

            #[async_trait::async_trait]
            impl TransitionLog for $store {
                async fn transition_list(&self, task_id: TaskId) -> Result<Vec<TransitionRow>> {
                    self.count(1);
                    let rows = sqlx::query(&format!(
                        "SELECT {TRANSITION_COLUMNS} FROM transitions WHERE task_id = $1 ORDER BY id"
                    ))
                    .bind(task_id.0)
                    .fetch_all(&self.$reader)
                    .await
                    .map_err(map_err)?;
                    rows.iter().map(decode_transition).collect()
                }
            }

            #[async_trait::async_trait]
            impl StepStore for $store {
                async fn step_list(&self, task_id: TaskId) -> Result<Vec<StepRow>> {
                    self.count(1);
                    let rows = sqlx::query(&format!(
                        "SELECT {STEP_COLUMNS} FROM steps WHERE task_id = $1 ORDER BY position"
                    ))
                    .bind(task_id.0)
                    .fetch_all(&self.$reader)
                    .await
                    .map_err(map_err)?;
                    rows.iter().map(decode_step).collect()
                }

                async fn step_get(&self, id: StepId) -> Result<StepRow> {
                    self.count(1);
                    let row = sqlx::query(&format!("SELECT {STEP_COLUMNS} FROM steps WHERE id = $1"))
                        .bind(id.0)
                        .fetch_optional(&self.$reader)
                        .await
                        .map_err(map_err)?
                        .ok_or_else(|| StoreError::NotFound {
                            entity: "step",
                            id: id.to_string(),
                        })?;
                    decode_step(&row)
                }

                async fn step_edges(&self, task_id: TaskId) -> Result<Vec<(StepId, StepId)>> {
                    self.count(1);
                    let rows = sqlx::query(
                        "SELECT parent_id, child_id FROM step_edges WHERE task_id = $1 \
                         ORDER BY parent_id, child_id",
                    )
                    .bind(task_id.0)
                    .fetch_all(&self.$reader)
                    .await
                    .map_err(map_err)?;
                    rows.iter()
                        .map(|r| {
                            Ok((
                                StepId(r.try_get("parent_id").map_err(map_err)?),
                                StepId(r.try_get("child_id").map_err(map_err)?),
                            ))
                        })
                        .collect()
                }

                async fn step_parent_outputs(
                    &self,
                    step_id: StepId,
                ) -> Result<Vec<(String, Option<serde_json::Value>)>> {
                    self.count(1);
                    let rows = sqlx::query(
                        "SELECT p.name, p.result FROM step_edges e \
                         JOIN steps p ON p.id = e.parent_id \
                         WHERE e.child_id = $1 ORDER BY p.position",
                    )
                    .bind(step_id.0)
                    .fetch_all(&self.$reader)
                    .await
                    .map_err(map_err)?;
                    rows.iter()
                        .map(|r| {
                            let name: String = r.try_get("name").map_err(map_err)?;
                            let result: Option<Json<serde_json::Value>> =
                                r.try_get("result").map_err(map_err)?;
                            Ok((name, result.map(|j| j.0)))
                        })
                        .collect()
                }

                async fn step_transition(&self, params: &StepTransitionParams) -> Result<StepRow> {
                    let to = params.from.transition(params.event)?;
                    let mut tx = self.begin_write().await?;
                    self.count(1);
                    let row = sqlx::query(&format!(
                        "UPDATE steps SET state = $1, \
                         attempts = CASE WHEN $2 THEN attempts + 1 WHEN $3 THEN 0 ELSE attempts END, \
                         started_at_ms = CASE WHEN $2 AND started_at_ms IS NULL THEN {now} \
                                         ELSE started_at_ms END, \
                         result = COALESCE($4, result), \
                         last_error = COALESCE($5, last_error), \
                         next_attempt_at_ms = CASE WHEN $6 IS NULL THEN NULL ELSE {now} + $6 END, \
                         finished_at_ms = CASE WHEN $7 THEN {now} ELSE NULL END \
                         WHERE id = $8 AND state = $9 AND ($10 IS NULL OR attempts = $10) \
                         RETURNING {STEP_COLUMNS}",
                        now = now_ms!()
                    ))
                    .bind(to.as_str())
                    .bind(params.event == StepEvent::Start)
                    .bind(params.event == StepEvent::Retry)
                    .bind(params.output.as_ref().map(Json))
                    .bind(params.error.as_deref())
                    .bind(params.retry_after.map(duration_ms))
                    .bind(to.is_terminal())
                    .bind(params.step_id.0)
                    .bind(params.from.as_str())
                    .bind(params.attempt.map(i64::from))
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?;
                    let Some(row) = row else {
                        self.count(1);
                        let current: Option<String> =
                            sqlx::query_scalar("SELECT state FROM steps WHERE id = $1")
                                .bind(params.step_id.0)
                                .fetch_optional(&mut *tx)
                                .await
                                .map_err(map_err)?;
                        return Err($crate::stale_or_missing(
                            "step",
                            params.step_id.0,
                            params.from.as_str(),
                            current,
                        ));
                    };
                    let step = decode_step(&row)?;
                    if to.satisfies_dependents() {
                        self.count(1);
                        sqlx::query(
                            "UPDATE steps SET pending_parents = pending_parents - 1 \
                             WHERE id IN (SELECT child_id FROM step_edges WHERE parent_id = $1)",
                        )
                        .bind(step.id.0)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    }
                    let n = Self::insert_transitions(
                        &mut tx,
                        &[NewTransition {
                            entity: Entity::Step,
                            task_id: step.task_id,
                            step_id: Some(step.id),
                            from_state: Some(params.from.as_str()),
                            to_state: to.as_str(),
                            event: params.event.name(),
                            reason: params.error.as_deref(),
                            instance_id: &params.instance_id,
                        }],
                    )
                    .await?;
                    self.count(n);
                    tx.commit().await.map_err(map_err)?;
                    Ok(step)
                }

                async fn step_viable_many(&self, params: &StepViableManyParams) -> Result<Vec<StepRow>> {
                    self.count(1);
                    // The first two predicates are exactly `steps_viable_idx`'s, so the planner reads the
                    // partial index: the ready steps of this task, nothing else.
                    let rows = sqlx::query(&format!(
                        "SELECT {STEP_COLUMNS} FROM steps \
                         WHERE task_id = $1 AND pending_parents = 0 \
                           AND state IN ('Pending', 'WaitingForRetry') \
                           AND (state = 'Pending' OR next_attempt_at_ms <= {now}) \
                           AND attempts < max_attempts \
                         ORDER BY position LIMIT $2",
                        now = now_ms!()
                    ))
                    .bind(params.task_id.0)
                    .bind(i64::from(params.limit))
                    .fetch_all(&self.$reader)
                    .await
                    .map_err(map_err)?;
                    rows.iter().map(decode_step).collect()
                }

                async fn step_enqueue_many(&self, params: &StepEnqueueManyParams) -> Result<Vec<StepId>> {
                    if params.steps.is_empty() {
                        return Ok(Vec::new());
                    }
                    let mut tx = self.begin_write().await?;
                    let mut enqueued: Vec<(StepId, StepState)> = Vec::with_capacity(params.steps.len());
                    for from in [StepState::Pending, StepState::WaitingForRetry] {
                        let ids: Vec<i64> = params
                            .steps
                            .iter()
                            .filter(|(_, s)| *s == from)
                            .map(|(id, _)| id.0)
                            .collect();
                        if ids.is_empty() {
                            continue;
                        }
                        let mut qb = QueryBuilder::<$db>::new("UPDATE steps SET state = ");
                        qb.push_bind(StepState::Enqueued.as_str())
                            .push(" WHERE task_id = ")
                            .push_bind(params.task_id.0)
                            .push(" AND pending_parents = 0 AND state = ")
                            .push_bind(from.as_str())
                            .push(" AND id IN (");
                        let mut list = qb.separated(", ");
                        for id in &ids {
                            list.push_bind(*id);
                        }
                        qb.push(") RETURNING id");
                        self.count(1);
                        let rows = qb.build().fetch_all(&mut *tx).await.map_err(map_err)?;
                        for row in &rows {
                            enqueued.push((StepId(row.try_get("id").map_err(map_err)?), from));
                        }
                    }
                    if enqueued.is_empty() {
                        return Ok(Vec::new());
                    }
                    let transitions: Vec<NewTransition<'_>> = enqueued
                        .iter()
                        .map(|&(step_id, from)| NewTransition {
                            entity: Entity::Step,
                            task_id: params.task_id,
                            step_id: Some(step_id),
                            from_state: Some(from.as_str()),
                            to_state: StepState::Enqueued.as_str(),
                            event: StepEvent::Enqueue.name(),
                            reason: None,
                            instance_id: &params.instance_id,
                        })
                        .collect();
                    let n = Self::insert_transitions(&mut tx, &transitions).await?;
                    self.count(n);
                    let payloads = enqueued
                        .iter()
                        .map(|&(step_id, _)| {
                            serde_json::to_value(StepMessage {
                                task_id: params.task_id,
                                step_id,
                            })
                            .map_err(|e| $crate::corrupt("step message", e))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let n = Self::insert_messages(&mut tx, &params.queue, &payloads, Duration::ZERO).await?;
                    self.count(n.1);
                    tx.commit().await.map_err(map_err)?;
                    Ok(enqueued.into_iter().map(|(id, _)| id).collect())
                }
            }

            impl $store {
                /// Inserts messages in multi-row statements. Returns their ids and the statements sent.
                pub(crate) async fn insert_messages(
                    conn: &mut $conn,
                    queue: &str,
                    payloads: &[serde_json::Value],
                    delay: Duration,
                ) -> Result<(Vec<i64>, u64)> {
                    let delay = duration_ms(delay);
                    let mut ids = Vec::with_capacity(payloads.len());
                    let mut statements = 0;
                    for chunk in payloads.chunks(INSERT_CHUNK) {
                        let mut qb = QueryBuilder::<$db>::new(
                            "INSERT INTO queue_messages (queue, payload, enqueued_at_ms, visible_at_ms) ",
                        );
                        qb.push_values(chunk, |mut b, payload| {
                            b.push_bind(queue)
                                .push_bind(Json(payload))
                                .push(now_ms!())
                                .push(concat!(now_ms!(), " + "))
                                .push_bind_unseparated(delay);
                        });
                        qb.push(" RETURNING id");
                        let rows = qb.build().fetch_all(&mut *conn).await.map_err(map_err)?;
                        statements += 1;
                        for row in &rows {
                            ids.push(row.try_get("id").map_err(map_err)?);
                        }
                    }
                    // RETURNING order is not promised; ids are increasing in insert order.
                    ids.sort_unstable();
                    if !ids.is_empty() && delay == 0 {
                        statements += Self::announce_enqueued(conn, queue).await?;
                    }
                    Ok((ids, statements))
                }
            }

            impl $store {
                /// `UPDATE queue_messages SET <set> = now + delay` for the delivery holding
                /// `params.lease_token`; `LeaseLost` when it no longer does. `set` is one of
                /// the constants above, never input.
                async fn lease_update(&self, set: &str, params: &QueueNackParams) -> Result<()> {
                    self.count(1);
                    let done = sqlx::query(&format!(
                        "UPDATE queue_messages SET {set} = {} + $1 \
                         WHERE id = $2 AND lease_token = $3",
                        now_ms!()
                    ))
                    .bind(duration_ms(params.delay))
                    .bind(params.id)
                    .bind(&params.lease_token)
                    .execute(&self.$writer)
                    .await
                    .map_err(map_err)?;
                    if done.rows_affected() == 0 {
                        return Err(lease_lost(params.id));
                    }
                    Ok(())
                }
            }

            fn lease_lost(id: i64) -> StoreError {
                StoreError::LeaseLost {
                    entity: "message",
                    id,
                }
            }

            #[async_trait::async_trait]
            impl QueueStore for $store {
                async fn queue_enqueue_many(&self, params: &QueueEnqueueManyParams) -> Result<Vec<i64>> {
                    if params.payloads.is_empty() {
                        return Ok(Vec::new());
                    }
                    let mut tx = self.begin_write().await?;
                    let (ids, n) =
                        Self::insert_messages(&mut tx, &params.queue, &params.payloads, params.delay).await?;
                    self.count(n);
                    tx.commit().await.map_err(map_err)?;
                    Ok(ids)
                }

                async fn queue_dequeue(&self, params: &QueueDequeueParams) -> Result<Vec<QueueMessage>> {
                    self.dequeue_leased(params).await
                }

                async fn queue_ack(&self, params: &QueueAckParams) -> Result<()> {
                    self.count(1);
                    let done = sqlx::query("DELETE FROM queue_messages WHERE id = $1 AND lease_token = $2")
                        .bind(params.id)
                        .bind(&params.lease_token)
                        .execute(&self.$writer)
                        .await
                        .map_err(map_err)?;
                    if done.rows_affected() == 0 {
                        return Err(lease_lost(params.id));
                    }
                    Ok(())
                }

                async fn queue_nack(&self, params: &QueueNackParams) -> Result<()> {
                    // Visible again after the delay, and no delivery holds it any more.
                    self.lease_update("lease_token = NULL, visible_at_ms", params).await
                }

                async fn queue_release(&self, params: &QueueNackParams) -> Result<()> {
                    self.lease_update(
                        "lease_token = NULL, deliveries = deliveries - 1, visible_at_ms",
                        params,
                    )
                    .await
                }

                async fn queue_extend(&self, params: &QueueNackParams) -> Result<()> {
                    self.lease_update("visible_at_ms", params).await
                }

                async fn queue_depth(&self, queue: &str) -> Result<QueueDepth> {
                    self.count(1);
                    let row = sqlx::query(&format!(
                        "SELECT \
                           (SELECT COUNT(*) FROM queue_messages WHERE queue = $1 AND visible_at_ms <= {now}) \
                             AS ready, \
                           (SELECT COUNT(*) FROM queue_messages WHERE queue = $1 AND visible_at_ms > {now}) \
                             AS invisible, \
                           (SELECT COUNT(*) FROM dead_letters WHERE queue = $1) AS dead",
                        now = now_ms!()
                    ))
                    .bind(queue)
                    .fetch_one(&self.$reader)
                    .await
                    .map_err(map_err)?;
                    $crate::queue_depth(&row)
                }

                async fn dead_letter_list(&self, queue: &str) -> Result<Vec<DeadLetter>> {
                    self.count(1);
                    let rows = sqlx::query(
                        "SELECT id, queue, payload, deliveries, dead_at_ms FROM dead_letters \
                         WHERE queue = $1 ORDER BY id",
                    )
                    .bind(queue)
                    .fetch_all(&self.$reader)
                    .await
                    .map_err(map_err)?;
                    rows.iter().map(dead_letter).collect()
                }
            }

        };
    };
}
