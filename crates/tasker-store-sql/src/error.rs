//! Normalizing sqlx errors into [`StoreError`] kinds, and the errors the shared SQL makes itself.

use tasker_store::StoreError;

/// A backend's database error codes that [`map_err`] sorts into kinds.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCodes {
    /// "Try again later": busy, too many connections, shutdown, connection lost.
    pub unavailable: &'static [&'static str],
    /// The transaction was rolled back to resolve a conflict with another one (deadlock,
    /// serialization failure): safe to run again at once.
    pub contended: &'static [&'static str],
    /// A lock was not granted within the transaction's lock wait.
    pub locked: &'static [&'static str],
}

/// Normalizes a sqlx error into a [`StoreError`] kind, keeping it as the source.
pub fn map_err(err: sqlx::Error, codes: &ErrorCodes) -> StoreError {
    let code_in = |list: &[&str]| match &err {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| list.contains(&code.as_ref())),
        _ => false,
    };
    let message = match &err {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    };
    let unique = matches!(&err, sqlx::Error::Database(db) if db.is_unique_violation());
    let contended = code_in(codes.contended);
    let locked = code_in(codes.locked);
    let unavailable = code_in(codes.unavailable)
        || matches!(
            err,
            sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
        );
    let source = Some(Box::new(err) as tasker_store::BoxError);
    if unique {
        StoreError::Conflict { message, source }
    } else if locked {
        StoreError::Locked { message, source }
    } else if contended {
        StoreError::Contended { message, source }
    } else if unavailable {
        StoreError::Unavailable { message, source }
    } else {
        StoreError::Other { message, source }
    }
}

pub(crate) fn decode_err(err: sqlx::Error) -> StoreError {
    corrupt("row", err)
}

/// A [`StoreError::Corrupt`] for data that did not decode.
pub fn corrupt(what: &'static str, message: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what,
        message: message.to_string(),
    }
}

/// The error for a compare-and-swap that matched no row: the row is gone, or moved on.
pub fn stale_or_missing(
    entity: &'static str,
    id: i64,
    expected: &str,
    actual: Option<String>,
) -> StoreError {
    match actual {
        None => StoreError::NotFound {
            entity,
            id: id.to_string(),
        },
        Some(actual) => StoreError::StaleState {
            entity,
            id,
            expected: expected.to_owned(),
            actual,
        },
    }
}
