//! opencode event streams, either envelope, even mixed in one file:
//! - `opencode run --format json` (one JSON object a line): `{"type": "step_start" | "text" |
//!   "reasoning" | "tool_use" | "step_finish" | "error", "timestamp", "sessionID", "part": {…}}`
//!   (https://github.com/sst/opencode, packages/opencode/src/cli/cmd/run.ts);
//! - the server's bus events (`GET /event`), as server-sent events (`data: {…}` lines) or JSON
//!   lines: `{"type": "message.updated", "properties": {"info": {…}}}`,
//!   `{"type": "message.part.updated", "properties": {"part": {…}}}`, `message.part.delta`,
//!   `message.removed`, `message.part.removed`, `session.created|updated|deleted`
//!   (packages/opencode/src/session/message-v2.ts `Event`, session/index.ts `Event`).
//!
//! Parts carry the storage tree's part schema, so the stream is folded into the same
//! session / message / part objects (the last state of each part id wins) and built by
//! [`crate::opencode::build_session`]: a session captured from its events gives the samples its
//! storage tree gives. A message's role comes from its `message.updated` info; without one
//! (`run` output) a message with step, reasoning or tool parts is the assistant's and one with
//! only text is the user's. A session whose user prompt is not in the stream is reported and
//! skipped, never trained with an empty prompt.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{json, Value};

use super::{Input, Probe, ReadOut, Reader};
use crate::diag::{decode_utf8, Diag};
use crate::opencode::{build_session, RawMessage};

pub struct OpencodeEvents;

/// Part types of opencode's MessageV2.Part union; anything else is reported.
const PART_TYPES: &[&str] = &[
    "text",
    "reasoning",
    "tool",
    "file",
    "step-start",
    "step-finish",
    "snapshot",
    "patch",
    "agent",
    "subtask",
    "compaction",
    "retry",
];

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn is_sse_field(line: &str) -> bool {
    line.starts_with("data:")
        || line.starts_with("event:")
        || line.starts_with("id:")
        || line.starts_with("retry:")
        || line.starts_with(':')
}

/// Is this one event of either envelope?
fn is_event(v: &Value) -> bool {
    s(v, "type").is_some()
        && (v.get("part").is_some_and(Value::is_object)
            || v.get("properties").is_some_and(Value::is_object))
}

#[derive(Default)]
struct Msg {
    info: Option<Value>,
    parts: BTreeMap<String, Value>,
    /// A run-format `error` event for this message (its info has no `error` to carry it).
    error: Option<Value>,
    warned_early: bool,
}

#[derive(Default)]
struct Ses {
    info: Option<Value>,
    msgs: BTreeMap<String, Msg>,
    first_timestamp: Option<i64>,
    last_msg: Option<String>,
}

#[derive(Default)]
struct Fold {
    order: Vec<String>,
    sessions: BTreeMap<String, Ses>,
}

impl Fold {
    fn ses(&mut self, sid: &str) -> &mut Ses {
        if !self.sessions.contains_key(sid) {
            self.order.push(sid.to_string());
        }
        self.sessions.entry(sid.to_string()).or_default()
    }

    fn part(
        &mut self,
        part: &Value,
        env_sid: Option<&str>,
        server: bool,
        mut at: Loc,
    ) -> Result<()> {
        let (Some(pid), Some(mid)) = (s(part, "id"), s(part, "messageID")) else {
            return at.warn("part without id or messageID; event skipped");
        };
        let Some(sid) = s(part, "sessionID").or(env_sid) else {
            return at.warn("part without sessionID; event skipped");
        };
        let ptype = s(part, "type").unwrap_or("");
        if !PART_TYPES.contains(&ptype) {
            return at.warn(format!("unknown part type {ptype:?}; event skipped"));
        }
        let ses = self.ses(sid);
        ses.last_msg = Some(mid.to_string());
        let msg = ses.msgs.entry(mid.to_string()).or_default();
        if server && msg.info.is_none() && !msg.warned_early {
            msg.warned_early = true;
            at.warn(format!(
                "message.part.updated for message {mid} before its message.updated; part kept"
            ))?;
        }
        msg.parts.insert(pid.to_string(), part.clone());
        Ok(())
    }

    fn event(&mut self, v: &Value, mut at: Loc) -> Result<()> {
        let ty = s(v, "type").unwrap_or("");
        let props = v.get("properties").unwrap_or(&Value::Null);
        let env_sid = s(v, "sessionID").or_else(|| s(props, "sessionID"));
        if let (Some(sid), Some(ts)) = (env_sid, v.get("timestamp").and_then(Value::as_i64)) {
            let ses = self.ses(sid);
            ses.first_timestamp.get_or_insert(ts);
        }
        match ty {
            "session.created" | "session.updated" => {
                let info = props.get("info").unwrap_or(&Value::Null);
                match s(info, "id") {
                    Some(sid) => self.ses(sid).info = Some(info.clone()),
                    None => at.warn(format!("{ty} without info.id; event skipped"))?,
                }
            }
            "session.deleted" => {
                if let Some(sid) = props.get("info").and_then(|i| s(i, "id")) {
                    self.sessions.remove(sid);
                }
            }
            "message.updated" => {
                let info = props.get("info").unwrap_or(&Value::Null);
                match (s(info, "id"), s(info, "sessionID")) {
                    (Some(mid), Some(sid)) => {
                        let ses = self.ses(sid);
                        ses.last_msg = Some(mid.to_string());
                        ses.msgs.entry(mid.to_string()).or_default().info = Some(info.clone());
                    }
                    _ => at.warn("message.updated without info.id or info.sessionID; skipped")?,
                }
            }
            "message.removed" => {
                if let (Some(sid), Some(mid)) = (env_sid, s(props, "messageID")) {
                    if let Some(ses) = self.sessions.get_mut(sid) {
                        ses.msgs.remove(mid);
                    }
                }
            }
            "message.part.updated" => match props.get("part") {
                Some(p) if p.is_object() => self.part(p, env_sid, true, at)?,
                _ => at.warn("message.part.updated without a part; skipped")?,
            },
            "message.part.removed" => {
                let (mid, pid) = (s(props, "messageID"), s(props, "partID"));
                for ses in self.sessions.values_mut() {
                    if let Some(m) = mid.and_then(|m| ses.msgs.get_mut(m)) {
                        pid.map(|p| m.parts.remove(p));
                    }
                }
            }
            "message.part.delta" => self.delta(props, at)?,
            "step_start" | "step_finish" | "text" | "reasoning" | "tool_use" => {
                match v.get("part") {
                    Some(p) if p.is_object() => self.part(p, env_sid, false, at)?,
                    _ => at.warn(format!("{ty} event without a part; skipped"))?,
                }
            }
            "error" => {
                let err = v
                    .get("error")
                    .cloned()
                    .unwrap_or(json!({"name": "UnknownError"}));
                let last = env_sid.and_then(|sid| {
                    let ses = self.sessions.get_mut(sid)?;
                    let mid = ses.last_msg.clone()?;
                    ses.msgs.get_mut(&mid)
                });
                match last {
                    Some(m) => m.error = Some(err),
                    None => at.warn("error event before any message of its session; skipped")?,
                }
            }
            // permission.*, session.status, todo.updated, file.edited, server.connected, …:
            // nothing a sample needs.
            _ => {}
        }
        Ok(())
    }

    /// `message.part.delta {sessionID, messageID, partID, field, delta}`: streamed text appended
    /// to a part already seen.
    fn delta(&mut self, props: &Value, mut at: Loc) -> Result<()> {
        let (Some(sid), Some(mid), Some(pid), Some(field), Some(delta)) = (
            s(props, "sessionID"),
            s(props, "messageID"),
            s(props, "partID"),
            s(props, "field"),
            s(props, "delta"),
        ) else {
            return at.warn(
                "message.part.delta without sessionID, messageID, partID, field or delta; skipped",
            );
        };
        let part = self
            .sessions
            .get_mut(sid)
            .and_then(|ses| ses.msgs.get_mut(mid))
            .and_then(|m| m.parts.get_mut(pid));
        match part.and_then(Value::as_object_mut) {
            Some(o) => {
                let cur = o
                    .get(field)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                o.insert(field.to_string(), Value::String(cur + delta));
                Ok(())
            }
            None => at.warn(format!(
                "message.part.delta for unknown part {pid}; skipped"
            )),
        }
    }
}

/// Where an event came from, for warnings.
struct Loc<'a> {
    rel: &'a str,
    line: usize,
    diag: &'a mut Diag,
}

impl Loc<'_> {
    fn warn(&mut self, msg: impl AsRef<str>) -> Result<()> {
        self.diag.warn(self.rel, Some(self.line), msg)
    }
}

/// The role of a message that has no `message.updated` info: opencode opens every assistant
/// step with a step-start part; user messages hold only text and files.
fn inferred_role(m: &Msg) -> &'static str {
    let assistant = m.parts.values().any(|p| {
        matches!(
            s(p, "type"),
            Some("step-start" | "step-finish" | "tool" | "reasoning" | "patch" | "snapshot")
        )
    });
    if assistant {
        "assistant"
    } else {
        "user"
    }
}

/// Parse one event's JSON and fold it in; bad JSON is counted and reported.
fn dispatch(fold: &mut Fold, text: &str, mut at: Loc, bad: &mut usize) -> Result<()> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) if v.is_object() => fold.event(&v, at),
        Ok(_) => {
            *bad += 1;
            at.warn("not a JSON object; event skipped")
        }
        Err(e) => {
            *bad += 1;
            at.warn(format!("invalid JSON ({e}); event skipped"))
        }
    }
}

fn has_prompt(msgs: &[RawMessage]) -> bool {
    msgs.iter().any(|m| {
        s(&m.info, "role") == Some("user")
            && m.parts.iter().any(|p| {
                (s(p, "type") == Some("text")
                    && p.get("synthetic").and_then(Value::as_bool) != Some(true)
                    && s(p, "text").is_some_and(|t| !t.trim().is_empty()))
                    || s(p, "type") == Some("subtask")
            })
    })
}

impl Reader for OpencodeEvents {
    fn name(&self) -> &'static str {
        "opencode-events"
    }
    fn family(&self) -> &'static str {
        "opencode"
    }
    fn detect(&self, probe: &Probe) -> u8 {
        let text = String::from_utf8_lossy(probe.head);
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(data) = line.strip_prefix("data:") {
                return match serde_json::from_str::<Value>(data.trim()) {
                    Ok(v) if s(&v, "type").is_some() => 95,
                    _ => 0,
                };
            }
            if is_sse_field(line) {
                continue; // `event:` / `id:` / comment lines before the first data line
            }
            return if probe.first_json_object().is_some_and(is_event) {
                95
            } else {
                0
            };
        }
        0
    }

    fn read(&self, input: &Input, diag: &mut Diag) -> Result<ReadOut> {
        let bytes = diag.read_file(input.path)?;
        let rel = input.rel;
        let mut fold = Fold::default();
        let mut bad = 0;
        // Server-sent events: `data:` lines accumulate until a blank line ends the event.
        let mut sse: Option<(usize, String)> = None;
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let (text, bad_utf8) = decode_utf8(raw);
            if bad_utf8.is_some() {
                diag.warn(rel, Some(i + 1), "invalid UTF-8 (replaced with U+FFFD)")?;
            }
            let line = text.trim_end_matches('\r');
            if line.trim().is_empty() {
                if let Some((at, data)) = sse.take() {
                    dispatch(
                        &mut fold,
                        &data,
                        Loc {
                            rel,
                            line: at,
                            diag: &mut *diag,
                        },
                        &mut bad,
                    )?;
                }
                continue;
            }
            if let Some(data) = line.strip_prefix("data:") {
                let data = data.strip_prefix(' ').unwrap_or(data);
                match &mut sse {
                    Some((_, buf)) => {
                        buf.push('\n');
                        buf.push_str(data);
                    }
                    None => sse = Some((i + 1, data.to_string())),
                }
            } else if !is_sse_field(line) {
                dispatch(
                    &mut fold,
                    line,
                    Loc {
                        rel,
                        line: i + 1,
                        diag: &mut *diag,
                    },
                    &mut bad,
                )?;
            }
        }
        if let Some((at, data)) = sse.take() {
            dispatch(
                &mut fold,
                &data,
                Loc {
                    rel,
                    line: at,
                    diag: &mut *diag,
                },
                &mut bad,
            )?;
        }
        let mut sessions = Vec::new();
        for sid in &fold.order {
            let Some(ses) = fold.sessions.remove(sid) else {
                continue; // deleted
            };
            let msgs: Vec<RawMessage> = ses
                .msgs
                .into_iter()
                .map(|(mid, m)| {
                    let mut info = m.info.clone().unwrap_or_else(
                        || json!({"id": mid, "sessionID": sid, "role": inferred_role(&m)}),
                    );
                    if let (Some(err), Some(o)) = (m.error, info.as_object_mut()) {
                        o.entry("error").or_insert(err);
                    }
                    RawMessage {
                        info,
                        parts: m.parts.into_values().collect(),
                    }
                })
                .collect();
            if !has_prompt(&msgs) {
                diag.warn(
                    rel,
                    None,
                    format!("session {sid}: the stream carries no user prompt (opencode run --format json omits it); session skipped"),
                )?;
                continue;
            }
            let info = ses.info.unwrap_or_else(
                || json!({"id": sid, "time": {"created": ses.first_timestamp.unwrap_or(0)}}),
            );
            sessions.push(build_session(&info, msgs, format!("{rel}#{sid}")));
        }
        Ok(ReadOut {
            sessions,
            files: 1,
            bad_records: bad,
        })
    }
}
