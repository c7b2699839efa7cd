//! Cross-process wake-ups: `LISTEN` on one channel whose payloads are queue names.

use sqlx::{postgres::PgListener, PgPool};
use tasker_store::Result;
use tokio::sync::mpsc;

use crate::decode::map_err;

/// The `NOTIFY` channel enqueues announce on.
pub(crate) const CHANNEL: &str = "tasker_wakeup";

/// Announcements buffered per subscriber before new ones are dropped (pools then poll).
const BUFFER: usize = 1024;

/// Starts a listener task forwarding queue names; it ends when the receiver is dropped.
pub(crate) async fn subscribe(pool: &PgPool) -> Result<mpsc::Receiver<String>> {
    let mut listener = PgListener::connect_with(pool).await.map_err(map_err)?;
    listener.listen(CHANNEL).await.map_err(map_err)?;
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tx.closed() => break,
                received = listener.recv() => match received {
                    // A full buffer drops the announcement; the pools' polling covers it.
                    Ok(n) => { let _ = tx.try_send(n.payload().to_owned()); }
                    // PgListener reconnects by itself on the next recv; wait a little first.
                    Err(error) => {
                        tracing::warn!(%error, "wake-up listener lost its connection");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                },
            }
        }
    });
    Ok(rx)
}
