//! Tool declarations for the developer message: built-in schemas for the tools opencode and
//! Claude Code ship, schemas inferred from observed arguments for anything else (MCP, plugins).

use std::collections::BTreeMap;

use osstune_harmony::ToolDescription;
use serde_json::{json, Map, Value};

use crate::session::Format;

fn obj(props: Value, required: &[&str]) -> Value {
    json!({ "type": "object", "properties": props, "required": required })
}

fn str_(d: &str) -> Value {
    json!({ "type": "string", "description": d })
}

fn num(d: &str) -> Value {
    json!({ "type": "number", "description": d })
}

fn bool_(d: &str) -> Value {
    json!({ "type": "boolean", "description": d })
}

fn todos() -> Value {
    json!({ "type": "array", "description": "The updated todo list", "items": { "type": "object",
        "properties": { "content": { "type": "string" }, "status": { "type": "string",
        "enum": ["pending", "in_progress", "completed", "cancelled"] }, "priority": { "type": "string" },
        "id": { "type": "string" }, "activeForm": { "type": "string" } }, "required": ["content", "status"] } })
}

/// Built-in schema for a known tool of the harness, if any. Descriptions are short on purpose:
/// the declaration is repeated in every sample and costs context.
pub fn builtin(format: Format, name: &str) -> Option<(String, Value)> {
    let (d, p) = match (format, name) {
        (Format::Opencode, "bash") => (
            "Run a shell command in the project directory.",
            obj(
                json!({"command": str_("The command to execute"), "timeout": num("Optional timeout in milliseconds"), "workdir": str_("Working directory"), "description": str_("Short description of what the command does")}),
                &["command"],
            ),
        ),
        (Format::Opencode, "read") => (
            "Read a file (or list a directory).",
            obj(
                json!({"filePath": str_("Absolute path of the file to read"), "offset": num("Line to start from"), "limit": num("Number of lines to read")}),
                &["filePath"],
            ),
        ),
        (Format::Opencode, "edit") => (
            "Replace a string in a file.",
            obj(
                json!({"filePath": str_("Absolute path of the file to modify"), "oldString": str_("The text to replace"), "newString": str_("The replacement text"), "replaceAll": bool_("Replace every occurrence")}),
                &["filePath", "oldString", "newString"],
            ),
        ),
        (Format::Opencode, "write") => (
            "Write a file, replacing its content.",
            obj(
                json!({"filePath": str_("Absolute path of the file to write"), "content": str_("The content to write")}),
                &["filePath", "content"],
            ),
        ),
        (Format::Opencode, "glob") => (
            "Find files by glob pattern.",
            obj(
                json!({"pattern": str_("Glob pattern, e.g. **/*.rs"), "path": str_("Directory to search in")}),
                &["pattern"],
            ),
        ),
        (Format::Opencode, "grep") => (
            "Search file contents with a regular expression.",
            obj(
                json!({"pattern": str_("Regular expression"), "path": str_("Directory to search in"), "include": str_("File pattern to include, e.g. *.ts")}),
                &["pattern"],
            ),
        ),
        (Format::Opencode, "list") => (
            "List a directory.",
            obj(
                json!({"path": str_("Absolute path of the directory"), "ignore": {"type": "array", "items": {"type": "string"}, "description": "Glob patterns to ignore"}}),
                &[],
            ),
        ),
        (Format::Opencode, "todowrite") => (
            "Update the session's todo list.",
            obj(json!({"todos": todos()}), &["todos"]),
        ),
        (Format::Opencode, "todoread") => ("Read the session's todo list.", obj(json!({}), &[])),
        (Format::Opencode, "task") => (
            "Run a sub-agent on a self-contained task and return its answer.",
            obj(
                json!({"description": str_("Short (3-5 word) description of the task"), "prompt": str_("The task for the agent"), "subagent_type": str_("Agent to use, e.g. general or explore")}),
                &["description", "prompt", "subagent_type"],
            ),
        ),
        (Format::Opencode, "webfetch") => (
            "Fetch a URL.",
            obj(
                json!({"url": str_("The URL to fetch"), "format": {"type": "string", "enum": ["text", "markdown", "html"]}, "timeout": num("Timeout in seconds")}),
                &["url", "format"],
            ),
        ),
        (Format::ClaudeCode, "Bash") => (
            "Run a shell command.",
            obj(
                json!({"command": str_("The command to execute"), "description": str_("Short description of what the command does"), "timeout": num("Optional timeout in milliseconds"), "run_in_background": bool_("Run the command in the background")}),
                &["command"],
            ),
        ),
        (Format::ClaudeCode, "Read") => (
            "Read a file.",
            obj(
                json!({"file_path": str_("Absolute path of the file to read"), "offset": num("Line to start from"), "limit": num("Number of lines to read")}),
                &["file_path"],
            ),
        ),
        (Format::ClaudeCode, "Write") => (
            "Write a file, replacing its content.",
            obj(
                json!({"file_path": str_("Absolute path of the file to write"), "content": str_("The content to write")}),
                &["file_path", "content"],
            ),
        ),
        (Format::ClaudeCode, "Edit") => (
            "Replace a string in a file.",
            obj(
                json!({"file_path": str_("Absolute path of the file to modify"), "old_string": str_("The text to replace"), "new_string": str_("The replacement text"), "replace_all": bool_("Replace every occurrence")}),
                &["file_path", "old_string", "new_string"],
            ),
        ),
        (Format::ClaudeCode, "MultiEdit") => (
            "Apply several string replacements to one file.",
            obj(
                json!({"file_path": str_("Absolute path of the file to modify"), "edits": {"type": "array", "items": obj(json!({"old_string": {"type": "string"}, "new_string": {"type": "string"}, "replace_all": {"type": "boolean"}}), &["old_string", "new_string"])}}),
                &["file_path", "edits"],
            ),
        ),
        (Format::ClaudeCode, "Glob") => (
            "Find files by glob pattern.",
            obj(
                json!({"pattern": str_("Glob pattern, e.g. **/*.rs"), "path": str_("Directory to search in")}),
                &["pattern"],
            ),
        ),
        (Format::ClaudeCode, "Grep") => (
            "Search file contents with ripgrep.",
            obj(
                json!({"pattern": str_("Regular expression"), "path": str_("File or directory to search in"), "glob": str_("Glob filter, e.g. *.js"), "output_mode": {"type": "string", "enum": ["content", "files_with_matches", "count"]}, "-i": bool_("Case insensitive"), "-n": bool_("Show line numbers")}),
                &["pattern"],
            ),
        ),
        (Format::ClaudeCode, "LS") => (
            "List a directory.",
            obj(
                json!({"path": str_("Absolute path of the directory")}),
                &["path"],
            ),
        ),
        (Format::ClaudeCode, "TodoWrite") => (
            "Update the todo list.",
            obj(json!({"todos": todos()}), &["todos"]),
        ),
        (Format::ClaudeCode, "Task") | (Format::ClaudeCode, "Agent") => (
            "Launch a sub-agent on a self-contained task and return its answer.",
            obj(
                json!({"description": str_("Short (3-5 word) description of the task"), "prompt": str_("The task for the agent"), "subagent_type": str_("Agent type to use")}),
                &["description", "prompt"],
            ),
        ),
        (Format::ClaudeCode, "TaskCreate") => (
            "Create a task in the task list.",
            obj(
                json!({"subject": str_("Task title"), "description": str_("What needs to be done"), "activeForm": str_("Present-continuous form shown while in progress")}),
                &["subject", "description"],
            ),
        ),
        (Format::ClaudeCode, "TaskUpdate") => (
            "Update a task's status.",
            obj(
                json!({"taskId": str_("Task id"), "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]}}),
                &["taskId"],
            ),
        ),
        (Format::ClaudeCode, "WebFetch") => (
            "Fetch a URL and answer a prompt about its content.",
            obj(
                json!({"url": str_("The URL to fetch"), "prompt": str_("What to extract from the page")}),
                &["url", "prompt"],
            ),
        ),
        (Format::ClaudeCode, "WebSearch") => (
            "Search the web.",
            obj(json!({"query": str_("The search query")}), &["query"]),
        ),
        _ => return None,
    };
    Some((d.to_string(), p))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::Null => "null",
    }
}

/// Observed argument objects of one unknown tool → a schema: every key seen, its type (first
/// non-null type seen), required iff present in every call.
pub fn infer(calls: &[&Value]) -> Value {
    let mut types: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for args in calls {
        if let Some(o) = args.as_object() {
            for (k, v) in o {
                if !types.contains_key(k) {
                    order.push(k.clone());
                }
                let t = types.entry(k.clone()).or_insert("null");
                if *t == "null" {
                    *t = json_type(v);
                }
                *counts.entry(k.clone()).or_default() += 1;
            }
        }
    }
    let mut props = Map::new();
    let mut required = Vec::new();
    for k in order {
        let t = types.get(&k).copied().unwrap_or("string");
        props.insert(
            k.clone(),
            if t == "null" {
                json!({})
            } else {
                json!({ "type": t })
            },
        );
        if counts.get(&k).copied().unwrap_or(0) == calls.len() {
            required.push(Value::String(k));
        }
    }
    json!({ "type": "object", "properties": props, "required": required })
}

/// Recipients must match `[A-Za-z0-9_.-]+`; anything else becomes `_`.
pub fn sanitize_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "unknown".to_string()
    } else {
        s
    }
}

/// Declarations for the given tools (name → observed argument objects), sorted by name.
pub fn declare(format: Format, used: &BTreeMap<String, Vec<&Value>>) -> Vec<ToolDescription> {
    used.iter()
        .map(|(name, calls)| {
            let (description, parameters) = match builtin(format, name) {
                Some(b) => b,
                None => (
                    format!("{name} (schema inferred from observed calls)."),
                    infer(calls),
                ),
            };
            ToolDescription {
                name: sanitize_name(name),
                description,
                parameters: Some(parameters),
            }
        })
        .collect()
}

/// Names of all built-in tools of a harness (for `--declare-tools all`).
pub fn builtin_names(format: Format) -> &'static [&'static str] {
    match format {
        Format::Opencode => &[
            "bash",
            "edit",
            "glob",
            "grep",
            "list",
            "read",
            "task",
            "todoread",
            "todowrite",
            "webfetch",
            "write",
        ],
        Format::ClaudeCode => &[
            "Bash",
            "Edit",
            "Glob",
            "Grep",
            "Read",
            "Task",
            "TodoWrite",
            "WebFetch",
            "WebSearch",
            "Write",
        ],
        Format::Chat => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inferred_schema_marks_always_present_keys_required() {
        let a = json!({"query": "x", "limit": 3});
        let b = json!({"query": "y", "deep": true, "limit": null});
        let s = infer(&[&a, &b]);
        assert_eq!(s["properties"]["query"]["type"], "string");
        assert_eq!(s["properties"]["limit"]["type"], "integer");
        assert_eq!(s["properties"]["deep"]["type"], "boolean");
        assert_eq!(s["required"], json!(["query", "limit"]));
    }

    #[test]
    fn names_are_made_valid_recipients() {
        assert_eq!(
            sanitize_name("mcp__github__create issue"),
            "mcp__github__create_issue"
        );
        assert_eq!(sanitize_name(""), "unknown");
    }
}
