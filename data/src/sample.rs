//! One turn of a session → one Harmony training sample (docs/data.md, "What a sample is"),
//! fitted to `max_seq_len`, with the loss mask on the target turn's assistant tokens.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use osstune_harmony::{
    tokenizer::RETURN, Content, DeveloperContent, Message, ReasoningEffort, RecipientPlacement,
    Rendered, Renderer, Role, SystemContent, Tokenizer, ToolDescription,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::session::{Format, Outcome, Session, Step};
use crate::tools::sanitize_name;

#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub max_seq_len: usize,
    pub reasoning_effort: ReasoningEffort,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Source {
    pub file: String,
    pub session: String,
    pub turn: usize,
    pub format: String,
}

/// One line of `train.jsonl` / `valid.jsonl` (docs/design.md §1, docs/data.md).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub id: String,
    pub source: Source,
    pub messages: Vec<Message>,
    pub text: String,
    pub input_ids: Vec<u32>,
    pub loss_mask: Vec<u8>,
    pub n_tokens: usize,
    pub n_trained: usize,
}

/// Why a turn produced no sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    Aborted,
    ProviderError,
    NoFinalAnswer,
    TooLong,
    Duplicate,
    /// Fewer trained tokens than `--min-turn-tokens`.
    TooShort,
    /// The target turn calls a tool that `--include-tools` / `--exclude-tools` rules out.
    ToolFilter,
}

impl DropReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            DropReason::Aborted => "aborted",
            DropReason::ProviderError => "provider_error",
            DropReason::NoFinalAnswer => "no_final_answer",
            DropReason::TooLong => "too_long",
            DropReason::Duplicate => "duplicate",
            DropReason::TooShort => "too_short",
            DropReason::ToolFilter => "tool_filter",
        }
    }
}

/// What fitting had to do, for the stats.
#[derive(Clone, Debug, Default)]
pub struct FitReport {
    pub truncated_outputs: usize,
    pub dropped_context_turns: usize,
}

pub fn hex_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Keep the head and tail of `text`, at most `keep` chars in all, with a marker between.
pub fn truncate_middle(text: &str, keep: usize) -> String {
    let n = text.chars().count();
    if n <= keep {
        return text.to_string();
    }
    let head = keep / 2;
    let tail = keep - head;
    let h: String = text.chars().take(head).collect();
    let t: String = text.chars().skip(n - tail).collect();
    format!("{h}\n…[{} chars omitted]…\n{t}", n - keep)
}

/// Fewest chars a tool output is cut down to.
const MIN_OUTPUT_CHARS: usize = 256;

/// The target turn as Harmony messages: reasoning → analysis, earlier text → commentary
/// preamble, calls → `functions.NAME` with `<|constrain|>json`, results → tool messages,
/// last text → final. Returns `None` without a final answer.
fn target_messages(sess: &Session, turn: usize, output_cap: usize) -> Option<Vec<Message>> {
    let t = &sess.turns[turn];
    let fi = t.final_index()?;
    let mut out = vec![Message::user(t.prompt.clone())];
    for (i, step) in t.steps.iter().enumerate().take(fi + 1) {
        out.push(match step {
            Step::Reasoning(r) => Message::assistant("analysis", r.clone()),
            Step::Text(x) if i == fi => Message::assistant("final", x.clone()),
            Step::Text(x) => Message::assistant("commentary", x.clone()),
            Step::Call { tool, args, .. } => {
                let json = serde_json::to_string(args).unwrap_or_else(|_| "{}".to_string());
                Message::tool_call(&sanitize_name(tool), json)
            }
            Step::Result { tool, text, .. } => {
                Message::tool_result(&sanitize_name(tool), truncate_middle(text, output_cap))
            }
        });
    }
    Some(out)
}

/// Build the sample for `sess.turns[turn]`, or say why there is none.
pub fn build(
    tok: &Tokenizer,
    sess: &Session,
    turn: usize,
    tools: &[ToolDescription],
    opts: &SampleOptions,
    fit: &mut FitReport,
    cache: &mut RenderCache,
) -> anyhow::Result<Result<Sample, DropReason>> {
    let t = &sess.turns[turn];
    match t.outcome {
        Outcome::Aborted if t.final_text().is_none() => return Ok(Err(DropReason::Aborted)),
        Outcome::Error if t.final_text().is_none() => return Ok(Err(DropReason::ProviderError)),
        _ => {}
    }
    // A tool output longer than the whole budget can never fit: cap it up front.
    let Some(mut target) = target_messages(sess, turn, opts.max_seq_len * 4) else {
        return Ok(Err(DropReason::NoFinalAnswer));
    };
    let mut system = SystemContent::default().with_reasoning_effort(opts.reasoning_effort);
    system.conversation_start_date = sess.date.clone();
    // Chat datasets without a system prompt get no invented instructions.
    let mut instructions = match (&sess.instructions, sess.format, &sess.cwd) {
        (Some(given), _, _) => Some(given.clone()),
        (None, Format::Chat, _) => None,
        (None, _, Some(cwd)) => Some(format!("You are a coding agent working in `{cwd}`. Use the tools to inspect and change the project.")),
        (None, _, None) => Some("You are a coding agent. Use the tools to inspect and change the project.".to_string()),
    };
    if let Some(s) = &t.summary {
        let i = instructions.get_or_insert_with(String::new);
        i.push_str("\n\nSummary of earlier conversation:\n");
        i.push_str(s);
    }
    // No instructions and no tools: no developer message at all.
    let developer = (instructions.is_some() || !tools.is_empty()).then(|| DeveloperContent {
        instructions,
        tools: tools.to_vec(),
    });
    // Context: earlier visible turns as user + final (their analysis and tool traffic dropped).
    let mut context: Vec<Vec<Message>> = (t.context_start..turn)
        .map(|i| {
            let c = &sess.turns[i];
            let mut v = vec![Message::user(c.prompt.clone())];
            if let Some(f) = c.final_text() {
                v.push(Message::assistant("final", f.to_string()));
            }
            v
        })
        .collect();
    let renderer = Renderer::new(tok);
    loop {
        let mut msgs = vec![Message::system(system.clone())];
        msgs.extend(developer.clone().map(Message::developer));
        for c in &context {
            msgs.extend(c.iter().cloned());
        }
        let target_start = msgs.len() + 1; // after the target's user message
        msgs.extend(target.iter().cloned());
        let r = cache.render_for_training(&renderer, &msgs)?;
        let n = r.ids.len();
        if n <= opts.max_seq_len {
            let mask = loss_mask(tok, &msgs, &r.spans, target_start, n)?;
            let n_trained = mask.iter().map(|&m| m as usize).sum();
            let turn_s = turn.to_string();
            let id = hex_id(&[sess.source_format, &sess.file, &sess.id, &turn_s]);
            return Ok(Ok(Sample {
                id,
                source: Source {
                    file: sess.file.clone(),
                    session: sess.id.clone(),
                    turn,
                    format: sess.source_format.to_string(),
                },
                text: tok.decode(&r.ids)?,
                messages: msgs,
                input_ids: r.ids,
                loss_mask: mask,
                n_tokens: n,
                n_trained,
            }));
        }
        let over = n - opts.max_seq_len;
        // 1. Cut the longest tool output (head + tail), by at least the overflow (~4 chars a
        //    token) and at least half, never below MIN_OUTPUT_CHARS.
        let longest = target
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == Role::Tool)
            .map(|(i, m)| (i, m.text().chars().count()))
            .filter(|&(_, len)| len > MIN_OUTPUT_CHARS + 64)
            .max_by_key(|&(i, len)| (len, std::cmp::Reverse(i)));
        if let Some((i, len)) = longest {
            let keep = len
                .saturating_sub((over * 4 + 64).max(len / 2))
                .max(MIN_OUTPUT_CHARS);
            let name = target[i].name.clone();
            let text = truncate_middle(target[i].text(), keep);
            target[i] = Message {
                name,
                ..Message::tool_result("x", text)
            };
            fit.truncated_outputs += 1;
            continue;
        }
        // 2. Drop the oldest context turn.
        if !context.is_empty() {
            context.remove(0);
            fit.dropped_context_turns += 1;
            continue;
        }
        // 3. The target turn alone does not fit.
        return Ok(Err(DropReason::TooLong));
    }
}

/// 1 on the target turn's assistant messages: headers, content and terminators. The
/// `<|start|>assistant` that opens an assistant run right after a user or tool message is
/// written by the harness (the completion prompt ends with it), so it is not trained;
/// after another assistant message the model writes it itself, so it is.
fn loss_mask(
    tok: &Tokenizer,
    msgs: &[Message],
    spans: &[std::ops::Range<usize>],
    target_start: usize,
    n: usize,
) -> anyhow::Result<Vec<u8>> {
    let prefix = 1 + tok.encode_ordinary(Role::Assistant.as_str())?.len();
    let mut mask = vec![0u8; n];
    for i in target_start..msgs.len() {
        if msgs[i].role != Role::Assistant {
            continue;
        }
        let prev_assistant = msgs[i - 1].role == Role::Assistant;
        let span = &spans[i];
        let from = if prev_assistant {
            span.start
        } else {
            span.start + prefix
        };
        for m in &mut mask[from..span.end] {
            *m = 1;
        }
    }
    Ok(mask)
}

/// Token ids of already-rendered messages. Every turn of a session repeats the same system and
/// developer messages and the same context turns; rendering each message once keeps conversion
/// linear in the input instead of in the (much larger) output. Harmony renders messages
/// independently, so concatenating cached renderings equals rendering the conversation
/// (tests check this against `Renderer::render_for_training`).
#[derive(Default)]
pub struct RenderCache {
    map: HashMap<u64, Vec<u32>>,
}

fn message_key(m: &Message, with_tools: bool) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    with_tools.hash(&mut h);
    m.role.as_str().hash(&mut h);
    m.name.hash(&mut h);
    m.channel.hash(&mut h);
    m.recipient.hash(&mut h);
    m.content_type.hash(&mut h);
    match &m.content {
        Content::Text(t) => (0u8, t).hash(&mut h),
        other => (1u8, serde_json::to_string(other).unwrap_or_default()).hash(&mut h),
    }
    h.finish()
}

impl RenderCache {
    pub fn render_for_training(
        &mut self,
        r: &Renderer,
        msgs: &[Message],
    ) -> anyhow::Result<Rendered> {
        let with_tools = msgs
            .iter()
            .any(|m| matches!(&m.content, Content::Developer(d) if !d.tools.is_empty()));
        let mut out = Rendered::default();
        for m in msgs {
            let key = message_key(m, with_tools);
            let ids = match self.map.entry(key) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let mut ids = Vec::new();
                    r.render_message(m, with_tools, RecipientPlacement::AfterChannel, &mut ids)?;
                    e.insert(ids)
                }
            };
            let start = out.ids.len();
            out.ids.extend_from_slice(ids);
            out.spans.push(start..out.ids.len());
        }
        let last_final = msgs
            .last()
            .is_some_and(|m| m.role == Role::Assistant && m.channel.as_deref() == Some("final"));
        if last_final {
            if let Some(t) = out.ids.last_mut() {
                *t = RETURN;
            }
        }
        Ok(out)
    }
}
