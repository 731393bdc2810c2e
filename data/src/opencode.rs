//! opencode: storage trees (gen 1 and 2), `opencode.db` (gen 3), `opencode export` JSON and
//! event streams all carry the same Session.Info / MessageV2.Info / MessageV2.Part objects
//! (packages/opencode/src/session/message-v2.ts in https://github.com/sst/opencode); each reader
//! gathers them and [`build_session`] turns them into turns.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Map, Value};

use crate::diag::{decode_utf8, parse_json_object, Diag};
use crate::session::{date_from_unix_ms, Format, Outcome, Session, Step, Turn};

/// A message with its parts, as in `opencode export`.
pub struct RawMessage {
    pub info: Value,
    pub parts: Vec<Value>,
}

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn id_of(v: &Value) -> &str {
    s(v, "id").unwrap_or("")
}

/// Placeholder for a non-text attachment; base64 is never inlined.
fn attachment_text(p: &Value) -> Option<String> {
    let mime = s(p, "mime").unwrap_or("application/octet-stream");
    // text/plain and directories reach the model through synthetic text parts instead.
    if mime == "text/plain" || mime == "application/x-directory" {
        return None;
    }
    let name = s(p, "filename").map(str::to_string).or_else(|| {
        s(p, "url")
            .filter(|u| !u.starts_with("data:"))
            .map(str::to_string)
    });
    Some(match name {
        Some(n) => format!("[attached {mime}: {n}]"),
        None => format!("[attached {mime}]"),
    })
}

/// What opencode itself sent back to the model for a tool part (message-v2.ts).
fn tool_result_text(state: &Value) -> (String, bool, bool) {
    let status = s(state, "status").unwrap_or("");
    match status {
        "completed" => {
            let compacted = state
                .get("time")
                .and_then(|t| t.get("compacted"))
                .is_some_and(|c| !c.is_null());
            let mut out = if compacted {
                "[Old tool result content cleared]".to_string()
            } else {
                s(state, "output").unwrap_or("").to_string()
            };
            if let Some(atts) = state.get("attachments").and_then(Value::as_array) {
                for a in atts {
                    if let Some(t) = attachment_text(a) {
                        out.push('\n');
                        out.push_str(&t);
                    }
                }
            }
            (out, false, false)
        }
        "error" => {
            let meta = state.get("metadata");
            let interrupted = meta
                .and_then(|m| m.get("interrupted"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let partial = meta.and_then(|m| s(m, "output"));
            let text = match (interrupted, partial) {
                (true, Some(o)) => o.to_string(),
                _ => s(state, "error").unwrap_or("Error").to_string(),
            };
            (text, true, false)
        }
        _ => ("[Tool execution was interrupted]".to_string(), true, true),
    }
}

/// Session.Info + messages → turns (docs/data.md: a user message with a non-synthetic text
/// part and no `compaction` part starts a turn; assistant messages follow it by id).
pub fn build_session(info: &Value, mut msgs: Vec<RawMessage>, file: String) -> Session {
    let id = id_of(info).to_string();
    let mut sess = Session::new(id, Format::Opencode, file);
    sess.cwd = s(info, "directory").map(str::to_string);
    sess.subagent = info.get("parentID").is_some_and(|p| !p.is_null());
    sess.date = info
        .get("time")
        .and_then(|t| t.get("created"))
        .and_then(Value::as_i64)
        .and_then(date_from_unix_ms);
    msgs.sort_by(|a, b| id_of(&a.info).cmp(id_of(&b.info)));
    // A revert undoes everything from that message on.
    if let Some(rev) = info.get("revert").and_then(|r| s(r, "messageID")) {
        msgs.retain(|m| id_of(&m.info) < rev);
    }
    let mut summary: Option<String> = None;
    let mut context_start = 0;
    let mut cur: Option<Turn> = None;
    let mut errored = false;
    let finish = |cur: &mut Option<Turn>, turns: &mut Vec<Turn>, errored: bool| {
        if let Some(mut t) = cur.take() {
            if errored && t.final_text().is_none() && t.outcome == Outcome::Complete {
                t.outcome = Outcome::Error;
            }
            turns.push(t);
        }
    };
    for m in msgs.iter_mut() {
        m.parts.sort_by(|a, b| id_of(a).cmp(id_of(b)));
        let role = s(&m.info, "role").unwrap_or("");
        if role == "user" {
            if m.parts.iter().any(|p| s(p, "type") == Some("compaction")) {
                finish(&mut cur, &mut sess.turns, errored);
                continue;
            }
            let mut texts = Vec::new();
            let mut genuine = false;
            for p in &m.parts {
                match s(p, "type") {
                    Some("text") if p.get("ignored").and_then(Value::as_bool) != Some(true) => {
                        let t = s(p, "text").unwrap_or("");
                        if t.trim().is_empty() {
                            continue;
                        }
                        if p.get("synthetic").and_then(Value::as_bool) != Some(true) {
                            genuine = true;
                        }
                        texts.push(t.to_string());
                    }
                    Some("file") => texts.extend(attachment_text(p)),
                    Some("subtask") => {
                        if let Some(t) = s(p, "prompt") {
                            genuine = true;
                            texts.push(t.to_string());
                        }
                    }
                    _ => {}
                }
            }
            if !genuine {
                continue;
            }
            finish(&mut cur, &mut sess.turns, errored);
            errored = false;
            let mut t = Turn::new(texts.join("\n\n"));
            t.summary = summary.clone();
            t.context_start = context_start;
            cur = Some(t);
            continue;
        }
        if role != "assistant" {
            continue;
        }
        if m.info.get("summary").and_then(Value::as_bool) == Some(true) {
            let text: Vec<&str> = m
                .parts
                .iter()
                .filter(|p| s(p, "type") == Some("text"))
                .filter_map(|p| s(p, "text"))
                .collect();
            if !text.is_empty() {
                finish(&mut cur, &mut sess.turns, errored);
                summary = Some(text.join("\n\n"));
                context_start = sess.turns.len();
            }
            continue;
        }
        let Some(turn) = cur.as_mut() else { continue };
        let err_name = m.info.get("error").and_then(|e| s(e, "name"));
        if err_name.is_some() && err_name != Some("MessageAbortedError") {
            errored = true;
            continue;
        }
        for p in &m.parts {
            match s(p, "type") {
                Some("reasoning") => {
                    let t = s(p, "text").unwrap_or("");
                    if !t.trim().is_empty() {
                        turn.steps.push(Step::Reasoning(t.to_string()));
                    }
                }
                Some("text") => {
                    let t = s(p, "text").unwrap_or("");
                    if !t.trim().is_empty()
                        && p.get("ignored").and_then(Value::as_bool) != Some(true)
                    {
                        turn.steps.push(Step::Text(t.to_string()));
                    }
                }
                Some("tool") => {
                    let Some(tool) = s(p, "tool") else { continue };
                    let call_id = s(p, "callID").unwrap_or(id_of(p)).to_string();
                    let state = p.get("state").cloned().unwrap_or(Value::Null);
                    let args = state
                        .get("input")
                        .cloned()
                        .unwrap_or(Value::Object(Map::new()));
                    let (text, is_error, interrupted) = tool_result_text(&state);
                    turn.steps.push(Step::Call {
                        id: call_id.clone(),
                        tool: tool.to_string(),
                        args,
                    });
                    turn.steps.push(Step::Result {
                        id: call_id,
                        tool: tool.to_string(),
                        text,
                        is_error,
                    });
                    if interrupted {
                        turn.outcome = Outcome::Aborted;
                    }
                }
                _ => {}
            }
        }
        if err_name == Some("MessageAbortedError") {
            turn.outcome = Outcome::Aborted;
        } else if !m.parts.is_empty() {
            errored = false;
        }
    }
    finish(&mut cur, &mut sess.turns, errored);
    sess
}

/// Read one JSON file, reporting (not failing on) bad input: an unreadable file is a warning
/// naming it (fatal with `--strict`), never a silent gap.
fn read_json(path: &Path, rel: &str, diag: &mut Diag) -> Result<Option<Value>> {
    let bytes = match diag.read_file(path) {
        Ok(b) => b,
        Err(e) => {
            diag.warn(rel, None, format!("{e:#}; file skipped"))?;
            return Ok(None);
        }
    };
    let (text, bad_line) = decode_utf8(&bytes);
    if let Some(l) = bad_line {
        diag.warn(rel, Some(l), "invalid UTF-8 (replaced with U+FFFD)")?;
    }
    match parse_json_object(&text) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            diag.warn(rel, None, format!("{e}; file skipped"))?;
            Ok(None)
        }
    }
}

/// Is `v` an `opencode export` document?
pub fn is_export(v: &Value) -> bool {
    v.get("info").is_some_and(Value::is_object) && v.get("messages").is_some_and(Value::is_array)
}

/// `opencode export` JSON: `{info, messages: [{info, parts}]}`.
pub fn read_export(path: &Path, rel: &str, diag: &mut Diag) -> Result<Vec<Session>> {
    let Some(v) = read_json(path, rel, diag)? else {
        return Ok(Vec::new());
    };
    if !is_export(&v) {
        // Other JSON found while walking a directory (configs, Claude's .meta.json) is not an
        // error: it is simply not a session.
        return Ok(Vec::new());
    }
    let msgs = v["messages"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| RawMessage {
                    info: m.get("info").cloned().unwrap_or(Value::Null),
                    parts: m
                        .get("parts")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(vec![build_session(&v["info"], msgs, rel.to_string())])
}

/// Entries of `dir`, sorted. A missing directory is empty (opencode creates a session's message
/// folder with its first message); any other read error is a warning naming the folder (fatal
/// with `--strict`), so an unreadable folder never vanishes silently.
fn sorted_entries(dir: &Path, rel: &str, diag: &mut Diag) -> Result<Vec<std::path::PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            diag.warn(
                rel,
                None,
                format!("cannot read directory: {e}; its files are skipped"),
            )?;
            return Ok(Vec::new());
        }
    };
    let mut v = Vec::new();
    for e in rd {
        match e {
            Ok(e) => v.push(e.path()),
            Err(e) => diag.warn(rel, None, format!("cannot list an entry: {e}; skipped"))?,
        }
    }
    v.sort();
    Ok(v)
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_json(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "json")
}

/// Is `dir` an opencode `storage/` directory (either layout)?
pub fn is_storage_dir(dir: &Path) -> bool {
    dir.join("session").is_dir()
        && (dir.join("message").is_dir() || dir.join("session/message").is_dir())
}

/// An opencode storage tree. Ids come from the paths, as opencode's own migration reads them.
/// Returns the sessions and the number of files read.
pub fn read_storage(storage: &Path, rel: &str, diag: &mut Diag) -> Result<(Vec<Session>, usize)> {
    let gen1 = storage.join("session/info").is_dir();
    let relp = |p: &Path| -> String {
        let tail = p
            .strip_prefix(storage)
            .unwrap_or(p)
            .to_string_lossy()
            .replace('\\', "/");
        format!("{rel}/{tail}")
    };
    let (info_files, msg_root) = if gen1 {
        let dir = storage.join("session/info");
        let infos = sorted_entries(&dir, &relp(&dir), diag)?;
        (infos, storage.join("session/message"))
    } else {
        let mut infos = Vec::new();
        let dir = storage.join("session");
        for proj in sorted_entries(&dir, &relp(&dir), diag)? {
            if proj.is_dir() {
                infos.extend(sorted_entries(&proj, &relp(&proj), diag)?);
            }
        }
        (infos, storage.join("message"))
    };
    let mut files = 0;
    let mut sessions = Vec::new();
    for info_path in info_files.into_iter().filter(|p| is_json(p)) {
        files += 1;
        let ses_id = stem(&info_path);
        let Some(mut info) = read_json(&info_path, &relp(&info_path), diag)? else {
            continue;
        };
        if let Some(o) = info.as_object_mut() {
            o.insert("id".into(), Value::String(ses_id.clone()));
        }
        let mut msgs = Vec::new();
        let msg_dir = msg_root.join(&ses_id);
        for mpath in sorted_entries(&msg_dir, &relp(&msg_dir), diag)?
            .into_iter()
            .filter(|p| is_json(p))
        {
            files += 1;
            let msg_id = stem(&mpath);
            let Some(mut minfo) = read_json(&mpath, &relp(&mpath), diag)? else {
                continue;
            };
            if let Some(o) = minfo.as_object_mut() {
                o.insert("id".into(), Value::String(msg_id.clone()));
            }
            let part_dir = if gen1 {
                storage.join("session/part").join(&ses_id).join(&msg_id)
            } else {
                storage.join("part").join(&msg_id)
            };
            let mut parts = Vec::new();
            for ppath in sorted_entries(&part_dir, &relp(&part_dir), diag)?
                .into_iter()
                .filter(|p| is_json(p))
            {
                files += 1;
                if let Some(mut part) = read_json(&ppath, &relp(&ppath), diag)? {
                    if let Some(o) = part.as_object_mut() {
                        o.insert("id".into(), Value::String(stem(&ppath)));
                    }
                    parts.push(part);
                }
            }
            msgs.push(RawMessage { info: minfo, parts });
        }
        sessions.push(build_session(&info, msgs, format!("{rel}#{ses_id}")));
    }
    Ok((sessions, files))
}

/// Row values of one table as JSON objects: the `data` column's object with the other columns
/// added back under opencode's camelCase names.
fn table_rows(
    conn: &rusqlite::Connection,
    table: &str,
    rel: &str,
    diag: &mut Diag,
) -> Result<Vec<Value>> {
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM {table} ORDER BY id"))
        .with_context(|| format!("{rel}: reading table {table}"))?;
    let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    let mut rows = stmt
        .query([])
        .with_context(|| format!("{rel}: querying {table}"))?;
    let mut out = Vec::new();
    while let Some(row) = rows
        .next()
        .with_context(|| format!("{rel}: reading {table}"))?
    {
        let mut obj = Map::new();
        let mut data: Option<Value> = None;
        for (i, name) in names.iter().enumerate() {
            let v: rusqlite::types::Value = row.get(i)?;
            let jv = match v {
                rusqlite::types::Value::Null => Value::Null,
                rusqlite::types::Value::Integer(n) => Value::from(n),
                rusqlite::types::Value::Real(f) => Value::from(f),
                rusqlite::types::Value::Text(t) => Value::String(t),
                rusqlite::types::Value::Blob(b) => {
                    Value::String(String::from_utf8_lossy(&b).into_owned())
                }
            };
            if name == "data" {
                if let Value::String(t) = &jv {
                    match serde_json::from_str::<Value>(t) {
                        Ok(d) => data = Some(d),
                        Err(e) => diag.warn(
                            rel,
                            None,
                            format!(
                                "{table} row {}: bad data JSON: {e}",
                                obj.get("id").cloned().unwrap_or_default()
                            ),
                        )?,
                    }
                }
                continue;
            }
            let key = match name.as_str() {
                "session_id" => "sessionID",
                "message_id" => "messageID",
                "parent_id" => "parentID",
                "project_id" => "projectID",
                other => other,
            };
            obj.insert(key.to_string(), jv);
        }
        if let Some(Value::Object(d)) = data {
            for (k, v) in d {
                obj.entry(k).or_insert(v);
            }
        }
        if !obj.contains_key("time") {
            if let Some(c) = obj.get("time_created").cloned() {
                obj.insert("time".into(), serde_json::json!({ "created": c }));
            }
        }
        out.push(Value::Object(obj));
    }
    Ok(out)
}

/// opencode ≥ 1.2: `opencode.db` with tables session / message / part.
pub fn read_db(path: &Path, rel: &str, diag: &mut Diag) -> Result<Vec<Session>> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening SQLite database {}", path.display()))?;
    let sessions = table_rows(&conn, "session", rel, diag)?;
    let messages = table_rows(&conn, "message", rel, diag)?;
    let parts = table_rows(&conn, "part", rel, diag)?;
    let mut parts_by_msg: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for p in parts {
        let mid = s(&p, "messageID").unwrap_or("").to_string();
        parts_by_msg.entry(mid).or_default().push(p);
    }
    let mut msgs_by_ses: BTreeMap<String, Vec<RawMessage>> = BTreeMap::new();
    for m in messages {
        let sid = s(&m, "sessionID").unwrap_or("").to_string();
        let parts = parts_by_msg.remove(id_of(&m)).unwrap_or_default();
        msgs_by_ses
            .entry(sid)
            .or_default()
            .push(RawMessage { info: m, parts });
    }
    Ok(sessions
        .iter()
        .map(|info| {
            let msgs = msgs_by_ses.remove(id_of(info)).unwrap_or_default();
            build_session(info, msgs, format!("{rel}#{}", id_of(info)))
        })
        .collect())
}
