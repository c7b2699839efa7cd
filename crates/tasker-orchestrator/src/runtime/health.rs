//! Executor health: a validated state machine with history and time in state.
//!
//! ```text
//! Starting -> Healthy | Degraded
//! Healthy <-> Degraded
//! Degraded -> Unhealthy
//! any -> Stopping (terminal)
//! ```
//!
//! Every change goes through [`HealthStateMachine::transition_to`], which validates and logs it;
//! the pool that drives the machine counts it in the metric
//! `tasker_executor_health_transitions_total`. An `Unhealthy` executor is replaced by the
//! coordinator's health monitor. This module depends on nothing else of the runtime.

use std::{collections::VecDeque, fmt, time::Duration};

use serde::Serialize;
use tokio::time::Instant;

/// Health of one executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ExecutorHealth {
    /// Started; no batch finished yet.
    Starting,
    /// Batches succeed and heartbeats are fresh.
    Healthy,
    /// Batches fail, or its circuit breaker is open.
    Degraded,
    /// Failing persistently or silent: to be replaced.
    Unhealthy,
    /// Being stopped. Terminal.
    Stopping,
}

impl ExecutorHealth {
    /// Every state.
    pub const ALL: [ExecutorHealth; 5] = [
        ExecutorHealth::Starting,
        ExecutorHealth::Healthy,
        ExecutorHealth::Degraded,
        ExecutorHealth::Unhealthy,
        ExecutorHealth::Stopping,
    ];

    /// Whether `self -> to` is a legal move.
    pub fn can_become(self, to: ExecutorHealth) -> bool {
        use ExecutorHealth::*;
        matches!(
            (self, to),
            (Starting, Healthy | Degraded)
                | (Healthy, Degraded)
                | (Degraded, Healthy | Unhealthy)
                | (Starting | Healthy | Degraded | Unhealthy, Stopping)
        )
    }
}

impl fmt::Display for ExecutorHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A refused health change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal executor health transition {from} -> {to}")]
pub struct HealthTransitionError {
    /// Current state.
    pub from: ExecutorHealth,
    /// Refused target.
    pub to: ExecutorHealth,
}

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthTransition {
    /// Before.
    pub from: ExecutorHealth,
    /// After.
    pub to: ExecutorHealth,
    /// Why.
    pub reason: String,
    /// How long `from` lasted.
    pub time_in_previous: Duration,
}

/// Transitions kept per executor.
const HISTORY: usize = 32;

/// The health of one executor, its recent changes and when the current state began.
#[derive(Debug, Clone)]
pub struct HealthStateMachine {
    state: ExecutorHealth,
    since: Instant,
    history: VecDeque<HealthTransition>,
    executor: String,
}

impl HealthStateMachine {
    /// A machine in `Starting`, for the executor named `executor` (used in logs and metrics).
    pub fn new(executor: impl Into<String>) -> Self {
        Self {
            state: ExecutorHealth::Starting,
            since: Instant::now(),
            history: VecDeque::new(),
            executor: executor.into(),
        }
    }

    /// Current state.
    pub fn state(&self) -> ExecutorHealth {
        self.state
    }

    /// How long the current state has lasted.
    pub fn time_in_state(&self) -> Duration {
        self.since.elapsed()
    }

    /// Recent transitions, oldest first (at most 32).
    pub fn history(&self) -> impl ExactSizeIterator<Item = &HealthTransition> {
        self.history.iter()
    }

    /// Moves to `to`. A move to the current state is a no-op (`Ok(false)`).
    ///
    /// # Errors
    ///
    /// [`HealthTransitionError`] when the move is not legal; the state is unchanged.
    pub fn transition_to(
        &mut self,
        to: ExecutorHealth,
        reason: &str,
    ) -> Result<bool, HealthTransitionError> {
        if to == self.state {
            return Ok(false);
        }
        if !self.state.can_become(to) {
            return Err(HealthTransitionError {
                from: self.state,
                to,
            });
        }
        let now = Instant::now();
        let change = HealthTransition {
            from: self.state,
            to,
            reason: reason.to_owned(),
            time_in_previous: now - self.since,
        };
        if to == ExecutorHealth::Unhealthy {
            tracing::warn!(executor = %self.executor, from = %change.from, to = %to, reason, "executor health changed");
        } else {
            tracing::info!(executor = %self.executor, from = %change.from, to = %to, reason, "executor health changed");
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(change);
        self.state = to;
        self.since = now;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExecutorHealth::*;

    #[test]
    fn every_listed_move_is_valid_and_every_other_is_refused() {
        let valid = [
            (Starting, Healthy),
            (Starting, Degraded),
            (Healthy, Degraded),
            (Degraded, Healthy),
            (Degraded, Unhealthy),
            (Starting, Stopping),
            (Healthy, Stopping),
            (Degraded, Stopping),
            (Unhealthy, Stopping),
        ];
        for from in ExecutorHealth::ALL {
            for to in ExecutorHealth::ALL {
                if from == to {
                    continue;
                }
                let mut m = HealthStateMachine::new("test");
                m.state = from;
                let result = m.transition_to(to, "test");
                if valid.contains(&(from, to)) {
                    assert_eq!(result, Ok(true), "{from} -> {to}");
                    assert_eq!(m.state(), to);
                } else {
                    assert_eq!(
                        result,
                        Err(HealthTransitionError { from, to }),
                        "{from} -> {to}"
                    );
                    assert_eq!(m.state(), from, "a refused move changes nothing");
                }
            }
        }
    }

    #[test]
    fn stopping_is_terminal() {
        let mut m = HealthStateMachine::new("test");
        m.transition_to(Stopping, "stop").unwrap();
        for to in [Starting, Healthy, Degraded, Unhealthy] {
            assert!(m.transition_to(to, "again").is_err());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn history_records_reasons_and_durations() {
        let mut m = HealthStateMachine::new("test");
        tokio::time::advance(Duration::from_secs(2)).await;
        m.transition_to(Healthy, "first batch").unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        m.transition_to(Degraded, "batch failed").unwrap();
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(m.time_in_state(), Duration::from_millis(300));
        let h: Vec<_> = m.history().cloned().collect();
        assert_eq!(h.len(), 2);
        assert_eq!(
            (h[0].from, h[0].to, h[0].time_in_previous),
            (Starting, Healthy, Duration::from_secs(2))
        );
        assert_eq!(
            (h[1].reason.as_str(), h[1].time_in_previous),
            ("batch failed", Duration::from_secs(5))
        );
        assert_eq!(
            m.transition_to(Degraded, "still"),
            Ok(false),
            "same state is a no-op"
        );
        assert_eq!(m.history().len(), 2);
    }

    #[test]
    fn history_is_bounded() {
        let mut m = HealthStateMachine::new("test");
        m.transition_to(Healthy, "up").unwrap();
        for i in 0..100 {
            let to = if i % 2 == 0 { Degraded } else { Healthy };
            m.transition_to(to, "flap").unwrap();
        }
        assert_eq!(m.history().len(), HISTORY);
    }
}
