//! `POST /v1/chat/completions` bodies → a checked [`ChatRequest`]
//! (https://platform.openai.com/docs/api-reference/chat/create).
//!
//! The body is walked by hand rather than derived with serde so every mistake names its
//! field (`messages[3].tool_call_id`), as OpenAI's own errors do. Fields this server does not
//! implement but that clients send by default (`user`, `parallel_tool_calls`, penalties, …)
//! are ignored; fields whose absence of support would change the answer (`n` > 1,
//! `logprobs`, structured `response_format`) are refused.

use std::collections::HashMap;

use osstune_harmony::{ReasoningEffort, ToolDescription};
use serde_json::{Map, Value};

use crate::error::ApiError;

#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The JSON arguments as the client sent them back.
    pub arguments: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ChatMessage {
    System(String),
    Developer(String),
    User(String),
    Assistant {
        content: Option<String>,
        reasoning: Option<String>,
        tool_calls: Vec<ToolCall>,
    },
    Tool {
        /// The function name of the call this answers (looked up from `tool_call_id`).
        name: String,
        content: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Force a call of this function.
    Function(String),
}

#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolDescription>,
    pub tool_choice: ToolChoice,
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: Option<usize>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub reasoning_effort: Option<ReasoningEffort>,
    pub stream: bool,
    pub include_usage: bool,
    /// Extension (as vLLM's): return prompt and completion token ids.
    pub return_token_ids: bool,
}

type R<T> = Result<T, ApiError>;

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong(param: &str, want: &str, got: &Value) -> ApiError {
    ApiError::field(param, format!("expected {want}, got {}", type_name(got)))
}

/// `obj[key]`, with JSON null read as absent.
fn opt<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn opt_str(obj: &Map<String, Value>, key: &str, param: &str) -> R<Option<String>> {
    match opt(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(wrong(param, "a string", v)),
    }
}

fn opt_f64(obj: &Map<String, Value>, key: &str) -> R<Option<f64>> {
    match opt(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| wrong(key, "a number", v)),
    }
}

fn opt_u64(obj: &Map<String, Value>, key: &str) -> R<Option<u64>> {
    match opt(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| wrong(key, "a non-negative integer", v)),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str, param: &str) -> R<bool> {
    match opt(obj, key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(wrong(param, "a boolean", v)),
    }
}

/// Message content: a string or an array of `{"type": "text", "text": …}` parts.
fn content_text(v: Option<&Value>, param: &str) -> R<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for (i, p) in parts.iter().enumerate() {
                let pp = format!("{param}[{i}]");
                let o = p.as_object().ok_or_else(|| wrong(&pp, "an object", p))?;
                match o.get("type").and_then(Value::as_str) {
                    Some("text") => match o.get("text") {
                        Some(Value::String(t)) => out.push_str(t),
                        Some(v) => return Err(wrong(&format!("{pp}.text"), "a string", v)),
                        None => return Err(ApiError::field(format!("{pp}.text"), "missing")),
                    },
                    Some(other) => {
                        return Err(ApiError::field(
                            format!("{pp}.type"),
                            format!(
                                "content parts of type {other:?} are not supported (text only)"
                            ),
                        ))
                    }
                    None => return Err(ApiError::field(format!("{pp}.type"), "missing")),
                }
            }
            Ok(Some(out))
        }
        Some(v) => Err(wrong(param, "a string or an array of text parts", v)),
    }
}

fn tool_calls(v: Option<&Value>, param: &str) -> R<Vec<ToolCall>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let arr = v.as_array().ok_or_else(|| wrong(param, "an array", v))?;
    arr.iter()
        .enumerate()
        .map(|(i, c)| {
            let p = format!("{param}[{i}]");
            let o = c.as_object().ok_or_else(|| wrong(&p, "an object", c))?;
            let id = opt_str(o, "id", &format!("{p}.id"))?
                .ok_or_else(|| ApiError::field(format!("{p}.id"), "missing"))?;
            let f = opt(o, "function")
                .ok_or_else(|| ApiError::field(format!("{p}.function"), "missing"))?;
            let f = f
                .as_object()
                .ok_or_else(|| wrong(&format!("{p}.function"), "an object", f))?;
            let name = opt_str(f, "name", &format!("{p}.function.name"))?
                .ok_or_else(|| ApiError::field(format!("{p}.function.name"), "missing"))?;
            let arguments =
                opt_str(f, "arguments", &format!("{p}.function.arguments"))?.unwrap_or_default();
            Ok(ToolCall {
                id,
                name,
                arguments,
            })
        })
        .collect()
}

fn messages(v: Option<&Value>) -> R<Vec<ChatMessage>> {
    let v = v.ok_or_else(|| ApiError::field("messages", "missing"))?;
    let arr = v
        .as_array()
        .ok_or_else(|| wrong("messages", "an array", v))?;
    if arr.is_empty() {
        return Err(ApiError::field("messages", "must not be empty"));
    }
    // Call id → function name, for the tool results that follow.
    let mut calls: HashMap<String, String> = HashMap::new();
    let mut out = Vec::with_capacity(arr.len());
    for (i, m) in arr.iter().enumerate() {
        let p = format!("messages[{i}]");
        let o = m.as_object().ok_or_else(|| wrong(&p, "an object", m))?;
        let role = opt_str(o, "role", &format!("{p}.role"))?
            .ok_or_else(|| ApiError::field(format!("{p}.role"), "missing"))?;
        let content = || content_text(o.get("content"), &format!("{p}.content"));
        let required =
            |c: Option<String>| c.ok_or_else(|| ApiError::field(format!("{p}.content"), "missing"));
        out.push(match role.as_str() {
            "system" => ChatMessage::System(required(content()?)?),
            "developer" => ChatMessage::Developer(required(content()?)?),
            "user" => ChatMessage::User(required(content()?)?),
            "assistant" => {
                let tool_calls = tool_calls(o.get("tool_calls"), &format!("{p}.tool_calls"))?;
                for c in &tool_calls {
                    calls.insert(c.id.clone(), c.name.clone());
                }
                let mut reasoning =
                    opt_str(o, "reasoning_content", &format!("{p}.reasoning_content"))?;
                if reasoning.is_none() {
                    reasoning = opt_str(o, "reasoning", &format!("{p}.reasoning"))?;
                }
                ChatMessage::Assistant {
                    content: content()?,
                    reasoning,
                    tool_calls,
                }
            }
            "tool" => {
                let pid = format!("{p}.tool_call_id");
                let id = opt_str(o, "tool_call_id", &pid)?
                    .ok_or_else(|| ApiError::field(&pid, "missing"))?;
                let name = calls.get(&id).cloned().ok_or_else(|| {
                    ApiError::field(
                        &pid,
                        format!("no earlier assistant tool call has id {id:?}"),
                    )
                })?;
                ChatMessage::Tool {
                    name,
                    content: content()?.unwrap_or_default(),
                }
            }
            other => {
                return Err(ApiError::field(
                    format!("{p}.role"),
                    format!("unknown role {other:?} (system, developer, user, assistant or tool)"),
                ))
            }
        });
    }
    Ok(out)
}

fn tools(v: Option<&Value>) -> R<Vec<ToolDescription>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let arr = v.as_array().ok_or_else(|| wrong("tools", "an array", v))?;
    arr.iter()
        .enumerate()
        .map(|(i, t)| {
            let p = format!("tools[{i}]");
            let o = t.as_object().ok_or_else(|| wrong(&p, "an object", t))?;
            match o.get("type").and_then(Value::as_str) {
                Some("function") => {}
                _ => {
                    return Err(ApiError::field(
                        format!("{p}.type"),
                        "only \"function\" tools are supported",
                    ))
                }
            }
            let f = opt(o, "function")
                .ok_or_else(|| ApiError::field(format!("{p}.function"), "missing"))?;
            let f = f
                .as_object()
                .ok_or_else(|| wrong(&format!("{p}.function"), "an object", f))?;
            let name = opt_str(f, "name", &format!("{p}.function.name"))?
                .ok_or_else(|| ApiError::field(format!("{p}.function.name"), "missing"))?;
            let description = opt_str(f, "description", &format!("{p}.function.description"))?;
            let parameters = match opt(f, "parameters") {
                None => None,
                Some(s @ Value::Object(_)) => Some(s.clone()),
                Some(v) => {
                    return Err(wrong(
                        &format!("{p}.function.parameters"),
                        "a JSON schema object",
                        v,
                    ))
                }
            };
            Ok(ToolDescription {
                name: osstune_data::tools::sanitize_name(&name),
                description: description.unwrap_or_default(),
                parameters,
            })
        })
        .collect()
}

fn tool_choice(v: Option<&Value>, tools: &[ToolDescription]) -> R<ToolChoice> {
    let choice = match v.filter(|v| !v.is_null()) {
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            other => {
                return Err(ApiError::field(
                    "tool_choice",
                    format!("{other:?} is not supported (auto, none or a named function)"),
                ))
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::field("tool_choice.function.name", "missing"))?;
            ToolChoice::Function(osstune_data::tools::sanitize_name(name))
        }
        Some(v) => return Err(wrong("tool_choice", "a string or an object", v)),
    };
    if let ToolChoice::Function(name) = &choice {
        if !tools.iter().any(|t| &t.name == name) {
            return Err(ApiError::field(
                "tool_choice.function.name",
                format!("{name:?} is not one of the declared tools"),
            ));
        }
    }
    Ok(choice)
}

fn stop(v: Option<&Value>) -> R<Vec<String>> {
    let list = match v.filter(|v| !v.is_null()) {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| wrong(&format!("stop[{i}]"), "a string", s))
            })
            .collect::<R<Vec<_>>>()?,
        Some(v) => return Err(wrong("stop", "a string or an array of strings", v)),
    };
    if list.len() > 4 || list.iter().any(String::is_empty) {
        return Err(ApiError::field("stop", "at most 4 non-empty strings"));
    }
    Ok(list)
}

/// Checks and reads one request body.
pub fn parse(body: &Value) -> R<ChatRequest> {
    let o = body.as_object().ok_or_else(|| {
        ApiError::bad_request(format!(
            "the body must be a JSON object, got {}",
            type_name(body)
        ))
    })?;
    let messages = messages(o.get("messages"))?;
    let tools = tools(o.get("tools"))?;
    let tool_choice = tool_choice(o.get("tool_choice"), &tools)?;
    let temperature = opt_f64(o, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::field(
            "temperature",
            format!("must be in [0, 2], got {temperature}"),
        ));
    }
    let top_p = opt_f64(o, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::field(
            "top_p",
            format!("must be in (0, 1], got {top_p}"),
        ));
    }
    let max_tokens = match opt_u64(o, "max_completion_tokens")? {
        Some(n) => Some((n, "max_completion_tokens")),
        None => opt_u64(o, "max_tokens")?.map(|n| (n, "max_tokens")),
    };
    if let Some((0, key)) = max_tokens {
        return Err(ApiError::field(key, "must be at least 1"));
    }
    if let Some(n) = opt_u64(o, "n")? {
        if n != 1 {
            return Err(ApiError::field("n", "only n = 1 is supported"));
        }
    }
    if opt_bool(o, "logprobs", "logprobs")? {
        return Err(ApiError::field(
            "logprobs",
            "log probabilities are not supported",
        ));
    }
    if let Some(rf) = opt(o, "response_format") {
        if rf.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ApiError::field(
                "response_format",
                "only {\"type\": \"text\"} is supported",
            ));
        }
    }
    let reasoning_effort = match opt_str(o, "reasoning_effort", "reasoning_effort")? {
        None => None,
        Some(s) => Some(ReasoningEffort::parse(&s).ok_or_else(|| {
            ApiError::field(
                "reasoning_effort",
                format!("{s:?} is not one of low, medium, high"),
            )
        })?),
    };
    let include_usage = match opt(o, "stream_options") {
        None => false,
        Some(Value::Object(so)) => opt_bool(so, "include_usage", "stream_options.include_usage")?,
        Some(v) => return Err(wrong("stream_options", "an object", v)),
    };
    Ok(ChatRequest {
        model: opt_str(o, "model", "model")?,
        messages,
        tools,
        tool_choice,
        temperature,
        top_p,
        max_tokens: max_tokens.map(|(n, _)| n as usize),
        seed: opt_u64(o, "seed")?,
        stop: stop(o.get("stop"))?,
        reasoning_effort,
        stream: opt_bool(o, "stream", "stream")?,
        include_usage,
        return_token_ids: opt_bool(o, "return_token_ids", "return_token_ids")?,
    })
}
