//! Synthetic sessions for `osstune bench data`: realistic shapes (multi-turn, reasoning, tool
//! calls, errors, long outputs) in both Claude Code JSONL and opencode export form.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// Small deterministic generator (SplitMix64): the bench input must not depend on `rand`.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

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

fn words(r: &mut Mix, n: usize) -> String {
    (0..n)
        .map(|_| WORDS[r.below(WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

fn code(r: &mut Mix, lines: usize) -> String {
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

fn turn(r: &mut Mix) -> SynthTurn {
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

fn claude_session(r: &mut Mix, sid: &str, turns: usize) -> String {
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

fn opencode_export(r: &mut Mix, sid: &str, turns: usize) -> String {
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
    let mut r = Mix(seed);
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
