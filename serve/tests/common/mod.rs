//! Shared by the integration tests: one tiny checkpoint per test process, servers on
//! ephemeral loopback ports.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device};
use osstune_harmony::Tokenizer;
use osstune_model::io::tiny::{write_tiny, ExpertFormat, Preset};
use osstune_model::GptOss;
use osstune_serve::{client, ServeConfig};
use serde_json::{json, Value};

pub const MODEL: &str = "tiny";

pub fn model() -> &'static GptOss {
    static M: OnceLock<GptOss> = OnceLock::new();
    M.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("serve-tiny-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_tiny(&dir, Preset::Tiny, 5, ExpertFormat::Mxfp4).unwrap();
        let m = GptOss::load(&dir, &Device::Cpu, DType::F32).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        m
    })
}

pub fn tok() -> Tokenizer {
    Tokenizer::o200k_harmony().unwrap()
}

/// Test settings: no date line (prompts stay comparable with `generate`'s), small limits.
pub fn config() -> ServeConfig {
    let mut c = ServeConfig::new(MODEL);
    c.system.date = None;
    c.cache_bytes = 256 << 20;
    c
}

/// A server on 127.0.0.1 with an ephemeral port; the model's weights are shared, not copied.
pub fn start(cfg: ServeConfig) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    osstune_serve::spawn(model().clone(), tok(), cfg, l)
        .unwrap()
        .addr
}

pub fn chat(addr: SocketAddr, body: &Value) -> (u16, Value) {
    let r = client::post_json(addr, "/v1/chat/completions", &[], body).unwrap();
    let status = r.status;
    (status, r.json().unwrap())
}

/// Streams a request; returns every `data:` payload parsed as JSON ([DONE] excluded) and
/// whether [DONE] came.
pub fn stream(addr: SocketAddr, body: &Value) -> (Vec<Value>, bool) {
    let r = client::post_json(addr, "/v1/chat/completions", &[], body).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let mut ev = r.events();
    let mut out = Vec::new();
    while let Some(d) = ev.next_data().unwrap() {
        if d == "[DONE]" {
            return (out, true);
        }
        out.push(serde_json::from_str(&d).unwrap());
    }
    (out, false)
}

pub fn user(text: &str) -> Value {
    json!({ "role": "user", "content": text })
}

pub fn health(addr: SocketAddr) -> Value {
    client::request(addr, "GET", "/health", &[], None)
        .unwrap()
        .json()
        .unwrap()
}
