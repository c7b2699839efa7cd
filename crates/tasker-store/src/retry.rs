//! The two retry rules of storage calls, in one place:
//!
//! - [`retry_contended`]: a transaction the database rolled back to resolve a deadlock or a
//!   serialization failure ([`StoreError::Contended`]) wrote nothing, so it runs again at once,
//!   a few times, before the error reaches the caller.
//! - [`retry_while_unavailable`]: after a write committed, the reads that build the answer ride
//!   out a short outage ([`StoreError::is_retryable`]) rather than turn a done deed into an
//!   error the client would retry.

use std::{future::Future, time::Duration};

use crate::{Result, StoreError};

/// How long the follow-up of a committed write (reading back what it made, or the steps that
/// complete an operator action, each safe to repeat) rides out a storage outage before giving
/// up: long enough for a database restart.
pub const FOLLOW_UP_PATIENCE: Duration = Duration::from_secs(15);

/// An error that may carry a [`StoreError`], so the retry rules can classify it.
pub trait AsStoreError {
    /// The store error inside, if any.
    fn as_store_error(&self) -> Option<&StoreError>;
}

impl AsStoreError for StoreError {
    fn as_store_error(&self) -> Option<&StoreError> {
        Some(self)
    }
}

/// Runs of a contended transaction, the first included.
pub const CONTENDED_ATTEMPTS: u32 = 5;

/// Runs `op` until it does not fail with [`StoreError::Contended`], at most
/// [`CONTENDED_ATTEMPTS`] times, pausing a few milliseconds more each time so the other
/// transaction can finish.
///
/// # Errors
///
/// The last error of `op`; any error but `Contended` at once.
///
/// # Cancel safety
///
/// Cancel safe when `op`'s futures are.
pub async fn retry_contended<T, E, F, Fut>(mut op: F) -> Result<T, E>
where
    E: AsStoreError,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e)
                if attempt < CONTENDED_ATTEMPTS
                    && matches!(e.as_store_error(), Some(StoreError::Contended { .. })) =>
            {
                tracing::debug!(attempt, "transaction contended; running it again");
                tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Runs `op` until it succeeds or fails with an error that is not retryable, pausing between
/// runs (100 ms, doubling to 1 s), for at most `patience`.
///
/// Only for reads, or writes that are safe to repeat: an `Unavailable` write may have
/// committed.
///
/// # Errors
///
/// The last error of `op` once `patience` has passed; a non-retryable error at once.
///
/// # Cancel safety
///
/// Cancel safe when `op`'s futures are.
pub async fn retry_while_unavailable<T, E, F, Fut>(patience: Duration, mut op: F) -> Result<T, E>
where
    E: AsStoreError,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(100);
    loop {
        match op().await {
            Err(e)
                if e.as_store_error().is_some_and(StoreError::is_retryable)
                    && tokio::time::Instant::now() + pause < deadline =>
            {
                tracing::debug!("storage unavailable; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn contended() -> StoreError {
        StoreError::Contended {
            message: "deadlock detected".into(),
            source: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn contended_transactions_run_again_until_they_pass() {
        let runs = AtomicU32::new(0);
        let out = retry_contended(|| async {
            if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(contended())
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(out.unwrap(), 7);
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn contention_gives_up_after_the_bound_and_other_errors_are_not_retried() {
        let runs = AtomicU32::new(0);
        let out: Result<()> = retry_contended(|| async {
            runs.fetch_add(1, Ordering::SeqCst);
            Err(contended())
        })
        .await;
        assert!(matches!(out, Err(StoreError::Contended { .. })));
        assert_eq!(runs.load(Ordering::SeqCst), CONTENDED_ATTEMPTS);

        let runs = AtomicU32::new(0);
        let out: Result<()> = retry_contended(|| async {
            runs.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::unavailable("down"))
        })
        .await;
        assert!(matches!(out, Err(StoreError::Unavailable { .. })));
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "an outage is not contention"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reads_ride_out_an_outage_within_their_patience() {
        let runs = AtomicU32::new(0);
        let out = retry_while_unavailable(Duration::from_secs(10), || async {
            if runs.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(StoreError::unavailable("restarting"))
            } else {
                Ok("row")
            }
        })
        .await;
        assert_eq!(out.unwrap(), "row");

        let start = tokio::time::Instant::now();
        let out: Result<()> = retry_while_unavailable(Duration::from_secs(2), || async {
            Err(StoreError::unavailable("down"))
        })
        .await;
        assert!(matches!(out, Err(StoreError::Unavailable { .. })));
        assert!(start.elapsed() <= Duration::from_secs(2));

        let runs = AtomicU32::new(0);
        let out: Result<()> = retry_while_unavailable(Duration::from_secs(2), || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::NotFound {
                entity: "task",
                id: "1".into(),
            })
        })
        .await;
        assert!(matches!(out, Err(StoreError::NotFound { .. })));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
