//! In-process wake-ups: whoever enqueues to a queue wakes the pool that consumes it, so pools
//! sleep on their polling interval only as a fallback.

use std::{collections::HashMap, sync::Arc};

use tokio::sync::Notify;

/// One [`Notify`] per queue name, created on first use.
#[derive(Debug, Default, Clone)]
pub struct Wakeups {
    queues: Arc<std::sync::Mutex<HashMap<String, Arc<Notify>>>>,
}

impl Wakeups {
    /// The notifier of `queue`.
    pub fn for_queue(&self, queue: &str) -> Arc<Notify> {
        // Held only for a map lookup, never across an await.
        let mut map = self
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(queue.to_owned()).or_default().clone()
    }

    /// Wakes one waiting consumer of `queue` (or the next one to wait).
    pub fn wake(&self, queue: &str) {
        self.for_queue(queue).notify_one();
    }
}
