//! The part of JSON Schema that tool declarations use: `type` (one or a list), `properties`,
//! `required`, `additionalProperties` (false or a schema), `enum`, `const`, `items`,
//! `anyOf`/`oneOf`, `minimum`/`maximum`. Other keywords are not checked (they narrow values
//! further; ignoring them can only accept more), so a `false` here is always a real violation.
//! Keyword meanings: https://json-schema.org/draft/2020-12/json-schema-validation

use serde_json::Value;

/// The first violation of `schema` by `value`, with its JSON path, or None when it conforms.
pub fn violation(schema: &Value, value: &Value) -> Option<String> {
    check(schema, value, "$")
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => true,
    }
}

fn check(schema: &Value, v: &Value, path: &str) -> Option<String> {
    let Some(s) = schema.as_object() else {
        // `true` or an empty schema accepts everything; `false` nothing.
        return (schema == &Value::Bool(false)).then(|| format!("{path}: not allowed"));
    };
    match s.get("type") {
        Some(Value::String(t)) if !type_matches(t, v) => {
            return Some(format!("{path}: expected {t}, got {}", kind(v)))
        }
        Some(Value::Array(ts))
            if !ts
                .iter()
                .filter_map(Value::as_str)
                .any(|t| type_matches(t, v)) =>
        {
            return Some(format!("{path}: type {} not allowed", kind(v)))
        }
        _ => {}
    }
    if let Some(Value::Array(options)) = s.get("enum") {
        if !options.contains(v) {
            return Some(format!(
                "{path}: {v} is not one of {}",
                Value::Array(options.clone())
            ));
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            return Some(format!("{path}: must be {c}"));
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(subs)) = s.get(key) {
            if !subs.iter().any(|sub| check(sub, v, path).is_none()) {
                return Some(format!("{path}: matches none of {key}"));
            }
        }
    }
    if let Some(x) = v.as_f64() {
        if s.get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| x < m)
        {
            return Some(format!("{path}: {x} below the minimum"));
        }
        if s.get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|m| x > m)
        {
            return Some(format!("{path}: {x} above the maximum"));
        }
    }
    if let Value::Object(obj) = v {
        if let Some(Value::Array(req)) = s.get("required") {
            for r in req.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    return Some(format!("{path}: missing required property {r:?}"));
                }
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, val) in obj {
            let sub = format!("{path}.{k}");
            match props.and_then(|p| p.get(k)) {
                Some(ps) => {
                    if let Some(e) = check(ps, val, &sub) {
                        return Some(e);
                    }
                }
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        return Some(format!("{path}: unknown property {k:?}"))
                    }
                    Some(extra @ Value::Object(_)) => {
                        if let Some(e) = check(extra, val, &sub) {
                            return Some(e);
                        }
                    }
                    _ => {}
                },
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (v, s.get("items")) {
        for (i, it) in items.iter().enumerate() {
            if let Some(e) = check(item_schema, it, &format!("{path}[{i}]")) {
                return Some(e);
            }
        }
    }
    None
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "filePath": {"type": "string"},
                "limit": {"type": "integer", "minimum": 1},
                "mode": {"enum": ["a", "b"]},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["filePath"],
            "additionalProperties": false
        })
    }

    #[test]
    fn conforming_arguments_pass() {
        let v = json!({"filePath": "x", "limit": 3, "mode": "a", "tags": ["t"]});
        assert_eq!(violation(&read_schema(), &v), None);
    }

    #[test]
    fn each_violation_is_named_with_its_path() {
        let s = read_schema();
        let cases = [
            (json!({}), "missing required property \"filePath\""),
            (json!({"filePath": 3}), "$.filePath: expected string"),
            (json!({"filePath": "x", "limit": 0}), "below the minimum"),
            (json!({"filePath": "x", "limit": 1.5}), "expected integer"),
            (json!({"filePath": "x", "mode": "c"}), "is not one of"),
            (
                json!({"filePath": "x", "tags": [1]}),
                "$.tags[0]: expected string",
            ),
            (
                json!({"filePath": "x", "oops": 1}),
                "unknown property \"oops\"",
            ),
            (json!([1]), "expected object"),
        ];
        for (v, want) in cases {
            let got = violation(&s, &v).unwrap_or_default();
            assert!(got.contains(want), "{v}: {got:?} lacks {want:?}");
        }
    }

    #[test]
    fn unions_and_open_objects() {
        let s = json!({"anyOf": [{"type": "string"}, {"type": "array"}]});
        assert_eq!(violation(&s, &json!("x")), None);
        assert!(violation(&s, &json!(1)).is_some());
        assert_eq!(
            violation(&json!({"type": ["string", "null"]}), &json!(null)),
            None
        );
        // Without additionalProperties: false, extra keys are allowed.
        assert_eq!(
            violation(&json!({"type": "object"}), &json!({"any": 1})),
            None
        );
    }
}
