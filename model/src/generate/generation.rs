//! Prefill + decode over the model's KV cache.
//!
//! [`Decoder`] owns a cache and the tokens fed so far; [`generate`] runs the usual loop on it:
//! one forward over the whole prompt (prefill), then one forward per new token (decode), each
//! followed by a draw from the [`Sampler`] on the last position's logits, until a stop token
//! or the token budget. A per-token callback lets the CLI stream text as it comes.
//!
//! The cache can be switched off (`use_cache = false`): every step then re-runs the full
//! sequence from position 0. That is quadratic and only there to check the cache: both paths
//! must give the same logits and so the same greedy tokens.

use crate::arch::gpt_oss::{Cache, GptOss};
use crate::generate::sampling::{last_row, Sampler};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use std::time::Instant;

/// `<|return|>`: the assistant is done (docs/gpt-oss.md §5.1; EOS in config.json).
pub const RETURN: u32 = 200002;
/// `<|call|>`: the assistant handed a tool call to the caller.
pub const CALL: u32 = 200012;
/// openai-harmony's stop tokens for sampling assistant actions. `<|end|>` is not one: the
/// model ends its analysis message with it and goes on with the final one.
pub const ASSISTANT_STOP_TOKENS: [u32; 2] = [RETURN, CALL];
/// Prompt tokens per prefill forward (see [`Decoder::with_chunk`]).
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// Feeds tokens through the model, keeping the KV cache between calls.
pub struct Decoder<'a> {
    model: &'a GptOss,
    cache: Cache,
    tokens: Vec<u32>,
    use_cache: bool,
    chunk: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(model: &'a GptOss, use_cache: bool) -> Self {
        Self {
            model,
            cache: Cache::new(model.config()),
            tokens: Vec::new(),
            use_cache,
            chunk: DEFAULT_PREFILL_CHUNK,
        }
    }

    /// Feeds long inputs in chunks of at most `n` tokens (0: all at once). Chunking bounds
    /// the attention scores (`[Hq, n, keys]` instead of `[Hq, T, T]`) and the logits
    /// (`[n, V]`) of a long prompt; the result is the same.
    pub fn with_chunk(mut self, n: usize) -> Self {
        self.chunk = n;
        self
    }

    /// Tokens fed so far (the next one goes at this position).
    pub fn position(&self) -> usize {
        self.tokens.len()
    }

    /// Forgets everything fed so far.
    pub fn reset(&mut self) {
        self.cache.clear();
        self.tokens.clear();
    }

    /// Runs `ids` at the next positions and returns the logits of the last one, on the host.
    pub fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            bail!("nothing to feed the model: the token list is empty");
        }
        let dev = &self.model.device;
        let logits = if self.use_cache {
            let n = if self.chunk == 0 {
                ids.len()
            } else {
                self.chunk
            };
            let mut last = None;
            for part in ids.chunks(n) {
                let x = Tensor::new(part, dev)?.unsqueeze(0)?;
                let offset = self.tokens.len();
                self.tokens.extend_from_slice(part);
                last = Some(
                    self.model
                        .forward_last(&x, offset, &mut self.cache)
                        .with_context(|| {
                            format!("forward of {} tokens at position {offset}", part.len())
                        })?,
                );
            }
            last.context("nothing was fed")?
        } else {
            self.tokens.extend_from_slice(ids);
            let x = Tensor::new(self.tokens.as_slice(), dev)?.unsqueeze(0)?;
            let mut fresh = Cache::new(self.model.config());
            self.model
                .forward_last(&x, 0, &mut fresh)
                .with_context(|| format!("forward of {} tokens", self.tokens.len()))?
        };
        last_row(&logits)
    }
}

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most new tokens to produce (a stop token counts as one).
    pub max_tokens: usize,
    /// Generation ends right after any of these is produced.
    pub stop_tokens: Vec<u32>,
    pub use_cache: bool,
    /// Prompt tokens per prefill forward; 0 = the whole prompt at once.
    pub prefill_chunk: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 512,
            stop_tokens: ASSISTANT_STOP_TOKENS.to_vec(),
            use_cache: true,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// This stop token was produced (it is the last of `tokens`).
    Token(u32),
    /// `max_tokens` was reached.
    MaxTokens,
}

/// What [`generate`] produced, with its timings.
#[derive(Clone, Debug)]
pub struct Generation {
    /// New tokens, the stop token included when there was one.
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    /// Prompt forward + the first draw: the time to the first token.
    pub prefill_secs: f64,
    /// Forwards after the prefill (one per token after the first).
    pub decode_tokens: usize,
    pub decode_secs: f64,
}

impl Generation {
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_secs)
    }

    pub fn decode_tokens_per_sec(&self) -> f64 {
        rate(self.decode_tokens, self.decode_secs)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Generates from `prompt`, calling `on_token` with each new token as soon as it is drawn
/// (an error from the callback stops generation and is returned).
pub fn generate(
    model: &GptOss,
    prompt: &[u32],
    sampler: &mut Sampler,
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    if prompt.is_empty() {
        bail!("the prompt is empty: generation needs at least one token");
    }
    let mut dec = Decoder::new(model, opts.use_cache).with_chunk(opts.prefill_chunk);
    let mut out = Generation {
        tokens: Vec::new(),
        stop: StopReason::MaxTokens,
        prompt_tokens: prompt.len(),
        prefill_secs: 0.0,
        decode_tokens: 0,
        decode_secs: 0.0,
    };
    if opts.max_tokens == 0 {
        return Ok(out);
    }
    let start = Instant::now();
    let logits = dec.feed(prompt).context("prefill")?;
    let mut next = sampler.sample_row(&logits)?;
    out.prefill_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    loop {
        out.tokens.push(next);
        on_token(next)?;
        if opts.stop_tokens.contains(&next) {
            out.stop = StopReason::Token(next);
            break;
        }
        if out.tokens.len() >= opts.max_tokens {
            break;
        }
        let logits = dec
            .feed(&[next])
            .with_context(|| format!("decode step {}", out.tokens.len()))?;
        next = sampler.sample_row(&logits)?;
        out.decode_tokens += 1;
    }
    out.decode_secs = start.elapsed().as_secs_f64();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::sampling::SamplingParams;
    use crate::io::tiny::{write_tiny, ExpertFormat, Preset};
    use candle_core::{DType, Device};

    fn tiny_model(tag: &str) -> (std::path::PathBuf, GptOss) {
        let dir =
            std::env::temp_dir().join(format!("osstune-generation-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_tiny(&dir, Preset::Tiny, 3, ExpertFormat::Mxfp4).unwrap();
        let model = GptOss::load(&dir, &Device::Cpu, DType::F32).unwrap();
        (dir, model)
    }

    fn prompt(n: usize) -> Vec<u32> {
        // Ordinary-token ids spread over the vocabulary, deterministic.
        (0..n as u32).map(|i| (i * 7919 + 13) % 199_000).collect()
    }

    #[test]
    fn cached_decoding_matches_full_recompute_past_the_window() {
        let (dir, model) = tiny_model("cache");
        let window = model.config().window();
        let p = prompt(window - 5);
        let mut cached = Decoder::new(&model, true);
        let mut full = Decoder::new(&model, false);
        let (a, b) = (cached.feed(&p).unwrap(), full.feed(&p).unwrap());
        let mut worst = max_abs_diff(&a, &b);
        // Greedy steps well past the sliding window, both paths fed the same token.
        let mut next = crate::generate::sampling::argmax(&a).unwrap();
        for _ in 0..(window + 10) {
            let (a, b) = (cached.feed(&[next]).unwrap(), full.feed(&[next]).unwrap());
            worst = worst.max(max_abs_diff(&a, &b));
            next = crate::generate::sampling::argmax(&a).unwrap();
        }
        assert_eq!(cached.position(), p.len() + window + 10);
        assert!(
            worst < 1e-4,
            "cached vs recomputed logits differ by {worst}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn generate_stops_on_budget_and_stop_tokens_and_streams_each_token() {
        let (dir, model) = tiny_model("loop");
        let p = prompt(12);
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        let opts = GenerateOptions {
            max_tokens: 9,
            stop_tokens: vec![],
            use_cache: true,
            prefill_chunk: 0,
        };
        let mut streamed = Vec::new();
        let g = generate(&model, &p, &mut s, &opts, |t| {
            streamed.push(t);
            Ok(())
        })
        .unwrap();
        assert_eq!(g.tokens.len(), 9);
        assert_eq!(g.stop, StopReason::MaxTokens);
        assert_eq!(streamed, g.tokens);
        assert_eq!(g.prompt_tokens, 12);
        assert_eq!(g.decode_tokens, 8);

        // Declaring the 4th greedy token a stop token ends generation right after it.
        let stop = g.tokens[3];
        let first = g.tokens.iter().position(|&t| t == stop).unwrap();
        let opts = GenerateOptions {
            stop_tokens: vec![stop],
            ..opts
        };
        let h = generate(&model, &p, &mut s, &opts, |_| Ok(())).unwrap();
        assert_eq!(h.tokens, g.tokens[..=first]);
        assert_eq!(h.stop, StopReason::Token(stop));

        // Without the cache the greedy tokens are the same.
        let opts = GenerateOptions {
            stop_tokens: vec![],
            use_cache: false,
            ..opts
        };
        let n = generate(&model, &p, &mut s, &opts, |_| Ok(())).unwrap();
        assert_eq!(n.tokens, g.tokens);

        // A failing callback stops the loop with its error.
        let e = generate(&model, &p, &mut s, &opts, |_| bail!("reader went away")).unwrap_err();
        assert!(format!("{e:#}").contains("reader went away"));
        assert!(generate(&model, &[], &mut s, &opts, |_| Ok(())).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn seeded_generation_is_reproducible() {
        let (dir, model) = tiny_model("seed");
        let p = prompt(8);
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                top_k: None,
                top_p: Some(0.9),
                seed,
            })
            .unwrap();
            let opts = GenerateOptions {
                max_tokens: 16,
                stop_tokens: vec![],
                use_cache: true,
                prefill_chunk: 0,
            };
            generate(&model, &p, &mut s, &opts, |_| Ok(()))
                .unwrap()
                .tokens
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn chunked_prefill_matches_one_forward() {
        let (dir, model) = tiny_model("chunk");
        let window = model.config().window();
        let p = prompt(window + 20);
        let whole = Decoder::new(&model, true).with_chunk(0).feed(&p).unwrap();
        for chunk in [1, 7, window] {
            let mut d = Decoder::new(&model, true).with_chunk(chunk);
            let part = d.feed(&p).unwrap();
            assert_eq!(d.position(), p.len());
            let diff = max_abs_diff(&whole, &part);
            assert!(diff < 1e-4, "chunk {chunk}: logits differ by {diff}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }
}
