//! `osstune bench serve`: time to first token and tokens/s of `osstune serve` for 1, 4 and 8
//! concurrent clients, with and without the prefix cache, on a multi-turn agent conversation.
//!
//! The server runs in-process on an ephemeral loopback port and is driven over real HTTP
//! (streaming). Each client plays an agent session: a system prompt and the opencode tool
//! declarations, a user task, then turns that each add the assistant's tool call and a tool
//! result (~1 KB of file text) and ask again, so every request resends the whole, growing
//! conversation as agents do. Decoding is greedy, so both cache settings do the same work.
//! Requests force a `read` call (`tool_choice`): its header is part of the prompt, so every
//! generated token streams at once as argument text, and time to first token is measured as
//! a client sees it even on a random checkpoint that never writes a Harmony header itself.
//! Without `--model` a `tiny`-preset checkpoint (real o200k_harmony vocabulary) is written
//! to a temporary directory.

use anyhow::{bail, Context, Result};
use candle_core::DType;
use osstune_data::session::Format;
use osstune_data::tools::builtin;
use osstune_harmony::Tokenizer;
use osstune_model::io::tiny::{write_tiny, ExpertFormat, Preset};
use osstune_model::GptOss;
use osstune_serve::{client, ServeConfig};
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model directory (default: a fresh tiny-preset checkpoint).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Concurrent client counts to measure, comma-separated.
    #[arg(long, default_value = "1,4,8", value_delimiter = ',')]
    pub clients: Vec<usize>,
    /// Requests per client (agent turns).
    #[arg(long, default_value_t = 4)]
    pub turns: usize,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One request's timings.
struct Sample {
    ttft: f64,
    total: f64,
    tokens: usize,
    prompt: usize,
    cached: usize,
}

fn tools() -> Value {
    ["bash", "read", "edit", "write", "glob", "grep"]
        .iter()
        .filter_map(|n| builtin(Format::Opencode, n).map(|(d, p)| (n, d, p)))
        .map(|(n, d, p)| json!({ "type": "function", "function": { "name": n, "description": d, "parameters": p } }))
        .collect()
}

fn file_text(client: usize, turn: usize) -> String {
    (0..30)
        .map(|l| {
            format!(
                "{:>4}  fn step_{client}_{turn}_{l}(x: u32) -> u32 {{ x.wrapping_mul({l}) }}\n",
                l + 1
            )
        })
        .collect()
}

/// Streams one request; returns its timings.
fn timed(addr: SocketAddr, body: &Value) -> Result<Sample> {
    let start = Instant::now();
    let r = client::post_json(addr, "/v1/chat/completions", &[], body)?;
    if r.status != 200 {
        let status = r.status;
        bail!("server answered {status}: {}", r.text()?);
    }
    let mut ev = r.events();
    let mut ttft = None;
    let mut usage = Value::Null;
    while let Some(d) = ev.next_data()? {
        if d == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&d)?;
        let delta = &v["choices"][0]["delta"];
        // The first generated text: content, reasoning or call arguments (the forced call's
        // name comes from the prompt, not the model).
        let args = &delta["tool_calls"][0]["function"]["arguments"];
        let has_output = ["content", "reasoning_content"]
            .iter()
            .any(|k| delta[k].as_str().is_some_and(|s| !s.is_empty()))
            || args.as_str().is_some_and(|s| !s.is_empty());
        if has_output && ttft.is_none() {
            ttft = Some(start.elapsed().as_secs_f64());
        }
        if v.get("usage").is_some() {
            usage = v["usage"].clone();
        }
    }
    let total = start.elapsed().as_secs_f64();
    let n = |v: &Value| v.as_u64().unwrap_or(0) as usize;
    Ok(Sample {
        ttft: ttft.unwrap_or(total),
        total,
        tokens: n(&usage["completion_tokens"]),
        prompt: n(&usage["prompt_tokens"]),
        cached: n(&usage["prompt_tokens_details"]["cached_tokens"]),
    })
}

/// One client's agent session.
fn session(addr: SocketAddr, id: usize, turns: usize, max_tokens: usize) -> Result<Vec<Sample>> {
    let mut messages = vec![
        json!({ "role": "system", "content": "You are a coding agent working in `/work/app`. Use the tools to inspect and change the project. Keep answers short." }),
        json!({ "role": "user", "content": format!("Task {id}: find where step functions are defined and make them saturating.") }),
    ];
    let mut out = Vec::new();
    for turn in 0..turns {
        let body = json!({ "messages": messages, "tools": tools(), "stream": true,
            "stream_options": { "include_usage": true }, "temperature": 0, "max_tokens": max_tokens,
            "tool_choice": { "type": "function", "function": { "name": "read" } } });
        out.push(timed(addr, &body)?);
        let call = format!("call_{id}_{turn}");
        messages.push(json!({ "role": "assistant", "content": null, "tool_calls": [{ "id": call, "type": "function",
            "function": { "name": "read", "arguments": format!("{{\"filePath\":\"/work/app/src/step_{turn}.rs\"}}") } }] }));
        messages
            .push(json!({ "role": "tool", "tool_call_id": call, "content": file_text(id, turn) }));
    }
    Ok(out)
}

struct Row {
    cache: bool,
    clients: usize,
    ttft_mean: f64,
    ttft_p90: f64,
    client_tok_s: f64,
    total_tok_s: f64,
    cached_share: f64,
    wall: f64,
}

fn measure(model: &GptOss, dir: &Path, clients: usize, cache: bool, args: &Args) -> Result<Row> {
    let mut cfg = ServeConfig::new("bench");
    cfg.max_concurrent = clients;
    cfg.cache_bytes = if cache { 1 << 30 } else { 0 };
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    let tok = Tokenizer::from_model_dir(dir)?;
    let addr = osstune_serve::spawn(model.clone(), tok, cfg, listener)?.addr;
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (turns, max_tokens) = (args.turns, args.max_tokens);
            std::thread::spawn(move || session(addr, c, turns, max_tokens))
        })
        .collect();
    let mut samples = Vec::new();
    for h in handles {
        samples.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??,
        );
    }
    let wall = start.elapsed().as_secs_f64();
    let mut ttfts: Vec<f64> = samples.iter().map(|s| s.ttft).collect();
    ttfts.sort_by(f64::total_cmp);
    let tokens: usize = samples.iter().map(|s| s.tokens).sum();
    let decode: f64 = samples.iter().map(|s| (s.total - s.ttft).max(1e-9)).sum();
    let decode_tokens: usize = samples.iter().map(|s| s.tokens.saturating_sub(1)).sum();
    let prompt: usize = samples.iter().map(|s| s.prompt).sum();
    let cached: usize = samples.iter().map(|s| s.cached).sum();
    Ok(Row {
        cache,
        clients,
        ttft_mean: ttfts.iter().sum::<f64>() / ttfts.len() as f64,
        ttft_p90: ttfts[(ttfts.len() * 9 / 10).min(ttfts.len() - 1)],
        client_tok_s: decode_tokens as f64 / decode,
        total_tok_s: tokens as f64 / wall,
        cached_share: cached as f64 / prompt.max(1) as f64,
        wall,
    })
}

pub fn run(args: Args) -> Result<()> {
    if args.clients.is_empty()
        || args.clients.contains(&0)
        || args.turns == 0
        || args.max_tokens == 0
    {
        bail!("--clients must list counts >= 1, and --turns and --max-tokens must be >= 1");
    }
    let mut _tmp = None;
    let dir = match &args.model {
        Some(d) => d.clone(),
        None => {
            let d =
                std::env::temp_dir().join(format!("osstune-bench-serve-{}", std::process::id()));
            write_tiny(&d, Preset::Tiny, 0, ExpertFormat::Mxfp4)
                .context("writing the tiny checkpoint")?;
            _tmp = Some(TempDir(d.clone()));
            d
        }
    };
    let model = GptOss::load(&dir, &candle_core::Device::Cpu, DType::F32)
        .with_context(|| format!("loading {}", dir.display()))?;
    let mut rows = Vec::new();
    for cache in [false, true] {
        for &c in &args.clients {
            let r = measure(&model, &dir, c, cache, &args)?;
            if !args.json {
                println!(
                    "cache {:<3} clients {:>2}: TTFT mean {:>7.1} ms (p90 {:>7.1}) | per-client decode {:>6.1} tok/s | all clients {:>6.1} tok/s | cached {:>4.1}% of prompt tokens | {:.1} s",
                    if r.cache { "on" } else { "off" },
                    r.clients,
                    r.ttft_mean * 1e3,
                    r.ttft_p90 * 1e3,
                    r.client_tok_s,
                    r.total_tok_s,
                    r.cached_share * 100.0,
                    r.wall
                );
            }
            rows.push(r);
        }
    }
    if args.json {
        let v: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({ "cache": r.cache, "clients": r.clients, "ttft_mean_ms": r.ttft_mean * 1e3,
                "ttft_p90_ms": r.ttft_p90 * 1e3, "client_decode_tok_s": r.client_tok_s,
                "total_tok_s": r.total_tok_s, "cached_share": r.cached_share, "wall_s": r.wall })
            })
            .collect();
        println!(
            "{}",
            json!({ "turns": args.turns, "max_tokens": args.max_tokens, "rows": v })
        );
    }
    Ok(())
}
