//! Durable queues: enqueue, lease, ack, nack, release, extend, depth, dead letters.

/// Expands one part of [`impl_sql_store!`](crate::impl_sql_store); not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __sql_store_queues {
    (store = $store:ty, db = $db:ty, conn = $conn:ty, reader = $reader:ident, writer = $writer:ident $(,)?) => {
        const _: () = {
            $crate::__sql_store_imports!();

            impl $store {
                /// Inserts messages in multi-row statements. Returns their ids.
                pub(crate) async fn insert_messages(
                    conn: &mut $conn,
                    queue: &str,
                    payloads: &[serde_json::Value],
                    delay: Duration,
                ) -> Result<Vec<i64>> {
                    let delay = duration_ms(delay);
                    let mut ids = Vec::with_capacity(payloads.len());
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
                        for row in &rows {
                            ids.push(row.try_get("id").map_err(map_err)?);
                        }
                    }
                    // RETURNING order is not promised; ids are increasing in insert order.
                    ids.sort_unstable();
                    if !ids.is_empty() && delay == 0 {
                        Self::announce_enqueued(conn, queue).await?;
                    }
                    Ok(ids)
                }
            }

            impl $store {
                /// Deletes consumed deliveries, each only while its lease token is current.
                ///
                pub(crate) async fn delete_consumed(
                    conn: &mut $conn,
                    consumed: &[QueueAckParams],
                ) -> Result<()> {
                    for chunk in consumed.chunks(INSERT_CHUNK) {
                        let mut qb = QueryBuilder::<$db>::new("DELETE FROM queue_messages WHERE ");
                        push_held(&mut qb, chunk);
                        qb.build().execute(&mut *conn).await.map_err(map_err)?;
                    }
                    Ok(())
                }
            }

            impl $store {
                /// `UPDATE queue_messages SET <set> = now + delay` for the delivery holding
                /// `params.lease_token`; `LeaseLost` when it no longer does. `set` is one of
                /// the constants above, never input.
                async fn lease_update(&self, set: &str, params: &QueueLeaseParams) -> Result<()> {
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

            /// `(id = … AND lease_token = …) OR …`: the deliveries still held by these tokens.
            fn push_held<'a>(qb: &mut QueryBuilder<'a, $db>, held: &'a [QueueAckParams]) {
                for (i, ack) in held.iter().enumerate() {
                    if i > 0 {
                        qb.push(" OR ");
                    }
                    qb.push("(id = ")
                        .push_bind(ack.id)
                        .push(" AND lease_token = ")
                        .push_bind(&ack.lease_token)
                        .push(")");
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
                    let ids =
                        Self::insert_messages(&mut tx, &params.queue, &params.payloads, params.delay).await?;
                    tx.commit().await.map_err(map_err)?;
                    Ok(ids)
                }

                async fn queue_forward(&self, params: &QueueForwardParams) -> Result<Vec<i64>> {
                    let mut tx = self.begin_write().await?;
                    let ids =
                        Self::insert_messages(&mut tx, &params.queue, &params.payloads, Duration::ZERO).await?;
                    Self::delete_consumed(&mut tx, &params.consumed).await?;
                    tx.commit().await.map_err(map_err)?;
                    Ok(ids)
                }

                async fn queue_dequeue(&self, params: &QueueDequeueParams) -> Result<Vec<QueueMessage>> {
                    self.dequeue_leased(params).await
                }

                async fn queue_get(&self, params: &QueueAckParams) -> Result<QueueMessage> {
                    let row = sqlx::query(&format!(
                        "SELECT {MESSAGE_COLUMNS} FROM queue_messages WHERE id = $1 AND lease_token = $2"
                    ))
                    .bind(params.id)
                    .bind(&params.lease_token)
                    .fetch_optional(&self.$reader)
                    .await
                    .map_err(map_err)?;
                    row.as_ref().map(message).transpose()?.ok_or_else(|| lease_lost(params.id))
                }

                async fn queue_ack(&self, params: &QueueAckParams) -> Result<()> {
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

                async fn queue_nack(&self, params: &QueueLeaseParams) -> Result<()> {
                    // Visible again after the delay, and no delivery holds it any more.
                    self.lease_update("lease_token = NULL, visible_at_ms", params).await
                }

                async fn queue_release(&self, params: &QueueLeaseParams) -> Result<()> {
                    self.lease_update(
                        "lease_token = NULL, deliveries = deliveries - 1, visible_at_ms",
                        params,
                    )
                    .await
                }

                async fn queue_extend(&self, params: &QueueLeaseParams) -> Result<()> {
                    self.lease_update("visible_at_ms", params).await
                }

                async fn queue_extend_many(&self, params: &QueueExtendManyParams) -> Result<Vec<i64>> {
                    let mut extended = std::collections::HashSet::with_capacity(params.leases.len());
                    let mut tx = self.begin_write().await?;
                    for chunk in params.leases.chunks(INSERT_CHUNK / 2) {
                        let mut qb = QueryBuilder::<$db>::new("UPDATE queue_messages SET visible_at_ms = ");
                        qb.push(now_ms!())
                            .push(" + ")
                            .push_bind(duration_ms(params.visibility_timeout))
                            .push(" WHERE ");
                        push_held(&mut qb, chunk);
                        qb.push(" RETURNING id");
                        for row in qb.build().fetch_all(&mut *tx).await.map_err(map_err)? {
                            extended.insert(row.try_get::<i64, _>("id").map_err(map_err)?);
                        }
                    }
                    tx.commit().await.map_err(map_err)?;
                    Ok(params
                        .leases
                        .iter()
                        .map(|l| l.id)
                        .filter(|id| !extended.contains(id))
                        .collect())
                }

                async fn queue_depth(&self, queue: &str) -> Result<QueueDepth> {
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
