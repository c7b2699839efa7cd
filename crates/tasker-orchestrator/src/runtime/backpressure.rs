//! `GlobalBackpressureController`: one view of how loaded the system is, and one factor every
//! pool responds to.
//!
//! Pressure comes from five signals in `[0, 1]`: database-pool utilization, memory (resident
//! size against a budget), queue depth (ready messages against a high-water mark), error rate
//! and batch latency (against a target). It is the larger of their weighted mean and the
//! saturation of the highest one ([`instant_pressure`]), so that one exhausted resource can
//! saturate the engine on its own, however calm the others are. It is smoothed (exponential moving
//! average), then quantized into levels with hysteresis: the applied factor moves up a level
//! only when the smoothed pressure clears the threshold halfway to the next level by half the
//! band, down only when it falls half a band below the threshold halfway to the level below,
//! and never twice within `min_dwell`. A square-wave load
//! therefore cannot make the factor flap faster than the dwell allows.
//!
//! Each executor type responds with its own weight `w`: batches shrink to
//! `batch × (1 − factor × w)` (at least 1) and idle polls stretch to `poll × (1 + 3 × factor × w)`.
//! Intake (task requests, claims) carries the highest weights, so the engine stops taking new
//! work before it stops finishing old work.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use serde::Serialize;
use tokio::time::Instant;

use crate::pipeline::executor::ExecutorType;

/// The raw signals, each in `[0, 1]` (values outside are clamped).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct PressureSignals {
    /// Connections in use over pool size.
    pub db_pool: f64,
    /// Resident memory over the budget.
    pub memory: f64,
    /// Ready messages over the high-water mark.
    pub queue_depth: f64,
    /// Failed batches over all batches in the last interval.
    pub error_rate: f64,
    /// Mean batch latency over the target.
    pub latency: f64,
}

impl PressureSignals {
    /// The signals in one fixed order, the order of [`SignalWeights::as_array`].
    fn as_array(&self) -> [f64; 5] {
        [
            self.db_pool,
            self.memory,
            self.queue_depth,
            self.error_rate,
            self.latency,
        ]
    }
}

/// How much each signal counts in the weighted mean (relative to their sum).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SignalWeights {
    /// Weight of [`PressureSignals::db_pool`].
    pub db_pool: f64,
    /// Weight of [`PressureSignals::memory`].
    pub memory: f64,
    /// Weight of [`PressureSignals::queue_depth`].
    pub queue_depth: f64,
    /// Weight of [`PressureSignals::error_rate`].
    pub error_rate: f64,
    /// Weight of [`PressureSignals::latency`].
    pub latency: f64,
}

impl SignalWeights {
    /// The weights in the order of [`PressureSignals::as_array`].
    fn as_array(&self) -> [f64; 5] {
        [
            self.db_pool,
            self.memory,
            self.queue_depth,
            self.error_rate,
            self.latency,
        ]
    }
}

impl Default for SignalWeights {
    fn default() -> Self {
        Self {
            db_pool: 0.35,
            memory: 0.2,
            queue_depth: 0.25,
            error_rate: 0.1,
            latency: 0.1,
        }
    }
}

/// Share of the database pool in use below which the pool exerts no pressure.
pub const POOL_PRESSURE_KNEE: f64 = 0.5;

/// The database-pool signal for a pool `utilization` in use (connections lent over the
/// maximum): 0 up to [`POOL_PRESSURE_KNEE`], rising linearly to 1 when every connection is
/// lent. A pool is pressed when it runs out of headroom, not when it is used: an idle engine's
/// executors polling for work hold a connection or two at any instant, and reading that as
/// load made idle servers slow themselves down.
pub fn pool_pressure(utilization: f64) -> f64 {
    ((utilization - POOL_PRESSURE_KNEE) / (1.0 - POOL_PRESSURE_KNEE)).clamp(0.0, 1.0)
}

/// A single signal above this starts to press on its own, whatever its weight.
pub const SIGNAL_SATURATION_KNEE: f64 = 0.8;

/// The pressure of one observation: the weighted mean of `signals`, or, when it is higher, the
/// saturation of the highest signal, which rises linearly from 0 at [`SIGNAL_SATURATION_KNEE`]
/// to 1 when the signal is at 1. Below the knee the weights decide; a signal at its maximum (the
/// database pool exhausted, memory at its budget, the queue at its high-water mark) is enough
/// to saturate the engine, where a weighted mean alone would cap it at its weight.
pub fn instant_pressure(signals: &PressureSignals, weights: &SignalWeights) -> f64 {
    let signals = signals.as_array().map(|v| v.clamp(0.0, 1.0));
    let weights = weights.as_array();
    let total: f64 = weights.iter().sum();
    let mean = if total > 0.0 {
        signals.iter().zip(weights).map(|(v, w)| v * w).sum::<f64>() / total
    } else {
        0.0
    };
    let highest = signals.iter().copied().fold(0.0, f64::max);
    let saturation =
        ((highest - SIGNAL_SATURATION_KNEE) / (1.0 - SIGNAL_SATURATION_KNEE)).clamp(0.0, 1.0);
    mean.max(saturation)
}

/// Controller settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackpressureConfig {
    /// How much each signal counts.
    pub signal_weights: SignalWeights,
    /// Smoothing factor of the moving average (weight of the newest sample).
    pub smoothing: f64,
    /// Width of one level of the applied factor, in thousandths (250: factors 0, 0.25, 0.5,
    /// 0.75, 1).
    pub level_step_permille: u32,
    /// Hysteresis band around each level threshold.
    pub hysteresis: f64,
    /// Least time between two changes of the applied factor.
    pub min_dwell: Duration,
    /// Points of history kept.
    pub history_len: usize,
}

impl Default for BackpressureConfig {
    fn default() -> Self {
        Self {
            signal_weights: SignalWeights::default(),
            smoothing: 0.3,
            level_step_permille: 250,
            hysteresis: 0.1,
            min_dwell: Duration::from_secs(5),
            history_len: 120,
        }
    }
}

/// How strongly an executor type responds to pressure, in thousandths.
pub fn default_weight_permille(executor_type: ExecutorType) -> u32 {
    match executor_type {
        ExecutorType::TaskRequestProcessor => 1000,
        ExecutorType::TaskClaimer => 800,
        ExecutorType::StepEnqueuer => 500,
        ExecutorType::InProcessWorker => 400,
        ExecutorType::StepResultProcessor | ExecutorType::TaskFinalizer => 200,
    }
}

/// One observation, kept for the health view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PressurePoint {
    /// Milliseconds since the controller started.
    pub at_ms: u64,
    /// The signals.
    pub signals: PressureSignals,
    /// The pressure they make ([`instant_pressure`]).
    pub instant: f64,
    /// After smoothing.
    pub smoothed: f64,
    /// The factor in force after this observation.
    pub applied: f64,
}

/// The factor pools read, shared without locks, in thousandths.
#[derive(Debug, Clone, Default)]
pub struct PressureGauge(Arc<AtomicU32>);

impl PressureGauge {
    /// The applied factor in `[0, 1]`.
    pub fn factor(&self) -> f64 {
        f64::from(self.permille()) / 1000.0
    }

    /// The applied factor in thousandths.
    pub fn permille(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets the factor directly (tests of the pools' response).
    #[doc(hidden)]
    pub fn set_permille_for_tests(&self, factor: u32) {
        self.set_permille(factor);
    }

    fn set_permille(&self, factor: u32) {
        self.0.store(factor.min(1000), Ordering::Relaxed);
    }

    /// How much an executor of `weight_permille` gives way, in thousandths.
    fn reduction(&self, weight_permille: u32) -> u32 {
        (self.permille() * weight_permille.min(1000)) / 1000
    }

    /// Batch size under pressure for an executor of weight `weight_permille` (at least 1).
    pub fn batch_size(&self, batch: u32, weight_permille: u32) -> u32 {
        let keep = u64::from(1000 - self.reduction(weight_permille));
        let scaled = (u64::from(batch) * keep + 500) / 1000;
        u32::try_from(scaled).unwrap_or(batch).max(1)
    }

    /// Idle poll interval under pressure for an executor of weight `weight_permille`.
    pub fn polling_interval(&self, base: Duration, weight_permille: u32) -> Duration {
        base * (1000 + 3 * self.reduction(weight_permille)) / 1000
    }
}

/// The controller.
#[derive(Debug)]
pub struct GlobalBackpressureController {
    config: BackpressureConfig,
    started: Instant,
    smoothed: f64,
    level: u32,
    last_change: Option<Instant>,
    history: VecDeque<PressurePoint>,
    gauge: PressureGauge,
}

impl GlobalBackpressureController {
    /// A controller with no pressure.
    pub fn new(config: BackpressureConfig) -> Self {
        Self {
            config,
            started: Instant::now(),
            smoothed: 0.0,
            level: 0,
            last_change: None,
            history: VecDeque::new(),
            gauge: PressureGauge::default(),
        }
    }

    /// The gauge pools read.
    pub fn gauge(&self) -> PressureGauge {
        self.gauge.clone()
    }

    /// Recent observations, oldest first.
    pub fn history(&self) -> impl ExactSizeIterator<Item = &PressurePoint> {
        self.history.iter()
    }

    /// The applied factor.
    pub fn applied(&self) -> f64 {
        f64::from(self.applied_permille()) / 1000.0
    }

    fn applied_permille(&self) -> u32 {
        (self.level * self.config.level_step_permille).min(1000)
    }

    /// Takes one observation at `now` and returns the applied factor.
    pub fn observe(&mut self, signals: PressureSignals, now: Instant) -> f64 {
        let instant = instant_pressure(&signals, &self.config.signal_weights);
        let alpha = self.config.smoothing.clamp(0.0, 1.0);
        self.smoothed = alpha * instant + (1.0 - alpha) * self.smoothed;

        let dwelt = self
            .last_change
            .is_none_or(|t| now.duration_since(t) >= self.config.min_dwell);
        let step_permille = self.config.level_step_permille.max(1);
        let step = f64::from(step_permille) / 1000.0;
        let half_band = self.config.hysteresis / 2.0;
        let max_level = 1000_u32.div_ceil(step_permille);
        // A level's threshold sits halfway between it and the next; the band widens it on
        // both sides.
        let up = (f64::from(self.level) + 0.5) * step + half_band;
        let down = (f64::from(self.level) - 0.5) * step - half_band;
        if dwelt && self.level < max_level && self.smoothed >= up {
            self.level += 1;
            self.last_change = Some(now);
        } else if dwelt && self.level > 0 && self.smoothed <= down {
            self.level -= 1;
            self.last_change = Some(now);
        }
        self.gauge.set_permille(self.applied_permille());
        let applied = self.applied();

        let at_ms = u64::try_from(now.duration_since(self.started).as_millis()).unwrap_or(u64::MAX);
        if self.history.len() == self.config.history_len.max(1) {
            self.history.pop_front();
        }
        self.history.push_back(PressurePoint {
            at_ms,
            signals,
            instant,
            smoothed: self.smoothed,
            applied,
        });
        applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(v: f64) -> PressureSignals {
        PressureSignals {
            db_pool: v,
            memory: v,
            queue_depth: v,
            error_rate: v,
            latency: v,
        }
    }

    fn config() -> BackpressureConfig {
        BackpressureConfig {
            min_dwell: Duration::from_secs(1),
            ..BackpressureConfig::default()
        }
    }

    #[test]
    fn one_saturated_signal_saturates_the_engine_alone() {
        let weights = SignalWeights::default();
        type Field = fn(&mut PressureSignals) -> &mut f64;
        let setters: [(Field, f64); 5] = [
            (|s| &mut s.db_pool, weights.db_pool),
            (|s| &mut s.memory, weights.memory),
            (|s| &mut s.queue_depth, weights.queue_depth),
            (|s| &mut s.error_rate, weights.error_rate),
            (|s| &mut s.latency, weights.latency),
        ];
        for (i, (field, weight)) in setters.into_iter().enumerate() {
            let mut signals = PressureSignals::default();
            *field(&mut signals) = 1.0;
            assert_eq!(
                instant_pressure(&signals, &weights),
                1.0,
                "signal {i} alone"
            );
            *field(&mut signals) = 0.9;
            assert!(
                (instant_pressure(&signals, &weights) - 0.5).abs() < 1e-9,
                "signal {i} at 0.9"
            );
            *field(&mut signals) = 0.5;
            assert!(
                (instant_pressure(&signals, &weights) - 0.5 * weight).abs() < 1e-9,
                "below the knee the weights decide"
            );
        }
        // Held there, one signal drives the applied factor to saturation, level by level.
        let mut c = GlobalBackpressureController::new(config());
        let t0 = Instant::now();
        let memory_full = PressureSignals {
            db_pool: 0.0,
            memory: 1.0,
            queue_depth: 0.0,
            error_rate: 0.0,
            latency: 0.0,
        };
        let mut applied = 0.0;
        for s in 0..200 {
            applied = c.observe(memory_full, t0 + Duration::from_secs(s));
        }
        assert_eq!(applied, 1.0);
    }

    #[test]
    fn the_pool_presses_only_when_its_headroom_runs_out() {
        assert_eq!(pool_pressure(0.0), 0.0);
        assert_eq!(
            pool_pressure(0.2),
            0.0,
            "one of five connections lent is not load"
        );
        assert_eq!(pool_pressure(0.5), 0.0);
        assert!((pool_pressure(0.75) - 0.5).abs() < 1e-9);
        assert_eq!(pool_pressure(1.0), 1.0);
        assert_eq!(pool_pressure(1.5), 1.0);
    }

    #[test]
    fn sustained_load_raises_the_factor_level_by_level_and_relief_lowers_it() {
        let mut c = GlobalBackpressureController::new(config());
        let mut now = Instant::now();
        let mut seen = vec![c.applied()];
        for _ in 0..60 {
            now += Duration::from_millis(500);
            let f = c.observe(load(1.0), now);
            if seen.last() != Some(&f) {
                seen.push(f);
            }
        }
        assert_eq!(seen, [0.0, 0.25, 0.5, 0.75, 1.0], "one level at a time");
        assert_eq!(c.gauge().factor(), 1.0);
        for _ in 0..60 {
            now += Duration::from_millis(500);
            c.observe(load(0.0), now);
        }
        assert_eq!(c.applied(), 0.0);
        assert_eq!(c.history().len(), 120);
    }

    #[test]
    fn a_square_wave_cannot_flap_faster_than_the_dwell_time() {
        let mut c = GlobalBackpressureController::new(config());
        let start = Instant::now();
        let mut now = start;
        let mut changes = 0;
        let mut last = c.applied();
        // 20 s of load switching fully on and off every 100 ms.
        for tick in 0..200 {
            now += Duration::from_millis(100);
            let f = c.observe(load(if tick % 2 == 0 { 1.0 } else { 0.0 }), now);
            if f != last {
                changes += 1;
                last = f;
            }
        }
        // At most one change per second of dwell.
        assert!(changes <= 20, "{changes} changes in 20 s");
        // And the mean load (0.5) is felt: the factor moved off zero.
        assert!(c.applied() > 0.0);
        // The smoothed pressure stays near the mean, so the factor settles instead of
        // following every edge: no change at all in the last 10 s.
        let settled = c.history().skip(100).map(|p| p.applied).collect::<Vec<_>>();
        assert!(settled.windows(2).all(|w| w[0] == w[1]), "{settled:?}");
    }

    #[test]
    fn executors_respond_by_their_weight() {
        let g = PressureGauge::default();
        assert_eq!(g.batch_size(100, 1000), 100);
        g.set_permille(500);
        assert_eq!(g.batch_size(100, 1000), 50);
        assert_eq!(g.batch_size(100, 200), 90);
        assert_eq!(
            g.polling_interval(Duration::from_millis(100), 1000),
            Duration::from_millis(250)
        );
        g.set_permille(1000);
        assert_eq!(g.batch_size(100, 1000), 1, "never below one");
        assert_eq!(g.batch_size(0, 1000), 1);
    }
}
