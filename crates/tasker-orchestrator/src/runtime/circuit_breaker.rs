//! A circuit breaker per executor type around its storage work.
//!
//! ```text
//! Closed --failure_threshold consecutive infrastructure failures--> Open
//! Open --open_timeout elapsed--> HalfOpen (one probe batch at a time)
//! HalfOpen --success_threshold successes--> Closed
//! HalfOpen --a failure--> Open
//! ```
//!
//! Only infrastructure failures count (`StoreError::is_infrastructure`): a lost compare-and-swap
//! is an answer, not an outage. The core is pure: time is passed in, so tests drive it directly.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Breaker thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before a probe.
    pub open_timeout: Duration,
    /// Successful probes that close it again.
    pub success_threshold: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_timeout: Duration::from_secs(5),
            success_threshold: 1,
        }
    }
}

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CircuitState {
    /// Work flows.
    Closed,
    /// Work is refused until the timeout passes.
    Open,
    /// One probe at a time is let through.
    HalfOpen,
}

impl CircuitState {
    /// Numeric value for the `tasker_circuit_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> u8 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }
}

/// One breaker.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: CircuitBreakerConfig,
    state: CircuitState,
    consecutive_failures: u32,
    probe_successes: u32,
    probe_in_flight: bool,
    opened_at: Option<Instant>,
    trips: u64,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Self {
            config,
            state: CircuitState::Closed,
            consecutive_failures: 0,
            probe_successes: 0,
            probe_in_flight: false,
            opened_at: None,
            trips: 0,
        }
    }

    /// Current state (as of the last call).
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// Times the breaker has opened.
    pub fn trips(&self) -> u64 {
        self.trips
    }

    /// Asks to run one unit of work at `now`. `false`: skip it, the circuit is open (or a
    /// half-open probe is already running).
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        match self.state {
            CircuitState::Closed => true,
            CircuitState::Open => {
                let opened = self.opened_at.unwrap_or(now);
                if now.duration_since(opened) >= self.config.open_timeout {
                    self.state = CircuitState::HalfOpen;
                    self.probe_successes = 0;
                    self.probe_in_flight = true;
                    true
                } else {
                    false
                }
            }
            CircuitState::HalfOpen if self.probe_in_flight => false,
            CircuitState::HalfOpen => {
                self.probe_in_flight = true;
                true
            }
        }
    }

    /// Records a success of work that was let through.
    pub fn record_success(&mut self) {
        self.consecutive_failures = 0;
        if self.state == CircuitState::HalfOpen {
            self.probe_in_flight = false;
            self.probe_successes += 1;
            if self.probe_successes >= self.config.success_threshold {
                self.state = CircuitState::Closed;
                self.opened_at = None;
            }
        }
    }

    /// Records an infrastructure failure at `now`.
    pub fn record_failure(&mut self, now: Instant) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let open = match self.state {
            CircuitState::Closed => self.consecutive_failures >= self.config.failure_threshold,
            CircuitState::HalfOpen => true,
            CircuitState::Open => false,
        };
        if open {
            self.state = CircuitState::Open;
            self.opened_at = Some(now);
            self.probe_in_flight = false;
            self.trips += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: 3,
            open_timeout: Duration::from_secs(10),
            success_threshold: 2,
        })
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = breaker();
        b.record_failure(t0);
        b.record_failure(t0);
        b.record_success(); // resets the streak
        b.record_failure(t0);
        b.record_failure(t0);
        assert_eq!(b.state(), CircuitState::Closed);
        b.record_failure(t0);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.trips(), 1);
        assert!(!b.try_acquire(t0 + Duration::from_secs(9)));
    }

    #[test]
    fn half_opens_after_the_timeout_with_one_probe_at_a_time() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.record_failure(t0);
        }
        let later = t0 + Duration::from_secs(10);
        assert!(b.try_acquire(later));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(!b.try_acquire(later), "second probe waits for the first");
    }

    #[test]
    fn closes_after_enough_successful_probes() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.record_failure(t0);
        }
        let later = t0 + Duration::from_secs(11);
        assert!(b.try_acquire(later));
        b.record_success();
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(b.try_acquire(later));
        b.record_success();
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(b.try_acquire(later));
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.record_failure(t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert!(b.try_acquire(t1));
        b.record_failure(t1);
        assert_eq!((b.state(), b.trips()), (CircuitState::Open, 2));
        assert!(
            !b.try_acquire(t1 + Duration::from_secs(5)),
            "the timeout restarts"
        );
        assert!(b.try_acquire(t1 + Duration::from_secs(10)));
    }
}
