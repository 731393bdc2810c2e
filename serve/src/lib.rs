//! osstune-serve: an OpenAI-compatible chat-completions server for gpt-oss checkpoints
//! (`osstune serve`), so a fine-tuned model runs inside the coding agent it learnt from.
//!
//! - [`request`]: request bodies → checked requests, errors naming the field;
//! - [`render`]: OpenAI messages → Harmony tokens, as the data converter renders samples;
//! - [`engine`]: the model worker (round-robin scheduling, cancellation);
//! - [`prefix_cache`]: KV caches of recent conversations, reused by common prefix;
//! - [`output`]: generated tokens → content / reasoning / tool-call deltas;
//! - [`http`]: the axum routes; [`client`]: a minimal HTTP client for tests and benches.

pub mod client;
pub mod engine;
pub mod error;
pub mod http;
pub mod output;
pub mod prefix_cache;
pub mod render;
pub mod request;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use osstune_harmony::{ReasoningEffort, Tokenizer};
use osstune_model::GptOss;

pub use engine::Stats;
pub use render::SystemDefaults;

/// Server settings (the `osstune serve` flags).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The id `/v1/models` lists and requests may name.
    pub model_name: String,
    /// Every route but `/health` needs `Authorization: Bearer KEY` when set.
    pub api_key: Option<String>,
    /// Requests generating at once.
    pub max_concurrent: usize,
    /// Requests waiting for a slot; beyond that, 429.
    pub max_queue: usize,
    pub retry_after_secs: u64,
    /// Prefix-cache budget (0 = off).
    pub cache_bytes: usize,
    pub max_body_bytes: usize,
    /// Answer budget when a request sets none.
    pub default_max_tokens: usize,
    pub system: SystemDefaults,
}

impl ServeConfig {
    pub fn new(model_name: impl Into<String>) -> Self {
        Self {
            model_name: model_name.into(),
            api_key: None,
            max_concurrent: 4,
            max_queue: 16,
            retry_after_secs: 1,
            cache_bytes: 2 << 30,
            max_body_bytes: 32 << 20,
            default_max_tokens: 4096,
            system: SystemDefaults {
                date: today(),
                reasoning_effort: ReasoningEffort::High,
            },
        }
    }
}

/// Today's UTC date, `YYYY-MM-DD` (the converter writes each session's date the same way).
pub fn today() -> Option<String> {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis() as i64;
    osstune_data::session::date_from_unix_ms(ms)
}

/// A server running on a background thread.
pub struct Running {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
}

fn state(model: GptOss, tok: Tokenizer, cfg: ServeConfig) -> Result<Arc<http::AppState>> {
    let context_len = model.config().context_len();
    let tok = Arc::new(tok);
    let engine = engine::start(model, tok.clone(), cfg.max_concurrent, cfg.cache_bytes)?;
    Ok(Arc::new(http::AppState::new(engine, tok, cfg, context_len)))
}

async fn serve_on(listener: std::net::TcpListener, app: axum::Router) -> Result<()> {
    listener.set_nonblocking(true)?;
    let l = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(l, app).await.context("HTTP server")
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the async runtime")
}

/// Serves on `listener` until the process ends.
pub fn run(
    model: GptOss,
    tok: Tokenizer,
    cfg: ServeConfig,
    listener: std::net::TcpListener,
) -> Result<()> {
    let app = http::router(state(model, tok, cfg)?);
    runtime()?.block_on(serve_on(listener, app))
}

/// Starts serving on `listener` in a background thread (tests, benches).
pub fn spawn(
    model: GptOss,
    tok: Tokenizer,
    cfg: ServeConfig,
    listener: std::net::TcpListener,
) -> Result<Running> {
    let addr = listener.local_addr()?;
    let st = state(model, tok, cfg)?;
    let stats = st.engine.stats.clone();
    let app = http::router(st);
    let rt = runtime()?;
    std::thread::Builder::new()
        .name("osstune-http".into())
        .spawn(move || {
            if let Err(e) = rt.block_on(serve_on(listener, app)) {
                eprintln!("error: {e:#}");
            }
        })
        .context("starting the HTTP thread")?;
    Ok(Running { addr, stats })
}
