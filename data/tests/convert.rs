//! End-to-end conversion of the hand-written fixtures in fixtures/data (written by
//! scripts/gen_data_fixtures.py)
//! and the bundled examples; each assertion names the case it covers.

use std::path::{Path, PathBuf};

use osstune_data::sample::Sample;
use osstune_data::{convert, ConvertOptions, SplitBy};
use osstune_harmony::{
    parse_messages, Content, RecipientPlacement, RenderOptions, Renderer, Role, Tokenizer,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("osstune-data-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn read_samples(dir: &Path) -> Vec<Sample> {
    let mut out = Vec::new();
    for f in ["train.jsonl", "valid.jsonl"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        for line in text.lines() {
            out.push(serde_json::from_str(line).unwrap());
        }
    }
    out
}

fn run(
    inputs: &[PathBuf],
    out: &Path,
    f: impl FnOnce(&mut ConvertOptions),
) -> anyhow::Result<osstune_data::Stats> {
    let tok = Tokenizer::o200k_harmony().unwrap();
    let mut o = ConvertOptions {
        inputs: inputs.to_vec(),
        out: out.to_path_buf(),
        ..Default::default()
    };
    f(&mut o);
    convert(&tok, &o)
}

fn find<'a>(s: &'a [Sample], file_suffix: &str, turn: usize) -> &'a Sample {
    s.iter()
        .find(|x| x.source.file.ends_with(file_suffix) && x.source.turn == turn)
        .unwrap_or_else(|| panic!("no sample {file_suffix} turn {turn}"))
}

/// The target part of a sample: messages after the last user message.
fn target(s: &Sample) -> Vec<(Role, Option<String>, Option<String>, String)> {
    let last_user = s
        .messages
        .iter()
        .rposition(|m| m.role == Role::User)
        .unwrap();
    s.messages[last_user + 1..]
        .iter()
        .map(|m| {
            (
                m.role,
                m.channel.clone(),
                m.recipient.clone(),
                m.text().to_string(),
            )
        })
        .collect()
}

fn developer(s: &Sample) -> &osstune_harmony::DeveloperContent {
    match &s.messages[1].content {
        Content::Developer(d) => d,
        other => panic!("message 1 is not developer content: {other:?}"),
    }
}

#[test]
fn fixtures_convert_with_expected_counts_and_reports() {
    let out = tmp("fixtures");
    let stats = run(&[root().join("fixtures/data")], &out, |_| {}).unwrap();
    assert_eq!(stats.sessions, 6);
    assert_eq!(
        stats.subagent_sessions_skipped, 2,
        "agent-a1.jsonl and the child opencode session"
    );
    assert_eq!(stats.turns, 12);
    assert_eq!(stats.samples_kept, 9);
    assert_eq!(stats.samples_dropped.get("aborted"), Some(&2));
    assert_eq!(
        stats.samples_dropped.get("duplicate"),
        Some(&1),
        "resumed.jsonl repeats a turn"
    );
    assert_eq!(stats.train + stats.valid, 9);
    assert_eq!(stats.bad_lines, 2);
    let w = stats.warnings.join("\n");
    assert!(w.contains("claude/bad-utf8.jsonl:2: invalid UTF-8"), "{w}");
    assert!(w.contains("claude/bad-utf8.jsonl:5: invalid JSON"), "{w}");
    assert!(
        w.contains("claude/edge.jsonl:24: invalid JSON"),
        "truncated last line: {w}"
    );
    assert!(
        w.contains("export-truncated.json: invalid JSON at line 20"),
        "{w}"
    );
    // Atomic writes leave no temporaries behind.
    for e in std::fs::read_dir(&out).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.ends_with(".tmp"), "{n}");
    }
    let stats_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stats.json")).unwrap()).unwrap();
    assert_eq!(stats_json["samples_kept"], 9);
}

#[test]
fn claude_code_edge_cases() {
    let out = tmp("claude");
    run(&[root().join("fixtures/data/claude")], &out, |_| {}).unwrap();
    let s = read_samples(&out);
    // Blocks merged by message.id (thinking, text, tool_use), the early tool_result paired by
    // id, the duplicate text line dropped, the tool error kept.
    let t0 = target(find(&s, "edge.jsonl", 0));
    let shape: Vec<(Role, Option<&str>, Option<&str>)> = t0
        .iter()
        .map(|(r, c, to, _)| (*r, c.as_deref(), to.as_deref()))
        .collect();
    assert_eq!(
        shape,
        vec![
            (Role::Assistant, Some("analysis"), None),
            (Role::Assistant, Some("commentary"), None),
            (Role::Assistant, Some("commentary"), Some("functions.Read")),
            (Role::Tool, Some("commentary"), Some("assistant")),
            (Role::Assistant, Some("commentary"), Some("functions.Bash")),
            (Role::Tool, Some("commentary"), Some("assistant")),
            (Role::Assistant, Some("final"), None),
        ]
    );
    assert_eq!(t0[1].3, "Let me look at the file.");
    assert!(t0[5].3.contains("divide by zero"), "tool error text kept");
    assert_eq!(t0[6].3, "parse.rs divides by zero on line 1.");
    // Interrupted turn: no sample; later context keeps only its prompt. API error line skipped.
    let t2 = find(&s, "edge.jsonl", 2);
    assert_eq!(target(t2).last().unwrap().3, "4");
    let users: Vec<&str> = t2
        .messages
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.text())
        .collect();
    assert_eq!(
        users,
        vec!["Find the bug in parse.rs", "Now fix it", "What is 2+2?"]
    );
    assert!(!t2.text.contains("API Error"));
    assert!(
        !t2.text.contains("Sub-agent"),
        "inline sidechain lines are not part of the chain"
    );
    assert!(!t2.text.contains("<command-name>") && !t2.text.contains("Caveat:"));
    // After the compaction: summary in the developer message, earlier turns hidden, image placeholder.
    let t3 = find(&s, "edge.jsonl", 3);
    let instr = developer(t3).instructions.clone().unwrap();
    assert!(instr.contains("Summary of earlier conversation:\nThis session is being continued"));
    let users: Vec<&str> = t3
        .messages
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.text())
        .collect();
    assert_eq!(
        users,
        vec!["What is in this screenshot?\n\n[image: image/png]"]
    );
    assert!(!t3.text.contains("iVBORw0KGgo"));
    // Non-UTF-8 bytes replaced, the garbled line skipped, the rest converted.
    let b = find(&s, "bad-utf8.jsonl", 0);
    assert!(target(b).last().unwrap().3.contains('\u{FFFD}'));
    assert_eq!(
        target(find(&s, "bad-utf8.jsonl", 1)).last().unwrap().3,
        "goodbye"
    );
}

#[test]
fn opencode_edge_cases() {
    let out = tmp("opencode");
    let stats = run(&[root().join("fixtures/data/opencode")], &out, |_| {}).unwrap();
    assert_eq!(stats.subagent_sessions_skipped, 1);
    let s = read_samples(&out);
    // SQLite turn 0: attachment placeholder + synthetic text, tool error, compacted output.
    let a = find(&s, "opencode.db#ses_b", 0);
    let prompt = a
        .messages
        .iter()
        .rfind(|m| m.role == Role::User)
        .unwrap()
        .text()
        .to_string();
    assert_eq!(
        prompt,
        "Why does the build fail?\n\n[attached image/png: err.png]\n\nCalled the Read tool"
    );
    let t = target(a);
    assert_eq!(t[0].1.as_deref(), Some("analysis"));
    assert_eq!(t[2].3, "Error: make: *** No targets.");
    assert_eq!(t[4].3, "[Old tool result content cleared]");
    assert_eq!(t.last().unwrap().3, "The Makefile has no targets.");
    // Turn 1 aborted (no sample); turn 2 after compaction: summary, hidden history, API-error
    // message skipped, unknown tool declared with an inferred schema.
    assert!(s
        .iter()
        .all(|x| !(x.source.file.ends_with("ses_b") && x.source.turn == 1)));
    let c = find(&s, "opencode.db#ses_b", 2);
    let d = developer(c);
    assert!(d
        .instructions
        .as_deref()
        .unwrap()
        .contains("We found the Makefile has no targets."));
    assert_eq!(
        c.messages.iter().filter(|m| m.role == Role::User).count(),
        1
    );
    let ds = d.tools.iter().find(|t| t.name == "docs_search").unwrap();
    let p = ds.parameters.as_ref().unwrap();
    assert_eq!(p["properties"]["limit"]["type"], "integer");
    assert_eq!(p["required"], serde_json::json!(["query", "limit"]));
    assert!(d
        .tools
        .iter()
        .any(|t| t.name == "bash" && t.description.starts_with("Run a shell")));
    // Gen-1 storage tree and the export's revert point.
    assert_eq!(
        target(find(&s, "gen1/storage#ses_g1", 0)).last().unwrap().3,
        "hi"
    );
    let r: Vec<&Sample> = s.iter().filter(|x| x.source.session == "ses_r").collect();
    assert_eq!(r.len(), 1);
    assert!(!r[0].text.contains("reverted"));
}

#[test]
fn loss_mask_covers_exactly_the_target_assistant_tokens() {
    let out = tmp("mask");
    run(
        &[
            root().join("fixtures/data"),
            root().join("examples/sessions"),
        ],
        &out,
        |_| {},
    )
    .unwrap();
    let tok = Tokenizer::o200k_harmony().unwrap();
    let r = Renderer::new(&tok);
    let opts = RenderOptions {
        auto_drop_analysis: false,
        recipient_placement: RecipientPlacement::AfterChannel,
    };
    let prefix = 1 + tok.encode_ordinary("assistant").unwrap().len();
    for s in read_samples(&out) {
        assert_eq!(s.input_ids.len(), s.loss_mask.len());
        assert_eq!(s.n_tokens, s.input_ids.len());
        assert_eq!(s.loss_mask[0], 0);
        assert_eq!(
            *s.input_ids.last().unwrap(),
            200002,
            "target ends with <|return|>"
        );
        assert_eq!(*s.loss_mask.last().unwrap(), 1);
        assert_eq!(tok.decode(&s.input_ids).unwrap(), s.text);
        let rendered = r.render_for_training(&s.messages, opts).unwrap();
        assert_eq!(
            rendered.ids, s.input_ids,
            "{}: messages re-render to input_ids",
            s.id
        );
        let last_user = s
            .messages
            .iter()
            .rposition(|m| m.role == Role::User)
            .unwrap();
        let mut want = vec![0u8; s.n_tokens];
        for (i, m) in s.messages.iter().enumerate().skip(last_user + 1) {
            if m.role == Role::Assistant {
                let sp = &rendered.spans[i];
                let from = if s.messages[i - 1].role == Role::Assistant {
                    sp.start
                } else {
                    sp.start + prefix
                };
                want[sp.clone()][from - sp.start..]
                    .iter_mut()
                    .for_each(|x| *x = 1);
            }
        }
        assert_eq!(s.loss_mask, want, "{}", s.id);
        assert_eq!(s.n_trained, want.iter().map(|&x| x as usize).sum::<usize>());
        // openai-harmony's grammar: our parser reads the messages back.
        let parsed = parse_messages(&tok, &s.input_ids, None).unwrap();
        assert_eq!(parsed.len(), s.messages.len());
        for (p, m) in parsed.iter().zip(&s.messages) {
            assert_eq!(
                (p.role, &p.channel, &p.recipient),
                (m.role, &m.channel, &m.recipient)
            );
        }
    }
}

#[test]
fn examples_give_a_demo_sized_dataset() {
    let out = tmp("examples");
    let stats = run(&[root().join("examples/sessions")], &out, |_| {}).unwrap();
    assert!(
        (30..=60).contains(&stats.samples_kept),
        "{}",
        stats.samples_kept
    );
    assert!(stats.tokens.median < 1024, "mostly short samples");
    assert!(stats.tools_seen.contains_key("Bash") && stats.tools_seen.contains_key("bash"));
    assert!(stats.warnings.is_empty(), "{:?}", stats.warnings);
}

#[test]
fn split_is_deterministic_and_session_split_does_not_leak() {
    let inputs = [root().join("examples/sessions")];
    let (a, b) = (tmp("split-a"), tmp("split-b"));
    run(&inputs, &a, |_| {}).unwrap();
    run(&inputs, &b, |_| {}).unwrap();
    for f in ["train.jsonl", "valid.jsonl", "stats.json"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
    let c = tmp("split-c");
    let st = run(&inputs, &c, |o| o.seed = 7).unwrap();
    assert_ne!(
        std::fs::read(a.join("valid.jsonl")).unwrap(),
        std::fs::read(c.join("valid.jsonl")).unwrap()
    );
    assert_eq!(
        st.valid,
        osstune_data::split::valid_count(st.samples_kept, 0.1)
    );
    let d = tmp("split-d");
    run(&inputs, &d, |o| o.split_by = SplitBy::Session).unwrap();
    let read = |f: &str| -> Vec<Sample> {
        std::fs::read_to_string(d.join(f))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (train, valid) = (read("train.jsonl"), read("valid.jsonl"));
    assert!(!valid.is_empty());
    for v in &valid {
        assert!(
            train.iter().all(|t| t.source.session != v.source.session),
            "session {} on both sides",
            v.source.session
        );
    }
    assert_eq!(osstune_data::split::valid_count(352, 0.1), 35);
}

#[test]
fn strict_and_unreadable_inputs_fail_with_the_file_named() {
    let out = tmp("strict");
    let err = run(&[root().join("fixtures/data/claude")], &out, |o| {
        o.strict = true
    })
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("bad-utf8.jsonl:2") || msg.contains("edge.jsonl:24"),
        "{msg}"
    );
    let err = run(&[root().join("fixtures/data/nope")], &out, |_| {}).unwrap_err();
    assert!(format!("{err:#}").contains("does not exist"));
    let junk = tmp("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("x.jsonl"), b"\xff\xfe not json\n{broken\n").unwrap();
    let err = run(std::slice::from_ref(&junk), &out, |_| {}).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("no sessions could be read") && msg.contains("x.jsonl:1"),
        "{msg}"
    );
}

#[test]
fn long_turns_are_fitted_or_dropped() {
    // A session whose tool output alone is ~3000 tokens, with 3 context turns before it.
    let dir = tmp("long-in");
    std::fs::create_dir_all(&dir).unwrap();
    let mut lines = Vec::new();
    let mut parent = serde_json::Value::Null;
    let mut n = 0;
    let mut push = |v: serde_json::Value, lines: &mut Vec<String>| {
        n += 1;
        let mut v = v;
        v["uuid"] = serde_json::json!(format!("u{n}"));
        v["parentUuid"] = parent.clone();
        v["sessionId"] = serde_json::json!("long");
        lines.push(v.to_string());
        parent = serde_json::json!(format!("u{n}"));
    };
    for i in 0..3 {
        push(
            serde_json::json!({"type": "user", "message": {"content": format!("question {i} {}", "context ".repeat(100))}}),
            &mut lines,
        );
        push(
            serde_json::json!({"type": "assistant", "message": {"id": format!("a{i}"), "content": [{"type": "text", "text": format!("answer {i}")}]}}),
            &mut lines,
        );
    }
    let big: String = (0..3000).map(|i| format!("line{i} ")).collect();
    push(
        serde_json::json!({"type": "user", "message": {"content": "show the log"}}),
        &mut lines,
    );
    push(
        serde_json::json!({"type": "assistant", "message": {"id": "c", "content": [{"type": "tool_use", "id": "t", "name": "Bash", "input": {"command": "cat log"}}]}}),
        &mut lines,
    );
    push(
        serde_json::json!({"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "t", "content": big}]}}),
        &mut lines,
    );
    push(
        serde_json::json!({"type": "assistant", "message": {"id": "f", "content": [{"type": "text", "text": "THE FINAL ANSWER"}]}}),
        &mut lines,
    );
    std::fs::write(dir.join("long.jsonl"), lines.join("\n")).unwrap();

    let out = tmp("long-out");
    let st = run(std::slice::from_ref(&dir), &out, |o| o.max_seq_len = 1024).unwrap();
    assert_eq!(st.samples_kept, 4);
    assert!(st.truncated_tool_outputs >= 1);
    let s = read_samples(&out);
    let last = find(&s, "long.jsonl", 3);
    assert!(last.n_tokens <= 1024);
    assert!(
        last.text.contains("chars omitted]…")
            && last.text.contains("line0 ")
            && last.text.contains("line2999")
    );
    assert!(
        last.text.ends_with("THE FINAL ANSWER<|return|>"),
        "final answer intact"
    );
    // Tighter: context turns go (oldest first) before the target is given up.
    let out2 = tmp("long-out2");
    let st = run(std::slice::from_ref(&dir), &out2, |o| o.max_seq_len = 520).unwrap();
    assert!(st.dropped_context_turns >= 1);
    let s = read_samples(&out2);
    let last = find(&s, "long.jsonl", 3);
    assert!(!last.text.contains("question 0"));
    assert!(last.n_tokens <= 520);
    // Too tight for the target turn alone: dropped and reported.
    let out3 = tmp("long-out3");
    let st = run(&[dir], &out3, |o| o.max_seq_len = 200).unwrap();
    assert!(st.samples_dropped.get("too_long").copied().unwrap_or(0) >= 1);
}
