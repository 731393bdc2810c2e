//! `osstune serve`: the model behind an OpenAI-compatible chat-completions API (serve/ crate),
//! so coding agents such as opencode can use it as a provider. Loading goes through the same
//! path as `osstune generate` (model, tokenizer, optional unmerged adapter).

use anyhow::{bail, Context, Result};
use osstune_harmony::ReasoningEffort;
use osstune_serve::ServeConfig;
use std::net::TcpListener;
use std::path::PathBuf;

use super::generate::{DeviceArg, DtypeArg, ModelArgs, ReasoningArg, Session};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model directory (config.json + safetensors; HF or MLX layout).
    #[arg(long)]
    pub model: PathBuf,
    /// LoRA adapter directory, applied unmerged.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Address to listen on (loopback by default; anything else should set --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 = any free port; the chosen one is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Requests generating at once (round-robin, one token each per pass).
    #[arg(long, default_value_t = 4)]
    pub max_concurrent: usize,
    /// Requests waiting for a slot; beyond that the server answers 429.
    #[arg(long, default_value_t = 16)]
    pub max_queue: usize,
    /// Prefix-cache budget in MiB (KV caches of recent conversations; 0 = off).
    #[arg(long, default_value_t = 2048)]
    pub cache_mb: usize,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 32)]
    pub max_body_mb: usize,
    /// Answer budget when a request sets no max_tokens.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: usize,
    /// Model id reported by /v1/models (default: the model directory's name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Reasoning effort when a request sets none (the converter's default is high).
    #[arg(long, value_enum, default_value = "high")]
    pub reasoning: ReasoningArg,
    /// `Current date:` of the system message: `today` (UTC), `none`, or YYYY-MM-DD.
    #[arg(long, default_value = "today")]
    pub date: String,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Compute dtype (default: f32 on cpu, bf16 on cuda/metal).
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
}

fn date(arg: &str) -> Result<Option<String>> {
    match arg {
        "today" => Ok(osstune_serve::today()),
        "none" => Ok(None),
        d if osstune_data::session::date_from_iso(d).as_deref() == Some(d) => {
            Ok(Some(d.to_string()))
        }
        d => bail!("--date {d:?}: expected today, none or YYYY-MM-DD"),
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.max_concurrent == 0 {
        bail!("--max-concurrent must be at least 1");
    }
    if args.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let date = date(&args.date)?;
    let name = match &args.served_model_name {
        Some(n) => n.clone(),
        None => args
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "osstune".to_string()),
    };
    // Bind before the (possibly long) model load, so a taken port fails at once.
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && args.api_key.is_none() {
        eprintln!("warning: listening on {addr} without --api-key: anyone who can reach it can use the model");
    }
    let session = Session::open(&ModelArgs {
        model: args.model.clone(),
        adapter: args.adapter.clone(),
        temperature: 1.0,
        top_p: 1.0,
        top_k: None,
        seed: Some(0),
        max_tokens: args.max_tokens,
        max_context: None,
        device: args.device,
        dtype: args.dtype,
        reasoning: args.reasoning,
        hide_analysis: false,
        json: true,
        no_kv_cache: false,
    })?;
    let mut cfg = ServeConfig::new(name.clone());
    cfg.api_key = args.api_key.clone();
    cfg.max_concurrent = args.max_concurrent;
    cfg.max_queue = args.max_queue;
    cfg.cache_bytes = args.cache_mb << 20;
    cfg.max_body_bytes = args.max_body_mb << 20;
    cfg.default_max_tokens = args.max_tokens;
    cfg.system.date = date;
    cfg.system.reasoning_effort = match args.reasoning {
        ReasoningArg::Low => ReasoningEffort::Low,
        ReasoningArg::Medium => ReasoningEffort::Medium,
        ReasoningArg::High => ReasoningEffort::High,
    };
    eprintln!("osstune serve: listening on http://{addr}/v1 (model {name:?})");
    osstune_serve::run(session.model, session.tok, cfg, listener)
}
