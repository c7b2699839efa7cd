//! What a task is and how it moves: the five executor types and what they share, the messages
//! between them, the in-process and remote workers, operator actions, backoff and wake-ups.
//! Nothing here knows how executors are pooled, scaled or watched; that is the runtime's
//! (`runtime`), which depends on this module and never the other way round.

pub mod backoff;
pub mod events;
pub mod executor;
pub mod messages;
pub mod operator;
pub mod remote;
pub mod templates;
pub mod wakeup;
pub mod worker;
