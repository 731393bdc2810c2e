//! OpenAI chat-format datasets: one conversation a record,
//! `{"messages": [{"role", "content", "tool_calls", "tool_call_id", "reasoning_content"}], "tools"}`
//! (https://platform.openai.com/docs/api-reference/chat/create). `system` / `developer`
//! messages become the developer instructions; each `user` message starts a turn; an assistant
//! message gives reasoning (`reasoning_content`, `reasoning` or `thinking`, or a leading
//! `<think>…</think>`), text and `tool_calls`; `tool` messages are the calls' results.

use anyhow::Result;
use serde_json::Value;

use super::chat::{
    call_arguments, content_text, conversation, declared_tools, read_records, split_think,
    RecordSource, Turns,
};
use super::{Input, Probe, ReadOut, Reader};
use crate::diag::Diag;
use crate::session::{Format, Session};

pub struct OpenaiMessages;

/// Columns tried when `--column` is not given.
const COLUMNS: &[&str] = &["messages", "conversations"];

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

impl Reader for OpenaiMessages {
    fn name(&self) -> &'static str {
        "openai-messages"
    }
    fn family(&self) -> &'static str {
        "chat"
    }
    fn detect(&self, probe: &Probe) -> u8 {
        match probe.first_json_object() {
            Some(v) if self.record_score(v, probe.column) > 0 => 80,
            // A JSON array of records: claimed when its head reads like one.
            None if probe.trimmed_head().starts_with(b"[")
                && String::from_utf8_lossy(probe.head).contains("\"role\"") =>
            {
                50
            }
            _ => 0,
        }
    }
    fn read(&self, input: &Input, diag: &mut Diag) -> Result<ReadOut> {
        read_records(input, diag)
    }
    fn record_score(&self, record: &Value, column: Option<&str>) -> u8 {
        if record.get("info").is_some() {
            return 0; // an `opencode export`
        }
        match conversation(record, column, COLUMNS) {
            Some(msgs) if msgs.first().is_some_and(|m| m.get("role").is_some()) => 80,
            _ => 0,
        }
    }
    fn read_record(
        &self,
        record: &Value,
        src: &RecordSource,
        diag: &mut Diag,
    ) -> Result<Option<Session>> {
        let Some(msgs) = conversation(record, src.column, COLUMNS) else {
            src.warn(diag, "no messages; record skipped")?;
            return Ok(None);
        };
        let mut sess = Session::new(src.session_id(record), Format::Chat, src.rel.to_string());
        sess.source_format = "openai-messages";
        match declared_tools(record.get("tools")) {
            Ok(t) => sess.declared_tools = t,
            Err(e) => {
                src.warn(diag, format!("{e}; record skipped"))?;
                return Ok(None);
            }
        }
        let mut instructions = Vec::new();
        let mut turns = Turns::default();
        for (i, m) in msgs.iter().enumerate() {
            let text = content_text(m.get("content").unwrap_or(&Value::Null));
            match s(m, "role").unwrap_or("") {
                "system" | "developer" => instructions.push(text),
                "user" => turns.user(text),
                "assistant" => {
                    let given = ["reasoning_content", "reasoning", "thinking"]
                        .iter()
                        .find_map(|k| s(m, k))
                        .map(str::to_string);
                    let (inline, text) = split_think(&text);
                    turns.assistant(given.or(inline), text);
                    let calls = m.get("tool_calls").and_then(Value::as_array);
                    for (j, c) in calls.into_iter().flatten().enumerate() {
                        let f = c.get("function").unwrap_or(c);
                        let tool = s(f, "name").unwrap_or("unknown").to_string();
                        let args = match call_arguments(&tool, f.get("arguments")) {
                            Ok(a) => a,
                            Err(e) => {
                                src.warn(diag, format!("message {i}: {e}; record skipped"))?;
                                return Ok(None);
                            }
                        };
                        let id = s(c, "id").map_or_else(|| format!("call_{i}_{j}"), str::to_string);
                        turns.call(id, tool, args);
                    }
                }
                "tool" | "function" => {
                    if !turns.result(s(m, "tool_call_id"), text, false) {
                        src.warn(
                            diag,
                            format!("message {i}: tool result without a call; ignored"),
                        )?;
                    }
                }
                other => src.warn(
                    diag,
                    format!("message {i}: unknown role {other:?}; ignored"),
                )?,
            }
        }
        if turns.orphans > 0 {
            src.warn(
                diag,
                format!(
                    "{} assistant message(s) before the first user message; ignored",
                    turns.orphans
                ),
            )?;
        }
        let instructions: Vec<String> = instructions
            .into_iter()
            .filter(|t| !t.trim().is_empty())
            .collect();
        if !instructions.is_empty() {
            sess.instructions = Some(instructions.join("\n\n"));
        }
        sess.turns = turns.finish();
        Ok(Some(sess))
    }
}
