//! `osstune generate`: one prompt in, tokens streamed out, analysis and final channels apart.
//!
//! `--prompt` wraps the text as a Harmony conversation (system message with the reasoning
//! effort and the valid-channels line, the user message, then `<|start|>assistant`);
//! `--raw` feeds the text as-is, special tokens spelled out. The shared pieces (model
//! options, loading, the channel-aware stream printer) are `pub` here for `osstune chat`.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use osstune_harmony::{
    Message, ReasoningEffort, RenderOptions, Renderer, Role, SystemContent, Tokenizer,
};
use osstune_model::generate::generation::{generate, GenerateOptions, Generation, StopReason};
use osstune_model::generate::sampling::{Sampler, SamplingParams};
use osstune_model::GptOss;
use serde_json::{json, Value};
use std::path::PathBuf;

mod stream;
pub use stream::ChannelStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
    Metal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    F32,
    Bf16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReasoningArg {
    Low,
    Medium,
    High,
}

/// Options shared by `generate` and `chat`.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model directory (config.json + safetensors; HF or MLX layout).
    #[arg(long)]
    pub model: PathBuf,
    /// LoRA adapter directory (adapters.safetensors + adapter_config.json), applied unmerged.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// 0 = greedy. Default as the gpt-oss recipe recommends.
    #[arg(long, default_value_t = 0.95)]
    pub temperature: f64,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// Keep only the k most likely tokens (off by default).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Random seed (default: from the clock; the seed used is reported).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Most new tokens per answer.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
    /// Most tokens (prompt + answer) per generation; default and upper bound: the model's
    /// context (`max_position_embeddings`).
    #[arg(long)]
    pub max_context: Option<usize>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Compute dtype (default: f32 on cpu, bf16 on cuda/metal).
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// Reasoning effort written into the system message.
    #[arg(long, value_enum, default_value = "high")]
    pub reasoning: ReasoningArg,
    /// Do not print the analysis (chain-of-thought) channel.
    #[arg(long)]
    pub hide_analysis: bool,
    /// Print one JSON object (per answer) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Recompute the whole sequence at every step instead of using the KV cache (slow; for
    /// checking the cache, which must give the same tokens).
    #[arg(long)]
    pub no_kv_cache: bool,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "raw", "ids"])))]
pub struct Args {
    #[command(flatten)]
    pub common: ModelArgs,
    /// User message, wrapped as a Harmony conversation.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Text fed as-is (special tokens such as <|start|> are recognised).
    #[arg(long)]
    pub raw: Option<String>,
    /// Token ids fed as-is, comma-separated (for tools and reference comparisons).
    #[arg(long)]
    pub ids: Option<String>,
    #[command(flatten)]
    pub base: BaseCheck,
}

/// The adapter's base check (kept out of `ModelArgs`, which other commands build in code).
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct BaseCheck {
    /// Apply --adapter even though it was trained on a base with other weights (same
    /// architecture, different content digest).
    #[arg(long)]
    pub allow_other_base: bool,
}

pub fn run(args: Args) -> Result<()> {
    let s = Session::open_with(&args.common, args.base)?;
    let prompt = match (&args.prompt, &args.raw, &args.ids) {
        (Some(p), _, _) => s.completion_prompt(&[Message::user(p.as_str())])?,
        (None, Some(r), _) => s.tok.encode(r, true).context("tokenizing --raw")?,
        (None, None, Some(ids)) => parse_ids(ids)?,
        (None, None, None) => bail!("give --prompt TEXT, --raw TEXT or --ids N,N,…"),
    };
    let turn = s.run_turn(&prompt)?;
    if args.common.json {
        println!("{}", serde_json::to_string(&turn.json(&s))?);
    }
    Ok(())
}

fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u32>()
                .with_context(|| format!("--ids: {p:?} is not a token id"))
        })
        .collect()
}

/// A loaded model with its tokenizer and options.
pub struct Session {
    pub model: GptOss,
    pub tok: Tokenizer,
    pub args: ModelArgs,
    pub seed: u64,
    /// Tokens one generation may hold (prompt + answer), see `context_limit`.
    pub context: usize,
}

/// The context a generation may use: the model's, or less with `--max-context`.
fn context_limit(args: &ModelArgs) -> Result<usize> {
    let cfg = osstune_model::Config::from_model_dir(&args.model)?;
    let model_ctx = cfg.context_len();
    let ctx = match args.max_context {
        Some(0) => bail!("--max-context must be ≥ 1"),
        Some(n) if n > model_ctx => bail!(
            "--max-context {n} exceeds the model's context of {model_ctx} tokens \
             (max_position_embeddings in {}/config.json)",
            args.model.display()
        ),
        Some(n) => n,
        None => model_ctx,
    };
    if args.max_tokens >= ctx {
        bail!(
            "--max-tokens {} does not fit in the context of {ctx} tokens (prompt + answer); \
             lower --max-tokens",
            args.max_tokens
        );
    }
    Ok(ctx)
}

impl Session {
    pub fn open(args: &ModelArgs) -> Result<Self> {
        Self::open_with(args, BaseCheck::default())
    }

    /// As `open`, with `--allow-other-base` applied to the adapter.
    pub fn open_with(args: &ModelArgs, base: BaseCheck) -> Result<Self> {
        let dir = &args.model;
        if !dir.is_dir() {
            bail!("--model {}: not a directory", dir.display());
        }
        // Bad sampling options fail before the (possibly long) model load.
        let seed = args.seed.unwrap_or_else(clock_seed);
        Sampler::new(sampling(args, seed))?;
        let context = context_limit(args)?;
        let device = device(args.device)?;
        let dtype = match (args.dtype, args.device) {
            (Some(DtypeArg::F32), _) | (None, DeviceArg::Cpu) => DType::F32,
            (Some(DtypeArg::Bf16), _) | (None, _) => DType::BF16,
        };
        let mut model = GptOss::load(dir, &device, dtype)
            .with_context(|| format!("loading model {}", dir.display()))?;
        let tok = Tokenizer::from_model_dir(dir)
            .with_context(|| format!("loading the tokenizer for {}", dir.display()))?;
        if let Some(ad) = &args.adapter {
            if base.allow_other_base {
                model.content_digest = None; // skip the base content check
            }
            attach_adapter(&mut model, ad, &device)?;
        }
        Ok(Self {
            model,
            tok,
            args: args.clone(),
            seed,
            context,
        })
    }

    /// `messages` after the system message, rendered for the assistant to answer.
    pub fn completion_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let effort = match self.args.reasoning {
            ReasoningArg::Low => ReasoningEffort::Low,
            ReasoningArg::Medium => ReasoningEffort::Medium,
            ReasoningArg::High => ReasoningEffort::High,
        };
        let mut all = vec![Message::system(
            SystemContent::default().with_reasoning_effort(effort),
        )];
        all.extend_from_slice(messages);
        Renderer::new(&self.tok).render_for_completion(&all, RenderOptions::default())
    }

    /// Generates an answer to `prompt`, streaming it to stdout unless `--json`.
    pub fn run_turn(&self, prompt: &[u32]) -> Result<Turn> {
        let vocab = self.model.config().vocab_size;
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            bail!(
                "prompt token {bad} is outside the vocabulary of {} (size {vocab}): \
                 the model was not built for this tokenizer",
                self.args.model.display()
            );
        }
        // Before the prefill: a prompt that leaves no room for the answer would run for
        // minutes and then fail (or silently attend beyond the trained positions).
        if prompt.len() + self.args.max_tokens > self.context {
            bail!(
                "the prompt has {} tokens; with --max-tokens {} that exceeds the context of {} \
                 tokens (shorten the prompt or the conversation — /reset in chat —, lower \
                 --max-tokens, or raise --max-context up to the model's context)",
                prompt.len(),
                self.args.max_tokens,
                self.context
            );
        }
        let mut sampler = Sampler::new(sampling(&self.args, self.seed))?;
        let opts = GenerateOptions {
            max_tokens: self.args.max_tokens,
            use_cache: !self.args.no_kv_cache,
            ..GenerateOptions::default()
        };
        let mut view =
            ChannelStream::new(&self.tok, prompt, !self.args.json, self.args.hide_analysis);
        let g = generate(&self.model, prompt, &mut sampler, &opts, |t| view.push(t))?;
        view.finish()?;
        if !self.args.json {
            eprintln!("{}", stats_line(&g));
        }
        Ok(Turn {
            prompt: prompt.to_vec(),
            messages: view.messages(),
            harmony_error: view.error().map(str::to_string),
            generation: g,
        })
    }
}

/// One generated answer.
pub struct Turn {
    pub prompt: Vec<u32>,
    pub generation: Generation,
    /// Messages parsed from the generated tokens (those completed or cut by max tokens).
    pub messages: Vec<Message>,
    /// Why the output could not be parsed as Harmony, if it could not.
    pub harmony_error: Option<String>,
}

impl Turn {
    /// Text of the assistant's `final` channel, if it wrote one.
    pub fn final_text(&self) -> Option<String> {
        channel_text(&self.messages, "final")
    }

    pub fn json(&self, s: &Session) -> Value {
        let g = &self.generation;
        let messages: Vec<Value> = self
            .messages
            .iter()
            .map(|m| {
                json!({
                    "role": m.role.as_str(),
                    "channel": m.channel,
                    "recipient": m.recipient,
                    "content_type": m.content_type,
                    "content": m.text(),
                })
            })
            .collect();
        json!({
            "prompt_ids": self.prompt,
            "generated_ids": g.tokens,
            "text": s.tok.decode(&g.tokens).unwrap_or_default(),
            "messages": messages,
            "analysis": channel_text(&self.messages, "analysis"),
            "final": self.final_text(),
            "harmony_error": self.harmony_error,
            "stop": match g.stop {
                StopReason::Token(t) => s.tok.special_name(t).map_or_else(|| t.to_string(), str::to_string),
                StopReason::MaxTokens => "max_tokens".to_string(),
            },
            "seed": s.seed,
            "temperature": s.args.temperature,
            "prompt_tokens": g.prompt_tokens,
            "prefill_tokens_per_s": g.prefill_tokens_per_sec(),
            "decode_tokens": g.decode_tokens,
            "decode_tokens_per_s": g.decode_tokens_per_sec(),
        })
    }
}

fn channel_text(messages: &[Message], channel: &str) -> Option<String> {
    let parts: Vec<&str> = messages
        .iter()
        .filter(|m| m.role == Role::Assistant && m.channel.as_deref() == Some(channel))
        .map(|m| m.text())
        .collect();
    (!parts.is_empty()).then(|| parts.join("\n"))
}

pub fn stats_line(g: &Generation) -> String {
    let stop = match g.stop {
        StopReason::Token(t) => format!("stop token {t}"),
        StopReason::MaxTokens => "max tokens".to_string(),
    };
    format!(
        "[{} prompt tokens, prefill {:.1} tok/s | {} new tokens, decode {:.1} tok/s | {stop}]",
        g.prompt_tokens,
        g.prefill_tokens_per_sec(),
        g.tokens.len(),
        g.decode_tokens_per_sec(),
    )
}

fn sampling(args: &ModelArgs, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: Some(args.top_p),
        seed,
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub fn device(d: DeviceArg) -> Result<Device> {
    let name = match d {
        DeviceArg::Cpu => "cpu",
        DeviceArg::Cuda => "cuda",
        DeviceArg::Metal => "metal",
    };
    osstune_model::device::parse_device(name).context("--device")
}

/// Loads `dir` (design.md §2) and attaches it to `model` without merging.
fn attach_adapter(model: &mut GptOss, dir: &std::path::Path, device: &Device) -> Result<()> {
    if !dir.is_dir() {
        bail!("--adapter {}: not a directory", dir.display());
    }
    osstune_model::io::adapter::attach_dir(model, dir, device)
        .with_context(|| format!("loading adapter {}", dir.display()))?;
    Ok(())
}
