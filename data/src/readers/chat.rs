//! What chat-dataset readers share: record containers (JSON lines, a JSON array, Parquet rows
//! in `parquet_rows.rs`) and the assembly of turns from role-tagged messages.
//!
//! A conversation with several user turns gives one turn per user message, exactly like a
//! session log: earlier turns become context, the target turn's assistant messages carry the
//! loss. Tool calls are paired with their results (by id, else in call order) so each call is
//! followed by its output, as Harmony expects.

use anyhow::Result;
use osstune_harmony::ToolDescription;
use serde_json::Value;

use super::{record_reader, Input, ReadOut};
use crate::diag::{decode_utf8, Diag};
use crate::session::{Step, Turn};
use crate::tools::sanitize_name;

/// Where a record came from: a line of a JSON-lines file, an item of a JSON array, a Parquet row.
pub struct RecordSource<'a> {
    pub rel: &'a str,
    pub kind: RecordKind,
    /// 1-based line, item or row number.
    pub number: usize,
    pub column: Option<&'a str>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Line,
    Item,
    Row,
}

impl RecordSource<'_> {
    /// Report a problem at this record (`file:line`, `file: item N`, `file: row N`).
    pub fn warn(&self, diag: &mut Diag, msg: impl AsRef<str>) -> Result<()> {
        match self.kind {
            RecordKind::Line => diag.warn(self.rel, Some(self.number), msg),
            RecordKind::Item => diag.warn(
                self.rel,
                None,
                format!("item {}: {}", self.number, msg.as_ref()),
            ),
            RecordKind::Row => diag.warn(
                self.rel,
                None,
                format!("row {}: {}", self.number, msg.as_ref()),
            ),
        }
    }

    /// The session id of the record: its own `id` field, else its position.
    pub fn session_id(&self, record: &Value) -> String {
        match record.get("id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => match self.kind {
                RecordKind::Line => format!("line-{}", self.number),
                RecordKind::Item => format!("item-{}", self.number),
                RecordKind::Row => format!("row-{}", self.number),
            },
        }
    }
}

/// The record's conversation: `column` (or the first of `defaults` present), as an array; a
/// JSON string holding the array is accepted (some datasets store it that way).
pub fn conversation<'a>(
    record: &'a Value,
    column: Option<&str>,
    defaults: &[&str],
) -> Option<std::borrow::Cow<'a, [Value]>> {
    let v = match column {
        Some(c) => record.get(c)?,
        None => defaults.iter().find_map(|k| record.get(*k))?,
    };
    match v {
        Value::Array(a) => Some(std::borrow::Cow::Borrowed(a.as_slice())),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Array(a)) => Some(std::borrow::Cow::Owned(a)),
            _ => None,
        },
        _ => None,
    }
}

/// Text of a message `content`: a string, or OpenAI content parts (text joined, other parts as
/// placeholders), or null.
pub fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.clone()),
                _ => match p.get("type").and_then(Value::as_str) {
                    Some("text") => p.get("text").and_then(Value::as_str).map(str::to_string),
                    Some(t) => Some(format!("[{t}]")),
                    None => None,
                },
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `<think>…</think>` at the start of an answer (R1-style datasets) → (reasoning, rest).
pub fn split_think(text: &str) -> (Option<String>, String) {
    let t = text.trim_start();
    if let Some(rest) = t.strip_prefix("<think>") {
        if let Some(end) = rest.find("</think>") {
            let reasoning = rest[..end].trim().to_string();
            let answer = rest[end + "</think>".len()..].trim_start().to_string();
            return ((!reasoning.is_empty()).then_some(reasoning), answer);
        }
    }
    (None, text.to_string())
}

/// Tool schemas given with a record: an array (or a JSON string holding one) of OpenAI
/// `{"type": "function", "function": {name, description, parameters}}` or bare
/// `{name, description, parameters}` objects.
pub fn declared_tools(v: Option<&Value>) -> Result<Vec<ToolDescription>, String> {
    let parsed;
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(Vec::new()),
        Some(Value::String(s)) => {
            parsed = serde_json::from_str::<Value>(s)
                .map_err(|e| format!("`tools` is not JSON: {e}"))?;
            &parsed
        }
        Some(other) => other,
    };
    let Some(items) = list.as_array() else {
        return Err("`tools` is not a list".to_string());
    };
    let mut out = Vec::new();
    for (i, t) in items.iter().enumerate() {
        let f = t.get("function").filter(|f| f.is_object()).unwrap_or(t);
        let Some(name) = f.get("name").and_then(Value::as_str) else {
            return Err(format!("`tools` item {i} has no name"));
        };
        let parameters =
            match f.get("parameters") {
                Some(Value::String(s)) => Some(serde_json::from_str(s).map_err(|e| {
                    format!("`tools` item {i} ({name}): parameters are not JSON: {e}")
                })?),
                Some(Value::Null) | None => None,
                Some(p) => Some(p.clone()),
            };
        out.push(ToolDescription {
            name: sanitize_name(name),
            description: f
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            parameters,
        });
    }
    Ok(out)
}

/// Tool-call arguments: an object as is, a string parsed as JSON (an error names the tool).
pub fn call_arguments(tool: &str, v: Option<&Value>) -> Result<Value, String> {
    match v {
        None | Some(Value::Null) => Ok(Value::Object(Default::default())),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(Value::Object(Default::default())),
        Some(Value::String(s)) => serde_json::from_str(s)
            .map_err(|e| format!("arguments of the {tool} call are not JSON ({e})")),
        Some(other) => Ok(other.clone()),
    }
}

/// A call of the latest assistant message: id, tool, arguments, and its result once seen.
struct OpenCall {
    id: String,
    tool: String,
    args: Value,
    result: Option<(String, bool)>,
}

/// Assembles turns from messages in order.
#[derive(Default)]
pub struct Turns {
    pub turns: Vec<Turn>,
    cur: Option<Turn>,
    /// Calls of the latest assistant message awaiting results.
    calls: Vec<OpenCall>,
    /// Messages that came before any user message (reported once by the caller).
    pub orphans: usize,
}

impl Turns {
    /// Calls with their results, in call order; a call nobody answered reads as interrupted.
    fn flush_calls(&mut self) {
        let Some(t) = self.cur.as_mut() else {
            self.calls.clear();
            return;
        };
        for OpenCall {
            id,
            tool,
            args,
            result,
        } in self.calls.drain(..)
        {
            let (text, is_error) =
                result.unwrap_or_else(|| ("[Tool execution was interrupted]".to_string(), true));
            t.steps.push(Step::Call {
                id: id.clone(),
                tool: tool.clone(),
                args,
            });
            t.steps.push(Step::Result {
                id,
                tool,
                text,
                is_error,
            });
        }
    }

    pub fn user(&mut self, prompt: String) {
        self.flush_calls();
        if let Some(t) = self.cur.take() {
            self.turns.push(t);
        }
        self.cur = Some(Turn::new(prompt));
    }

    /// Reasoning and visible text of one assistant message (`None` before any user message).
    pub fn assistant(&mut self, reasoning: Option<String>, text: String) -> bool {
        self.flush_calls();
        let Some(t) = self.cur.as_mut() else {
            self.orphans += 1;
            return false;
        };
        if let Some(r) = reasoning.filter(|r| !r.trim().is_empty()) {
            t.steps.push(Step::Reasoning(r));
        }
        if !text.trim().is_empty() {
            t.steps.push(Step::Text(text));
        }
        true
    }

    pub fn call(&mut self, id: String, tool: String, args: Value) {
        if self.cur.is_none() {
            self.orphans += 1;
            return;
        }
        self.calls.push(OpenCall {
            id,
            tool,
            args,
            result: None,
        });
    }

    /// A tool result: matched by call id, else to the first call still waiting. False when
    /// no call waits for it.
    pub fn result(&mut self, id: Option<&str>, text: String, is_error: bool) -> bool {
        let by_id = id.and_then(|id| {
            self.calls
                .iter()
                .position(|c| c.result.is_none() && c.id == id)
        });
        // Unknown or missing ids: answer the oldest open call.
        let pos = by_id.or_else(|| self.calls.iter().position(|c| c.result.is_none()));
        let slot = pos.map(|p| &mut self.calls[p]);
        match slot {
            Some(c) => {
                c.result = Some((text, is_error));
                true
            }
            None => false,
        }
    }

    pub fn finish(mut self) -> Vec<Turn> {
        self.flush_calls();
        if let Some(t) = self.cur.take() {
            self.turns.push(t);
        }
        self.turns
    }
}

/// Read a file of conversation records: JSON lines, or one JSON array of records. Each record
/// goes to the record reader that claims it; problems name the line (or item) and the rest of
/// the file is read.
pub fn read_records(input: &Input, diag: &mut Diag) -> Result<ReadOut> {
    let bytes = diag.read_file(input.path)?;
    let mut out = ReadOut {
        files: 1,
        ..Default::default()
    };
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    if bytes.get(start) == Some(&b'[') {
        let (text, _) = decode_utf8(&bytes);
        let items: Vec<Value> = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => anyhow::bail!(
                "invalid JSON array at line {}, column {}: {e}",
                e.line(),
                e.column()
            ),
        };
        for (i, record) in items.iter().enumerate() {
            let src = RecordSource {
                rel: input.rel,
                kind: RecordKind::Item,
                number: i + 1,
                column: input.column,
            };
            read_one(record, &src, diag, &mut out)?;
        }
        return Ok(out);
    }
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let src = RecordSource {
            rel: input.rel,
            kind: RecordKind::Line,
            number: i + 1,
            column: input.column,
        };
        let (text, bad_utf8) = decode_utf8(raw);
        if bad_utf8.is_some() {
            src.warn(diag, "invalid UTF-8 (replaced with U+FFFD)")?;
        }
        match serde_json::from_str::<Value>(&text) {
            Ok(v) if v.is_object() => read_one(&v, &src, diag, &mut out)?,
            Ok(_) => {
                out.bad_records += 1;
                src.warn(diag, "not a JSON object; line skipped")?;
            }
            Err(e) => {
                out.bad_records += 1;
                src.warn(diag, format!("invalid JSON ({e}); line skipped"))?;
            }
        }
    }
    Ok(out)
}

/// One record → at most one session, through the record reader that claims it.
pub fn read_one(
    record: &Value,
    src: &RecordSource,
    diag: &mut Diag,
    out: &mut ReadOut,
) -> Result<()> {
    let Some(reader) = record_reader(record, src.column) else {
        out.bad_records += 1;
        let col = src.column.unwrap_or("messages or conversations");
        return src.warn(
            diag,
            format!("no conversation in column {col} (use --column to name it); record skipped"),
        );
    };
    match reader.read_record(record, src, diag)? {
        Some(mut s) => {
            s.reader = reader.name();
            out.sessions.push(s);
        }
        None => out.bad_records += 1,
    }
    Ok(())
}
