//! Synthetic sessions for `osstune bench data`: realistic shapes (multi-turn, reasoning, tool
//! calls, errors, long outputs) in both Claude Code JSONL and opencode export form.

use std::path::Path;

use anyhow::{Context, Result};
use osstune_rng::SplitMix64;
use serde_json::{json, Value};

// The bench input must not depend on `rand`: it uses the project's one seeded generator.

const WORDS: &[&str] = &[
    "parser",
    "config",
    "tokenizer",
    "cache",
    "error",
    "thread",
    "buffer",
    "index",
    "request",
    "handler",
    "module",
    "test",
    "schema",
    "migration",
    "router",
    "client",
    "value",
    "option",
];

fn words(r: &mut SplitMix64, n: usize) -> String {
    (0..n)
        .map(|_| WORDS[r.below(WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

fn code(r: &mut SplitMix64, lines: usize) -> String {
    (0..lines)
        .map(|i| {
            format!(
                "{:>5}\tfn {}_{i}() -> Result<()> {{ Ok(()) }}",
                i + 1,
                words(r, 1)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One turn: (prompt, steps as (kind, a, b)) where kind is think/text/call.
type SynthTurn = (String, Vec<(String, String, String)>, String);

fn turn(r: &mut SplitMix64) -> SynthTurn {
    let prompt = format!(
        "Please fix the {} in the {} module.",
        words(r, 2),
        words(r, 1)
    );
    let mut steps = vec![(
        "think".to_string(),
        format!("I should look at the {} first.", words(r, 3)),
        String::new(),
    )];
    for _ in 0..1 + r.below(3) {
        let (tool, args, out) = match r.below(3) {
            0 => (
                "Read",
                json!({"file_path": format!("/repo/src/{}.rs", words(r, 1))}).to_string(),
                {
                    let lines = 5 + r.below(120) as usize;
                    code(r, lines)
                },
            ),
            1 => (
                "Bash",
                json!({"command": "cargo test"}).to_string(),
                format!("Exit code 101\nerror: {}", words(r, 12)),
            ),
            _ => (
                "Grep",
                json!({"pattern": words(r, 1)}).to_string(),
                format!("src/{}.rs:12: {}", words(r, 1), words(r, 6)),
            ),
        };
        steps.push(("call".to_string(), format!("{tool}\u{0}{args}"), out));
    }
    let fin = format!("Fixed the {}: {}.", words(r, 2), words(r, 10));
    (prompt, steps, fin)
}

fn claude_session(r: &mut SplitMix64, sid: &str, turns: usize) -> String {
    let mut lines = Vec::new();
    let mut parent = Value::Null;
    let mut n = 0;
    let mut push = |lines: &mut Vec<String>, mut v: Value, parent: &mut Value| {
        n += 1;
        let uuid = format!("{sid}-{n}");
        v["uuid"] = json!(uuid);
        v["parentUuid"] = parent.clone();
        v["sessionId"] = json!(sid);
        v["timestamp"] = json!("2026-01-05T10:00:00.000Z");
        v["cwd"] = json!("/repo");
        v["isSidechain"] = json!(false);
        lines.push(v.to_string());
        *parent = json!(uuid);
    };
    for t in 0..turns {
        let (prompt, steps, fin) = turn(r);
        push(
            &mut lines,
            json!({"type": "user", "message": {"role": "user", "content": prompt}}),
            &mut parent,
        );
        for (i, (kind, a, b)) in steps.iter().enumerate() {
            let mid = format!("msg_{sid}_{t}_{i}");
            if kind == "think" {
                push(
                    &mut lines,
                    json!({"type": "assistant", "message": {"id": mid, "role": "assistant", "content": [{"type": "thinking", "thinking": a}]}}),
                    &mut parent,
                );
            } else {
                let (tool, args) = a.split_once('\u{0}').unwrap_or(("Bash", "{}"));
                let args: Value = serde_json::from_str(args).unwrap_or(Value::Null);
                let id = format!("toolu_{t}_{i}");
                push(
                    &mut lines,
                    json!({"type": "assistant", "message": {"id": mid, "role": "assistant", "content": [{"type": "tool_use", "id": id, "name": tool, "input": args}]}}),
                    &mut parent,
                );
                push(
                    &mut lines,
                    json!({"type": "user", "message": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": b, "is_error": b.starts_with("Exit code")}]}}),
                    &mut parent,
                );
            }
        }
        push(
            &mut lines,
            json!({"type": "assistant", "message": {"id": format!("msg_{sid}_{t}_f"), "role": "assistant", "content": [{"type": "text", "text": fin}]}}),
            &mut parent,
        );
    }
    lines.join("\n") + "\n"
}

fn opencode_export(r: &mut SplitMix64, sid: &str, turns: usize) -> String {
    let mut msgs = Vec::new();
    let mut k = 0;
    let mut next = |p: &str| {
        k += 1;
        format!("{p}_{k:012}")
    };
    for _ in 0..turns {
        let (prompt, steps, fin) = turn(r);
        let uid = next("msg");
        msgs.push(json!({"info": {"id": uid, "role": "user", "time": {"created": 1767607200000i64}}, "parts": [{"id": next("prt"), "type": "text", "text": prompt}]}));
        let mut parts = Vec::new();
        for (kind, a, b) in steps {
            if kind == "think" {
                parts.push(json!({"id": next("prt"), "type": "reasoning", "text": a}));
            } else {
                let (tool, args) = a.split_once('\u{0}').unwrap_or(("bash", "{}"));
                let args: Value = serde_json::from_str(args).unwrap_or(Value::Null);
                let state = if b.starts_with("Exit code") {
                    json!({"status": "error", "input": args, "error": b})
                } else {
                    json!({"status": "completed", "input": args, "output": b})
                };
                parts.push(json!({"id": next("prt"), "type": "tool", "tool": tool.to_ascii_lowercase(), "callID": next("call"), "state": state}));
            }
        }
        msgs.push(json!({"info": {"id": next("msg"), "role": "assistant", "parentID": uid, "finish": "tool-calls"}, "parts": parts}));
        msgs.push(json!({"info": {"id": next("msg"), "role": "assistant", "parentID": uid, "finish": "stop"}, "parts": [{"id": next("prt"), "type": "text", "text": fin}]}));
    }
    json!({"info": {"id": sid, "directory": "/repo", "time": {"created": 1767607200000i64}}, "messages": msgs}).to_string()
}

/// Write `n` sessions (half Claude Code JSONL, half opencode exports) under `dir`.
pub fn write_sessions(dir: &Path, n: usize, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut r = SplitMix64::new(seed);
    for i in 0..n {
        let turns = 2 + r.below(6) as usize;
        let (name, body) = if i % 2 == 0 {
            (
                format!("claude-{i:05}.jsonl"),
                claude_session(&mut r, &format!("s{i}"), turns),
            )
        } else {
            (
                format!("opencode-{i:05}.json"),
                opencode_export(&mut r, &format!("ses_{i:05}"), turns),
            )
        };
        let p = dir.join(name);
        std::fs::write(&p, body).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// Write `n` opencode sessions as one captured server event stream (`GET /event` as
/// server-sent events): eight sessions interleaved at a time, every text and tool part emitted
/// twice (streaming, then final), as opencode re-emits parts while they change.
pub fn write_event_capture(path: &Path, n: usize, seed: u64) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    let mut r = SplitMix64::new(seed);
    let emit = |w: &mut std::io::BufWriter<std::fs::File>, v: Value| -> Result<()> {
        writeln!(w, "data: {v}\n").with_context(|| format!("writing {}", path.display()))
    };
    for group in (0..n).collect::<Vec<_>>().chunks(8) {
        // Each session of the group as a list of events; then round-robin between them.
        let mut streams: Vec<Vec<Value>> = Vec::new();
        for &i in group {
            let sid = format!("ses_{i:06}");
            let mut ev = vec![json!({"type": "session.updated", "properties": {"info":
                {"id": sid, "directory": "/repo", "time": {"created": 1767607200000i64}}}})];
            let mut k = 0;
            let mut next = |p: &str| {
                k += 1;
                format!("{p}_{i:06}_{k:06}")
            };
            let upd =
                |info: Value| json!({"type": "message.updated", "properties": {"info": info}});
            let part =
                |p: Value| json!({"type": "message.part.updated", "properties": {"part": p}});
            for _ in 0..2 + r.below(4) {
                let (prompt, steps, fin) = turn(&mut r);
                let uid = next("msg");
                ev.push(upd(json!({"id": uid, "sessionID": sid, "role": "user"})));
                ev.push(part(json!({"id": next("prt"), "messageID": uid, "sessionID": sid, "type": "text", "text": prompt})));
                let aid = next("msg");
                ev.push(upd(
                    json!({"id": aid, "sessionID": sid, "role": "assistant", "parentID": uid}),
                ));
                ev.push(part(json!({"id": next("prt"), "messageID": aid, "sessionID": sid, "type": "step-start"})));
                for (kind, a, b) in steps {
                    let pid = next("prt");
                    if kind == "think" {
                        ev.push(part(json!({"id": pid, "messageID": aid, "sessionID": sid, "type": "reasoning", "text": a})));
                        continue;
                    }
                    let (tool, args) = a.split_once('\u{0}').unwrap_or(("bash", "{}"));
                    let args: Value = serde_json::from_str(args).unwrap_or(Value::Null);
                    let tool = tool.to_ascii_lowercase();
                    let call = next("call");
                    ev.push(part(json!({"id": pid, "messageID": aid, "sessionID": sid, "type": "tool", "tool": tool, "callID": call, "state": {"status": "running", "input": args}})));
                    ev.push(part(json!({"id": pid, "messageID": aid, "sessionID": sid, "type": "tool", "tool": tool, "callID": call, "state": {"status": "completed", "input": args, "output": b}})));
                }
                let fid = next("msg");
                ev.push(upd(
                    json!({"id": fid, "sessionID": sid, "role": "assistant", "parentID": uid}),
                ));
                let tid = next("prt");
                let half: String = fin.chars().take(fin.len() / 2).collect();
                ev.push(part(json!({"id": tid, "messageID": fid, "sessionID": sid, "type": "text", "text": half})));
                ev.push(part(json!({"id": tid, "messageID": fid, "sessionID": sid, "type": "text", "text": fin})));
            }
            ev.reverse();
            streams.push(ev);
        }
        while streams.iter().any(|s| !s.is_empty()) {
            for s in streams.iter_mut() {
                if let Some(v) = s.pop() {
                    emit(&mut w, v)?;
                }
            }
        }
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// Write `rows` chat conversations as a Hugging Face style Parquet file: an `id` column and a
/// `messages` column of list<struct<role, content, reasoning_content>>, one or more user turns a
/// row, Snappy-compressed, 10,000 rows a row group.
pub fn write_chat_parquet(path: &Path, rows: usize, seed: u64) -> Result<()> {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;

    let schema = parquet::schema::parser::parse_message_type(
        "message schema {
            REQUIRED BYTE_ARRAY id (UTF8);
            OPTIONAL group messages (LIST) {
                REPEATED group list {
                    OPTIONAL group element {
                        OPTIONAL BYTE_ARRAY role (UTF8);
                        OPTIONAL BYTE_ARRAY content (UTF8);
                        OPTIONAL BYTE_ARRAY reasoning_content (UTF8);
                    }
                }
            }
        }",
    )?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w =
        SerializedFileWriter::new(f, std::sync::Arc::new(schema), std::sync::Arc::new(props))?;
    let mut r = SplitMix64::new(seed);
    let mut start = 0;
    while start < rows {
        let end = (start + 10_000).min(rows);
        // Column values with repetition levels (0 = a new row) and definition levels (4 = a
        // present leaf; 3 = absent reasoning of a user message).
        let mut ids = Vec::new();
        let (mut role, mut content, mut reason) = (Vec::new(), Vec::new(), Vec::new());
        let (mut rep, mut reason_def) = (Vec::new(), Vec::new());
        for i in start..end {
            ids.push(ByteArray::from(format!("row-{i}").as_str()));
            for t in 0..1 + r.below(3) {
                let (prompt, steps, fin) = turn(&mut r);
                let think = steps.first().map(|s| s.1.clone()).unwrap_or_default();
                for (who, text, why) in [("user", prompt, None), ("assistant", fin, Some(think))] {
                    rep.push(i16::from(!(t == 0 && who == "user")));
                    role.push(ByteArray::from(who));
                    content.push(ByteArray::from(text.as_str()));
                    reason_def.push(if why.is_some() { 4 } else { 3 });
                    if let Some(why) = why {
                        reason.push(ByteArray::from(why.as_str()));
                    }
                }
            }
        }
        let full_def = vec![4i16; role.len()];
        let mut rg = w.next_row_group()?;
        let mut col = 0;
        while let Some(mut c) = rg.next_column()? {
            let cw = c.typed::<ByteArrayType>();
            match col {
                0 => cw.write_batch(&ids, None, None)?,
                1 => cw.write_batch(&role, Some(&full_def), Some(&rep))?,
                2 => cw.write_batch(&content, Some(&full_def), Some(&rep))?,
                _ => cw.write_batch(&reason, Some(&reason_def), Some(&rep))?,
            };
            c.close()?;
            col += 1;
        }
        rg.close()?;
        start = end;
    }
    w.close()?;
    Ok(())
}
