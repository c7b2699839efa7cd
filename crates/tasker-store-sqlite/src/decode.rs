//! This backend's error codes for the shared error normalization.

use tasker_store::StoreError;

/// SQLITE_BUSY, SQLITE_LOCKED and their extended codes: another writer holds the file.
const UNAVAILABLE_CODES: &[&str] = &["5", "6", "261", "517"];

/// Normalizes a sqlx error from this backend.
pub(crate) fn map_err(err: sqlx::Error) -> StoreError {
    tasker_store_sql::map_err(err, UNAVAILABLE_CODES)
}
