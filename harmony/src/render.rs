//! Messages → token ids, exactly as openai-harmony renders them (docs/gpt-oss.md §5.2–5.5).
//!
//! Text pieces are encoded separately (role, ` to=…`, channel, content type, body), as
//! openai-harmony does; BPE never merges across those boundaries.

use std::ops::Range;

use anyhow::{bail, Result};

use crate::message::{Content, DeveloperContent, Message, Role, SystemContent};
use crate::tokenizer::{Tokenizer, CALL, CHANNEL, CONSTRAIN, END, MESSAGE, RETURN, START};
use crate::typescript::functions_section;

/// Where an assistant message's recipient goes in its header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecipientPlacement {
    /// `<|start|>assistant to=functions.f<|channel|>commentary …` (openai-harmony's renderer).
    #[default]
    BeforeChannel,
    /// `<|start|>assistant<|channel|>commentary to=functions.f …` (what gpt-oss itself emits;
    /// used for training targets so the model learns its own order). Tool results keep the
    /// role-side placement either way, as the model never writes them.
    AfterChannel,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RenderOptions {
    /// openai-harmony `auto_drop_analysis`: when the last assistant message is `final`, drop
    /// every `analysis` message before the first `final` one.
    pub auto_drop_analysis: bool,
    pub recipient_placement: RecipientPlacement,
}

/// Tokens of a rendered conversation plus the token range of each input message
/// (an empty range for a message dropped by `auto_drop_analysis`).
#[derive(Clone, Debug, Default)]
pub struct Rendered {
    pub ids: Vec<u32>,
    pub spans: Vec<Range<usize>>,
}

/// The system message text (sections joined by a blank line, docs/gpt-oss.md §5.3).
pub fn system_text(sys: &SystemContent, has_function_tools: bool) -> String {
    let mut sections = Vec::new();
    let mut top = Vec::new();
    if let Some(id) = &sys.model_identity {
        top.push(id.clone());
    }
    if let Some(k) = &sys.knowledge_cutoff {
        top.push(format!("Knowledge cutoff: {k}"));
    }
    if let Some(d) = &sys.conversation_start_date {
        top.push(format!("Current date: {d}"));
    }
    if !top.is_empty() {
        sections.push(top.join("\n"));
    }
    if let Some(e) = sys.reasoning_effort {
        sections.push(format!("Reasoning: {}", e.as_str()));
    }
    if !sys.valid_channels.is_empty() {
        let mut ch = format!("# Valid channels: {}.", sys.valid_channels.join(", "));
        if sys.channel_required {
            ch.push_str(" Channel must be included for every message.");
        }
        if has_function_tools {
            ch.push_str("\nCalls to these tools must go to the commentary channel: 'functions'.");
        }
        sections.push(ch);
    }
    sections.join("\n\n")
}

/// The developer message text: `# Instructions` and the `functions` namespace
/// (docs/gpt-oss.md §5.4).
pub fn developer_text(dev: &DeveloperContent) -> String {
    let mut sections = Vec::new();
    if let Some(instr) = &dev.instructions {
        sections.push("# Instructions".to_string());
        sections.push(instr.clone());
    }
    if !dev.tools.is_empty() {
        sections.push(functions_section(&dev.tools));
    }
    sections.join("\n\n")
}

fn has_function_tools(messages: &[Message]) -> bool {
    messages
        .iter()
        .any(|m| matches!(&m.content, Content::Developer(d) if !d.tools.is_empty()))
}

/// Renders messages with one tokenizer.
pub struct Renderer<'a> {
    pub tok: &'a Tokenizer,
}

impl<'a> Renderer<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        Self { tok }
    }

    fn text(&self, s: &str, out: &mut Vec<u32>) -> Result<()> {
        out.extend(self.tok.encode_ordinary(s)?);
        Ok(())
    }

    /// Render one message; `with_tools` says whether the conversation declares functions
    /// (it changes the system message's channel line).
    pub fn render_message(
        &self,
        m: &Message,
        with_tools: bool,
        placement: RecipientPlacement,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        out.push(START);
        if m.role == Role::Tool {
            let Some(name) = &m.name else {
                bail!("a tool message needs the tool's name (e.g. functions.read)");
            };
            self.text(name, out)?;
        } else {
            self.text(m.role.as_str(), out)?;
            if let Some(name) = &m.name {
                self.text(&format!(":{name}"), out)?;
            }
        }
        let recipient = m.recipient.as_deref().filter(|r| *r != "all");
        let after = placement == RecipientPlacement::AfterChannel
            && m.role == Role::Assistant
            && m.channel.is_some();
        if let (Some(r), false) = (recipient, after) {
            self.text(&format!(" to={r}"), out)?;
        }
        if let Some(c) = &m.channel {
            out.push(CHANNEL);
            self.text(c, out)?;
        }
        if let (Some(r), true) = (recipient, after) {
            self.text(&format!(" to={r}"), out)?;
        }
        if let Some(ct) = &m.content_type {
            match ct.strip_prefix("<|constrain|>") {
                Some(rest) => {
                    self.text(" ", out)?;
                    out.push(CONSTRAIN);
                    self.text(rest, out)?;
                }
                None => self.text(&format!(" {ct}"), out)?,
            }
        }
        out.push(MESSAGE);
        match &m.content {
            Content::Text(t) => self.text(t, out)?,
            Content::System(s) => {
                if m.role != Role::System {
                    bail!("system content in a {} message", m.role.as_str());
                }
                self.text(&system_text(s, with_tools), out)?
            }
            Content::Developer(d) => {
                if m.role != Role::Developer {
                    bail!("developer content in a {} message", m.role.as_str());
                }
                self.text(&developer_text(d), out)?
            }
        }
        out.push(if m.role == Role::Assistant && m.recipient.is_some() {
            CALL
        } else {
            END
        });
        Ok(())
    }

    /// Render a conversation, keeping the token range of every message.
    pub fn render_spans(&self, messages: &[Message], opts: RenderOptions) -> Result<Rendered> {
        let with_tools = has_function_tools(messages);
        let last_assistant_final = messages
            .iter()
            .rev()
            .find(|m| m.role == Role::Assistant)
            .is_some_and(|m| m.channel.as_deref() == Some("final"));
        let drop = opts.auto_drop_analysis && last_assistant_final;
        let first_final = messages
            .iter()
            .position(|m| m.channel.as_deref() == Some("final"));
        let mut r = Rendered::default();
        for (i, m) in messages.iter().enumerate() {
            let start = r.ids.len();
            let dropped = drop
                && first_final.is_some_and(|f| i < f)
                && m.channel.as_deref() == Some("analysis");
            if !dropped {
                self.render_message(m, with_tools, opts.recipient_placement, &mut r.ids)?;
            }
            r.spans.push(start..r.ids.len());
        }
        Ok(r)
    }

    /// `render_conversation`: every message ends `<|end|>` or `<|call|>`.
    pub fn render_conversation(
        &self,
        messages: &[Message],
        opts: RenderOptions,
    ) -> Result<Vec<u32>> {
        Ok(self.render_spans(messages, opts)?.ids)
    }

    /// `render_conversation_for_training`: as above, but a last assistant `final` message ends
    /// with `<|return|>`, the token the model emits when it is done.
    pub fn render_for_training(
        &self,
        messages: &[Message],
        opts: RenderOptions,
    ) -> Result<Rendered> {
        let mut r = self.render_spans(messages, opts)?;
        if let Some(last) = messages.last() {
            if last.role == Role::Assistant && last.channel.as_deref() == Some("final") {
                if let Some(t) = r.ids.last_mut() {
                    *t = RETURN;
                }
            }
        }
        Ok(r)
    }

    /// A prompt for sampling: the conversation followed by `<|start|>assistant`.
    pub fn render_for_completion(
        &self,
        messages: &[Message],
        opts: RenderOptions,
    ) -> Result<Vec<u32>> {
        let mut ids = self.render_conversation(messages, opts)?;
        ids.push(START);
        self.text(Role::Assistant.as_str(), &mut ids)?;
        Ok(ids)
    }
}
