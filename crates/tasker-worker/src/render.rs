//! `{{ path }}` placeholders in handler config, filled from the context and parents' outputs.
//!
//! Hand-written rather than a template engine: the need is JSON in, JSON out, with a string
//! that is exactly one placeholder replaced by the *value* (keeping numbers and objects), which
//! text template engines do not do.

use serde_json::Value;

/// Renders `template` against `scope` (an object such as `{"context": …, "parents": …}`).
/// A string that is exactly `{{ a.b }}` becomes the value at `a.b` (`null` when missing);
/// placeholders inside longer strings are replaced by the value's text.
pub fn render(template: &Value, scope: &Value) -> Value {
    match template {
        Value::String(s) => render_str(s, scope),
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, scope)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render(v, scope)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn lookup<'a>(scope: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(scope, |v, key| match v {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn render_str(s: &str, scope: &Value) -> Value {
    let trimmed = s.trim();
    if let Some(inner) = trimmed
        .strip_prefix("{{")
        .and_then(|r| r.strip_suffix("}}"))
    {
        if !inner.contains("{{") {
            return lookup(scope, inner.trim()).cloned().unwrap_or(Value::Null);
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        let path = rest[start + 2..start + len].trim();
        match lookup(scope, path) {
            Some(Value::String(text)) => out.push_str(text),
            Some(value) => out.push_str(&value.to_string()),
            None => {}
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    Value::String(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn whole_placeholders_keep_their_type_and_inline_ones_become_text() {
        let scope =
            json!({"context": {"order_id": 42, "who": "ann"}, "parents": {"a": {"total": 9.5}}});
        let template = json!({
            "id": "{{ context.order_id }}",
            "total": "{{parents.a.total}}",
            "note": "order {{context.order_id}} for {{ context.who }}",
            "missing": "{{ context.nope }}",
            "list": ["{{context.who}}", 3],
        });
        assert_eq!(
            render(&template, &scope),
            json!({"id": 42, "total": 9.5, "note": "order 42 for ann", "missing": null, "list": ["ann", 3]})
        );
    }
}
