//! The channel-aware stream printer of `osstune generate` / `chat`.
//!
//! Generated tokens go through Harmony's streaming parser: each message gets a label (its
//! channel, and recipient for tool calls) and only its content is shown; the analysis channel
//! can be hidden. Output that is not Harmony (a random model, an odd `--raw` prompt) is shown
//! as raw text from the first token that was not shown, so nothing is lost.

use anyhow::Result;
use osstune_harmony::{Event, Message, StreamParser, Tokenizer};
use std::io::Write;

/// Harmony's `<|start|>`: a message header begins.
const START: u32 = 200006;
/// A header longer than this is not Harmony: the stream falls back to raw text.
const MAX_HEADER_TOKENS: usize = 64;

/// Streams generated tokens: Harmony messages get a channel label and only their content is
/// shown; output that is not Harmony (a random model, an odd `--raw` prompt) is shown raw.
pub struct ChannelStream<'t> {
    tok: &'t Tokenizer,
    parser: Option<StreamParser<'t>>,
    print: bool,
    hide_analysis: bool,
    /// Tokens generated so far, and where the unfinished header (not shown yet) starts.
    ids: Vec<u32>,
    header_start: Option<usize>,
    raw_pending: Vec<u8>,
    error: Option<String>,
    /// Whether the current message's content is being shown.
    showing: bool,
    /// Whether the last thing printed left a line open.
    line_open: bool,
    /// Everything shown (printed or not), for tests.
    shown: String,
    /// Messages completed before a fall back to raw text.
    kept: Vec<Message>,
}

impl<'t> ChannelStream<'t> {
    /// The parser is primed with the prompt from its last `<|start|>`, so it is in the state
    /// the model continues from (inside the assistant header for a `--prompt`).
    pub fn new(tok: &'t Tokenizer, prompt: &[u32], print: bool, hide_analysis: bool) -> Self {
        let mut parser = None;
        let mut header_start = None;
        if let Some(i) = prompt.iter().rposition(|&t| t == START) {
            let mut p = StreamParser::new(tok, None);
            if prompt[i..].iter().all(|&t| p.process(t).is_ok()) {
                // Inside a header, the parser knows no role yet (it was given none).
                if !p.between_messages() && p.current_role().is_none() {
                    header_start = Some(0);
                }
                parser = Some(p);
            }
        }
        Self {
            tok,
            parser,
            print,
            hide_analysis,
            ids: Vec::new(),
            header_start,
            raw_pending: Vec::new(),
            error: None,
            showing: true,
            line_open: false,
            shown: String::new(),
            kept: Vec::new(),
        }
    }

    pub fn push(&mut self, t: u32) -> Result<()> {
        self.ids.push(t);
        let i = self.ids.len() - 1;
        let Some(p) = self.parser.as_mut() else {
            return self.raw(&[t]);
        };
        let was_between = p.between_messages();
        match p.process(t) {
            Ok(Event::None) => {
                if was_between {
                    self.header_start = Some(i);
                } else if let Some(h) = self.header_start {
                    if i + 1 - h > MAX_HEADER_TOKENS {
                        return self.fall_back(format!(
                            "no <|message|> after {MAX_HEADER_TOKENS} header tokens"
                        ));
                    }
                }
            }
            Ok(Event::HeaderDone) => {
                self.header_start = None;
                let (channel, recipient) = (
                    p.current_channel().map(str::to_string),
                    p.current_recipient().map(str::to_string),
                );
                self.showing = !(self.hide_analysis && channel.as_deref() == Some("analysis"));
                if self.showing {
                    let mut label = channel.unwrap_or_else(|| "message".to_string());
                    if let Some(r) = recipient {
                        label = format!("{label} to={r}");
                    }
                    self.out(&format!("[{label}]\n"))?;
                }
            }
            Ok(Event::Delta(d)) => {
                if self.showing {
                    self.out(&d)?;
                }
            }
            Ok(Event::MessageDone) => {
                if self.showing {
                    self.out("\n")?;
                }
                self.showing = true;
            }
            Err(e) => return self.fall_back(format!("{e:#}")),
        }
        Ok(())
    }

    /// End of generation: a message cut short by the token budget is kept as it is.
    pub fn finish(&mut self) -> Result<()> {
        if let Some(p) = self.parser.as_mut() {
            if let Err(e) = p.process_eos() {
                self.fall_back(format!("{e:#}"))?;
            }
        } else {
            self.out_raw_flush()?;
        }
        if self.line_open {
            self.out("\n")?;
        }
        Ok(())
    }

    /// Why the output stopped parsing as Harmony, if it did.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    pub fn messages(&self) -> Vec<Message> {
        match &self.parser {
            Some(p) => p.messages().to_vec(),
            None => self.kept.clone(),
        }
    }

    /// Stops parsing: what was hidden (the unfinished header) is shown raw from here on.
    fn fall_back(&mut self, why: String) -> Result<()> {
        self.error = Some(why);
        if let Some(p) = self.parser.take() {
            self.kept = p.into_messages();
        }
        if self.line_open {
            self.out("\n")?;
        }
        self.out("[output is not Harmony; raw text follows]\n")?;
        let from = self.header_start.unwrap_or(self.ids.len() - 1);
        let rest = self.ids[from..].to_vec();
        self.raw(&rest)?;
        self.out_raw_flush()
    }

    fn raw(&mut self, ids: &[u32]) -> Result<()> {
        let bytes = self.tok.decode_bytes(ids)?;
        self.raw_pending.extend_from_slice(&bytes);
        // Print the complete UTF-8 prefix; a character split across tokens waits for its end.
        let valid = match std::str::from_utf8(&self.raw_pending) {
            Ok(_) => self.raw_pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.raw_pending.len(),
        };
        let done: Vec<u8> = self.raw_pending.drain(..valid).collect();
        self.out(&String::from_utf8_lossy(&done))
    }

    fn out_raw_flush(&mut self) -> Result<()> {
        let rest = std::mem::take(&mut self.raw_pending);
        self.out(&String::from_utf8_lossy(&rest))
    }

    fn out(&mut self, s: &str) -> Result<()> {
        if s.is_empty() {
            return Ok(());
        }
        self.shown.push_str(s);
        self.line_open = !s.ends_with('\n');
        if self.print {
            let mut o = std::io::stdout().lock();
            o.write_all(s.as_bytes())?;
            o.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::channel_text;
    use super::*;

    fn stream(
        prompt: &str,
        generated: &str,
        hide_analysis: bool,
    ) -> (String, Option<String>, Vec<Message>) {
        let tok = Tokenizer::o200k_harmony().unwrap();
        let prompt = tok.encode(prompt, true).unwrap();
        let mut s = ChannelStream::new(&tok, &prompt, false, hide_analysis);
        for t in tok.encode(generated, true).unwrap() {
            s.push(t).unwrap();
        }
        s.finish().unwrap();
        let m = s.messages();
        (s.shown, s.error, m)
    }

    const PROMPT: &str = "<|start|>user<|message|>hi<|end|><|start|>assistant";
    const ANSWER: &str = "<|channel|>analysis<|message|>Think 🦀.<|end|>\
        <|start|>assistant<|channel|>final<|message|>Answer é!<|return|>";

    #[test]
    fn harmony_output_is_split_by_channel() {
        let (shown, err, m) = stream(PROMPT, ANSWER, false);
        assert_eq!(shown, "[analysis]\nThink 🦀.\n[final]\nAnswer é!\n");
        assert_eq!(err, None);
        assert_eq!(m.len(), 2);
        assert_eq!(channel_text(&m, "analysis").as_deref(), Some("Think 🦀."));
        assert_eq!(channel_text(&m, "final").as_deref(), Some("Answer é!"));
    }

    #[test]
    fn hide_analysis_shows_only_the_final_channel() {
        let (shown, err, m) = stream(PROMPT, ANSWER, true);
        assert_eq!(shown, "[final]\nAnswer é!\n");
        assert_eq!(err, None);
        // Hidden, not lost: --json still reports it.
        assert_eq!(channel_text(&m, "analysis").as_deref(), Some("Think 🦀."));
    }

    #[test]
    fn a_tool_call_is_labelled_with_its_recipient() {
        let gen = "<|channel|>commentary to=functions.get_weather <|constrain|>json\
                   <|message|>{\"city\":\"Oslo\"}<|call|>";
        let (shown, err, m) = stream(PROMPT, gen, false);
        assert_eq!(
            shown,
            "[commentary to=functions.get_weather]\n{\"city\":\"Oslo\"}\n"
        );
        assert_eq!(err, None);
        assert_eq!(m[0].recipient.as_deref(), Some("functions.get_weather"));
    }

    #[test]
    fn output_that_is_not_harmony_is_shown_raw() {
        // Ends inside the header: nothing was shown while parsing, so all of it comes out.
        let (shown, err, m) = stream(PROMPT, "Hello there", false);
        assert!(
            shown.ends_with("raw text follows]\nHello there\n"),
            "{shown:?}"
        );
        assert!(err.is_some());
        assert!(m.is_empty());
        // A header that never ends falls back as soon as it is too long, losing nothing.
        let long = "word ".repeat(2 * MAX_HEADER_TOKENS);
        let (shown, err, _) = stream(PROMPT, &long, false);
        assert!(
            shown.ends_with(&format!("raw text follows]\n{}\n", long)),
            "{shown:?}"
        );
        assert!(err.unwrap().contains("header tokens"));
        // After a finished message, anything but <|start|> is not Harmony either.
        let gen = "<|channel|>final<|message|>Done.<|end|>oops";
        let (shown, err, m) = stream(PROMPT, gen, false);
        assert!(shown.starts_with("[final]\nDone.\n"), "{shown:?}");
        assert!(shown.ends_with("raw text follows]\noops\n"), "{shown:?}");
        assert!(err.is_some());
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn a_raw_prompt_without_harmony_streams_plain_text() {
        let (shown, err, m) = stream("Once upon a time", " there was a 🦀", false);
        assert_eq!(shown, " there was a 🦀\n");
        assert_eq!(err, None);
        assert!(m.is_empty());
    }
}
