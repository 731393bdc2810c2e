//! One renderer: a conversation with earlier tool calls and results, sent the way an OpenAI
//! client sends it, renders to exactly the tokens `osstune data convert` wrote for it.

use osstune_data::{convert, ConvertOptions, Sample};
use osstune_harmony::{
    tokenizer::RETURN, Content, Message, RecipientPlacement, Renderer, Role, Tokenizer,
};
use osstune_serve::render::{harmony_messages, prompt_ids, SystemDefaults};
use osstune_serve::request;
use serde_json::{json, Value};
use std::path::PathBuf;

fn samples() -> Vec<Sample> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("serve-render-{}", std::process::id()));
    let tok = Tokenizer::o200k_harmony().unwrap();
    let opts = ConvertOptions {
        inputs: vec![root.join("examples/sessions")],
        out: out.clone(),
        valid_fraction: 0.0,
        ..ConvertOptions::default()
    };
    convert(&tok, &opts).unwrap();
    let text = std::fs::read_to_string(out.join("train.jsonl")).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The sample's conversation before its final answer, as an OpenAI client would send it:
/// developer instructions as the system message, tool declarations as `tools`, assistant
/// steps grouped into messages with `reasoning_content`, `content` and `tool_calls`.
/// `None` when the steps do not fit that shape (text after a call in one assistant step).
fn openai_request(s: &Sample) -> Option<Value> {
    let Content::Developer(dev) = &s.messages[1].content else {
        return None;
    };
    let tools: Vec<Value> = dev
        .tools
        .iter()
        .map(|t| {
            json!({ "type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": t.parameters } })
        })
        .collect();
    let mut msgs = vec![json!({ "role": "system", "content": dev.instructions })];
    let mut open: Option<Value> = None; // the assistant message being assembled
    let mut calls: Vec<(String, String)> = Vec::new(); // (id, function name) awaiting results
    let body = &s.messages[2..s.messages.len() - 1];
    for m in body {
        match (m.role, m.channel.as_deref(), m.recipient.as_deref()) {
            (Role::User, ..) => {
                msgs.extend(open.take());
                msgs.push(json!({ "role": "user", "content": m.text() }));
            }
            (Role::Assistant, Some("final"), None) => {
                msgs.extend(open.take());
                msgs.push(json!({ "role": "assistant", "content": m.text() }));
            }
            (Role::Assistant, Some("analysis"), None) => {
                let a = open.get_or_insert_with(|| json!({ "role": "assistant" }));
                if ["reasoning_content", "content", "tool_calls"]
                    .iter()
                    .any(|k| a.get(k).is_some())
                {
                    return None;
                }
                a["reasoning_content"] = json!(m.text());
            }
            (Role::Assistant, Some("commentary"), None) => {
                let a = open.get_or_insert_with(|| json!({ "role": "assistant" }));
                if a.get("content").is_some() || a.get("tool_calls").is_some() {
                    return None;
                }
                a["content"] = json!(m.text());
            }
            (Role::Assistant, _, Some(r)) => {
                let name = r.strip_prefix("functions.")?.to_string();
                let id = format!("call_{}", calls.len() + msgs.len());
                let a = open.get_or_insert_with(|| json!({ "role": "assistant" }));
                if a.get("tool_calls").is_none() {
                    a["tool_calls"] = json!([]);
                }
                a["tool_calls"]
                    .as_array_mut()?
                    .push(json!({ "id": id, "type": "function",
                    "function": { "name": name, "arguments": m.text() } }));
                calls.push((id, name));
            }
            (Role::Tool, ..) => {
                msgs.extend(open.take());
                let name = m.name.as_deref()?.strip_prefix("functions.")?;
                let i = calls.iter().position(|(_, n)| n == name)?;
                let (id, _) = calls.remove(i);
                msgs.push(json!({ "role": "tool", "tool_call_id": id, "content": m.text() }));
            }
            _ => return None,
        }
    }
    msgs.extend(open.take());
    Some(json!({ "messages": msgs, "tools": tools, "reasoning_effort": "high" }))
}

#[test]
fn a_conversation_with_tool_calls_renders_as_the_converter_rendered_it() {
    let tok = Tokenizer::o200k_harmony().unwrap();
    let samples = samples();
    let mut checked = 0;
    for s in &samples {
        let has_call = s
            .messages
            .iter()
            .any(|m| m.role == Role::Assistant && m.recipient.is_some());
        let has_result = s.messages.iter().any(|m| m.role == Role::Tool);
        let Some(body) = openai_request(s).filter(|_| has_call && has_result) else {
            continue;
        };
        let req = request::parse(&body).unwrap();
        let Content::System(sys) = &s.messages[0].content else {
            panic!("sample {} starts without a system message", s.id)
        };
        let defaults = SystemDefaults {
            date: sys.conversation_start_date.clone(),
            reasoning_effort: sys.reasoning_effort.unwrap(),
        };
        let (prompt, primed) = prompt_ids(&tok, &harmony_messages(&req, &defaults), None).unwrap();
        assert_eq!(primed, 0);
        // The converter's tokens up to the final answer, then `<|start|>assistant`.
        let last: &Message = s.messages.last().unwrap();
        let mut final_ids = Vec::new();
        Renderer::new(&tok)
            .render_message(last, true, RecipientPlacement::AfterChannel, &mut final_ids)
            .unwrap();
        *final_ids.last_mut().unwrap() = RETURN;
        assert!(s.input_ids.ends_with(&final_ids), "sample {}", s.id);
        let opening = 1 + tok.encode_ordinary("assistant").unwrap().len();
        let want = &s.input_ids[..s.input_ids.len() - final_ids.len() + opening];
        assert_eq!(
            prompt,
            want,
            "sample {}: {}",
            s.id,
            tok.decode(&prompt).unwrap()
        );
        checked += 1;
    }
    assert!(
        checked >= 2,
        "only {checked} of {} samples had a tool call, a result and an OpenAI shape",
        samples.len()
    );
}
