//! OpenAI chat messages → Harmony messages → prompt tokens, with the conventions of the data
//! converter (`osstune data convert`, data/src/sample.rs) so the server shows the fine-tuned
//! model conversations in exactly the token form it was trained on:
//!
//! - system and developer messages become the developer message's `# Instructions`; the
//!   Harmony system message carries the reasoning effort and the conversation date;
//! - `tools` become the developer message's `functions` namespace;
//! - turns before the last user message keep only the user prompt and the turn's final answer
//!   (the converter's context turns: reasoning and tool traffic dropped);
//! - in the current turn, `reasoning_content` → `analysis`, text next to tool calls →
//!   `commentary` preamble, other text → `final`, each call → `commentary to=functions.NAME
//!   <|constrain|>json` with compact JSON arguments, each result → a `functions.NAME` message;
//! - rendering uses the one shared Harmony renderer with the recipient after the channel,
//!   as training targets are rendered.

use anyhow::Result;
use osstune_harmony::{
    tokenizer::START, DeveloperContent, Message, ReasoningEffort, RecipientPlacement,
    RenderOptions, Renderer, Role, SystemContent, Tokenizer,
};

use crate::request::{ChatMessage, ChatRequest, ToolChoice};

/// Server-wide parts of the system message.
#[derive(Clone, Debug)]
pub struct SystemDefaults {
    /// `Current date:` line (`YYYY-MM-DD`); `None` leaves it out.
    pub date: Option<String>,
    /// Used when a request names no `reasoning_effort`.
    pub reasoning_effort: ReasoningEffort,
}

/// Arguments as the converter writes them: compact JSON in the client's key order when they
/// parse, the raw text otherwise.
fn canonical_arguments(raw: &str) -> String {
    serde_json::from_str::<serde_json::Value>(raw)
        .ok()
        .and_then(|v| serde_json::to_string(&v).ok())
        .unwrap_or_else(|| raw.to_string())
}

fn assistant_messages(
    content: &Option<String>,
    reasoning: &Option<String>,
    calls: &[crate::request::ToolCall],
    out: &mut Vec<Message>,
) {
    if let Some(r) = reasoning.as_ref().filter(|r| !r.is_empty()) {
        out.push(Message::assistant("analysis", r.clone()));
    }
    if let Some(c) = content.as_ref().filter(|c| !c.trim().is_empty()) {
        let channel = if calls.is_empty() {
            "final"
        } else {
            "commentary"
        };
        out.push(Message::assistant(channel, c.clone()));
    }
    for c in calls {
        let name = osstune_data::tools::sanitize_name(&c.name);
        out.push(Message::tool_call(&name, canonical_arguments(&c.arguments)));
    }
}

/// The whole Harmony conversation for `req`, system and developer messages first.
pub fn harmony_messages(req: &ChatRequest, defaults: &SystemDefaults) -> Vec<Message> {
    let mut system = SystemContent::default()
        .with_reasoning_effort(req.reasoning_effort.unwrap_or(defaults.reasoning_effort));
    system.conversation_start_date = defaults.date.clone();
    let instructions: Vec<&str> = req
        .messages
        .iter()
        .filter_map(|m| match m {
            ChatMessage::System(t) | ChatMessage::Developer(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let tools = if req.tool_choice == ToolChoice::None {
        Vec::new()
    } else {
        req.tools.clone()
    };
    let mut out = vec![Message::system(system)];
    if !instructions.is_empty() || !tools.is_empty() {
        out.push(Message::developer(DeveloperContent {
            instructions: (!instructions.is_empty()).then(|| instructions.join("\n\n")),
            tools,
        }));
    }
    let last_user = req
        .messages
        .iter()
        .rposition(|m| matches!(m, ChatMessage::User(_)))
        .unwrap_or(0);
    // Earlier turns: the user prompt, then the final answer if the turn's last assistant
    // message is one (text without tool calls), as the converter's context turns.
    let mut final_of_turn: Option<&String> = None;
    for m in &req.messages[..last_user] {
        match m {
            ChatMessage::User(t) => {
                if let Some(f) = final_of_turn.take() {
                    out.push(Message::assistant("final", f.clone()));
                }
                out.push(Message::user(t.clone()));
            }
            ChatMessage::Assistant {
                content,
                tool_calls,
                ..
            } => {
                final_of_turn = content
                    .as_ref()
                    .filter(|c| tool_calls.is_empty() && !c.trim().is_empty());
            }
            ChatMessage::Tool { .. } => final_of_turn = None,
            ChatMessage::System(_) | ChatMessage::Developer(_) => {}
        }
    }
    if let Some(f) = final_of_turn {
        out.push(Message::assistant("final", f.clone()));
    }
    for m in &req.messages[last_user..] {
        match m {
            ChatMessage::User(t) => out.push(Message::user(t.clone())),
            ChatMessage::Assistant {
                content,
                reasoning,
                tool_calls,
            } => assistant_messages(content, reasoning, tool_calls, &mut out),
            ChatMessage::Tool { name, content } => out.push(Message::tool_result(
                &osstune_data::tools::sanitize_name(name),
                content.clone(),
            )),
            ChatMessage::System(_) | ChatMessage::Developer(_) => {}
        }
    }
    out
}

pub fn render_options() -> RenderOptions {
    RenderOptions {
        auto_drop_analysis: false,
        recipient_placement: RecipientPlacement::AfterChannel,
    }
}

/// The completion prompt: the conversation, `<|start|>assistant`, and for a forced tool
/// choice the header of that call (`<|channel|>commentary to=functions.NAME <|constrain|>json
/// <|message|>`), so the model writes only its arguments. Returns the prompt and the length of
/// the forced header at its end.
pub fn prompt_ids(
    tok: &Tokenizer,
    messages: &[Message],
    forced_tool: Option<&str>,
) -> Result<(Vec<u32>, usize)> {
    let renderer = Renderer::new(tok);
    let mut ids = renderer.render_for_completion(messages, render_options())?;
    let Some(name) = forced_tool else {
        return Ok((ids, 0));
    };
    // The header of a rendered call, minus its `<|start|>assistant` and its (empty) body
    // and `<|call|>`: the renderer stays the one source of the token form.
    let with_tools = messages.iter().any(
        |m| matches!(&m.content, osstune_harmony::Content::Developer(d) if !d.tools.is_empty()),
    );
    let mut call = Vec::new();
    renderer.render_message(
        &Message::tool_call(name, ""),
        with_tools,
        RecipientPlacement::AfterChannel,
        &mut call,
    )?;
    let opening = 1 + tok.encode_ordinary(Role::Assistant.as_str())?.len();
    debug_assert_eq!(call[0], START);
    let header = &call[opening..call.len() - 1];
    ids.extend_from_slice(header);
    Ok((ids, header.len()))
}
