//! Routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`.
//!
//! The async side only checks, renders and queues requests and turns worker events into
//! responses (JSON, or server-sent events as OpenAI streams them:
//! https://platform.openai.com/docs/api-reference/chat-streaming). Compute happens on the
//! model worker thread (engine.rs).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use osstune_harmony::Tokenizer;
use osstune_model::generate::sampling::SamplingParams;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::engine::{Done, EngineHandle, Event, Job, Permit};
use crate::error::ApiError;
use crate::output::{Answer, Delta};
use crate::request::{self, ChatRequest, ToolChoice};
use crate::{render, ServeConfig};

pub struct AppState {
    pub engine: EngineHandle,
    pub tok: Arc<Tokenizer>,
    pub cfg: ServeConfig,
    /// Longest sequence (prompt + answer) the model takes.
    pub context_len: usize,
    in_flight: Arc<AtomicUsize>,
    counter: AtomicU64,
}

impl AppState {
    pub fn new(
        engine: EngineHandle,
        tok: Arc<Tokenizer>,
        cfg: ServeConfig,
        context_len: usize,
    ) -> Self {
        Self {
            engine,
            tok,
            cfg,
            context_len,
            in_flight: Arc::new(AtomicUsize::new(0)),
            counter: AtomicU64::new(0),
        }
    }

    /// A fresh id (request ids, call ids, default seeds).
    fn unique(&self) -> u64 {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        // SplitMix64 finaliser: spreads the bits of time + counter.
        let mut z = t.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::with_status(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such route",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::with_status(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method not allowed on this route",
    )
}

/// `Authorization: Bearer KEY`, compared in time independent of where it differs.
fn check_auth(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &st.cfg.api_key else {
        return Ok(());
    };
    let want = format!("Bearer {key}");
    let got = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let same = got.len() == want.len()
        && got
            .iter()
            .zip(want.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

fn json_response(v: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let s = &st.engine.stats;
    let n = |a: &AtomicUsize| a.load(Ordering::SeqCst);
    json_response(json!({
        "status": "ok",
        "active": n(&s.active),
        "queued": n(&s.queued),
        "completed": n(&s.completed),
        "cancelled": n(&s.cancelled),
        "failed": n(&s.failed),
        "cached_tokens": n(&s.cached_tokens),
        "prefix_cache": { "entries": n(&s.cache_entries), "bytes": n(&s.cache_bytes) },
    }))
}

async fn models(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    check_auth(&st, &headers)?;
    Ok(json_response(json!({
        "object": "list",
        "data": [{ "id": st.cfg.model_name, "object": "model", "created": 0, "owned_by": "osstune" }],
    })))
}

async fn chat(State(st): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    check_auth(&st, req.headers())?;
    let limit = st.cfg.max_body_bytes;
    let body = axum::body::to_bytes(req.into_body(), limit).await.map_err(|_| {
        ApiError::with_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is over the limit of {limit} bytes (--max-body-mb) or could not be read"),
        )
    })?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let chat = request::parse(&value)?;
    if let Some(m) = chat.model.as_ref().filter(|m| **m != st.cfg.model_name) {
        return Err(ApiError {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..ApiError::with_status(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "model: {m:?} is not served here (this server serves {:?})",
                    st.cfg.model_name
                ),
            )
        });
    }
    let job = prepare(&st, &chat)?;
    let (job, rx) = job;
    st.engine
        .submit(job)
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    let meta = Meta {
        id: format!("chatcmpl-{:016x}", st.unique()),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: st.cfg.model_name.clone(),
        include_usage: chat.include_usage,
        return_token_ids: chat.return_token_ids,
    };
    if chat.stream {
        Ok(stream_response(meta, rx))
    } else {
        complete(meta, rx).await
    }
}

/// Renders and checks the request, takes a slot, and builds the worker job.
fn prepare(st: &AppState, chat: &ChatRequest) -> Result<(Job, UnboundedReceiver<Event>), ApiError> {
    let messages = render::harmony_messages(chat, &st.cfg.system);
    let forced = match &chat.tool_choice {
        ToolChoice::Function(name) => Some(name.as_str()),
        _ => None,
    };
    let (prompt, primed) = render::prompt_ids(&st.tok, &messages, forced)
        .map_err(|e| ApiError::field("messages", format!("cannot be rendered: {e:#}")))?;
    let ctx = st.context_len;
    if prompt.len() >= ctx {
        return Err(ApiError::field(
            "messages",
            format!(
                "the prompt is {} tokens; the model's context is {ctx}",
                prompt.len()
            ),
        ));
    }
    let room = ctx - prompt.len();
    let max_tokens = match chat.max_tokens {
        Some(n) if n > room => {
            return Err(ApiError::field(
                "max_tokens",
                format!(
                    "{n} new tokens after a {}-token prompt exceed the model's context of {ctx}",
                    prompt.len()
                ),
            ))
        }
        Some(n) => n,
        None => st.cfg.default_max_tokens.min(room),
    };
    let permit = Permit::try_take(&st.in_flight, st.cfg.max_concurrent + st.cfg.max_queue)
        .ok_or_else(|| ApiError::busy(st.cfg.retry_after_secs))?;
    let tools = match chat.tool_choice {
        ToolChoice::None => Vec::new(),
        _ => chat.tools.iter().map(|t| t.name.clone()).collect(),
    };
    let (tx, rx) = unbounded_channel();
    let job = Job {
        prompt,
        primed,
        sampling: SamplingParams {
            temperature: chat.temperature,
            top_k: None,
            top_p: Some(chat.top_p),
            seed: chat.seed.unwrap_or_else(|| st.unique()),
        },
        max_tokens,
        stop: chat.stop.clone(),
        tools,
        call_prefix: format!("call_{:012x}", st.unique() >> 16),
        events: tx,
        permit,
    };
    Ok((job, rx))
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    return_token_ids: bool,
}

fn usage(d: &Done) -> Value {
    let completion = d.completion_ids.len();
    json!({
        "prompt_tokens": d.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": d.prompt_tokens + completion,
        "prompt_tokens_details": { "cached_tokens": d.cached_tokens },
    })
}

fn message_json(a: &Answer) -> Value {
    let mut m = json!({ "role": "assistant" });
    m["content"] = if a.content.is_empty() && !a.tool_calls.is_empty() {
        Value::Null
    } else {
        Value::String(a.content.clone())
    };
    if !a.reasoning.is_empty() {
        m["reasoning_content"] = Value::String(a.reasoning.clone());
    }
    if !a.tool_calls.is_empty() {
        m["tool_calls"] = a
            .tool_calls
            .iter()
            .map(|c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } }))
            .collect();
    }
    m
}

async fn complete(meta: Meta, mut rx: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Started { .. } | Event::Delta(_) => {}
            Event::Failed(e) => return Err(ApiError::internal(format!("generation failed: {e}"))),
            Event::Done(d) => {
                let mut choice = json!({
                    "index": 0,
                    "message": message_json(&d.answer),
                    "finish_reason": d.answer.finish_reason,
                });
                let mut body = json!({
                    "id": meta.id,
                    "object": "chat.completion",
                    "created": meta.created,
                    "model": meta.model,
                    "usage": usage(&d),
                });
                if meta.return_token_ids {
                    choice["token_ids"] = json!(d.completion_ids);
                }
                body["choices"] = json!([choice]);
                return Ok(json_response(body));
            }
        }
    }
    Err(ApiError::internal("the model worker dropped the request"))
}

fn delta_json(d: &Delta) -> Value {
    match d {
        Delta::Content(t) => json!({ "content": t }),
        Delta::Reasoning(t) => json!({ "reasoning_content": t }),
        Delta::ToolCallStart { index, id, name } => json!({ "tool_calls": [{
            "index": index, "id": id, "type": "function",
            "function": { "name": name, "arguments": "" } }] }),
        Delta::ToolCallArguments { index, text } => json!({ "tool_calls": [{
            "index": index, "function": { "arguments": text } }] }),
    }
}

struct StreamState {
    rx: UnboundedReceiver<Event>,
    meta: Meta,
    out: VecDeque<Bytes>,
    done: bool,
}

impl StreamState {
    fn chunk(&mut self, delta: Value, finish: Value) {
        let c = json!({
            "id": self.meta.id,
            "object": "chat.completion.chunk",
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        });
        self.data(&c);
    }

    fn data(&mut self, v: &Value) {
        self.out.push_back(Bytes::from(format!("data: {v}\n\n")));
    }

    fn end(&mut self) {
        self.out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        self.done = true;
    }

    fn on(&mut self, ev: Option<Event>) {
        match ev {
            Some(Event::Started { .. }) => {}
            Some(Event::Delta(d)) => self.chunk(delta_json(&d), Value::Null),
            Some(Event::Done(d)) => {
                self.chunk(json!({}), json!(d.answer.finish_reason));
                if self.meta.include_usage || self.meta.return_token_ids {
                    let mut c = json!({
                        "id": self.meta.id,
                        "object": "chat.completion.chunk",
                        "created": self.meta.created,
                        "model": self.meta.model,
                        "choices": [],
                        "usage": usage(&d),
                    });
                    if self.meta.return_token_ids {
                        c["token_ids"] = json!(d.completion_ids);
                    }
                    self.data(&c);
                }
                self.end();
            }
            Some(Event::Failed(e)) => {
                let err = ApiError::internal(format!("generation failed: {e}"));
                self.data(&err.body());
                self.end();
            }
            None => {
                let err = ApiError::internal("the model worker dropped the request");
                self.data(&err.body());
                self.end();
            }
        }
    }
}

fn stream_response(meta: Meta, rx: UnboundedReceiver<Event>) -> Response {
    let mut st = StreamState {
        rx,
        meta,
        out: VecDeque::new(),
        done: false,
    };
    st.chunk(json!({ "role": "assistant", "content": "" }), Value::Null);
    let body = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(b) = st.out.pop_front() {
                return Some((Ok::<_, Infallible>(b), st));
            }
            if st.done {
                return None;
            }
            let ev = st.rx.recv().await;
            st.on(ev);
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
