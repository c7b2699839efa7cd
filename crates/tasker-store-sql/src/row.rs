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

/// A row that arrived as a JSON object (a statement that returns a set of rows in one column,
/// `json_agg(json_build_object(…))`), read through the same decoders as a database row. Each
/// value comes wrapped in a one-element array (`json_build_array(column)`) and SQL `NULL` as
/// JSON `null`, so that a JSON column holding `null` stays apart from a `NULL` one.
#[derive(Debug, Clone)]
pub struct JsonRow(pub serde_json::Map<String, serde_json::Value>);

impl JsonRow {
    fn get(&self, column: &str) -> Option<&serde_json::Value> {
        match self.0.get(column)? {
            serde_json::Value::Array(wrapped) if wrapped.len() == 1 => Some(&wrapped[0]),
            _ => None,
        }
    }

    fn required<T>(&self, column: &str, value: Option<Option<T>>) -> Result<T> {
        match value {
            Some(Some(v)) => Ok(v),
            Some(None) => Err(corrupt("json row", format!("{column} has the wrong type"))),
            None => Err(corrupt("json row", format!("{column} is missing or null"))),
        }
    }
}

impl RowExt for JsonRow {
    fn int(&self, column: &str) -> Result<i64> {
        self.required(column, self.get(column).map(serde_json::Value::as_i64))
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>> {
        self.get(column).map(|_| self.int(column)).transpose()
    }

    fn text(&self, column: &str) -> Result<String> {
        let value = self.get(column).map(|v| v.as_str().map(str::to_owned));
        self.required(column, value)
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        self.get(column).map(|_| self.text(column)).transpose()
    }

    fn flag(&self, column: &str) -> Result<bool> {
        self.required(column, self.get(column).map(serde_json::Value::as_bool))
    }

    fn opt_json(&self, column: &str) -> Result<Option<Json<serde_json::Value>>> {
        Ok(self.get(column).cloned().map(Json))
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

#[cfg(test)]
mod json_row_tests {
    use serde_json::json;

    use super::*;

    fn row(value: serde_json::Value) -> JsonRow {
        match value {
            serde_json::Value::Object(map) => JsonRow(map),
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn wrapped_values_decode_and_null_stays_apart_from_a_json_null() {
        let r = row(json!({
            "n": [7], "t": ["x"], "b": [true], "j": [{"a": 1}], "jnull": [null],
            "sqlnull": null, "bad": "unwrapped"
        }));
        assert_eq!(r.int("n").unwrap(), 7);
        assert_eq!(r.opt_int("n").unwrap(), Some(7));
        assert_eq!(r.text("t").unwrap(), "x");
        assert!(r.flag("b").unwrap());
        assert_eq!(r.json("j").unwrap(), json!({"a": 1}));
        assert_eq!(r.json("jnull").unwrap(), serde_json::Value::Null);
        assert!(r.opt_json("sqlnull").unwrap().is_none());
        assert_eq!(r.opt_int("sqlnull").unwrap(), None);
        assert_eq!(r.opt_text("missing").unwrap(), None);
        for bad in [
            r.int("t").is_err(),
            r.int("sqlnull").is_err(),
            r.text("bad").is_err(),
        ] {
            assert!(bad);
        }
    }
}
