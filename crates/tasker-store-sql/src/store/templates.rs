//! Template versions.

use async_trait::async_trait;
use tasker_store::{Result, StoreError, TemplateGetParams, TemplateRegisterParams, TemplateStore};
use tasker_types::TemplateRecord;

use super::{commit, fetch_one, fetch_optional, Backend, Sql, SqlStore};
use crate::{highest_version, template as decode_template, TEMPLATE_COLUMNS};

#[async_trait]
impl<B: Backend> TemplateStore for SqlStore<B> {
    async fn template_register(&self, params: &TemplateRegisterParams) -> Result<TemplateRecord> {
        let t = &params.template;
        let definition = &t.definition;
        let mut tx = self.begin_write().await?;
        let existing = fetch_optional::<B>(
            &mut tx,
            &Sql::new(format!(
                "SELECT {TEMPLATE_COLUMNS} FROM templates \
                 WHERE namespace = $1 AND name = $2 AND version = $3"
            ))
            .bind(&t.namespace)
            .bind(&t.name)
            .bind(&t.version),
        )
        .await?;
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
        let row = fetch_one::<B>(
            &mut tx,
            &Sql::new(format!(
                "INSERT INTO templates (namespace, name, version, definition, created_at_ms) \
                 VALUES ($1, $2, $3, $4, {}) RETURNING {TEMPLATE_COLUMNS}",
                B::NOW_MS
            ))
            .bind(&t.namespace)
            .bind(&t.name)
            .bind(&t.version)
            .bind(definition),
        )
        .await?;
        commit::<B>(tx).await?;
        decode_template(&row)
    }

    async fn template_get(&self, params: &TemplateGetParams) -> Result<TemplateRecord> {
        let rows = B::fetch_all(
            &mut *self.read().await?,
            &Sql::new(format!(
                "SELECT {TEMPLATE_COLUMNS} FROM templates WHERE namespace = $1 AND name = $2 \
                 AND ($3 IS NULL OR version = $3)"
            ))
            .bind(&params.namespace)
            .bind(&params.name)
            .bind(params.version.as_deref()),
        )
        .await?;
        let records = rows
            .iter()
            .map(decode_template)
            .collect::<Result<Vec<_>>>()?;
        highest_version(records).ok_or_else(|| StoreError::NotFound {
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
        let rows = B::fetch_all(
            &mut *self.read().await?,
            &Sql::new(format!(
                "SELECT {TEMPLATE_COLUMNS} FROM templates ORDER BY namespace, name, id"
            )),
        )
        .await?;
        rows.iter().map(decode_template).collect()
    }
}
