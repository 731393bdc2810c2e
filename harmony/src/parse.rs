//! Token ids → Harmony messages, incrementally (for `osstune generate`) or all at once.
//!
//! Header parsing follows openai-harmony's `StreamableParser` (strict mode): the channel is
//! taken from after `<|channel|>`, then the remaining words are role, recipient (`to=…`) and
//! content type, so both recipient placements (before or after the channel) parse the same.

use anyhow::{bail, Context, Result};

use crate::message::{Content, Message, Role};
use crate::tokenizer::{Tokenizer, ALL_STOP_TOKENS, MESSAGE, START};

#[derive(Clone, Debug)]
struct Header {
    role: Role,
    name: Option<String>,
    channel: Option<String>,
    recipient: Option<String>,
    content_type: Option<String>,
}

#[derive(Clone, Debug)]
enum State {
    ExpectStart,
    Header(Vec<u32>),
    Content(Header),
}

/// What one token did to the parse.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Nothing visible yet (header token, or bytes of an incomplete UTF-8 character).
    None,
    /// A header was completed; content follows.
    HeaderDone,
    /// New content text of the current message.
    Delta(String),
    /// A message ended (stop token); it is the last of `messages()`.
    MessageDone,
}

pub struct StreamParser<'a> {
    tok: &'a Tokenizer,
    state: State,
    next_role: Option<Role>,
    messages: Vec<Message>,
    text: String,
    pending: Vec<u8>,
}

impl<'a> StreamParser<'a> {
    /// `role`: set when the prompt already ended with `<|start|>{role}` (e.g. a completion
    /// prompt), so parsing starts inside that message's header.
    pub fn new(tok: &'a Tokenizer, role: Option<Role>) -> Self {
        let state = match role {
            Some(_) => State::Header(Vec::new()),
            None => State::ExpectStart,
        };
        Self {
            tok,
            state,
            next_role: role,
            messages: Vec::new(),
            text: String::new(),
            pending: Vec::new(),
        }
    }

    pub fn process(&mut self, token: u32) -> Result<Event> {
        match &mut self.state {
            State::ExpectStart => {
                if token != START {
                    bail!("unexpected token {token} while expecting <|start|>");
                }
                self.state = State::Header(Vec::new());
                Ok(Event::None)
            }
            State::Header(toks) => {
                if token != MESSAGE {
                    toks.push(token);
                    return Ok(Event::None);
                }
                let toks = std::mem::take(toks);
                let header = self.parse_header(&toks)?;
                self.next_role = None;
                self.state = State::Content(header);
                Ok(Event::HeaderDone)
            }
            State::Content(_) => {
                if ALL_STOP_TOKENS.contains(&token) {
                    self.finish();
                    return Ok(Event::MessageDone);
                }
                let bytes = self.tok.decode_bytes(&[token])?;
                self.pending.extend_from_slice(&bytes);
                let delta = self.drain_utf8();
                self.text.push_str(&delta);
                Ok(if delta.is_empty() {
                    Event::None
                } else {
                    Event::Delta(delta)
                })
            }
        }
    }

    /// End of the token stream: completes a message whose stop token never came.
    pub fn process_eos(&mut self) -> Result<()> {
        match &self.state {
            State::ExpectStart => Ok(()),
            State::Header(_) => bail!("token stream ended inside a message header"),
            State::Content(_) => {
                self.finish();
                Ok(())
            }
        }
    }

    /// Take the longest valid UTF-8 prefix of the pending bytes; invalid bytes become U+FFFD.
    fn drain_utf8(&mut self) -> String {
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + n);
                        }
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                    }
                }
            }
        }
    }

    fn finish(&mut self) {
        if let State::Content(h) = std::mem::replace(&mut self.state, State::ExpectStart) {
            let mut text = std::mem::take(&mut self.text);
            text.push_str(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
            self.messages.push(Message {
                role: h.role,
                name: h.name,
                channel: h.channel,
                recipient: h.recipient,
                content_type: h.content_type,
                content: Content::Text(text),
            });
        }
    }

    fn parse_header(&self, toks: &[u32]) -> Result<Header> {
        let raw = self
            .tok
            .decode_utf8(toks)
            .context("message header is not valid UTF-8")?;
        parse_header_str(&raw, self.next_role)
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    pub fn into_messages(self) -> Vec<Message> {
        self.messages
    }

    /// Content decoded so far of the message being generated.
    pub fn current_text(&self) -> &str {
        &self.text
    }

    fn header(&self) -> Option<&Header> {
        match &self.state {
            State::Content(h) => Some(h),
            _ => None,
        }
    }

    pub fn current_role(&self) -> Option<Role> {
        self.header().map(|h| h.role).or(self.next_role)
    }

    pub fn current_channel(&self) -> Option<&str> {
        self.header().and_then(|h| h.channel.as_deref())
    }

    pub fn current_recipient(&self) -> Option<&str> {
        self.header().and_then(|h| h.recipient.as_deref())
    }

    pub fn current_content_type(&self) -> Option<&str> {
        self.header().and_then(|h| h.content_type.as_deref())
    }

    /// True between messages (after a stop token, before the next `<|start|>`).
    pub fn between_messages(&self) -> bool {
        matches!(self.state, State::ExpectStart)
    }
}

fn parse_header_str(raw: &str, role: Option<Role>) -> Result<Header> {
    let mut header = raw.to_string();
    let mut channel = None;
    if let Some(idx) = header.find("<|channel|>") {
        let after = &header[idx + "<|channel|>".len()..];
        let end = after
            .find(|c: char| c.is_whitespace() || c == '<')
            .unwrap_or(after.len());
        if end == 0 {
            bail!("message header {raw:?} has <|channel|> but no channel name");
        }
        channel = Some(after[..end].to_string());
        header = format!("{}{}", &header[..idx], &after[end..]);
    }
    let mut header = header.trim().to_string();
    if header.contains("<|constrain|>") {
        header = header
            .replace("<|constrain|>", " <|constrain|>")
            .trim()
            .to_string();
    }
    let mut parts: Vec<&str> = header.split_ascii_whitespace().collect();
    let mut name = None;
    let role = match role {
        Some(r) => r,
        None => {
            let first = *parts
                .first()
                .with_context(|| format!("message header {raw:?} has no role"))?;
            match Role::parse(first) {
                Some(r) => r,
                None if parts.len() > 1 || first.starts_with("to=") => {
                    parts.remove(0);
                    name = Some(first.to_string());
                    Role::Tool
                }
                None => bail!("unknown role {first:?} in message header {raw:?}"),
            }
        }
    };
    if parts.first() == Some(&role.as_str()) {
        parts.remove(0);
    }
    let mut recipient = None;
    let mut content_type = None;
    let n = parts.len();
    if let Some(last) = parts.pop() {
        if let Some(r) = last.strip_prefix("to=") {
            recipient = Some(r.to_string());
        } else if n == 1 {
            recipient = Some(last.to_string());
        } else {
            content_type = Some(last.to_string());
            if let Some(r) = parts.pop() {
                recipient = Some(r.strip_prefix("to=").unwrap_or(r).to_string());
            }
        }
    }
    if !parts.is_empty() {
        bail!(
            "unexpected words {:?} in message header {raw:?}",
            parts.join(" ")
        );
    }
    Ok(Header {
        role,
        name,
        channel,
        recipient,
        content_type,
    })
}

/// Parse a whole token sequence into messages. `role` as for [`StreamParser::new`].
pub fn parse_messages(tok: &Tokenizer, ids: &[u32], role: Option<Role>) -> Result<Vec<Message>> {
    let mut p = StreamParser::new(tok, role);
    for (i, &t) in ids.iter().enumerate() {
        p.process(t).with_context(|| format!("at token {i}"))?;
    }
    p.process_eos()?;
    Ok(p.into_messages())
}
