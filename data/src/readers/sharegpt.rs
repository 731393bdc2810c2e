//! ShareGPT datasets: `{"conversations": [{"from", "value"}], "system"?, "tools"?}`, in the
//! common variants: `from` = `system`, `human` / `user`, `gpt` / `assistant` / `chatgpt`,
//! `function_call` (value = `{"name", "arguments"}` JSON), `observation` / `tool` /
//! `function_response` (value = the call's result) — the LLaMA-Factory layout
//! (https://github.com/hiyouga/LLaMA-Factory/blob/main/data/README.md). A leading
//! `<think>…</think>` in an answer is its reasoning.

use anyhow::Result;
use serde_json::Value;

use super::chat::{
    call_arguments, conversation, declared_tools, read_records, split_think, RecordSource, Turns,
};
use super::{Input, Probe, ReadOut, Reader};
use crate::diag::Diag;
use crate::session::{Format, Session};

pub struct ShareGpt;

const COLUMNS: &[&str] = &["conversations", "messages"];

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

impl Reader for ShareGpt {
    fn name(&self) -> &'static str {
        "sharegpt"
    }
    fn family(&self) -> &'static str {
        "chat"
    }
    fn detect(&self, probe: &Probe) -> u8 {
        match probe.first_json_object() {
            Some(v) if self.record_score(v, probe.column) > 0 => 80,
            None if probe.trimmed_head().starts_with(b"[")
                && String::from_utf8_lossy(probe.head).contains("\"from\"") =>
            {
                55
            }
            _ => 0,
        }
    }
    fn read(&self, input: &Input, diag: &mut Diag) -> Result<ReadOut> {
        read_records(input, diag)
    }
    fn record_score(&self, record: &Value, column: Option<&str>) -> u8 {
        match conversation(record, column, COLUMNS) {
            Some(msgs) if msgs.first().is_some_and(|m| m.get("from").is_some()) => 80,
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
            src.warn(diag, "no conversations; record skipped")?;
            return Ok(None);
        };
        let mut sess = Session::new(src.session_id(record), Format::Chat, src.rel.to_string());
        sess.source_format = "sharegpt";
        match declared_tools(record.get("tools")) {
            Ok(t) => sess.declared_tools = t,
            Err(e) => {
                src.warn(diag, format!("{e}; record skipped"))?;
                return Ok(None);
            }
        }
        let mut instructions: Vec<String> = s(record, "system")
            .map(str::to_string)
            .into_iter()
            .collect();
        let mut turns = Turns::default();
        for (i, m) in msgs.iter().enumerate() {
            let value = s(m, "value").unwrap_or("").to_string();
            match s(m, "from").unwrap_or("") {
                "system" => instructions.push(value),
                "human" | "user" => turns.user(value),
                "gpt" | "assistant" | "chatgpt" | "bing" | "bard" => {
                    let (reasoning, text) = split_think(&value);
                    turns.assistant(reasoning, text);
                }
                "function_call" => {
                    let call: Value = match serde_json::from_str(&value) {
                        Ok(v) => v,
                        Err(e) => {
                            src.warn(diag, format!("message {i}: function_call value is not JSON ({e}); record skipped"))?;
                            return Ok(None);
                        }
                    };
                    let tool = s(&call, "name").unwrap_or("unknown").to_string();
                    let args = match call_arguments(&tool, call.get("arguments")) {
                        Ok(a) => a,
                        Err(e) => {
                            src.warn(diag, format!("message {i}: {e}; record skipped"))?;
                            return Ok(None);
                        }
                    };
                    turns.call(format!("call_{i}"), tool, args);
                }
                "observation" | "tool" | "function_response" | "ipython" => {
                    if !turns.result(None, value, false) {
                        src.warn(
                            diag,
                            format!("message {i}: tool result without a call; ignored"),
                        )?;
                    }
                }
                other => src.warn(
                    diag,
                    format!("message {i}: unknown speaker {other:?}; ignored"),
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
        instructions.retain(|t| !t.trim().is_empty());
        if !instructions.is_empty() {
            sess.instructions = Some(instructions.join("\n\n"));
        }
        sess.turns = turns.finish();
        Ok(Some(sess))
    }
}
