//! The one backoff function: exponential from `base`, capped at `max`, with optional equal
//! jitter (half the capped delay fixed, the other half drawn at random). Pure, so it is tested
//! directly.

use std::time::Duration;

/// Delay before attempt `attempt + 1`, after `attempt` failed attempts (`attempt >= 1`).
/// `unit` in `[0, 1)` is the jitter draw; without jitter it is ignored.
pub fn delay(attempt: u32, base: Duration, max: Duration, jitter: bool, unit: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(32);
    let raw = base.saturating_mul(1_u32 << exponent.min(31));
    let capped = raw.min(max);
    if jitter {
        // Equal jitter: half fixed, half random, so delays never collapse to zero.
        let half = capped / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    } else {
        capped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_base_until_the_cap() {
        let d = |n| delay(n, 100 * MS, 1_000 * MS, false, 0.0);
        assert_eq!(
            [d(1), d(2), d(3), d(4), d(5)],
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1_000 * MS]
        );
        assert_eq!(d(200), 1_000 * MS);
    }

    #[test]
    fn jitter_stays_between_half_and_full() {
        for unit in [0.0, 0.25, 0.999] {
            let j = delay(3, 100 * MS, 10_000 * MS, true, unit);
            assert!(j >= 200 * MS && j <= 400 * MS, "{j:?}");
        }
    }
}
