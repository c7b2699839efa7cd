//! Decoding `templates` rows.

use tasker_store::Result;
use tasker_types::TemplateRecord;

use crate::RowExt;

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

/// The record with the highest semantic version (unparseable versions rank lowest).
pub fn highest_version(records: Vec<TemplateRecord>) -> Option<TemplateRecord> {
    records
        .into_iter()
        .max_by_key(|r| semver::Version::parse(&r.version).ok())
}
