//! Generated Harmony tokens → OpenAI deltas, one token at a time.
//!
//! `analysis` text becomes `reasoning_content`, `final` and recipient-less `commentary` text
//! becomes `content`, and a message addressed to `functions.NAME` (a declared tool) becomes a
//! `tool_calls` entry whose arguments stream as they are written. The non-streaming answer is
//! the sum of the same deltas, so both forms always agree.
//!
//! Malformed output is never an error of the request. Output that is not Harmony at all
//! (a header that does not parse, text outside a message) is returned from that point on as
//! raw `content`; a call to an undeclared recipient is returned as content; and a call whose
//! arguments are not valid JSON is moved into content in the non-streaming answer. Each of
//! these ends the answer with finish reason `malformed_output` (docs/serve.md).

use osstune_harmony::{tokenizer::CALL, Event, Role, StreamParser, Tokenizer};

/// One piece of the answer, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Delta {
    Content(String),
    Reasoning(String),
    /// A tool call begins: its index among this answer's calls, its id and function name.
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    ToolCallArguments {
        index: usize,
        text: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParsedCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// The assembled answer (`choices[0].message` plus its finish reason).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Answer {
    pub content: String,
    pub reasoning: String,
    pub tool_calls: Vec<ParsedCall>,
    pub finish_reason: &'static str,
}

impl Answer {
    pub fn apply(&mut self, d: &Delta) {
        match d {
            Delta::Content(t) => self.content.push_str(t),
            Delta::Reasoning(t) => self.reasoning.push_str(t),
            Delta::ToolCallStart { id, name, .. } => self.tool_calls.push(ParsedCall {
                id: id.clone(),
                name: name.clone(),
                arguments: String::new(),
            }),
            Delta::ToolCallArguments { index, text } => {
                if let Some(c) = self.tool_calls.get_mut(*index) {
                    c.arguments.push_str(text);
                }
            }
        }
    }
}

/// Why generation ended, as the engine saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// `<|return|>` or `<|call|>`.
    StopToken(u32),
    MaxTokens,
    /// A `stop` string matched.
    StopString,
}

/// A real header is a handful of tokens (`<|channel|>commentary to=functions.x <|constrain|>json`);
/// past this many, the output is not Harmony and is shown as text rather than held back.
const MAX_HEADER_TOKENS: usize = 64;

#[derive(Clone, Debug, PartialEq)]
enum Sink {
    Reasoning,
    Content,
    Call(usize),
}

pub struct OutputParser<'a> {
    tok: &'a Tokenizer,
    parser: StreamParser<'a>,
    tools: Vec<String>,
    call_prefix: String,
    sink: Option<Sink>,
    /// Tokens since the current message's header began (shown raw if the header fails).
    header: Vec<u32>,
    /// Raw mode: everything is content from here on.
    raw: bool,
    raw_bytes: Vec<u8>,
    malformed: bool,
    stops: Vec<String>,
    /// Content held back because it may be the start of a stop string.
    held: String,
    stopped: bool,
    calls: usize,
    wrote_content: bool,
    wrote_reasoning: bool,
}

impl<'a> OutputParser<'a> {
    /// `tools`: declared function names; `call_prefix`: unique per answer, for call ids.
    pub fn new(
        tok: &'a Tokenizer,
        tools: Vec<String>,
        stops: Vec<String>,
        call_prefix: String,
    ) -> Self {
        Self {
            tok,
            parser: StreamParser::new(tok, Some(Role::Assistant)),
            tools,
            call_prefix,
            sink: None,
            header: Vec::new(),
            raw: false,
            raw_bytes: Vec::new(),
            malformed: false,
            stops,
            held: String::new(),
            stopped: false,
            calls: 0,
            wrote_content: false,
            wrote_reasoning: false,
        }
    }

    /// Feeds tokens that are part of the prompt but open the answer (a forced call header).
    pub fn prime(&mut self, ids: &[u32]) -> Vec<Delta> {
        ids.iter().flat_map(|&t| self.push(t)).collect()
    }

    /// True once a `stop` string has matched: generation should end.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    pub fn push(&mut self, token: u32) -> Vec<Delta> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        if self.raw {
            self.raw_text(&[token], &mut out);
            return out;
        }
        if self.sink.is_none() {
            self.header.push(token);
        }
        let result = if self.header.len() > MAX_HEADER_TOKENS {
            Err(anyhow::anyhow!(
                "message header longer than {MAX_HEADER_TOKENS} tokens"
            ))
        } else {
            self.parser.process(token)
        };
        match result {
            Err(_) => {
                // Not Harmony: show what the header held, and everything after, as text.
                self.raw = true;
                self.malformed = true;
                self.sink = Some(Sink::Content);
                let header = std::mem::take(&mut self.header);
                self.raw_text(&header, &mut out);
            }
            Ok(Event::HeaderDone) => {
                self.header.clear();
                self.open_message(&mut out);
            }
            Ok(Event::Delta(text)) => self.emit(text, &mut out),
            Ok(Event::MessageDone) => {
                self.sink = None;
                if token == CALL && !self.ended_in_call() {
                    self.malformed = true;
                }
            }
            Ok(Event::None) => {}
        }
        out
    }

    fn ended_in_call(&self) -> bool {
        self.parser
            .messages()
            .last()
            .and_then(|m| m.recipient.as_deref())
            .is_some_and(|r| self.declared(r).is_some())
    }

    fn declared(&self, recipient: &str) -> Option<String> {
        let name = recipient.strip_prefix("functions.")?;
        self.tools
            .iter()
            .any(|t| t == name)
            .then(|| name.to_string())
    }

    fn open_message(&mut self, out: &mut Vec<Delta>) {
        let recipient = self.parser.current_recipient().map(str::to_string);
        let channel = self.parser.current_channel().map(str::to_string);
        self.sink = Some(match (recipient, channel.as_deref()) {
            (Some(r), _) => match self.declared(&r) {
                Some(name) => {
                    let index = self.calls;
                    self.calls += 1;
                    out.push(Delta::ToolCallStart {
                        index,
                        id: format!("{}_{index}", self.call_prefix),
                        name,
                    });
                    Sink::Call(index)
                }
                None => {
                    // A call to something never declared: shown as text, flagged.
                    self.malformed = true;
                    self.separate(Sink::Content, out);
                    let note = format!("[call to undeclared recipient {r}] ");
                    self.emit_content(note, out);
                    return;
                }
            },
            (None, Some("analysis")) => {
                self.separate(Sink::Reasoning, out);
                return;
            }
            (None, _) => {
                self.separate(Sink::Content, out);
                return;
            }
        });
    }

    /// Starts a reasoning or content message, with a blank line after earlier text of its kind.
    fn separate(&mut self, sink: Sink, out: &mut Vec<Delta>) {
        let sep = match sink {
            Sink::Reasoning => std::mem::replace(&mut self.wrote_reasoning, true),
            _ => std::mem::replace(&mut self.wrote_content, true),
        };
        self.sink = Some(sink.clone());
        if sep {
            match sink {
                Sink::Reasoning => out.push(Delta::Reasoning("\n\n".into())),
                _ => self.emit_content("\n\n".into(), out),
            }
        }
    }

    fn emit(&mut self, text: String, out: &mut Vec<Delta>) {
        match self.sink.clone() {
            Some(Sink::Reasoning) => out.push(Delta::Reasoning(text)),
            Some(Sink::Call(index)) => out.push(Delta::ToolCallArguments { index, text }),
            Some(Sink::Content) | None => self.emit_content(text, out),
        }
    }

    /// Content, cut at the first `stop` string; text that may begin one is held back.
    fn emit_content(&mut self, text: String, out: &mut Vec<Delta>) {
        self.held.push_str(&text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let before: String = self.held[..at].to_string();
            self.held.clear();
            self.stopped = true;
            if !before.is_empty() {
                out.push(Delta::Content(before));
            }
            return;
        }
        let keep = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        if cut > 0 {
            let ready: String = self.held.drain(..cut).collect();
            out.push(Delta::Content(ready));
        }
    }

    fn raw_text(&mut self, ids: &[u32], out: &mut Vec<Delta>) {
        for &t in ids {
            if let Ok(b) = self.tok.decode_bytes(&[t]) {
                self.raw_bytes.extend_from_slice(&b);
            }
        }
        let valid = match std::str::from_utf8(&self.raw_bytes) {
            Ok(_) => self.raw_bytes.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.raw_bytes.len(),
        };
        let bytes: Vec<u8> = self.raw_bytes.drain(..valid).collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if !text.is_empty() {
            self.emit_content(text, out);
        }
    }

    /// The last deltas (held-back text) and the finish reason.
    pub fn finish(&mut self, end: End) -> (Vec<Delta>, &'static str) {
        let mut out = Vec::new();
        if !self.raw && !self.stopped && self.sink.is_none() && !self.header.is_empty() {
            // The answer ended inside a message header: not Harmony, shown as text.
            let mut header = std::mem::take(&mut self.header);
            if matches!(end, End::StopToken(t) if header.last() == Some(&t)) {
                header.pop();
            }
            self.malformed = true;
            self.raw = true;
            self.raw_text(&header, &mut out);
        }
        if !self.raw_bytes.is_empty() {
            let text = String::from_utf8_lossy(&std::mem::take(&mut self.raw_bytes)).into_owned();
            self.held.push_str(&text);
        }
        if !self.held.is_empty() && !self.stopped {
            out.push(Delta::Content(std::mem::take(&mut self.held)));
        }
        let reason = match end {
            _ if self.malformed => "malformed_output",
            End::StopString => "stop",
            End::MaxTokens => "length",
            End::StopToken(CALL) => "tool_calls",
            End::StopToken(_) => "stop",
        };
        (out, reason)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    (1..stop.len())
        .rev()
        .filter(|&n| stop.is_char_boundary(n) && n <= text.len())
        .find(|&n| text.is_char_boundary(text.len() - n) && text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

/// Non-streaming form: calls whose arguments are not JSON (or were cut by the token budget)
/// are moved into content, as the issue requires malformed output to come back as text.
pub fn settle(mut a: Answer) -> Answer {
    let bad: Vec<ParsedCall> = a
        .tool_calls
        .iter()
        .filter(|c| serde_json::from_str::<serde_json::Value>(&c.arguments).is_err())
        .cloned()
        .collect();
    if bad.is_empty() {
        return a;
    }
    a.tool_calls.retain(|c| !bad.contains(c));
    for c in bad {
        if !a.content.is_empty() {
            a.content.push_str("\n\n");
        }
        a.content.push_str(&format!(
            "[call to functions.{} with invalid JSON arguments] {}",
            c.name, c.arguments
        ));
    }
    if a.finish_reason == "tool_calls" {
        a.finish_reason = "malformed_output";
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use osstune_harmony::{
        tokenizer::{END, RETURN},
        Message, RecipientPlacement, Renderer,
    };

    fn tok() -> Tokenizer {
        Tokenizer::o200k_harmony().unwrap()
    }

    /// Tokens the model would write after a prompt ending `<|start|>assistant`.
    fn canned(tok: &Tokenizer, msgs: &[Message]) -> Vec<u32> {
        let r = Renderer::new(tok);
        let mut ids = Vec::new();
        for m in msgs {
            r.render_message(m, true, RecipientPlacement::AfterChannel, &mut ids)
                .unwrap();
        }
        let opening = 1 + tok.encode_ordinary("assistant").unwrap().len();
        ids.drain(..opening);
        ids
    }

    /// Runs `ids` through a parser as the engine does; returns the streamed deltas and the
    /// settled (non-streaming) answer.
    fn run(tok: &Tokenizer, ids: &[u32], end: End, stops: &[&str]) -> (Vec<Delta>, Answer) {
        let stops = stops.iter().map(|s| s.to_string()).collect();
        let mut p = OutputParser::new(
            tok,
            vec!["read".into(), "bash".into()],
            stops,
            "call_x".into(),
        );
        let mut deltas = Vec::new();
        for &t in ids {
            deltas.extend(p.push(t));
            if p.stopped() {
                break;
            }
        }
        let (tail, reason) = p.finish(end);
        deltas.extend(tail);
        let mut a = Answer::default();
        deltas.iter().for_each(|d| a.apply(d));
        a.finish_reason = reason;
        (deltas, settle(a))
    }

    #[test]
    fn complete_call_becomes_a_tool_call_with_streamed_arguments() {
        let tok = tok();
        let ids = canned(
            &tok,
            &[
                Message::assistant("analysis", "Need the file."),
                Message::tool_call("read", r#"{"filePath":"/src/main.rs"}"#),
            ],
        );
        assert_eq!(*ids.last().unwrap(), CALL);
        let (deltas, a) = run(&tok, &ids, End::StopToken(CALL), &[]);
        assert_eq!(a.reasoning, "Need the file.");
        assert_eq!(a.content, "");
        assert_eq!(a.finish_reason, "tool_calls");
        assert_eq!(
            a.tool_calls,
            vec![ParsedCall {
                id: "call_x_0".into(),
                name: "read".into(),
                arguments: r#"{"filePath":"/src/main.rs"}"#.into()
            }]
        );
        let arg_pieces = deltas
            .iter()
            .filter(|d| matches!(d, Delta::ToolCallArguments { .. }))
            .count();
        assert!(
            arg_pieces > 1,
            "arguments should stream in pieces: {deltas:?}"
        );
    }

    #[test]
    fn final_answer_and_preamble_are_content() {
        let tok = tok();
        let mut ids = canned(
            &tok,
            &[
                Message::assistant("analysis", "Think."),
                Message::assistant("commentary", "Looking."),
                Message::assistant("final", "Done."),
            ],
        );
        *ids.last_mut().unwrap() = RETURN;
        let (_, a) = run(&tok, &ids, End::StopToken(RETURN), &[]);
        assert_eq!(a.reasoning, "Think.");
        assert_eq!(a.content, "Looking.\n\nDone.");
        assert_eq!(a.finish_reason, "stop");
        assert!(a.tool_calls.is_empty());
    }

    #[test]
    fn truncated_call_comes_back_as_content_with_length() {
        let tok = tok();
        let ids = canned(
            &tok,
            &[Message::tool_call(
                "bash",
                r#"{"command":"cargo test --release"}"#,
            )],
        );
        let cut = &ids[..ids.len() - 4];
        let (deltas, a) = run(&tok, cut, End::MaxTokens, &[]);
        assert!(deltas
            .iter()
            .any(|d| matches!(d, Delta::ToolCallStart { .. })));
        assert!(a.tool_calls.is_empty(), "{a:?}");
        assert!(a.content.contains(r#"{"command":"cargo"#), "{a:?}");
        assert_eq!(a.finish_reason, "length");
    }

    #[test]
    fn invalid_json_arguments_are_content_and_flagged() {
        let tok = tok();
        let ids = canned(&tok, &[Message::tool_call("bash", "{command: ls")]);
        let (_, a) = run(&tok, &ids, End::StopToken(CALL), &[]);
        assert!(a.tool_calls.is_empty());
        assert!(a.content.contains("{command: ls"), "{a:?}");
        assert_eq!(a.finish_reason, "malformed_output");
    }

    #[test]
    fn undeclared_recipient_is_content_and_flagged() {
        let tok = tok();
        let ids = canned(&tok, &[Message::tool_call("rm_rf", r#"{"path":"/"}"#)]);
        let (_, a) = run(&tok, &ids, End::StopToken(CALL), &[]);
        assert!(a.tool_calls.is_empty());
        assert!(
            a.content.contains("functions.rm_rf") && a.content.contains(r#"{"path":"/"}"#),
            "{a:?}"
        );
        assert_eq!(a.finish_reason, "malformed_output");
    }

    #[test]
    fn text_outside_harmony_is_returned_raw() {
        let tok = tok();
        // A message end right away, then plain text where `<|start|>` should be.
        let mut ids = canned(&tok, &[Message::assistant("final", "ok")]);
        assert_eq!(*ids.last().unwrap(), END);
        ids.extend(tok.encode_ordinary(" stray words").unwrap());
        let (_, a) = run(&tok, &ids, End::MaxTokens, &[]);
        assert_eq!(a.content, "ok stray words");
        assert_eq!(a.finish_reason, "malformed_output");
    }

    #[test]
    fn output_without_any_header_is_text_and_streams_once_past_the_header_limit() {
        let tok = tok();
        let ids = tok
            .encode_ordinary("just some words, no header at all")
            .unwrap();
        let (_, a) = run(&tok, &ids, End::MaxTokens, &[]);
        assert_eq!(a.content, "just some words, no header at all");
        assert_eq!(a.finish_reason, "malformed_output");
        let long = tok.encode_ordinary(&"word ".repeat(100)).unwrap();
        let mut p = OutputParser::new(&tok, vec![], vec![], "c".into());
        let early: Vec<Delta> = long[..MAX_HEADER_TOKENS + 2]
            .iter()
            .flat_map(|&t| p.push(t))
            .collect();
        assert!(
            matches!(&early[..], [Delta::Content(t), ..] if t.starts_with("word word")),
            "{early:?}"
        );
    }

    #[test]
    fn stop_strings_cut_the_content() {
        let tok = tok();
        let ids = canned(&tok, &[Message::assistant("final", "alpha beta gamma")]);
        let (deltas, a) = run(&tok, &ids, End::StopString, &["be", "zzz"]);
        assert_eq!(a.content, "alpha ");
        assert_eq!(a.finish_reason, "stop");
        assert!(deltas
            .iter()
            .all(|d| !matches!(d, Delta::Content(t) if t.contains('b'))));
        // A partial match at the end is released when the answer ends.
        let (_, a) = run(&tok, &ids, End::StopToken(END), &["gammaX"]);
        assert_eq!(a.content, "alpha beta gamma");
    }
}
