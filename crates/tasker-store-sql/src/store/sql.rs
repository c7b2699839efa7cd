//! [`Sql`]: a statement's text and its bound values, built by the shared store and sent by a
//! [`Backend`](super::Backend).
//!
//! Written here rather than using sqlx's `QueryBuilder`: code generic over the database cannot
//! execute a `QueryBuilder` (the arguments it builds borrow for the builder's whole life, and
//! sqlx's SQLite arguments accept only their own lifetime), and every bound value type would
//! need its own encode bound on every generic function. The shared store describes a statement
//! with the four kinds of value our tables hold; each backend binds them to its own query type.
//!
//! Placeholders are PostgreSQL's `$N`, which SQLite accepts too; a number may appear more than
//! once in the text.

/// A bound value: the column kinds of Tasker's tables. `None` binds SQL `NULL`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// An integer.
    Int(Option<i64>),
    /// Text.
    Text(Option<&'a str>),
    /// A boolean.
    Bool(bool),
    /// A JSON document.
    Json(Option<&'a serde_json::Value>),
}

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Self::Int(Some(v))
    }
}

impl From<Option<i64>> for Value<'_> {
    fn from(v: Option<i64>) -> Self {
        Self::Int(v)
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Self::Text(Some(v))
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(v: &'a String) -> Self {
        Self::Text(Some(v))
    }
}

impl<'a> From<Option<&'a str>> for Value<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Self::Text(v)
    }
}

impl From<bool> for Value<'_> {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

impl<'a> From<&'a serde_json::Value> for Value<'a> {
    fn from(v: &'a serde_json::Value) -> Self {
        Self::Json(Some(v))
    }
}

impl<'a> From<Option<&'a serde_json::Value>> for Value<'a> {
    fn from(v: Option<&'a serde_json::Value>) -> Self {
        Self::Json(v)
    }
}

/// A statement: its text with `$N` placeholders and the values they bind, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sql<'a> {
    text: String,
    values: Vec<Value<'a>>,
}

impl<'a> Sql<'a> {
    /// A statement starting with `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            values: Vec::new(),
        }
    }

    /// Binds the next placeholder written in the text (`$1` first), as `sqlx::query(…).bind`
    /// does.
    #[must_use]
    pub fn bind(mut self, value: impl Into<Value<'a>>) -> Self {
        self.values.push(value.into());
        self
    }

    /// Appends text.
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Binds `value` and returns its placeholder without writing it, for text that uses it
    /// (possibly more than once).
    pub fn placeholder(&mut self, value: impl Into<Value<'a>>) -> String {
        self.values.push(value.into());
        format!("${}", self.values.len())
    }

    /// Appends a placeholder bound to `value`.
    pub fn push_bind(&mut self, value: impl Into<Value<'a>>) -> &mut Self {
        let placeholder = self.placeholder(value);
        self.push(&placeholder)
    }

    /// Appends `$a, $b, …`, one placeholder per value: the inside of an `IN (…)` list.
    pub fn push_list<V: Into<Value<'a>>>(
        &mut self,
        values: impl IntoIterator<Item = V>,
    ) -> &mut Self {
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.push_bind(value);
        }
        self
    }

    /// Appends `VALUES (…), (…)`: one tuple per item, its elements written by `tuple`.
    pub fn push_values<T>(
        &mut self,
        items: impl IntoIterator<Item = T>,
        mut tuple: impl FnMut(&mut Tuple<'_, 'a>, T),
    ) -> &mut Self {
        self.push("VALUES ");
        for (i, item) in items.into_iter().enumerate() {
            self.push(if i > 0 { ", (" } else { "(" });
            tuple(
                &mut Tuple {
                    sql: self,
                    empty: true,
                },
                item,
            );
            self.push(")");
        }
        self
    }

    /// The text, with its placeholders.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The bound values, `$1` first.
    pub fn values(&self) -> &[Value<'a>] {
        &self.values
    }
}

/// One tuple of [`Sql::push_values`]: elements separated by commas.
#[derive(Debug)]
pub struct Tuple<'s, 'a> {
    sql: &'s mut Sql<'a>,
    empty: bool,
}

impl<'a> Tuple<'_, 'a> {
    /// An element bound to `value`.
    pub fn bind(&mut self, value: impl Into<Value<'a>>) -> &mut Self {
        self.separate();
        self.sql.push_bind(value);
        self
    }

    /// An element written as SQL (an expression such as the database clock, or a placeholder
    /// from [`Sql::placeholder`]), never input.
    pub fn push(&mut self, expression: &str) -> &mut Self {
        self.separate();
        self.sql.push(expression);
        self
    }

    fn separate(&mut self) {
        if !std::mem::take(&mut self.empty) {
            self.sql.push(", ");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_the_values_in_order() {
        let mut sql = Sql::new("UPDATE t SET a = ");
        sql.push_bind(1_i64)
            .push(" WHERE id IN (")
            .push_list([2_i64, 3]);
        sql.push(")");
        assert_eq!(sql.text(), "UPDATE t SET a = $1 WHERE id IN ($2, $3)");
        assert_eq!(
            sql.values(),
            [Value::from(1_i64), Value::from(2_i64), Value::from(3_i64)]
        );
    }

    #[test]
    fn values_write_one_tuple_per_item_and_may_share_a_placeholder() {
        let mut sql = Sql::new("INSERT INTO t (a, b, c) ");
        let delay = sql.placeholder(5_i64);
        sql.push_values(["x", "y"], |t, s| {
            t.bind(s).push("now()").push(&format!("now() + {delay}"));
        });
        assert_eq!(
            sql.text(),
            "INSERT INTO t (a, b, c) VALUES ($2, now(), now() + $1), ($3, now(), now() + $1)"
        );
        assert_eq!(sql.values().len(), 3);
    }

    #[test]
    fn bind_follows_placeholders_written_in_the_text() {
        let json = serde_json::json!({"a": 1});
        let sql = Sql::new("SELECT $1, $2, $3")
            .bind(None::<&str>)
            .bind(&json)
            .bind(true);
        assert_eq!(
            sql.values(),
            [
                Value::Text(None),
                Value::Json(Some(&json)),
                Value::Bool(true)
            ]
        );
    }
}
