//! This backend's error codes for the shared error normalization.

use tasker_store::StoreError;
use tasker_store_sql::ErrorCodes;

/// SQLITE_BUSY, SQLITE_LOCKED and their extended codes: another writer holds the file. SQLite
/// has no deadlocks between writers (there is one writer at a time), so nothing is contended.
const CODES: ErrorCodes = ErrorCodes {
    unavailable: &["5", "6", "261", "517"],
    contended: &[],
    // No row locks: the one writer waits for the file (`busy_timeout`) instead.
    locked: &[],
};

/// Normalizes a sqlx error from this backend.
pub(crate) fn map_err(err: sqlx::Error) -> StoreError {
    tasker_store_sql::map_err(err, &CODES)
}
