//! What Tasker's SQL backends share: the store itself, [`SqlStore`], generic over a
//! [`Backend`] that each backend crate implements with its connections and the few statements
//! it sends its own way; decoding rows into `tasker-types` values through the small [`RowExt`]
//! trait, the column lists those decoders expect, and the normalization of sqlx errors into
//! [`StoreError`] kinds.
//!
//! Both backends give their tables the same column names and kinds (integers, text, JSON), so
//! one decoder per row type serves both.
//!
//! One module per aggregate decodes its rows (`template`, `task`, `step`, `transition`,
//! `queue`); `plan` turns a template into the rows of a new task; `row` is the typed column
//! access they share, `error` the error normalization, `migrate` and `pool` the migration
//! runner and pool statistics; `store` holds the store, one module per aggregate.

mod error;
mod migrate;
mod plan;
mod pool;
mod queue;
mod row;
mod step;
mod store;
mod task;
mod template;
mod transition;

pub use error::*;
pub use migrate::*;
pub use plan::*;
pub use pool::*;
pub use queue::*;
pub use row::*;
pub use step::*;
pub use store::*;
pub use task::*;
pub use template::*;
pub use transition::*;

/// Rows per multi-row `INSERT`, well under both backends' bound-parameter limits
/// (SQLite 32,766; PostgreSQL 65,535) for the widest insert (13 columns).
pub const INSERT_CHUNK: usize = 1000;

/// A duration as whole milliseconds for a `*_ms` column (saturating).
pub fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
