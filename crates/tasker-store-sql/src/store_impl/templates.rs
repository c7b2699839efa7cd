//! Template versions.

/// Expands one part of [`impl_sql_store!`](crate::impl_sql_store); not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __sql_store_templates {
    (store = $store:ty, db = $db:ty, conn = $conn:ty, reader = $reader:ident, writer = $writer:ident $(,)?) => {
        const _: () = {
            $crate::__sql_store_imports!();

            #[async_trait::async_trait]
            impl TemplateStore for $store {
                async fn template_register(&self, params: &TemplateRegisterParams) -> Result<TemplateRecord> {
                    let t = &params.template;
                    let definition = &t.definition;
                    let version = &t.version;
                    let mut tx = self.begin_write().await?;
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
                        return if record.definition == *definition {
                            Ok(record)
                        } else {
                            Err(StoreError::conflict(format!(
                                    "template {} is already registered with a different definition",
                                    t.key()
                            )))
                        };
                    }
                    let row = sqlx::query(&format!(
                        "INSERT INTO templates (namespace, name, version, definition, created_at_ms) \
                         VALUES ($1, $2, $3, $4, {}) RETURNING {TEMPLATE_COLUMNS}",
                        now_ms!()
                    ))
                    .bind(&t.namespace)
                    .bind(&t.name)
                    .bind(&version)
                    .bind(Json(definition))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?;
                    tx.commit().await.map_err(map_err)?;
                    decode_template(&row)
                }

                async fn template_get(&self, params: &TemplateGetParams) -> Result<TemplateRecord> {
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
                    let rows = sqlx::query(&format!(
                        "SELECT {TEMPLATE_COLUMNS} FROM templates ORDER BY namespace, name, id"
                    ))
                    .fetch_all(&self.$reader)
                    .await
                    .map_err(map_err)?;
                    rows.iter().map(decode_template).collect()
                }
            }

        };
    };
}
