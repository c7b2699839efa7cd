//! Scaling decisions: pure, from observed utilization and queue depth.
//!
//! Utilization is busy time over wall time of the pool's executors over the last interval (the
//! real signal; the predecessor counted polls that found work). A pool grows by one executor
//! when it is busier than `target_utilization` or its queue holds more than
//! `queue_depth_per_executor` items per executor, and shrinks by one when it is under half the
//! target with an empty queue; never past its bounds, and not again within `cooldown`.

use std::time::Duration;

use serde::Serialize;

/// Scaling settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScalingConfig {
    /// Utilization the pools aim for, in `(0, 1]`.
    pub target_utilization: f64,
    /// Queue items per executor above which a pool grows.
    pub queue_depth_per_executor: u64,
    /// Least time between two changes of one pool.
    pub cooldown: Duration,
    /// How often the monitor decides.
    pub interval: Duration,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        Self {
            target_utilization: 0.7,
            queue_depth_per_executor: 100,
            cooldown: Duration::from_secs(10),
            interval: Duration::from_secs(1),
        }
    }
}

/// What the monitor observed of one pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalingInput {
    /// Executors now.
    pub executors: usize,
    /// Lower bound.
    pub min_executors: usize,
    /// Upper bound.
    pub max_executors: usize,
    /// Busy time over wall time over the last interval.
    pub utilization: f64,
    /// Items waiting for the pool.
    pub queue_depth: u64,
    /// Time since the pool last changed size, if it has.
    pub since_last_change: Option<Duration>,
}

/// What to do with one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ScalingDecision {
    /// Start this many executors.
    Up(usize),
    /// Stop this many executors.
    Down(usize),
    /// Leave it.
    Hold(HoldReason),
}

/// Why a pool was left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HoldReason {
    /// Utilization and queue are where they should be.
    OnTarget,
    /// Changed too recently.
    Cooldown,
    /// Would grow but is at its maximum.
    AtMaximum,
    /// Would shrink but is at its minimum.
    AtMinimum,
}

impl ScalingDecision {
    /// `up`, `down` or `hold`, for logs and the decisions counter.
    pub fn direction(self) -> &'static str {
        match self {
            ScalingDecision::Up(_) => "up",
            ScalingDecision::Down(_) => "down",
            ScalingDecision::Hold(_) => "hold",
        }
    }
}

/// Decides one pool's size.
pub fn decide(input: &ScalingInput, config: &ScalingConfig) -> ScalingDecision {
    if input.executors < input.min_executors {
        return ScalingDecision::Up(input.min_executors - input.executors);
    }
    if input.executors > input.max_executors {
        return ScalingDecision::Down(input.executors - input.max_executors);
    }
    let backlog = u64::try_from(input.executors.max(1))
        .unwrap_or(u64::MAX)
        .saturating_mul(config.queue_depth_per_executor);
    let busy = input.utilization > config.target_utilization || input.queue_depth > backlog;
    let idle = input.utilization < config.target_utilization / 2.0 && input.queue_depth == 0;
    if !busy && !idle {
        return ScalingDecision::Hold(HoldReason::OnTarget);
    }
    if input.since_last_change.is_some_and(|d| d < config.cooldown) {
        return ScalingDecision::Hold(HoldReason::Cooldown);
    }
    match (busy, input.executors) {
        (true, n) if n >= input.max_executors => ScalingDecision::Hold(HoldReason::AtMaximum),
        (true, _) => ScalingDecision::Up(1),
        (false, n) if n <= input.min_executors => ScalingDecision::Hold(HoldReason::AtMinimum),
        (false, _) => ScalingDecision::Down(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(executors: usize, utilization: f64, queue_depth: u64) -> ScalingInput {
        ScalingInput {
            executors,
            min_executors: 1,
            max_executors: 4,
            utilization,
            queue_depth,
            since_last_change: None,
        }
    }

    #[test]
    fn grows_when_busy_or_backlogged_and_shrinks_when_idle() {
        let c = ScalingConfig::default();
        assert_eq!(decide(&input(2, 0.9, 0), &c), ScalingDecision::Up(1));
        assert_eq!(decide(&input(2, 0.1, 500), &c), ScalingDecision::Up(1));
        assert_eq!(decide(&input(2, 0.1, 0), &c), ScalingDecision::Down(1));
        assert_eq!(
            decide(&input(2, 0.5, 10), &c),
            ScalingDecision::Hold(HoldReason::OnTarget)
        );
    }

    #[test]
    fn respects_bounds_and_cooldown() {
        let c = ScalingConfig::default();
        assert_eq!(
            decide(&input(4, 0.95, 0), &c),
            ScalingDecision::Hold(HoldReason::AtMaximum)
        );
        assert_eq!(
            decide(&input(1, 0.0, 0), &c),
            ScalingDecision::Hold(HoldReason::AtMinimum)
        );
        assert_eq!(decide(&input(0, 0.0, 0), &c), ScalingDecision::Up(1));
        assert_eq!(decide(&input(6, 0.0, 0), &c), ScalingDecision::Down(2));
        let recent = ScalingInput {
            since_last_change: Some(Duration::from_secs(3)),
            ..input(2, 0.9, 0)
        };
        assert_eq!(
            decide(&recent, &c),
            ScalingDecision::Hold(HoldReason::Cooldown)
        );
        let later = ScalingInput {
            since_last_change: Some(Duration::from_secs(11)),
            ..recent
        };
        assert_eq!(decide(&later, &c), ScalingDecision::Up(1));
    }
}
