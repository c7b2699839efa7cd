//! Steps: transitions with readiness bookkeeping, viable steps, the enqueue outbox.

/// Expands one part of [`impl_sql_store!`](crate::impl_sql_store); not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __sql_store_steps {
    (store = $store:ty, db = $db:ty, conn = $conn:ty, reader = $reader:ident, writer = $writer:ident $(,)?) => {
        const _: () = {
            $crate::__sql_store_imports!();

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

        };
    };
}
