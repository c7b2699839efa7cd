use tasker_types::TransitionError;

/// Result alias of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The backend's own error, kept as the source of a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in a store call, normalized across backends.
///
/// Circuit breakers count [`StoreError::Unavailable`] and [`StoreError::Other`]
/// ([`StoreError::is_infrastructure`]). `Unavailable` is an outage: no connection, the pool
/// timed out, the server shutting down, or (SQLite) the file busy. `Other` is the catch-all of
/// the normalization, so it also holds errors a bad statement or bad data causes (constraint
/// and data errors, statement timeouts, decoding): they count too, as the engine cannot tell
/// them from a sick database. Neither [`StoreError::Locked`] (a row lock waited for longer
/// than the caller allowed) nor [`StoreError::Contended`] (a deadlock or serialization failure:
/// the database rolled one transaction back) does not count; the hot write paths run such a
/// transaction again ([`crate::retry_contended`]), elsewhere it reaches the caller as a
/// retryable error. The other variants are answers about the data (`NotFound`, `Conflict`,
/// `StaleState`, `LeaseLost`, `Transition`) or a broken invariant (`Corrupt`), and do not
/// count. Variants that wrap a backend error keep it as their [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The row does not exist.
    #[error("{entity} {id} not found")]
    NotFound {
        /// Kind of row (`task`, `step`, `template`, `message`).
        entity: &'static str,
        /// Its identity, as text.
        id: String,
    },
    /// A unique constraint refused the write (for example a template version registered twice
    /// with different content).
    #[error("conflict: {message}")]
    Conflict {
        /// What collided.
        message: String,
        /// The backend's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A compare-and-swap lost: the row was not in the expected state any more.
    #[error("{entity} {id} is no longer {expected} (now {actual})")]
    StaleState {
        /// `task` or `step`.
        entity: &'static str,
        /// Its id.
        id: i64,
        /// The state the caller expected.
        expected: String,
        /// The state found.
        actual: String,
    },
    /// A queue lease (or task claim) is no longer held by the caller.
    #[error("lease on {entity} {id} lost")]
    LeaseLost {
        /// `message` or `task`.
        entity: &'static str,
        /// Its id.
        id: i64,
    },
    /// The requested state change is not a legal move of its state machine.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The database could not be reached or refused service (connection, pool timeout, busy).
    #[error("storage unavailable: {message}")]
    Unavailable {
        /// Backend's description.
        message: String,
        /// The backend's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The database rolled the transaction back to resolve a conflict with another one (a
    /// deadlock or a serialization failure). Nothing was written; running it again is safe.
    #[error("transaction rolled back by contention: {message}")]
    Contended {
        /// Backend's description.
        message: String,
        /// The backend's error.
        #[source]
        source: Option<BoxError>,
    },
    /// A row lock the transaction needed was not granted within the wait its caller allowed
    /// (`StepApplyResultsParams::lock_wait`): another session holds the row. The database
    /// rolled the transaction back, so nothing was written; it may run again once the lock is
    /// gone, or its work may take a path that does not wait.
    #[error("row lock not granted in time: {message}")]
    Locked {
        /// Backend's description.
        message: String,
        /// The backend's error.
        #[source]
        source: Option<BoxError>,
    },
    /// Stored data could not be decoded (a bug or a foreign write).
    #[error("corrupt {what}: {message}")]
    Corrupt {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        message: String,
    },
    /// Any other backend error.
    #[error("storage error: {message}")]
    Other {
        /// Backend's description.
        message: String,
        /// The backend's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
}

impl StoreError {
    /// [`StoreError::Unavailable`] without a backend error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        StoreError::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// [`StoreError::Other`] without a backend error.
    pub fn other(message: impl Into<String>) -> Self {
        StoreError::Other {
            message: message.into(),
            source: None,
        }
    }

    /// [`StoreError::Conflict`] without a backend error.
    pub fn conflict(message: impl Into<String>) -> Self {
        StoreError::Conflict {
            message: message.into(),
            source: None,
        }
    }

    /// Worth retrying: the infrastructure failed or the transaction lost a conflict, not the
    /// request. A write that failed `Unavailable` may still have committed (the answer was
    /// lost); one that failed `Contended` or `Locked` did not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. }
                | StoreError::Contended { .. }
                | StoreError::Locked { .. }
        )
    }

    /// Counts against a circuit breaker: the database is failing, not merely busy resolving
    /// conflicts between transactions.
    pub fn is_infrastructure(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Other { .. }
        )
    }
}
