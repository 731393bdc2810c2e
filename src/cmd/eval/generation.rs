//! One generated assistant turn for eval: `generate`'s sampler, decoder and Harmony stream
//! parser, with a progress bar instead of streamed text.

use super::super::generate::{ChannelStream, Session};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use osstune_eval::grade::Response;
use osstune_harmony::tokenizer::{CALL, RETURN};
use osstune_harmony::{Message, Role};
use osstune_model::generate::generation::{generate, GenerateOptions, StopReason};
use osstune_model::generate::sampling::{Sampler, SamplingParams};

pub struct TurnOut {
    pub response: Response,
    pub messages: Vec<Message>,
    pub harmony_error: Option<String>,
    /// Ended with `<|return|>` or `<|call|>` (not cut by the budget).
    pub ends_cleanly: bool,
}

/// Generates from `prompt` with the session's sampling and `seed`; `label` names the
/// progress bar (hidden when stderr is not a terminal).
pub fn generate_turn(
    s: &Session,
    prompt: &[u32],
    max_tokens: usize,
    seed: u64,
    label: &str,
) -> Result<TurnOut> {
    let mut sampler = Sampler::new(SamplingParams {
        temperature: s.args.temperature,
        top_k: s.args.top_k,
        top_p: Some(s.args.top_p),
        seed,
    })?;
    let opts = GenerateOptions {
        max_tokens,
        use_cache: true,
        ..GenerateOptions::default()
    };
    let bar = ProgressBar::new(max_tokens as u64).with_message(label.to_string());
    bar.set_style(
        ProgressStyle::with_template("      {msg} [{bar:30}] {pos}/{len} tokens {per_sec}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let mut view = ChannelStream::new(&s.tok, prompt, false, false);
    let g = generate(&s.model, prompt, &mut sampler, &opts, |t| {
        bar.inc(1);
        view.push(t)
    })?;
    bar.finish_and_clear();
    view.finish()?;
    let messages = view.messages();
    let channel = |name: &str| {
        let parts: Vec<&str> = messages
            .iter()
            .filter(|m| m.role == Role::Assistant && m.channel.as_deref() == Some(name))
            .map(Message::text)
            .collect();
        (!parts.is_empty()).then(|| parts.join("\n"))
    };
    let (stop, ends_cleanly) = match g.stop {
        StopReason::Token(t) => (
            s.tok
                .special_name(t)
                .map_or_else(|| t.to_string(), str::to_string),
            t == RETURN || t == CALL,
        ),
        StopReason::MaxTokens => ("max_tokens".to_string(), false),
    };
    let response = Response {
        final_text: channel("final"),
        analysis: channel("analysis"),
        text: s.tok.decode(&g.tokens).unwrap_or_default(),
        tokens: g.tokens.len(),
        seconds: g.prefill_secs + g.decode_secs,
        stop,
    };
    Ok(TurnOut {
        response,
        messages,
        harmony_error: view.error().map(str::to_string),
        ends_cleanly,
    })
}
