//! This backend's error codes for the shared error normalization.

use tasker_store::StoreError;
use tasker_store_sql::ErrorCodes;

/// Connection exceptions (08xxx), too many connections, shutdown and "cannot connect now" are
/// outages; serialization failures (40001) and deadlocks (40P01) are contention.
const CODES: ErrorCodes = ErrorCodes {
    unavailable: &[
        "08000", "08001", "08003", "08004", "08006", "53300", "57P01", "57P02", "57P03",
    ],
    contended: &["40001", "40P01"],
    // lock_not_available: `lock_timeout` ran out.
    locked: &["55P03"],
};

/// Normalizes a sqlx error from this backend into a [`StoreError`] kind, keeping the sqlx
/// error as its source.
pub fn map_err(err: sqlx::Error) -> StoreError {
    tasker_store_sql::map_err(err, &CODES)
}
