use tasker_types::TransitionError;

/// Result alias of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What went wrong in a store call, normalized across backends.
///
/// Only [`StoreError::Unavailable`] is an infrastructure failure; circuit breakers count it and
/// nothing else. The other variants are answers about the data.
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
    },
}

impl StoreError {
    /// Worth retrying later: the infrastructure failed, not the request.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// Counts against a circuit breaker.
    pub fn is_infrastructure(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Other { .. }
        )
    }
}
