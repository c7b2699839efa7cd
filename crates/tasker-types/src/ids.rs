use std::fmt;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, as stored in the database (`*_ms` columns).
pub type UnixMillis = i64;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// Identifier of a task (one run of a template).
    TaskId
);
id_type!(
    /// Identifier of one workflow step of one task.
    StepId
);
