//! Cross-process wake-ups: `LISTEN` on one channel whose payloads are queue names.

use std::{sync::Mutex, time::Duration};

use sqlx::{postgres::PgListener, PgPool};
use tasker_store::Result;
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};

use crate::decode::map_err;

/// The `NOTIFY` channel enqueues announce on.
pub(crate) const CHANNEL: &str = "tasker_wakeup";

/// Announcements buffered per subscriber before new ones are dropped (pools then poll).
const BUFFER: usize = 1024;

/// How long a stopping listener waits for its `UNLISTEN`.
const UNLISTEN_TIMEOUT: Duration = Duration::from_secs(1);

/// The store's listener tasks, one per subscriber: each ends when its receiver is dropped, or
/// when [`Listeners::stop`] stops them all at shutdown.
#[derive(Debug)]
pub(crate) struct Listeners {
    /// Becomes `true` once, at shutdown.
    stop: watch::Sender<bool>,
    /// The running tasks (finished ones are reaped on each subscribe).
    tasks: Mutex<JoinSet<()>>,
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            stop: watch::Sender::new(false),
            tasks: Mutex::new(JoinSet::new()),
        }
    }
}

impl Listeners {
    /// Starts a listener task forwarding queue names to the returned receiver.
    ///
    /// # Errors
    ///
    /// When the connection cannot be had or `LISTEN` fails, and `Unavailable` after
    /// [`Listeners::stop`].
    pub(crate) async fn subscribe(&self, pool: &PgPool) -> Result<mpsc::Receiver<String>> {
        let mut stop = self.stop.subscribe();
        if *stop.borrow_and_update() {
            return Err(map_err(sqlx::Error::PoolClosed));
        }
        let mut listener = PgListener::connect_with(pool).await.map_err(map_err)?;
        listener.listen(CHANNEL).await.map_err(map_err)?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(forward(listener, tx, stop));
        Ok(rx)
    }

    /// Stops every listener task and waits up to `timeout` for them to end (`UNLISTEN` and
    /// hand their connections back to the pool); those still running then are aborted. Their
    /// receivers end. Subscribing afterwards fails.
    pub(crate) async fn stop(&self, timeout: Duration) {
        self.stop.send_replace(true);
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let all_ended = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(timeout, all_ended).await.is_err() {
            tracing::warn!(
                running = tasks.len(),
                "wake-up listeners did not stop in time; aborting them"
            );
            tasks.shutdown().await;
        }
    }
}

/// Resolves once the store stops (or is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Forwards notifications until the receiver is dropped, the store stops or its pool closes.
async fn forward(
    mut listener: PgListener,
    tx: mpsc::Sender<String>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            () = tx.closed() => break,
            received = listener.recv() => match received {
                // A full buffer drops the announcement; the pools' polling covers it.
                Ok(n) => { let _ = tx.try_send(n.payload().to_owned()); }
                // Nothing left to reconnect to.
                Err(sqlx::Error::PoolClosed) => break,
                // PgListener reconnects by itself on the next recv; wait a little first.
                Err(error) => {
                    tracing::warn!(%error, "wake-up listener lost its connection");
                    tokio::select! {
                        () = stopped(&mut stop) => break,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            },
        }
    }
    // Leave the channel before the connection goes back to the pool (dropping the listener
    // also does, but in a task of its own).
    let _ = tokio::time::timeout(UNLISTEN_TIMEOUT, listener.unlisten_all()).await;
}
