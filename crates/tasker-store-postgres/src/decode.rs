//! This backend's error codes for the shared error normalization.

use tasker_store::StoreError;

/// Connection exceptions (08xxx), too many connections, shutdown and "cannot connect now",
/// serialization failures and deadlocks: the request may succeed later.
const UNAVAILABLE_CODES: &[&str] = &[
    "08000", "08001", "08003", "08004", "08006", "53300", "57P01", "57P02", "57P03", "40001",
    "40P01",
];

/// Normalizes a sqlx error from this backend.
pub(crate) fn map_err(err: sqlx::Error) -> StoreError {
    tasker_store_sql::map_err(err, UNAVAILABLE_CODES)
}
