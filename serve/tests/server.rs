//! The server end to end on the tiny model: greedy equivalence with the generation library,
//! streaming vs non-streaming, prefix-cache hits, concurrency, cancellation, limits.

mod common;

use std::time::{Duration, Instant};

use common::*;
use osstune_harmony::{Message, ReasoningEffort, RenderOptions, Renderer, SystemContent};
use osstune_model::generate::generation::{generate, GenerateOptions};
use osstune_model::generate::sampling::{Sampler, SamplingParams};
use osstune_serve::client;
use serde_json::{json, Value};

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// Content, reasoning and tool-call arguments summed over streamed chunks.
fn concat_stream(chunks: &[Value]) -> (String, String, Vec<(String, String)>, String) {
    let (mut content, mut reasoning, mut calls, mut finish) = (
        String::new(),
        String::new(),
        Vec::<(String, String)>::new(),
        String::new(),
    );
    for c in chunks {
        let Some(choice) = c["choices"].get(0) else {
            continue;
        };
        let d = &choice["delta"];
        content.push_str(d["content"].as_str().unwrap_or(""));
        reasoning.push_str(d["reasoning_content"].as_str().unwrap_or(""));
        for tc in d["tool_calls"].as_array().into_iter().flatten() {
            let i = tc["index"].as_u64().unwrap() as usize;
            if i == calls.len() {
                calls.push((
                    tc["function"]["name"].as_str().unwrap().to_string(),
                    String::new(),
                ));
            }
            calls[i]
                .1
                .push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (content, reasoning, calls, finish)
}

#[test]
fn greedy_completion_equals_the_generation_library_and_streaming_agrees() {
    let addr = start(config());
    let body = json!({
        "model": MODEL,
        "messages": [user("Write a haiku about Rust.")],
        "temperature": 0,
        "max_tokens": 24,
        "reasoning_effort": "high",
        "return_token_ids": true,
    });
    let (status, r) = chat(addr, &body);
    assert_eq!(status, 200, "{r}");
    let got = ids(&r["choices"][0]["token_ids"]);

    // What `osstune generate --prompt … --temperature 0 --reasoning high` computes.
    let tok = tok();
    let prompt = Renderer::new(&tok)
        .render_for_completion(
            &[
                Message::system(
                    SystemContent::default().with_reasoning_effort(ReasoningEffort::High),
                ),
                Message::user("Write a haiku about Rust."),
            ],
            RenderOptions::default(),
        )
        .unwrap();
    let mut greedy = Sampler::new(SamplingParams::greedy()).unwrap();
    let opts = GenerateOptions {
        max_tokens: 24,
        ..GenerateOptions::default()
    };
    let want = generate(model(), &prompt, &mut greedy, &opts, |_| Ok(())).unwrap();
    assert_eq!(got, want.tokens);
    assert_eq!(r["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(r["usage"]["completion_tokens"], want.tokens.len());
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["model"], MODEL);

    // Streaming: the deltas add up to the same answer, and usage comes last when asked.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({ "include_usage": true });
    let (chunks, done) = stream(addr, &sbody);
    assert!(done, "no [DONE]");
    let (content, reasoning, calls, finish) = concat_stream(&chunks);
    let m = &r["choices"][0]["message"];
    assert_eq!(content, m["content"].as_str().unwrap_or(""));
    assert_eq!(reasoning, m["reasoning_content"].as_str().unwrap_or(""));
    assert_eq!(calls.len(), m["tool_calls"].as_array().map_or(0, Vec::len));
    assert_eq!(finish, r["choices"][0]["finish_reason"].as_str().unwrap());
    let last = chunks.last().unwrap();
    assert_eq!(last["usage"]["completion_tokens"], want.tokens.len());
    assert_eq!(ids(&last["token_ids"]), want.tokens);
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
}

#[test]
fn follow_up_turn_reuses_the_cached_prefix_and_matches_a_cold_run() {
    let mut cold_cfg = config();
    cold_cfg.cache_bytes = 0;
    let (warm, cold) = (start(config()), start(cold_cfg));
    let first = json!({
        "messages": [
            { "role": "system", "content": "You are a careful coding agent." },
            user("List the files."),
        ],
        "temperature": 0,
        "max_tokens": 40,
        "return_token_ids": true,
    });
    let (s, a) = chat(warm, &first);
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let first_prompt = a["usage"]["prompt_tokens"].as_u64().unwrap();

    // The agent's next request: the whole conversation again plus a new user message.
    let mut next = first.clone();
    let answer = a["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let msgs = next["messages"].as_array_mut().unwrap();
    msgs.push(json!({ "role": "assistant", "content": format!("Files: {answer}") }));
    msgs.push(user("Now open the first one."));
    let (s, w) = chat(warm, &next);
    assert_eq!(s, 200, "{w}");
    let (s, c) = chat(cold, &next);
    assert_eq!(s, 200, "{c}");
    // The whole first prompt (a checkpoint: the tiny model's sliding window of 32 is far
    // shorter) came from the cache, and the answer is token for token the cold one.
    assert_eq!(
        w["usage"]["prompt_tokens_details"]["cached_tokens"],
        first_prompt
    );
    assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        ids(&w["choices"][0]["token_ids"]),
        ids(&c["choices"][0]["token_ids"])
    );
    assert!(health(warm)["cached_tokens"].as_u64().unwrap() >= first_prompt);
}

#[test]
fn eight_concurrent_streams_all_complete() {
    let mut cfg = config();
    cfg.max_concurrent = 8;
    let addr = start(cfg);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let body = json!({
                    "messages": [user(&format!("Client {i}: say something."))],
                    "temperature": 0.8, "seed": i, "max_tokens": 12, "stream": true,
                });
                stream(addr, &body)
            })
        })
        .collect();
    for h in handles {
        let (chunks, done) = h.join().unwrap();
        assert!(done);
        let (_, _, _, finish) = concat_stream(&chunks);
        assert!(!finish.is_empty(), "no finish_reason");
    }
    // The worker books a request as completed after it has sent the last chunk, so a client
    // can see `[DONE]` a moment before the counters move: wait for them (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut h = health(addr);
    while (h["completed"] != 8 || h["active"] != 0) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        h = health(addr);
    }
    assert_eq!(h["completed"], 8, "{h}");
    assert_eq!(h["active"], 0, "{h}");
}

#[test]
fn disconnect_cancels_and_the_limit_answers_429() {
    let mut cfg = config();
    cfg.max_concurrent = 1;
    cfg.max_queue = 0;
    cfg.retry_after_secs = 3;
    let addr = start(cfg);
    let long = json!({ "messages": [user("Go on forever.")], "max_tokens": 20000, "stream": true,
                       "temperature": 1.0, "seed": 1 });
    let r = client::post_json(addr, "/v1/chat/completions", &[], &long).unwrap();
    assert_eq!(r.status, 200);
    let mut events = r.events();
    events.next_data().unwrap().unwrap(); // the role chunk
    events.next_data().unwrap().unwrap(); // generation is under way

    // The only slot is taken: over the limit → 429 with Retry-After.
    let (s, e) = chat(addr, &json!({ "messages": [user("hi")], "max_tokens": 2 }));
    assert_eq!(s, 429, "{e}");
    assert_eq!(e["error"]["type"], "rate_limit_error");
    let r = client::post_json(
        addr,
        "/v1/chat/completions",
        &[],
        &json!({ "messages": [user("hi")] }),
    )
    .unwrap();
    assert_eq!(r.header("retry-after"), Some("3"));

    // Hanging up cancels the generation and frees the slot.
    drop(events);
    let t = Instant::now();
    loop {
        let h = health(addr);
        if h["cancelled"] == 1 && h["active"] == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "not cancelled: {h}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (s, ok) = chat(addr, &json!({ "messages": [user("hi")], "max_tokens": 2 }));
    assert_eq!(s, 200, "{ok}");
}

#[test]
fn api_key_guards_every_route_but_health() {
    let mut cfg = config();
    cfg.api_key = Some("s3cret".into());
    let addr = start(cfg);
    let get = |path: &str, h: &[(&str, &str)]| client::request(addr, "GET", path, h, None).unwrap();
    assert_eq!(get("/health", &[]).status, 200);
    let r = get("/v1/models", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(r.json().unwrap()["error"]["code"], "invalid_api_key");
    assert_eq!(
        get("/v1/models", &[("Authorization", "Bearer nope")]).status,
        401
    );
    let r = get("/v1/models", &[("Authorization", "Bearer s3cret")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap()["data"][0]["id"], MODEL);
    let body = json!({ "messages": [user("hi")], "max_tokens": 2 });
    let (s, _) = chat(addr, &body);
    assert_eq!(s, 401);
    let r = client::post_json(
        addr,
        "/v1/chat/completions",
        &[("Authorization", "Bearer s3cret")],
        &body,
    )
    .unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn bad_requests_get_openai_errors_naming_the_field_and_the_server_survives() {
    let mut cfg = config();
    cfg.max_body_bytes = 64 << 10;
    let addr = start(cfg);
    let raw = |body: &[u8]| {
        let r = client::request(addr, "POST", "/v1/chat/completions", &[], Some(body)).unwrap();
        (r.status, r.json().unwrap())
    };
    let (s, e) = raw(b"{\"messages\": [");
    assert_eq!(s, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{e}"
    );
    assert_eq!(e["error"]["type"], "invalid_request_error");

    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({}), 400, "messages"),
        (json!({ "messages": "hi" }), 400, "messages"),
        (json!({ "messages": [] }), 400, "messages"),
        (
            json!({ "messages": [{ "role": "wizard", "content": "x" }] }),
            400,
            "messages[0].role",
        ),
        (
            json!({ "messages": [{ "role": "user", "content": 5 }] }),
            400,
            "messages[0].content",
        ),
        (
            json!({ "messages": [user("x")], "temperature": "hot" }),
            400,
            "temperature",
        ),
        (json!({ "messages": [user("x")], "top_p": 0 }), 400, "top_p"),
        (
            json!({ "messages": [user("x")], "max_tokens": -1 }),
            400,
            "max_tokens",
        ),
        (
            json!({ "messages": [user("x")], "max_tokens": 1_000_000_000u64 }),
            400,
            "max_tokens",
        ),
        (
            json!({ "messages": [user("x")], "stream": "yes" }),
            400,
            "stream",
        ),
        (json!({ "messages": [user("x")], "n": 3 }), 400, "n"),
        (
            json!({ "messages": [user("x")], "reasoning_effort": "extreme" }),
            400,
            "reasoning_effort",
        ),
        (
            json!({ "messages": [user("x"), { "role": "tool", "tool_call_id": "call_9", "content": "out" }] }),
            400,
            "messages[1].tool_call_id",
        ),
        (
            json!({ "messages": [user("x")], "tools": [{ "type": "function", "function": {} }] }),
            400,
            "tools[0].function.name",
        ),
        (
            json!({ "messages": [user("x")], "tool_choice": { "type": "function", "function": { "name": "ghost" } } }),
            400,
            "tool_choice.function.name",
        ),
        (
            json!({ "messages": [user("x")], "model": "gpt-5" }),
            404,
            "model",
        ),
    ];
    for (body, status, param) in cases {
        let (s, e) = chat(addr, &body);
        assert_eq!(s, status, "{body} → {e}");
        assert_eq!(e["error"]["param"], param, "{body} → {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().starts_with(param) || status == 404,
            "{e}"
        );
    }
    let big = json!({ "messages": [user(&"x".repeat(100 << 10))] });
    let (s, e) = chat(addr, &big);
    assert_eq!(s, 413, "{e}");
    let r = client::request(addr, "GET", "/nowhere", &[], None).unwrap();
    assert_eq!(r.status, 404);
    assert!(r.json().unwrap()["error"]["message"].is_string());
    let r = client::request(addr, "GET", "/v1/chat/completions", &[], None).unwrap();
    assert_eq!(r.status, 405);

    // Still serving.
    let (s, ok) = chat(
        addr,
        &json!({ "messages": [user("hi")], "max_tokens": 3, "model": MODEL }),
    );
    assert_eq!(s, 200, "{ok}");
    assert_eq!(ok["usage"]["completion_tokens"], 3);
}

#[test]
fn forced_tool_choice_opens_the_call_and_tool_choice_none_hides_tools() {
    let addr = start(config());
    let tools = json!([{ "type": "function", "function": { "name": "read",
        "description": "Read a file.", "parameters": { "type": "object",
        "properties": { "filePath": { "type": "string" } }, "required": ["filePath"] } } }]);
    let body = json!({ "messages": [user("Open main.rs")], "tools": tools, "max_tokens": 6,
        "tool_choice": { "type": "function", "function": { "name": "read" } }, "temperature": 0 });
    let (s, r) = chat(addr, &body);
    assert_eq!(s, 200, "{r}");
    // The random model writes no valid JSON in 6 tokens: the forced call is cut by the budget
    // and comes back as text naming the function.
    let m = &r["choices"][0]["message"];
    assert_eq!(r["choices"][0]["finish_reason"], "length", "{r}");
    assert!(
        m["content"].as_str().unwrap().contains("functions.read"),
        "{r}"
    );
    let mut none = body.clone();
    none["tool_choice"] = json!("none");
    let (s, n) = chat(addr, &none);
    assert_eq!(s, 200, "{n}");
    assert!(n["usage"]["prompt_tokens"].as_u64() < r["usage"]["prompt_tokens"].as_u64());
}
