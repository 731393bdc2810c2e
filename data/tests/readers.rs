//! The readers added on the registry: opencode event streams, OpenAI messages, ShareGPT and
//! Parquet datasets (fixtures in data/tests/fixtures; the Parquet files are written by
//! scripts/gen_data_parquet_fixtures.py). Golden files in data/tests/golden hold every sample's
//! text with its trained tokens in `[[ ]]`; `OSSTUNE_BLESS=1` rewrites them after a reviewed change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use osstune_data::sample::Sample;
use osstune_data::{convert, ConvertOptions, Stats};
use osstune_harmony::Tokenizer;
use serde_json::{json, Value};

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn fixture(p: &str) -> PathBuf {
    here().join("fixtures").join(p)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("osstune-readers-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn run(
    inputs: &[PathBuf],
    out: &Path,
    f: impl FnOnce(&mut ConvertOptions),
) -> anyhow::Result<Stats> {
    let tok = Tokenizer::o200k_harmony().unwrap();
    let mut o = ConvertOptions {
        inputs: inputs.to_vec(),
        out: out.to_path_buf(),
        valid_fraction: 0.0,
        ..Default::default()
    };
    f(&mut o);
    convert(&tok, &o)
}

fn samples(dir: &Path) -> Vec<Sample> {
    let text = std::fs::read_to_string(dir.join("train.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every sample as `session turn` + its text with trained tokens in `[[ ]]`.
fn render_all(s: &[Sample]) -> String {
    let tok = Tokenizer::o200k_harmony().unwrap();
    let mut out = String::new();
    for x in s {
        out.push_str(&format!(
            "=== {} {} turn {} ({}) ===\n{}\n",
            x.source.file,
            x.source.session,
            x.source.turn,
            x.source.format,
            osstune_data::inspect::highlight(&tok, x, false).unwrap()
        ));
    }
    out
}

fn check_golden(name: &str, got: &str) {
    let path = here().join("golden").join(format!("{name}.txt"));
    if std::env::var_os("OSSTUNE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (OSSTUNE_BLESS=1 writes it)", path.display()));
    assert!(
        want == got,
        "{name}: samples differ from {}:\n{got}",
        path.display()
    );
}

#[test]
fn golden_samples_per_format() {
    for (name, input, n) in [
        ("opencode-run", "events/run.jsonl", 1),
        ("opencode-server-sse", "events/server.sse", 2),
        ("openai-messages", "chat/openai.jsonl", 3),
        ("sharegpt", "chat/sharegpt.jsonl", 3),
        ("parquet", "parquet/chat.parquet", 4),
    ] {
        let out = tmp(&format!("golden-{name}"));
        let st = run(&[fixture(input)], &out, |_| {}).unwrap();
        let s = samples(&out);
        assert_eq!(s.len(), n, "{name}: {}", st.summary());
        check_golden(name, &render_all(&s));
    }
}

#[test]
fn chat_formats_map_roles_calls_and_results() {
    let out = tmp("chat-shape");
    run(&[fixture("chat/openai.jsonl")], &out, |_| {}).unwrap();
    let s = samples(&out);
    let o1 = s
        .iter()
        .find(|x| x.source.session == "o1" && x.source.turn == 0)
        .unwrap();
    // Parallel calls answered out of order: each call is followed by its own result.
    let a = o1.text.find("print('a')").unwrap();
    let b = o1.text.find("print('b')").unwrap();
    let call_b = o1.text.find("{\"path\":\"b.py\"}").unwrap();
    assert!(a < call_b && call_b < b, "{}", o1.text);
    assert!(
        o1.text.contains("You fix bugs in small repos."),
        "developer message → instructions"
    );
    assert!(
        o1.text.contains("// Read a file.\ntype read_file"),
        "declared tool schema"
    );
    assert!(o1
        .text
        .contains("<|channel|>analysis<|message|>Two reads, in parallel."));
    // The second user turn sees the first as context (prompt + final answer only).
    let o1t1 = s
        .iter()
        .find(|x| x.source.session == "o1" && x.source.turn == 1)
        .unwrap();
    assert!(
        o1t1.text.contains("They print different letters.") && !o1t1.text.contains("print('a')")
    );
    assert_eq!(o1t1.source.format, "openai-messages");
}

/// A message's info and its parts, as opencode stores them.
type MessageWithParts = (Value, Vec<Value>);

/// A gen-2 storage tree and an SSE capture of the same sessions (parts re-emitted while they
/// stream, sessions interleaved, parts out of order) give identical tokens and masks.
#[test]
fn storage_tree_and_event_capture_give_identical_samples() {
    let dir = tmp("identity-in");
    let storage = dir.join("tree/storage");
    let t = 1_767_607_200_000i64;
    let mut sessions: Vec<(Value, Vec<MessageWithParts>)> = Vec::new();
    for (k, sid) in ["ses_i1", "ses_i2"].iter().enumerate() {
        let info = json!({"id": sid, "projectID": "prj", "directory": format!("/work/p{k}"), "time": {"created": t}});
        let mut msgs = Vec::new();
        for turn in 0..2 {
            let m = |n: usize| format!("msg_{k}{turn}{n}");
            let p = |m: &str, n: usize| format!("prt_{m}_{n}");
            let (u, a1, a2) = (m(0), m(1), m(2));
            msgs.push((
                json!({"id": u, "sessionID": sid, "role": "user", "time": {"created": t}}),
                vec![json!({"id": p(&u, 0), "messageID": u, "sessionID": sid, "type": "text", "text": format!("task {k}.{turn}: fix the parser")})],
            ));
            msgs.push((
                json!({"id": a1, "sessionID": sid, "role": "assistant", "finish": "tool-calls"}),
                vec![
                    json!({"id": p(&a1, 0), "messageID": a1, "sessionID": sid, "type": "step-start"}),
                    json!({"id": p(&a1, 1), "messageID": a1, "sessionID": sid, "type": "reasoning", "text": "Look at parse.rs first."}),
                    json!({"id": p(&a1, 2), "messageID": a1, "sessionID": sid, "type": "tool", "tool": "read", "callID": format!("call_{k}{turn}"),
                           "state": {"status": "completed", "input": {"filePath": "/work/parse.rs"}, "output": format!("fn parse() {{ {turn} }}")}}),
                    json!({"id": p(&a1, 3), "messageID": a1, "sessionID": sid, "type": "step-finish", "reason": "tool-calls"}),
                ],
            ));
            msgs.push((
                json!({"id": a2, "sessionID": sid, "role": "assistant", "finish": "stop"}),
                vec![
                    json!({"id": p(&a2, 0), "messageID": a2, "sessionID": sid, "type": "step-start"}),
                    json!({"id": p(&a2, 1), "messageID": a2, "sessionID": sid, "type": "text", "text": format!("Fixed parse() ({turn}).")}),
                ],
            ));
        }
        sessions.push((info, msgs));
    }
    // The storage tree.
    let write = |p: PathBuf, v: &Value| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    };
    for (info, msgs) in &sessions {
        let sid = info["id"].as_str().unwrap();
        write(storage.join(format!("session/prj/{sid}.json")), info);
        for (m, parts) in msgs {
            let mid = m["id"].as_str().unwrap();
            write(storage.join(format!("message/{sid}/{mid}.json")), m);
            for p in parts {
                write(
                    storage.join(format!("part/{mid}/{}.json", p["id"].as_str().unwrap())),
                    p,
                );
            }
        }
    }
    // The capture: sessions interleaved message by message, each part first in a partial state
    // (tool pending, text cut short), parts of a message in reverse order.
    let mut events = vec![": opencode event stream".to_string()];
    let mut emit = |v: Value| events.push(format!("event: message\ndata: {v}\n"));
    for (info, _) in &sessions {
        emit(json!({"type": "session.created", "properties": {"info": info}}));
    }
    for i in 0..sessions[0].1.len() {
        for (_, msgs) in &sessions {
            let (m, parts) = &msgs[i];
            emit(json!({"type": "message.updated", "properties": {"info": m}}));
            for p in parts.iter().rev() {
                let mut early = p.clone();
                if let Some(t) = early.get("text").and_then(Value::as_str) {
                    early["text"] = json!(t.chars().take(3).collect::<String>());
                }
                if early["type"] == "tool" {
                    early["state"] = json!({"status": "pending", "input": {}});
                }
                emit(json!({"type": "message.part.updated", "properties": {"part": early}}));
            }
            for p in parts {
                emit(json!({"type": "message.part.updated", "properties": {"part": p}}));
            }
        }
    }
    std::fs::create_dir_all(dir.join("capture")).unwrap();
    std::fs::write(dir.join("capture/events.sse"), events.join("\n")).unwrap();

    let (a, b) = (tmp("identity-tree"), tmp("identity-capture"));
    let sa = run(&[dir.join("tree")], &a, |_| {}).unwrap();
    let sb = run(&[dir.join("capture")], &b, |_| {}).unwrap();
    assert!(sb.warnings.is_empty(), "{:?}", sb.warnings);
    assert_eq!(sa.formats["opencode-storage"].sessions, 2);
    assert_eq!(sb.formats["opencode-events"].sessions, 2);
    let key = |s: &Sample| (s.source.session.clone(), s.source.turn);
    let by_key =
        |v: Vec<Sample>| -> BTreeMap<_, _> { v.into_iter().map(|s| (key(&s), s)).collect() };
    let (ta, tb) = (by_key(samples(&a)), by_key(samples(&b)));
    assert_eq!(ta.len(), 4);
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (k, x) in &ta {
        let y = &tb[k];
        assert_eq!(x.input_ids, y.input_ids, "{k:?}: input_ids");
        assert_eq!(x.loss_mask, y.loss_mask, "{k:?}: loss_mask");
    }
    // Both read together: the capture's samples are duplicates of the tree's, reported as such.
    let c = tmp("identity-both");
    let sc = run(&[dir.join("tree"), dir.join("capture")], &c, |_| {}).unwrap();
    assert_eq!(sc.samples_kept, 4);
    assert_eq!(sc.duplicates_across_formats, 4);
    assert_eq!(sc.formats["opencode-events"].duplicates, 4);
}

#[test]
fn parquet_and_its_jsonl_twin_give_the_same_samples() {
    let (a, b) = (tmp("pq"), tmp("pq-twin"));
    let sa = run(&[fixture("parquet/chat.parquet")], &a, |_| {}).unwrap();
    run(&[fixture("parquet/chat-twin.jsonl")], &b, |_| {}).unwrap();
    assert!(sa.warnings.is_empty(), "{:?}", sa.warnings);
    let (pa, pb) = (samples(&a), samples(&b));
    assert_eq!(pa.len(), 4);
    assert_eq!(pa.len(), pb.len());
    for (x, y) in pa.iter().zip(&pb) {
        assert_eq!(
            (&x.source.session, x.source.turn),
            (&y.source.session, y.source.turn)
        );
        assert_eq!(x.input_ids, y.input_ids, "{}", x.source.session);
        assert_eq!(x.loss_mask, y.loss_mask);
        assert_eq!(
            serde_json::to_value(&x.messages).unwrap(),
            serde_json::to_value(&y.messages).unwrap()
        );
    }
    assert_eq!(sa.formats["parquet"].samples_kept, 4);
}

#[test]
fn malformed_inputs_are_reported_with_file_and_line_and_the_rest_converted() {
    let out = tmp("malformed");
    let st = run(
        &[fixture("events"), fixture("chat"), fixture("parquet/bad")],
        &out,
        |_| {},
    )
    .unwrap();
    let w = st.warnings.join("\n");
    for want in [
        "events/bad.sse:5: unknown part type \"hologram\"; event skipped",
        "events/bad.sse:7: message.part.updated for message msg_m2 before its message.updated",
        "events/bad.sse:11: invalid JSON",
        "events/run.jsonl: session ses_r2: the stream carries no user prompt",
        "chat/openai.jsonl:2: message 1: arguments of the bash call are not JSON",
        "chat/sharegpt.jsonl:3: invalid JSON",
        "bad/no-column.parquet: no conversation column",
        "bad/wrong-type.parquet: column messages holds INT64",
        // Found by tests/mutations.rs: the parquet crate panics on this file's metadata.
        "bad/corrupt-metadata.parquet: corrupt Parquet file",
    ] {
        assert!(w.contains(want), "missing {want:?} in:\n{w}");
    }
    let s = samples(&out);
    let m1 = s
        .iter()
        .find(|x| x.source.session == "ses_m1")
        .expect("ses_m1 converted");
    assert!(m1.text.ends_with("Fixed.<|return|>"));
    assert!(
        s.iter().any(|x| x.source.session == "line-3"),
        "the record after the bad one"
    );
    // With --strict the first problem is fatal and named.
    let err = run(
        &[fixture("events/bad.sse")],
        &tmp("malformed-strict"),
        |o| o.strict = true,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("bad.sse:5"), "{err:#}");
}

#[test]
fn filters_and_per_format_counts() {
    let inputs = [
        fixture("parquet/chat.parquet"),
        fixture("chat/sharegpt.jsonl"),
    ];
    let out = tmp("filters");
    let st = run(&inputs, &out, |_| {}).unwrap();
    assert_eq!(st.formats["parquet"].samples_kept, 4);
    assert_eq!(st.formats["sharegpt"].samples_kept, 3);
    assert_eq!(st.formats["sharegpt"].files, 1);
    let stats_json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stats.json")).unwrap()).unwrap();
    assert_eq!(stats_json["formats"]["parquet"]["sessions"], 3);

    let st = run(&inputs, &tmp("exclude"), |o| {
        o.exclude_tools = vec!["get_weather".into(), "add".into()]
    })
    .unwrap();
    assert_eq!(st.samples_dropped.get("tool_filter"), Some(&2));
    assert_eq!(st.samples_kept, 5);
    let st = run(&inputs, &tmp("include"), |o| {
        o.include_tools = vec!["ls".into()]
    })
    .unwrap();
    assert_eq!(
        st.samples_dropped.get("tool_filter"),
        Some(&2),
        "get_weather and add are not listed"
    );
    let st = run(&inputs, &tmp("min"), |o| o.min_turn_tokens = 20).unwrap();
    let short = st.samples_dropped.get("too_short").copied().unwrap_or(0);
    assert!(
        short >= 2 && st.samples_kept + short == 7,
        "{}",
        st.summary()
    );
}

/// The bench's generated inputs read back whole (their writers are only run by the bench).
#[test]
fn generated_event_capture_and_parquet_read_back() {
    let dir = tmp("synth");
    osstune_data::synth::write_event_capture(&dir.join("ev/capture.sse"), 20, 3).unwrap();
    osstune_data::synth::write_chat_parquet(&dir.join("pq/chat.parquet"), 25, 3).unwrap();
    let st = run(&[dir.join("ev")], &tmp("synth-ev"), |_| {}).unwrap();
    assert!(st.warnings.is_empty(), "{:?}", st.warnings);
    assert_eq!(st.formats["opencode-events"].sessions, 20);
    assert_eq!(st.samples_dropped.get("no_final_answer"), None);
    let out = tmp("synth-pq");
    let st = run(&[dir.join("pq")], &out, |_| {}).unwrap();
    assert!(st.warnings.is_empty(), "{:?}", st.warnings);
    assert_eq!(st.formats["parquet"].sessions, 25);
    assert!(st.samples_kept >= 25);
    let s = samples(&out);
    assert!(s
        .iter()
        .all(|x| x.source.format == "openai-messages" && x.text.contains("<|channel|>analysis")));
}

/// Files are classified by content, not by extension; `--column` names another conversation field.
#[test]
fn detection_by_content_and_column_option() {
    let dir = tmp("content");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("chat/sharegpt.jsonl"), dir.join("dump.txt")).unwrap();
    std::fs::copy(fixture("events/run.jsonl"), dir.join("capture.log")).unwrap();
    std::fs::copy(fixture("parquet/chat.parquet"), dir.join("shard-0")).unwrap();
    let st = run(std::slice::from_ref(&dir), &tmp("content-out"), |_| {}).unwrap();
    assert_eq!(st.formats["sharegpt"].sessions, 2);
    assert_eq!(st.formats["opencode-events"].sessions, 1);
    assert_eq!(st.formats["parquet"].sessions, 3);
    // --format narrows detection to a family or one reader.
    let st = run(std::slice::from_ref(&dir), &tmp("content-chat"), |o| {
        o.format = osstune_data::InputFormat::parse("chat").unwrap()
    })
    .unwrap();
    assert!(!st.formats.contains_key("opencode-events"));
    let err = osstune_data::InputFormat::parse("yaml").unwrap_err();
    assert!(format!("{err}").contains("known: auto, opencode"), "{err}");

    let col = tmp("column");
    std::fs::create_dir_all(&col).unwrap();
    let rec = json!({"dialog": [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]});
    std::fs::write(col.join("d.jsonl"), format!("{rec}\n")).unwrap();
    let err = run(&[col.join("d.jsonl")], &tmp("column-none"), |_| {}).unwrap_err();
    assert!(
        format!("{err:#}").contains("d.jsonl: no Claude Code session in this file"),
        "{err:#}"
    );
    let out = tmp("column-out");
    let st = run(&[col.join("d.jsonl")], &out, |o| {
        o.column = Some("dialog".into())
    })
    .unwrap();
    assert_eq!(st.samples_kept, 1);
    assert!(samples(&out)[0].text.ends_with("pong<|return|>"));
}
