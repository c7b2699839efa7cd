//! [`RowExt`]: typed column access on any sqlx row whose database decodes our column kinds.

use sqlx::{types::Json, ColumnIndex, Decode, Row, Type};
use tasker_store::Result;

use crate::{corrupt, decode_err};

/// Typed column access; every sqlx row type whose database decodes these types has it.
pub trait RowExt {
    /// A non-null integer column.
    fn int(&self, column: &str) -> Result<i64>;
    /// A nullable integer column.
    fn opt_int(&self, column: &str) -> Result<Option<i64>>;
    /// A non-null text column.
    fn text(&self, column: &str) -> Result<String>;
    /// A nullable text column.
    fn opt_text(&self, column: &str) -> Result<Option<String>>;
    /// A non-null boolean column.
    fn flag(&self, column: &str) -> Result<bool>;
    /// A nullable JSON column.
    fn opt_json(&self, column: &str) -> Result<Option<Json<serde_json::Value>>>;

    /// A non-null JSON column.
    fn json(&self, column: &str) -> Result<serde_json::Value> {
        self.opt_json(column)?
            .map(|j| j.0)
            .ok_or_else(|| corrupt("json column", format!("{column} is null")))
    }
}

impl<R> RowExt for R
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Json<serde_json::Value>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn int(&self, column: &str) -> Result<i64> {
        self.try_get(column).map_err(decode_err)
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>> {
        self.try_get(column).map_err(decode_err)
    }

    fn text(&self, column: &str) -> Result<String> {
        self.try_get(column).map_err(decode_err)
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        self.try_get(column).map_err(decode_err)
    }

    fn flag(&self, column: &str) -> Result<bool> {
        self.try_get(column).map_err(decode_err)
    }

    fn opt_json(&self, column: &str) -> Result<Option<Json<serde_json::Value>>> {
        self.try_get(column).map_err(decode_err)
    }
}

pub(crate) fn get_u32(row: &impl RowExt, column: &str) -> Result<u32> {
    let v = row.int(column)?;
    u32::try_from(v).map_err(|e| corrupt("integer column", format!("{column}: {e}")))
}

pub(crate) fn get_u64(row: &impl RowExt, column: &str) -> Result<u64> {
    let v = row.int(column)?;
    u64::try_from(v).map_err(|e| corrupt("integer column", format!("{column}: {e}")))
}

pub(crate) fn get_state<S: std::str::FromStr>(row: &impl RowExt, what: &'static str) -> Result<S>
where
    S::Err: std::fmt::Display,
{
    let s = row.text("state")?;
    s.parse().map_err(|e| corrupt(what, e))
}
