//! Decoding `queue_messages` and `dead_letters` rows, queue depths and leased batches.

use tasker_store::Result;
use tasker_types::{DeadLetter, QueueMessage};

use crate::{corrupt, get_u32, RowExt};

/// The columns [`message`] reads, for `SELECT` and `RETURNING` lists.
pub const MESSAGE_COLUMNS: &str = "id, queue, payload, deliveries, enqueued_at_ms, lease_token";

/// Decodes a `queue_messages` row.
pub fn message(row: &impl RowExt) -> Result<QueueMessage> {
    Ok(QueueMessage {
        id: row.int("id")?,
        queue: row.text("queue")?,
        payload: row.json("payload")?,
        deliveries: get_u32(row, "deliveries")?,
        enqueued_at_ms: row.int("enqueued_at_ms")?,
        lease_token: row.opt_text("lease_token")?.unwrap_or_default(),
    })
}

/// Decodes a `dead_letters` row.
pub fn dead_letter(row: &impl RowExt) -> Result<DeadLetter> {
    Ok(DeadLetter {
        id: row.int("id")?,
        queue: row.text("queue")?,
        payload: row.json("payload")?,
        deliveries: get_u32(row, "deliveries")?,
        dead_at_ms: row.int("dead_at_ms")?,
    })
}

/// Messages to publish in a transaction, by queue.
pub type Outbox = std::collections::BTreeMap<String, Vec<serde_json::Value>>;

/// Decodes a `(ready, invisible, dead)` count row.
///
/// # Errors
///
/// [`StoreError::Corrupt`] for a negative count.
pub fn queue_depth(row: &impl RowExt) -> Result<tasker_store::QueueDepth> {
    let count = |column: &str| -> Result<u64> {
        u64::try_from(row.int(column)?).map_err(|e| corrupt("queue depth", e))
    };
    Ok(tasker_store::QueueDepth {
        ready: count("ready")?,
        invisible: count("invisible")?,
        dead: count("dead")?,
    })
}

/// Decodes the rows a dequeue leased into the messages to hand out, oldest first, and those
/// that used up `max_deliveries` (to be moved to the dead letters instead).
///
/// # Errors
///
/// [`StoreError::Corrupt`] for a row that does not decode.
pub fn leased_messages(
    rows: &[impl RowExt],
    max_deliveries: u32,
) -> Result<(Vec<QueueMessage>, Vec<QueueMessage>)> {
    let messages = rows.iter().map(message).collect::<Result<Vec<_>>>()?;
    let (mut live, dead): (Vec<_>, Vec<_>) = messages
        .into_iter()
        .partition(|m| m.deliveries <= max_deliveries);
    live.sort_unstable_by_key(|m| m.id);
    Ok((live, dead))
}
