//! Tasks, their creation and the audit log.

/// Expands one part of [`impl_sql_store!`](crate::impl_sql_store); not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __sql_store_tasks {
    (store = $store:ty, db = $db:ty, conn = $conn:ty, reader = $reader:ident, writer = $writer:ident $(,)?) => {
        const _: () = {
            $crate::__sql_store_imports!();

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

                /// Creates one task inside the caller's write transaction (see
                /// `TaskStore::task_create`).
                async fn create_in(&self, conn: &mut $conn, params: &TaskCreateParams) -> Result<TaskCreated> {
                    let template = &params.template;
                    let plan = $crate::StepPlan::new(template);
                    // A repeated idempotency key hits the unique index: DO NOTHING, then read the winner
                    // (committed by now, since the insert waited on its index entry).
                    self.count(1);
                    let inserted = sqlx::query(&format!(
                        "INSERT INTO tasks (template_id, namespace, name, version, state, context, \
                         idempotency_key, priority, unfinished_steps, created_at_ms, updated_at_ms) \
                         SELECT id, namespace, name, version, $2, $3, $4, $5, $6, {now}, {now} \
                         FROM templates WHERE id = $1 \
                         ON CONFLICT (template_id, idempotency_key) DO NOTHING RETURNING {TASK_COLUMNS}",
                        now = now_ms!()
                    ))
                    .bind(params.template_id)
                    .bind(if params.start.is_some() {
                        TaskState::StepsInProcess
                    } else {
                        TaskState::Pending
                    }
                    .as_str())
                    .bind(Json(&params.context))
                    .bind(&params.idempotency_key)
                    .bind(i64::from(params.priority))
                    .bind(i64::try_from(plan.steps.len()).unwrap_or(i64::MAX))
                    .fetch_optional(&mut *conn)
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
                                .fetch_optional(&mut *conn)
                                .await
                                .map_err(map_err)?
                            }
                            None => None,
                        };
                        return match existing {
                            Some(row) => Ok(TaskCreated {
                                task: decode_task(&row)?,
                                created: false,
                                queues: Vec::new(),
                            }),
                            None => Err(StoreError::NotFound {
                                entity: "template",
                                id: params.template_id.to_string(),
                            }),
                        };
                    };
                    let task = decode_task(&row)?;

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
                                .push_bind(
                                    if params.start.is_some() && s.is_root() {
                                        StepState::Enqueued
                                    } else {
                                        StepState::Pending
                                    }
                                    .as_str(),
                                )
                                .push_bind(s.max_attempts)
                                .push_bind(s.retry_base_ms)
                                .push_bind(s.retry_max_ms)
                                .push_bind(s.retry_jitter)
                                .push_bind(s.timeout_ms)
                                .push_bind(s.pending_parents);
                        });
                        qb.push(" RETURNING id, name");
                        self.count(1);
                        let rows = qb.build().fetch_all(&mut *conn).await.map_err(map_err)?;
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
                        qb.build().execute(&mut *conn).await.map_err(map_err)?;
                    }

                    let transitions = plan.initial_transitions(
                        task.id,
                        &ids,
                        &params.instance_id,
                        params.start.is_some(),
                    )?;
                    let n = Self::insert_transitions(&mut *conn, &transitions).await?;
                    self.count(n);
                    let mut outbox: std::collections::BTreeMap<String, Vec<serde_json::Value>> =
                        std::collections::BTreeMap::new();
                    if let Some(routing) = &params.start {
                        for s in plan.steps.iter().filter(|s| s.is_root()) {
                            let step_id = ids.get(s.name).copied().ok_or_else(|| {
                                $crate::corrupt("step insert", format!("no id for step {:?}", s.name))
                            })?;
                            outbox
                                .entry(routing.queue(&task.namespace, s.handler).to_owned())
                                .or_default()
                                .push(serde_json::json!(StepMessage {
                                    task_id: task.id,
                                    step_id,
                                }));
                        }
                    }
                    for (queue, payloads) in &outbox {
                        let (_, n) =
                            Self::insert_messages(&mut *conn, queue, payloads, Duration::ZERO).await?;
                        self.count(n);
                    }
                    Ok(TaskCreated {
                        task,
                        created: true,
                        queues: outbox.into_keys().collect(),
                    })
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
                    let mut tx = self.begin_write().await?;
                    let created = self.create_in(&mut tx, params).await?;
                    tx.commit().await.map_err(map_err)?;
                    Ok(created)
                }

                async fn task_create_many(&self, params: &[TaskCreateParams]) -> Result<Vec<TaskCreated>> {
                    let mut tx = self.begin_write().await?;
                    let mut created = Vec::with_capacity(params.len());
                    for p in params {
                        created.push(self.create_in(&mut tx, p).await?);
                    }
                    tx.commit().await.map_err(map_err)?;
                    Ok(created)
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

        };
    };
}
