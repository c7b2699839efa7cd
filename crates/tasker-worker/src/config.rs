//! Handler config checking. Each built-in declares its config as a serde struct (unknown keys
//! refused); [`read_config`] reads a step's config into it, for both
//! [`StepHandler::check_config`](crate::StepHandler::check_config) at registration and
//! [`StepHandler::call`](crate::StepHandler::call) at run time, so the rule has one home.
//!
//! Fields take their values through [`required`], [`optional`] and [`or_default`], which
//! explain a mismatch as `expected <what>, got <value>`; `null` counts as absent.

use std::collections::BTreeMap;

use serde::{
    de::{self, DeserializeOwned},
    Deserialize, Deserializer,
};
use serde_json::{Map, Value};

use crate::StepFailure;

/// What is wrong with a step's handler configuration, found before the step runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigProblem {
    /// Dotted path of the offending value within the config (`ms`, `headers.x-id`, `args.0`),
    /// or `config` for the config as a whole (not a map).
    pub key: String,
    /// What is wrong, saying what is expected (`expected a non-negative integer, got "abc"`).
    pub message: String,
}

impl ConfigProblem {
    /// A problem with the value at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The key of a problem with the config as a whole.
const WHOLE: &str = "config";

/// Reads a handler's `config` as its typed form `T` (a `null` config reads as `{}`, so every
/// field's default applies): the one reading both [`StepHandler::check_config`] and the
/// handler's run use, so what registration accepts is what runs.
///
/// [`StepHandler::check_config`]: crate::StepHandler::check_config
///
/// # Errors
///
/// [`ConfigProblem`] naming the key that does not fit.
pub fn read_config<T: DeserializeOwned>(config: &Value) -> Result<T, ConfigProblem> {
    let empty = Value::Object(Map::new());
    let config = match config {
        Value::Null => &empty,
        Value::Object(_) => config,
        other => {
            return Err(ConfigProblem::new(
                WHOLE,
                format!("expected a map of settings, got {}", shown(other)),
            ))
        }
    };
    serde_path_to_error::deserialize(config).map_err(|e| {
        let key = e
            .path()
            .iter()
            .map(|segment| match segment {
                serde_path_to_error::Segment::Seq { index } => index.to_string(),
                serde_path_to_error::Segment::Map { key } => key.clone(),
                serde_path_to_error::Segment::Enum { variant } => variant.clone(),
                serde_path_to_error::Segment::Unknown => "?".into(),
            })
            .collect::<Vec<_>>()
            .join(".");
        let message = e.into_inner().to_string();
        if key.is_empty() {
            // serde reports a missing field at the map that lacks it: name the field instead.
            return match message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.strip_suffix('`'))
            {
                Some(field) => ConfigProblem::new(field, "required but missing"),
                None => ConfigProblem::new(WHOLE, reworded(message)),
            };
        }
        ConfigProblem::new(key, reworded(message))
    })
}

/// [`read_config`] for `call`: a config that slipped past registration (a template stored
/// before the check existed) fails the attempt for good.
pub(crate) fn load<T: DeserializeOwned>(handler: &str, config: &Value) -> Result<T, StepFailure> {
    read_config(config)
        .map_err(|problem| StepFailure::permanent(format!("{handler} handler config: {problem}")))
}

/// serde's own `invalid type: <got>, expected <what>` turned around to read like ours.
fn reworded(message: String) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((got, what)) = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once(", expected "))
        {
            return format!("expected {what}, got {got}");
        }
    }
    message
}

/// A value as JSON, cut short when long.
pub(crate) fn shown(value: &Value) -> String {
    const MAX_CHARS: usize = 60;
    let text = value.to_string();
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The error `expected <what>, got <value>`.
pub(crate) fn expected<E: de::Error>(what: &str, got: &Value) -> E {
    E::custom(format_args!("expected {what}, got {}", shown(got)))
}

/// A kind of config value: what it is called in messages and how it is read from JSON.
pub(crate) trait Kind: Sized {
    /// What a value of this kind is, after "expected" (`a non-negative integer`).
    const WHAT: &'static str;

    /// The value, or the JSON back when it is not of this kind.
    fn from_value(value: Value) -> Result<Self, Value>;
}

impl Kind for u64 {
    const WHAT: &'static str = "a non-negative integer";

    fn from_value(value: Value) -> Result<Self, Value> {
        value.as_u64().ok_or(value)
    }
}

impl Kind for bool {
    const WHAT: &'static str = "true or false";

    fn from_value(value: Value) -> Result<Self, Value> {
        value.as_bool().ok_or(value)
    }
}

/// Strings in config name things (a program, a URL), so an empty one is refused.
impl Kind for String {
    const WHAT: &'static str = "a non-empty string";

    fn from_value(value: Value) -> Result<Self, Value> {
        match value {
            Value::String(s) if !s.is_empty() => Ok(s),
            other => Err(other),
        }
    }
}

/// A list of any JSON values (rendered at run time).
impl Kind for Vec<Value> {
    const WHAT: &'static str = "a list";

    fn from_value(value: Value) -> Result<Self, Value> {
        match value {
            Value::Array(items) => Ok(items),
            other => Err(other),
        }
    }
}

/// A map of any JSON values (rendered at run time).
impl Kind for BTreeMap<String, Value> {
    const WHAT: &'static str = "a map";

    fn from_value(value: Value) -> Result<Self, Value> {
        match value {
            Value::Object(map) => Ok(map.into_iter().collect()),
            other => Err(other),
        }
    }
}

/// Process exit codes.
impl Kind for Vec<i32> {
    const WHAT: &'static str = "a list of integer exit codes";

    fn from_value(value: Value) -> Result<Self, Value> {
        let codes = value.as_array().and_then(|items| {
            items
                .iter()
                .map(|v| v.as_i64().and_then(|n| i32::try_from(n).ok()))
                .collect::<Option<Vec<_>>>()
        });
        codes.ok_or(value)
    }
}

/// A value of kind `T` (for `#[serde(deserialize_with = "config::required")]`).
pub(crate) fn required<'de, D: Deserializer<'de>, T: Kind>(d: D) -> Result<T, D::Error> {
    T::from_value(Value::deserialize(d)?).map_err(|got| expected(T::WHAT, &got))
}

/// A value of kind `T`, `None` when `null` (with `#[serde(default)]`: also when absent).
pub(crate) fn optional<'de, D: Deserializer<'de>, T: Kind>(d: D) -> Result<Option<T>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        value => T::from_value(value)
            .map(Some)
            .map_err(|got| expected(T::WHAT, &got)),
    }
}

/// A value of kind `T`, its default when `null` (with `#[serde(default)]`: also when absent).
pub(crate) fn or_default<'de, D: Deserializer<'de>, T: Kind + Default>(
    d: D,
) -> Result<T, D::Error> {
    optional(d).map(Option::unwrap_or_default)
}

/// Any JSON value, `Some` even when `null` (with `#[serde(default)]`: `None` only when absent).
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(deserialize_with = "required")]
        name: String,
        #[serde(default, deserialize_with = "optional")]
        n: Option<u64>,
    }

    #[test]
    fn problems_name_the_key_and_say_what_was_expected() {
        let problem = read_config::<Sample>(&json!({"name": "a", "n": "abc"})).unwrap_err();
        assert_eq!(problem.key, "n");
        assert_eq!(
            problem.to_string(),
            r#"n: expected a non-negative integer, got "abc""#
        );
        let missing = read_config::<Sample>(&json!({"n": 1})).unwrap_err();
        assert_eq!(missing.to_string(), "name: required but missing");
        let unknown = read_config::<Sample>(&json!({"name": "a", "nn": 1})).unwrap_err();
        assert_eq!(unknown.key, "nn");
        assert!(unknown.message.contains("unknown field"), "{unknown}");
        let whole = read_config::<Sample>(&json!([1])).unwrap_err();
        assert_eq!(
            whole.to_string(),
            "config: expected a map of settings, got [1]"
        );
    }

    #[test]
    fn null_counts_as_absent() {
        let s: Sample = read_config(&json!({"name": "a", "n": null})).unwrap();
        assert_eq!((s.name.as_str(), s.n), ("a", None));
        assert_eq!(
            read_config::<Sample>(&Value::Null).unwrap_err().to_string(),
            "name: required but missing"
        );
    }

    #[test]
    fn long_values_are_cut_short() {
        let long = Value::String("é".repeat(100));
        let text = shown(&long);
        assert!(text.ends_with('…') && text.chars().count() == 61, "{text}");
    }
}
