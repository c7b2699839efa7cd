//! The task and step state machines of DESIGN.md section 2.
//!
//! Each machine has one pure `transition(state, event)` function. It is the only way the engine
//! computes a next state; stores persist the result together with an audit row, and guard the
//! write with the expected from-state (compare-and-swap).

pub mod step;
pub mod task;

use std::fmt;

/// An event that the state machine does not accept in the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal {machine} transition: event {event} in state {from}")]
pub struct TransitionError {
    /// `task` or `step`.
    pub machine: &'static str,
    /// The state the entity was in.
    pub from: String,
    /// The rejected event.
    pub event: String,
}

/// A state name that no state machine knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {machine} state {name:?}")]
pub struct ParseStateError {
    /// `task` or `step`.
    pub machine: &'static str,
    /// The text that failed to parse.
    pub name: String,
}

/// Declares a state enum with its canonical names, `Display`, `FromStr` and `ALL`.
macro_rules! states {
    ($(#[$meta:meta])* $machine:literal, $name:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every state, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The canonical name, as stored and as shown by the API.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant)),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::state::ParseStateError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $(stringify!($variant) => Ok($name::$variant),)+
                    _ => Err($crate::state::ParseStateError { machine: $machine, name: s.to_owned() }),
                }
            }
        }
    };
}
pub(crate) use states;

fn rejected(
    machine: &'static str,
    from: impl fmt::Debug,
    event: impl fmt::Debug,
) -> TransitionError {
    TransitionError {
        machine,
        from: format!("{from:?}"),
        event: format!("{event:?}"),
    }
}
