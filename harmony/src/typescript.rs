//! JSON schema → the TypeScript-like declarations Harmony puts in the developer message.
//!
//! The output must match openai-harmony byte for byte (the model was trained on it), so this
//! follows its `json_schema_to_typescript` rules, quirks included: nested object properties are
//! indented 4 spaces per level but comments above them are not; `oneOf` variants are listed on
//! ` | ` lines; defaults become trailing `// default: …` comments.

use serde_json::Value;

use crate::message::ToolDescription;

fn is_enum(schema: &Value) -> bool {
    schema
        .get("enum")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

/// `default: "x"` for plain strings, `default: x` for enum strings, JSON otherwise.
fn default_comment(schema: &Value, default: &Value) -> String {
    match default.as_str() {
        Some(s) if !is_enum(schema) => format!("default: \"{s}\""),
        Some(s) => format!("default: {s}"),
        None => format!("default: {default}"),
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn nullable(v: &Value) -> bool {
    v.get("nullable").and_then(Value::as_bool).unwrap_or(false)
}

fn with_null(v: &Value, ty: String) -> String {
    if nullable(v) && !ty.contains("null") {
        format!("{ty} | null")
    } else {
        ty
    }
}

/// Render one schema as a TypeScript type. `indent` prefixes nested lines.
pub fn schema_to_typescript(schema: &Value, indent: &str) -> String {
    if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
        let mut out = String::new();
        for (i, variant) in variants.iter().enumerate() {
            if i > 0 {
                out.push('\n');
                out.push_str(&format!("{indent} | "));
            } else {
                out.push_str(&format!("\n{indent} | "));
            }
            let ty = schema_to_typescript(variant, &format!("{indent}   "));
            out.push_str(&with_null(variant, ty));
            let mut trailing = Vec::new();
            if let Some(d) = str_field(variant, "description") {
                trailing.push(d.to_string());
            }
            if let Some(d) = variant.get("default") {
                trailing.push(default_comment(variant, d));
            }
            if !trailing.is_empty() {
                out.push_str(&format!(" // {}", trailing.join(" ")));
            }
        }
        return out;
    }
    if let Some(types) = schema.get("type").and_then(Value::as_array) {
        let names: Vec<&str> = types
            .iter()
            .filter_map(Value::as_str)
            .map(|t| if t == "integer" { "number" } else { t })
            .collect();
        if !names.is_empty() {
            return names.join(" | ");
        }
    }
    let Some(ty) = str_field(schema, "type") else {
        return "any".to_string();
    };
    match ty {
        "object" => object_to_typescript(schema, indent),
        "string" => {
            if let Some(vals) = schema.get("enum").and_then(Value::as_array) {
                let quoted: Vec<String> = vals
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|s| format!("\"{s}\""))
                    .collect();
                if !quoted.is_empty() {
                    return quoted.join(" | ");
                }
            }
            "string".to_string()
        }
        "number" | "integer" => "number".to_string(),
        "boolean" => "boolean".to_string(),
        "array" => match schema.get("items") {
            Some(items) => format!("{}[]", schema_to_typescript(items, indent)),
            None => "Array<any>".to_string(),
        },
        _ => "any".to_string(),
    }
}

fn object_to_typescript(schema: &Value, indent: &str) -> String {
    let mut out = String::new();
    if let Some(d) = str_field(schema, "description") {
        out.push_str(&format!("{indent}// {d}\n"));
    }
    out.push_str("{\n");
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (key, val) in props {
            let opt = if required.contains(&key.as_str()) {
                ""
            } else {
                "?"
            };
            if let Some(t) = str_field(val, "title") {
                out.push_str(&format!("{indent}// {t}\n{indent}//\n"));
            }
            let one_of = val.get("oneOf").and_then(Value::as_array);
            if one_of.is_none() {
                if let Some(d) = str_field(val, "description") {
                    out.push_str(&format!("{indent}// {d}\n"));
                }
            }
            if let Some(examples) = val.get("examples").and_then(Value::as_array) {
                if !examples.is_empty() {
                    out.push_str(&format!("{indent}// Examples:\n"));
                    for ex in examples.iter().filter_map(Value::as_str) {
                        out.push_str(&format!("{indent}// - \"{ex}\"\n"));
                    }
                }
            }
            if let Some(variants) = one_of {
                one_of_property(&mut out, key, opt, val, variants, indent);
                continue;
            }
            out.push_str(&format!("{indent}{key}{opt}: "));
            let ty = schema_to_typescript(val, &format!("{indent}    "));
            out.push_str(&with_null(val, ty));
            out.push(',');
            if let Some(d) = val.get("default") {
                out.push_str(&format!(" // {}", default_comment(val, d)));
            }
            out.push('\n');
        }
    }
    out.push_str(&format!("{indent}}}"));
    out
}

/// A property whose schema is a `oneOf`: description/default above, variants as ` | ` lines.
fn one_of_property(
    out: &mut String,
    key: &str,
    opt: &str,
    val: &Value,
    variants: &[Value],
    indent: &str,
) {
    let prop_desc = str_field(val, "description");
    let first_desc = variants.first().and_then(|v| str_field(v, "description"));
    let skip_desc = prop_desc.is_some() && prop_desc == first_desc;
    let mut desc_above = false;
    if !skip_desc {
        if let Some(d) = prop_desc {
            out.push_str(&format!("{indent}// {d}\n"));
            desc_above = true;
        }
    }
    if let Some(d) = val.get("default") {
        out.push_str(&format!("{indent}// {}\n", default_comment(val, d)));
    }
    out.push_str(&format!("{indent}{key}{opt}:\n"));
    for (i, variant) in variants.iter().enumerate() {
        out.push_str(&format!("{indent} | "));
        let ty = schema_to_typescript(variant, &format!("{indent}   "));
        out.push_str(&with_null(variant, ty));
        let mut trailing = Vec::new();
        if !(i == 0 && desc_above) {
            if let Some(d) = str_field(variant, "description") {
                if Some(d) != prop_desc {
                    trailing.push(d.to_string());
                }
            }
        }
        if let Some(d) = variant.get("default") {
            trailing.push(default_comment(variant, d));
        }
        if !trailing.is_empty() {
            out.push_str(&format!(" // {}", trailing.join(" ")));
        }
        out.push('\n');
    }
    out.push_str(&format!("{indent},\n"));
}

/// The `# Tools` section declaring the `functions` namespace.
pub fn functions_section(tools: &[ToolDescription]) -> String {
    let mut lines = vec!["## functions\n".to_string()];
    if !tools.is_empty() {
        lines.push("namespace functions {\n".to_string());
        for tool in tools {
            for line in tool.description.lines() {
                lines.push(format!("// {line}"));
            }
            match &tool.parameters {
                Some(p) => lines.push(format!(
                    "type {} = (_: {}) => any;\n",
                    tool.name,
                    schema_to_typescript(p, "")
                )),
                None => lines.push(format!("type {} = () => any;\n", tool.name)),
            }
        }
        lines.push("} // namespace functions".to_string());
    }
    format!("# Tools\n\n{}", lines.join("\n"))
}
