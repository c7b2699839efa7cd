//! Resource validation at start-up: does the database connection pool fit the executor pools?
//!
//! Every executor may hold one database connection during a batch, so the pools' summed
//! `max_executors` plus a reserve (for the API, health checks, migrations and the monitors)
//! must fit in the database pool. The reserve grows with the pool in bands, so large pools are
//! not starved as they were with a flat cap of 10:
//!
//! | database pool | reserve |
//! |---|---|
//! | up to 20 | 20 %, at least 2 |
//! | 21–50 | 20 %, between 3 and 10 |
//! | 51–100 | 20 %, between 5 and 20 |
//! | over 100 | 20 %, between 10 and a quarter of the pool |
//!
//! What happens when it does not fit is the configured [`FailureMode`]. A single-writer
//! backend (SQLite) is the exception: every write waits for its one writer whatever the pool
//! size, so the budget is reported, not enforced, and the advice is not to add connections.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::pipeline::executor::ExecutorType;

/// What to do when the executor pools do not fit the database pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Refuse to start.
    #[default]
    FailFast,
    /// Start with every pool's maximum shrunk (proportionally, never below its minimum) to fit.
    Degraded,
    /// Start as configured and warn.
    BestEffort,
}

/// Connections held back from the executor pools for a database pool of `max_connections`.
pub fn reserved_connections(max_connections: u32) -> u32 {
    // 20 %, rounded half up, in integers: (n * 2 + 5) / 10.
    let base = (max_connections.saturating_mul(2).saturating_add(5)) / 10;
    match max_connections {
        0..=20 => base.max(2),
        21..=50 => base.clamp(3, 10),
        51..=100 => base.clamp(5, 20),
        _ => base.clamp(10, max_connections / 4),
    }
}

/// Bounds of one pool, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolBounds {
    /// Fewest executors.
    pub min_executors: usize,
    /// Most executors.
    pub max_executors: usize,
}

/// The outcome of validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceReport {
    /// Database pool size.
    pub database_pool: u32,
    /// Connections reserved outside the executors.
    pub reserved: u32,
    /// Connections left for executors.
    pub available_for_executors: u32,
    /// Sum of the pools' maxima as configured.
    pub requested_executors: usize,
    /// Pool bounds to start with (shrunk in `Degraded` mode).
    pub pools: BTreeMap<ExecutorType, PoolBounds>,
    /// Problems found, each saying what to change.
    pub errors: Vec<String>,
    /// Things changed or worth knowing.
    pub warnings: Vec<String>,
    /// CPU cores seen (informational).
    pub cpu_cores: usize,
    /// Estimated memory of the executors at their maxima, in bytes (informational).
    pub estimated_memory_bytes: u64,
    /// Whether start-up must stop.
    pub fail_startup: bool,
}

/// Rough memory of one idle executor (its loop task, buffers, histogram), for the report.
pub const ESTIMATED_BYTES_PER_EXECUTOR: u64 = 64 * 1024;

impl FailureMode {
    /// The configuration value naming this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::FailFast => "fail_fast",
            FailureMode::Degraded => "degraded",
            FailureMode::BestEffort => "best_effort",
        }
    }
}

/// Checks `pools` against a database pool of `database_pool` connections; `single_writer`
/// says the backend serializes writes through one writer.
pub fn validate(
    database_pool: u32,
    pools: &BTreeMap<ExecutorType, PoolBounds>,
    mode: FailureMode,
    cpu_cores: usize,
    single_writer: bool,
) -> ResourceReport {
    let reserved = reserved_connections(database_pool);
    let available = database_pool.saturating_sub(reserved);
    let requested: usize = pools.values().map(|p| p.max_executors).sum();
    let minimum: usize = pools.values().map(|p| p.min_executors).sum();
    let available_usize = usize::try_from(available).unwrap_or(usize::MAX);
    let mut report = ResourceReport {
        database_pool,
        reserved,
        available_for_executors: available,
        requested_executors: requested,
        pools: pools.clone(),
        errors: Vec::new(),
        warnings: Vec::new(),
        cpu_cores,
        estimated_memory_bytes: u64::try_from(requested).unwrap_or(u64::MAX)
            * ESTIMATED_BYTES_PER_EXECUTOR,
        fail_startup: false,
    };
    if requested <= available_usize {
        return report;
    }
    if single_writer {
        report.warnings.push(format!(
            "executor pools may use {requested} connections and the database pool has \
             {database_pool}, but this backend serializes every write through one writer: \
             executors queue for the writer, not for connections, so adding connections would \
             not help and failure_mode = {} is not applied; lower pools.*.max_executors to \
             queue less",
            mode.as_str()
        ));
        return report;
    }
    let needed = u32::try_from(requested)
        .unwrap_or(u32::MAX)
        .saturating_add(reserved);
    report.errors.push(format!(
        "executor pools may use {requested} connections but the database pool of {database_pool} \
         leaves {available} after reserving {reserved}: raise database.max_connections to at least \
         {needed}, or lower pools.*.max_executors"
    ));
    match mode {
        FailureMode::FailFast => report.fail_startup = true,
        FailureMode::BestEffort => report.warnings.push(
            "failure_mode = best_effort: starting anyway; executors may wait for connections"
                .into(),
        ),
        FailureMode::Degraded if minimum > available_usize => {
            report.errors.push(format!(
                "even the pools' minimum of {minimum} executors exceeds the {available} connections \
                 available: lower pools.*.min_executors"
            ));
            report.fail_startup = true;
        }
        FailureMode::Degraded => {
            report.pools = shrink(pools, available_usize);
            let shrunk: usize = report.pools.values().map(|p| p.max_executors).sum();
            report.warnings.push(format!(
                "failure_mode = degraded: pool maxima shrunk from {requested} to {shrunk} executors to fit"
            ));
        }
    }
    report
}

/// Shrinks maxima toward minima until their sum fits `available`: each round takes one
/// executor from the pool with the most room above its minimum.
fn shrink(
    pools: &BTreeMap<ExecutorType, PoolBounds>,
    available: usize,
) -> BTreeMap<ExecutorType, PoolBounds> {
    let mut out = pools.clone();
    let mut total: usize = out.values().map(|p| p.max_executors).sum();
    while total > available {
        let Some(widest) = out
            .values_mut()
            .filter(|p| p.max_executors > p.min_executors)
            .max_by_key(|p| p.max_executors - p.min_executors)
        else {
            break;
        };
        widest.max_executors -= 1;
        total -= 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_follows_the_size_bands() {
        let cases = [
            (5, 2),
            (20, 4),
            (21, 4),
            (50, 10),
            (51, 10),
            (100, 20),
            (101, 20),
            (400, 80),
        ];
        for (pool, reserve) in cases {
            assert_eq!(reserved_connections(pool), reserve, "pool of {pool}");
        }
        // The band bounds bite at the edges.
        assert_eq!(reserved_connections(1), 2);
        assert_eq!(reserved_connections(22), 4);
        assert_eq!(reserved_connections(60), 12);
        assert_eq!(reserved_connections(1000), 200);
    }

    fn pools(max: usize) -> BTreeMap<ExecutorType, PoolBounds> {
        ExecutorType::ALL
            .into_iter()
            .map(|t| {
                (
                    t,
                    PoolBounds {
                        min_executors: 1,
                        max_executors: max,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn pools_that_fit_pass_in_every_mode() {
        for mode in [
            FailureMode::FailFast,
            FailureMode::Degraded,
            FailureMode::BestEffort,
        ] {
            let r = validate(50, &pools(8), mode, 2, false);
            assert!(r.errors.is_empty() && !r.fail_startup, "{r:?}");
            assert_eq!(
                (r.reserved, r.available_for_executors, r.requested_executors),
                (10, 40, 40)
            );
            assert_eq!(r.estimated_memory_bytes, 40 * ESTIMATED_BYTES_PER_EXECUTOR);
        }
    }

    #[test]
    fn fail_fast_refuses_and_says_what_to_change() {
        let r = validate(20, &pools(8), FailureMode::FailFast, 2, false);
        assert!(r.fail_startup);
        assert!(r.errors[0].contains("at least 44"), "{}", r.errors[0]);
        assert!(r.errors[0].contains("max_executors"));
        assert_eq!(r.pools, pools(8));
    }

    #[test]
    fn degraded_shrinks_maxima_to_fit() {
        let r = validate(20, &pools(8), FailureMode::Degraded, 2, false);
        assert!(!r.fail_startup);
        let total: usize = r.pools.values().map(|p| p.max_executors).sum();
        assert_eq!(total, 16);
        assert!(r
            .pools
            .values()
            .all(|p| p.max_executors >= p.min_executors && p.max_executors <= 4));
        assert!(r.warnings[0].contains("shrunk from 40 to 16"));
    }

    #[test]
    fn degraded_fails_when_even_the_minima_do_not_fit() {
        let tight: BTreeMap<_, _> = ExecutorType::ALL
            .into_iter()
            .map(|t| {
                (
                    t,
                    PoolBounds {
                        min_executors: 2,
                        max_executors: 2,
                    },
                )
            })
            .collect();
        let r = validate(5, &tight, FailureMode::Degraded, 2, false);
        assert!(r.fail_startup);
        assert!(r.errors.iter().any(|e| e.contains("min_executors")));
    }

    #[test]
    fn best_effort_starts_anyway_with_a_warning() {
        let r = validate(20, &pools(8), FailureMode::BestEffort, 2, false);
        assert!(!r.fail_startup);
        assert_eq!(r.errors.len(), 1);
        assert!(r.warnings[0].contains("best_effort"));
        assert_eq!(r.pools, pools(8));
    }

    #[test]
    fn a_single_writer_backend_is_advised_for_what_it_is_in_every_mode() {
        for mode in [
            FailureMode::FailFast,
            FailureMode::Degraded,
            FailureMode::BestEffort,
        ] {
            let r = validate(5, &pools(8), mode, 2, true);
            assert!(!r.fail_startup && r.errors.is_empty(), "{r:?}");
            assert_eq!(r.pools, pools(8), "nothing shrinks");
            assert_eq!(r.warnings.len(), 1);
            let warning = &r.warnings[0];
            assert!(
                !warning.contains("raise database.max_connections"),
                "{warning}"
            );
            assert!(warning.contains("one writer"), "{warning}");
            assert!(
                warning.contains(&format!("failure_mode = {}", mode.as_str())),
                "the warning names the configured mode: {warning}"
            );
        }
    }
}
