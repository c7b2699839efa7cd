//! The task and step state machines (docs/state_machines.md).
//!
//! Each machine has one pure `transition(state, event)` function. It is the only way the engine
//! computes a next state; stores persist the result together with an audit row, and guard the
//! write with the expected from-state (compare-and-swap).

pub mod instance;
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

/// A state name that no state machine knows; its message lists the valid names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {machine} state {name:?} (valid: {})", .valid.join(", "))]
pub struct ParseStateError {
    /// `task` or `step`.
    pub machine: &'static str,
    /// The text that failed to parse.
    pub name: String,
    /// The canonical names of the machine's states, in declaration order.
    pub valid: &'static [&'static str],
}

/// Whether `input` names the state `canonical`: ASCII case does not matter, nor do `_` and
/// `-` (so `complete`, `COMPLETE`, `in_progress` and `in-progress` all read).
fn names_state(input: &str, canonical: &str) -> bool {
    let mut input = input.bytes().filter(|b| !matches!(b, b'_' | b'-'));
    let mut canonical = canonical.bytes();
    loop {
        match (input.next(), canonical.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(&b) => {}
            _ => return false,
        }
    }
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

            /// The canonical name of every state, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($variant)),+];

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

        /// Reads a state's name regardless of ASCII case, `_` and `-` (`complete`,
        /// `in_progress`); an unknown name's error lists the valid ones.
        impl std::str::FromStr for $name {
            type Err = $crate::state::ParseStateError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|state| $crate::state::names_state(s, state.as_str()))
                    .ok_or_else(|| $crate::state::ParseStateError {
                        machine: $machine,
                        name: s.to_owned(),
                        valid: $name::NAMES,
                    })
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

#[cfg(test)]
mod tests {
    use super::{step::StepState, task::TaskState};

    #[test]
    fn every_state_reads_back_from_its_name() {
        for &state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>(), Ok(state));
        }
        for &state in StepState::ALL {
            assert_eq!(state.as_str().parse::<StepState>(), Ok(state));
        }
        assert_eq!(TaskState::NAMES.len(), TaskState::ALL.len());
        assert_eq!(StepState::NAMES.len(), StepState::ALL.len());
    }

    #[test]
    fn state_names_are_read_regardless_of_case() {
        for input in ["Complete", "complete", "COMPLETE", "cOmPlEtE"] {
            assert_eq!(
                input.parse::<TaskState>(),
                Ok(TaskState::Complete),
                "{input}"
            );
            assert_eq!(
                input.parse::<StepState>(),
                Ok(StepState::Complete),
                "{input}"
            );
        }
        for input in ["InProgress", "inprogress", "in_progress", "IN-PROGRESS"] {
            assert_eq!(
                input.parse::<StepState>(),
                Ok(StepState::InProgress),
                "{input}"
            );
        }
        assert_eq!(
            "waiting_for_retry".parse::<TaskState>(),
            Ok(TaskState::WaitingForRetry)
        );
    }

    #[test]
    fn near_misses_are_not_states() {
        for input in [
            "",
            "_",
            "Complet",
            "Completed",
            "Complete ",
            "Com plete",
            "é",
        ] {
            assert!(input.parse::<TaskState>().is_err(), "{input:?}");
        }
    }

    #[test]
    fn an_unknown_state_lists_the_valid_ones() {
        let err = "bogus".parse::<TaskState>().unwrap_err();
        assert_eq!(err.machine, "task");
        assert_eq!(err.name, "bogus");
        let message = err.to_string();
        assert!(
            message.starts_with(r#"unknown task state "bogus" (valid: "#),
            "{message}"
        );
        for name in TaskState::NAMES {
            assert!(message.contains(name), "{message} lacks {name}");
        }
        let message = "nope".parse::<StepState>().unwrap_err().to_string();
        assert!(
            message.contains("ResolvedManually") && message.contains("WaitingForRetry"),
            "{message}"
        );
        assert!(
            message.starts_with(r#"unknown step state "nope""#),
            "{message}"
        );
    }
}
