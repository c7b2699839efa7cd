//! The step state machine.
//!
//! ```text
//! Pending -> Enqueued -> InProgress -> Complete
//! InProgress -> WaitingForRetry -> Enqueued        (retryable failure, attempts left)
//! InProgress -> Error                              (permanent failure, or attempts exhausted)
//! Enqueued | InProgress -> Enqueued                (lease expired: redelivery)
//! Pending | Enqueued | InProgress | WaitingForRetry -> Cancelled
//! Pending -> Skipped                               (no finished parent chose it)
//! InProgress -> Mapped -> Complete                  (a mapped step: its instances run)
//! Mapped -> Cancelled
//! Error -> ResolvedManually | Pending              (operator)
//! ```

use super::{rejected, states, TransitionError};

states!(
    /// The state of one workflow step.
    "step",
    StepState {
        /// Created; waiting for its parents or for the enqueuer.
        Pending,
        /// Published to its namespace queue; waiting for a worker.
        Enqueued,
        /// A worker holds it and is running an attempt.
        InProgress,
        /// The last attempt failed retryably; the next waits for `next_attempt_at`.
        WaitingForRetry,
        /// Succeeded. Final.
        Complete,
        /// Failed permanently or ran out of attempts. Left only by an operator.
        Error,
        /// Cancelled with its task. Final.
        Cancelled,
        /// An operator marked it done. Final.
        ResolvedManually,
        /// Not run: every parent finished and none chose it (a decision left it out, or its
        /// parents were skipped). Final.
        Skipped,
        /// A mapped step whose instances run; it completes when they have finished.
        Mapped,
    }
);

/// What can happen to a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum StepEvent {
    /// The step was put in its queue, to be claimed.
    Enqueue,
    /// A worker started an attempt.
    Start,
    /// The attempt succeeded.
    Complete,
    /// The attempt failed; `will_retry` when it was retryable and attempts remain.
    Fail {
        /// Whether another attempt follows.
        will_retry: bool,
    },
    /// The worker's lease ran out before a result arrived; the step is claimed again.
    LeaseExpired,
    /// The task was cancelled.
    Cancel,
    /// An operator resolved the failed step by hand.
    ResolveManually,
    /// An operator asked for the failed step to run again.
    Retry,
    /// Its parents all finished without choosing it.
    Skip,
    /// A mapped step made its instances.
    Expand,
    /// A mapped step's instances finished: it completes with their outputs.
    Gather,
}

impl StepEvent {
    /// The event's name in the audit trail.
    pub fn name(self) -> &'static str {
        match self {
            StepEvent::Enqueue => "enqueue",
            StepEvent::Start => "start",
            StepEvent::Complete => "complete",
            StepEvent::Fail { will_retry: true } => "fail_retryable",
            StepEvent::Fail { will_retry: false } => "fail_permanent",
            StepEvent::LeaseExpired => "lease_expired",
            StepEvent::Cancel => "cancel",
            StepEvent::ResolveManually => "resolve",
            StepEvent::Retry => "retry",
            StepEvent::Skip => "skip",
            StepEvent::Expand => "expand",
            StepEvent::Gather => "gather",
        }
    }
}

impl StepState {
    /// No event is accepted any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            StepState::Complete
                | StepState::Cancelled
                | StepState::ResolvedManually
                | StepState::Skipped
        )
    }

    /// The step needs nothing more from the engine: final, or `Error` awaiting an operator.
    pub fn is_terminal(self) -> bool {
        self.is_final() || self == StepState::Error
    }

    /// Counts as satisfied for the step's children: a child may run because of it.
    pub fn satisfies_dependents(self) -> bool {
        matches!(self, StepState::Complete | StepState::ResolvedManually)
    }

    /// Holds its children back no longer, and counts as done for its task: satisfied, or
    /// skipped.
    pub fn releases_dependents(self) -> bool {
        self.satisfies_dependents() || self == StepState::Skipped
    }

    /// The one transition function of the step machine.
    ///
    /// # Errors
    ///
    /// [`TransitionError`] when `event` is not accepted in `self`.
    pub fn transition(self, event: StepEvent) -> Result<StepState, TransitionError> {
        use StepEvent as E;
        use StepState as S;
        let next = match (self, event) {
            (S::Pending | S::WaitingForRetry, E::Enqueue) => S::Enqueued,
            (S::Enqueued, E::Start) => S::InProgress,
            (S::InProgress, E::Complete) => S::Complete,
            (S::InProgress, E::Fail { will_retry: true }) => S::WaitingForRetry,
            (S::InProgress, E::Fail { will_retry: false }) => S::Error,
            (S::Enqueued | S::InProgress, E::LeaseExpired) => S::Enqueued,
            (
                S::Pending | S::Enqueued | S::InProgress | S::WaitingForRetry | S::Mapped,
                E::Cancel,
            ) => S::Cancelled,
            (S::Error, E::ResolveManually) => S::ResolvedManually,
            (S::Error, E::Retry) => S::Pending,
            (S::Pending, E::Skip) => S::Skipped,
            (S::InProgress, E::Expand) => S::Mapped,
            (S::Mapped, E::Gather) => S::Complete,
            (from, event) => return Err(rejected("step", from, event)),
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const EVENTS: &[StepEvent] = &[
        StepEvent::Enqueue,
        StepEvent::Start,
        StepEvent::Complete,
        StepEvent::Fail { will_retry: true },
        StepEvent::Fail { will_retry: false },
        StepEvent::LeaseExpired,
        StepEvent::Cancel,
        StepEvent::ResolveManually,
        StepEvent::Retry,
        StepEvent::Skip,
        StepEvent::Expand,
        StepEvent::Gather,
    ];

    /// The moves docs/state_machines.md lists, written out independently of `transition`.
    const LISTED_MOVES: &[(StepState, StepState)] = {
        use StepState::*;
        &[
            (Pending, Enqueued),
            (Enqueued, InProgress),
            (InProgress, Complete),
            (InProgress, WaitingForRetry),
            (WaitingForRetry, Enqueued),
            (InProgress, Error),
            (Enqueued, Enqueued),
            (InProgress, Enqueued),
            (Pending, Cancelled),
            (Enqueued, Cancelled),
            (InProgress, Cancelled),
            (WaitingForRetry, Cancelled),
            (Error, ResolvedManually),
            (Error, Pending),
            (Pending, Skipped),
            (InProgress, Mapped),
            (Mapped, Complete),
            (Mapped, Cancelled),
        ]
    };

    #[test]
    fn happy_path_and_retry_path() {
        let s = StepState::Pending;
        let s = s.transition(StepEvent::Enqueue).unwrap();
        let s = s.transition(StepEvent::Start).unwrap();
        let s = s.transition(StepEvent::Fail { will_retry: true }).unwrap();
        assert_eq!(s, StepState::WaitingForRetry);
        let s = s.transition(StepEvent::Enqueue).unwrap();
        let s = s.transition(StepEvent::Start).unwrap();
        assert_eq!(
            s.transition(StepEvent::Complete).unwrap(),
            StepState::Complete
        );
    }

    #[test]
    fn error_leaves_only_by_operator() {
        for &event in EVENTS {
            let next = StepState::Error.transition(event);
            match event {
                StepEvent::ResolveManually => assert_eq!(next, Ok(StepState::ResolvedManually)),
                StepEvent::Retry => assert_eq!(next, Ok(StepState::Pending)),
                _ => assert!(next.is_err(), "{event:?} must not leave Error"),
            }
        }
    }

    #[test]
    fn illegal_move_is_a_typed_error() {
        let err = StepState::Pending
            .transition(StepEvent::Complete)
            .unwrap_err();
        assert_eq!(err.machine, "step");
        assert_eq!(err.from, "Pending");
        assert_eq!(err.event, "Complete");
    }

    #[test]
    fn names_round_trip() {
        for &s in StepState::ALL {
            assert_eq!(s.as_str().parse::<StepState>().unwrap(), s);
        }
        assert!("Bogus".parse::<StepState>().is_err());
    }

    proptest! {
        #[test]
        fn no_event_sequence_escapes_a_final_state(
            start in proptest::sample::select(StepState::ALL),
            events in proptest::collection::vec(proptest::sample::select(EVENTS), 0..40),
        ) {
            let mut state = start;
            let mut was_final = state.is_final();
            for event in events {
                match state.transition(event) {
                    Ok(next) => {
                        prop_assert!(!was_final, "{state:?} is final but accepted {event:?}");
                        prop_assert!(
                            LISTED_MOVES.contains(&(state, next)),
                            "{state:?} -> {next:?} on {event:?} is not a move of docs/state_machines.md"
                        );
                        state = next;
                        was_final = state.is_final();
                    }
                    Err(err) => prop_assert_eq!(err.from, format!("{state:?}")),
                }
            }
        }
    }
}
