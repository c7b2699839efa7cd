//! The task state machine.
//!
//! ```text
//! Pending -> Initializing -> EnqueuingSteps -> StepsInProcess -> EvaluatingResults
//! EvaluatingResults -> EnqueuingSteps | StepsInProcess | WaitingForRetry
//!                    | BlockedByFailures | Complete | Error
//! WaitingForRetry -> EnqueuingSteps              (a retry came due)
//! WaitingForRetry | BlockedByFailures -> EvaluatingResults  (another step result arrived)
//! any non-final state except Error -> Cancelled
//! Error -> ResolvedManually | EvaluatingResults  (operator resolve / retry)
//! ```

use super::{rejected, states, TransitionError};

states!(
    /// The state of one task.
    "task",
    TaskState {
        /// Requested; not yet picked up.
        Pending,
        /// Its steps and edges are being created.
        Initializing,
        /// Viable steps are being published to the worker queue.
        EnqueuingSteps,
        /// Steps are running; waiting for results.
        StepsInProcess,
        /// A step result arrived; deciding what comes next.
        EvaluatingResults,
        /// Nothing runs; a step waits for its retry time.
        WaitingForRetry,
        /// A step failed permanently while others are still running.
        BlockedByFailures,
        /// Every step completed. Final.
        Complete,
        /// A step failed permanently. Left only by an operator.
        Error,
        /// Cancelled. Final.
        Cancelled,
        /// An operator marked it done. Final.
        ResolvedManually,
    }
);

/// What can happen to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TaskEvent {
    /// The request processor started creating steps.
    Initialize,
    /// The enqueuer started publishing viable steps.
    BeginEnqueue,
    /// The enqueuer published the viable steps.
    StepsEnqueued,
    /// A step result arrived.
    StepResultReceived,
    /// Evaluation: steps are still running.
    AwaitSteps,
    /// Evaluation: only retries remain, none due yet.
    AwaitRetry,
    /// Evaluation: a step failed permanently, others still run.
    Block,
    /// Evaluation: every step is complete.
    Complete,
    /// Evaluation: a step failed permanently and nothing else runs.
    Fail,
    /// A client cancelled the task.
    Cancel,
    /// An operator resolved the failed task by hand.
    ResolveManually,
    /// An operator retried a failed step of the task.
    Retry,
}

impl TaskEvent {
    /// The event's name in the audit trail.
    pub fn name(self) -> &'static str {
        match self {
            TaskEvent::Initialize => "initialize",
            TaskEvent::BeginEnqueue => "begin_enqueue",
            TaskEvent::StepsEnqueued => "steps_enqueued",
            TaskEvent::StepResultReceived => "step_result_received",
            TaskEvent::AwaitSteps => "await_steps",
            TaskEvent::AwaitRetry => "await_retry",
            TaskEvent::Block => "block",
            TaskEvent::Complete => "complete",
            TaskEvent::Fail => "fail",
            TaskEvent::Cancel => "cancel",
            TaskEvent::ResolveManually => "resolve",
            TaskEvent::Retry => "retry",
        }
    }
}

impl TaskState {
    /// No event is accepted any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Complete | TaskState::Cancelled | TaskState::ResolvedManually
        )
    }

    /// The engine has nothing more to do: final, or `Error` awaiting an operator.
    pub fn is_terminal(self) -> bool {
        self.is_final() || self == TaskState::Error
    }

    /// The one transition function of the task machine.
    ///
    /// # Errors
    ///
    /// [`TransitionError`] when `event` is not accepted in `self`.
    pub fn transition(self, event: TaskEvent) -> Result<TaskState, TransitionError> {
        use TaskEvent as E;
        use TaskState as S;
        let next = match (self, event) {
            (S::Pending, E::Initialize) => S::Initializing,
            (S::Initializing | S::EvaluatingResults | S::WaitingForRetry, E::BeginEnqueue) => {
                S::EnqueuingSteps
            }
            (S::EnqueuingSteps, E::StepsEnqueued) => S::StepsInProcess,
            (
                S::StepsInProcess | S::WaitingForRetry | S::BlockedByFailures,
                E::StepResultReceived,
            ) => S::EvaluatingResults,
            (S::EvaluatingResults, E::AwaitSteps) => S::StepsInProcess,
            (S::EvaluatingResults, E::AwaitRetry) => S::WaitingForRetry,
            (S::EvaluatingResults, E::Block) => S::BlockedByFailures,
            (S::EvaluatingResults, E::Complete) => S::Complete,
            (S::EvaluatingResults, E::Fail) => S::Error,
            (from, E::Cancel) if !from.is_terminal() => S::Cancelled,
            (S::Error, E::ResolveManually) => S::ResolvedManually,
            (S::Error, E::Retry) => S::EvaluatingResults,
            (from, event) => return Err(rejected("task", from, event)),
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const EVENTS: &[TaskEvent] = &[
        TaskEvent::Initialize,
        TaskEvent::BeginEnqueue,
        TaskEvent::StepsEnqueued,
        TaskEvent::StepResultReceived,
        TaskEvent::AwaitSteps,
        TaskEvent::AwaitRetry,
        TaskEvent::Block,
        TaskEvent::Complete,
        TaskEvent::Fail,
        TaskEvent::Cancel,
        TaskEvent::ResolveManually,
        TaskEvent::Retry,
    ];

    /// The moves docs/state_machines.md lists, written out independently of `transition`.
    const LISTED_MOVES: &[(TaskState, TaskState)] = {
        use TaskState::*;
        &[
            (Pending, Initializing),
            (Initializing, EnqueuingSteps),
            (EnqueuingSteps, StepsInProcess),
            (StepsInProcess, EvaluatingResults),
            (EvaluatingResults, EnqueuingSteps),
            (EvaluatingResults, StepsInProcess),
            (EvaluatingResults, WaitingForRetry),
            (EvaluatingResults, BlockedByFailures),
            (EvaluatingResults, Complete),
            (EvaluatingResults, Error),
            (WaitingForRetry, EnqueuingSteps),
            (WaitingForRetry, EvaluatingResults),
            (BlockedByFailures, EvaluatingResults),
            (Error, ResolvedManually),
            (Error, EvaluatingResults),
            (Pending, Cancelled),
            (Initializing, Cancelled),
            (EnqueuingSteps, Cancelled),
            (StepsInProcess, Cancelled),
            (EvaluatingResults, Cancelled),
            (WaitingForRetry, Cancelled),
            (BlockedByFailures, Cancelled),
        ]
    };

    #[test]
    fn happy_path() {
        let mut s = TaskState::Pending;
        for event in [
            TaskEvent::Initialize,
            TaskEvent::BeginEnqueue,
            TaskEvent::StepsEnqueued,
            TaskEvent::StepResultReceived,
            TaskEvent::Complete,
        ] {
            s = s.transition(event).unwrap();
        }
        assert_eq!(s, TaskState::Complete);
        assert!(s.is_final());
    }

    #[test]
    fn evaluation_reaches_every_listed_outcome() {
        let outcomes = [
            (TaskEvent::BeginEnqueue, TaskState::EnqueuingSteps),
            (TaskEvent::AwaitSteps, TaskState::StepsInProcess),
            (TaskEvent::AwaitRetry, TaskState::WaitingForRetry),
            (TaskEvent::Block, TaskState::BlockedByFailures),
            (TaskEvent::Complete, TaskState::Complete),
            (TaskEvent::Fail, TaskState::Error),
        ];
        for (event, expected) in outcomes {
            assert_eq!(TaskState::EvaluatingResults.transition(event), Ok(expected));
        }
    }

    #[test]
    fn error_leaves_only_by_operator() {
        for &event in EVENTS {
            let next = TaskState::Error.transition(event);
            match event {
                TaskEvent::ResolveManually => assert_eq!(next, Ok(TaskState::ResolvedManually)),
                TaskEvent::Retry => assert_eq!(next, Ok(TaskState::EvaluatingResults)),
                _ => assert!(next.is_err(), "{event:?} must not leave Error"),
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for &s in TaskState::ALL {
            assert_eq!(s.to_string().parse::<TaskState>().unwrap(), s);
        }
    }

    proptest! {
        #[test]
        fn no_event_sequence_escapes_a_final_state(
            start in proptest::sample::select(TaskState::ALL),
            events in proptest::collection::vec(proptest::sample::select(EVENTS), 0..40),
        ) {
            let mut state = start;
            for event in events {
                let was_final = state.is_final();
                if let Ok(next) = state.transition(event) {
                    prop_assert!(!was_final, "{state:?} is final but accepted {event:?}");
                    prop_assert!(TaskState::ALL.contains(&next));
                    state = next;
                }
            }
        }

        #[test]
        fn accepted_moves_are_the_listed_ones(
            events in proptest::collection::vec(proptest::sample::select(EVENTS), 0..60),
        ) {
            let mut state = TaskState::Pending;
            for event in events {
                if let Ok(next) = state.transition(event) {
                    prop_assert!(
                        LISTED_MOVES.contains(&(state, next)),
                        "{state:?} -> {next:?} on {event:?} is not a move of docs/state_machines.md"
                    );
                    state = next;
                }
            }
        }
    }
}
