//! End-to-end tests of `osstune generate` / `osstune chat`, driving the built binary on a
//! seeded `init-tiny` checkpoint and on the transformers golden checkpoints of
//! `fixtures/model/` (written by `scripts/gen_model_fixtures.py`).

use osstune_harmony::Tokenizer;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

fn osstune() -> Command {
    Command::new(env!("CARGO_BIN_EXE_osstune"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("generate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// One tiny checkpoint (real o200k_harmony vocabulary) shared by the tests of this process.
fn tiny() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = scratch("tiny");
        let out = osstune()
            .args(["init-tiny", "--preset", "tiny", "--seed", "11", "--out"])
            .arg(&d)
            .output()
            .unwrap();
        assert!(out.status.success(), "init-tiny: {}", stderr(&out));
        d
    })
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn run_ok(args: &[&str]) -> Output {
    let o = osstune().args(args).output().unwrap();
    assert!(
        o.status.success(),
        "osstune {args:?} failed: {}",
        stderr(&o)
    );
    o
}

fn generate_json(model: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["generate", "--json", "--model", model.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = run_ok(&args);
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

fn ids(v: &Value, key: &str) -> Vec<u32> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn greedy_json_is_deterministic_and_well_formed() {
    let args = [
        "--prompt",
        "What is 2+2?",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
    ];
    let a = generate_json(tiny(), &args);
    let b = generate_json(tiny(), &args);
    assert_eq!(ids(&a, "generated_ids"), ids(&b, "generated_ids"));

    // The prompt is the Harmony conversation the issue asks for.
    let tok = Tokenizer::o200k_harmony().unwrap();
    let prompt = tok.decode(&ids(&a, "prompt_ids")).unwrap();
    assert!(prompt.starts_with("<|start|>system<|message|>"), "{prompt}");
    assert!(prompt.contains("\nReasoning: high\n"), "{prompt}");
    assert!(
        prompt.contains("# Valid channels: analysis, commentary, final. Channel must be included for every message."),
        "{prompt}"
    );
    assert!(
        prompt.ends_with("<|end|><|start|>user<|message|>What is 2+2?<|end|><|start|>assistant"),
        "{prompt}"
    );

    // Shape: 12 tokens unless a stop token came first, and text = decode(generated_ids).
    let gen = ids(&a, "generated_ids");
    let stopped = a["stop"].as_str().unwrap();
    if stopped == "max_tokens" {
        assert_eq!(gen.len(), 12);
    } else {
        assert!(["<|return|>", "<|call|>"].contains(&stopped), "{stopped}");
        assert!(gen.len() <= 12);
    }
    assert_eq!(a["text"].as_str().unwrap(), tok.decode(&gen).unwrap());
    assert!(a["messages"].is_array());
    for key in [
        "analysis",
        "final",
        "harmony_error",
        "seed",
        "prefill_tokens_per_s",
    ] {
        assert!(a.get(key).is_some(), "{key} missing in {a}");
    }
    assert_eq!(
        a["prompt_tokens"].as_u64().unwrap() as usize,
        ids(&a, "prompt_ids").len()
    );
}

#[test]
fn kv_cache_and_full_recompute_give_the_same_tokens() {
    // 40 prompt + 40 new tokens: well past the tiny preset's sliding window of 32.
    let raw = "The quick brown fox jumps over the lazy dog. ".repeat(4);
    let args = [
        "--raw",
        raw.as_str(),
        "--temperature",
        "0",
        "--max-tokens",
        "40",
    ];
    let cached = generate_json(tiny(), &args);
    let mut full_args = args.to_vec();
    full_args.push("--no-kv-cache");
    let full = generate_json(tiny(), &full_args);
    assert!(ids(&cached, "prompt_ids").len() > 32);
    assert_eq!(ids(&cached, "generated_ids"), ids(&full, "generated_ids"));
}

#[test]
fn raw_prompt_is_fed_as_is() {
    let raw = "<|start|>user<|message|>hi<|end|><|start|>assistant";
    let v = generate_json(
        tiny(),
        &["--raw", raw, "--temperature", "0", "--max-tokens", "3"],
    );
    let tok = Tokenizer::o200k_harmony().unwrap();
    assert_eq!(ids(&v, "prompt_ids"), tok.encode(raw, true).unwrap());
    let v = generate_json(
        tiny(),
        &["--ids", "1, 2,3", "--max-tokens", "2", "--seed", "1"],
    );
    assert_eq!(ids(&v, "prompt_ids"), vec![1, 2, 3]);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let run = |seed: &str| {
        let args = [
            "--prompt",
            "Tell me a story.",
            "--temperature",
            "1.0",
            "--top-p",
            "0.95",
        ];
        let mut args = args.to_vec();
        args.extend_from_slice(&["--top-k", "50", "--seed", seed, "--max-tokens", "16"]);
        let v = generate_json(tiny(), &args);
        assert_eq!(v["seed"].as_u64().unwrap().to_string(), seed);
        ids(&v, "generated_ids")
    };
    let a = run("7");
    assert_eq!(a, run("7"));
    assert_ne!(a, run("8"));
}

/// Greedy continuation equals transformers' `generate(do_sample=False)` on the golden
/// checkpoints (dense and MXFP4 experts), prompt and continuation from reference.safetensors.
#[test]
fn greedy_matches_the_transformers_reference() {
    for kind in ["dense", "mxfp4"] {
        let dir = root().join("fixtures/model").join(kind);
        let r = candle_core::safetensors::load(
            dir.join("reference.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let row = |k: &str| -> Vec<u32> {
            r[k].to_dtype(candle_core::DType::I64)
                .unwrap()
                .to_vec2::<i64>()
                .unwrap()[0]
                .iter()
                .map(|&x| x as u32)
                .collect()
        };
        let (prompt, want) = (row("prompt_ids"), row("greedy_ids"));
        let prompt: Vec<String> = prompt.iter().map(u32::to_string).collect();
        let n = want.len().to_string();
        let v = generate_json(
            &dir,
            &[
                "--ids",
                &prompt.join(","),
                "--temperature",
                "0",
                "--max-tokens",
                &n,
            ],
        );
        assert_eq!(ids(&v, "generated_ids"), want, "{kind}");
    }
}

#[test]
fn chat_keeps_history_and_resets() {
    let mut child = osstune()
        .args([
            "chat",
            "--json",
            "--temperature",
            "0",
            "--max-tokens",
            "4",
            "--model",
        ])
        .arg(tiny())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hello\nHow are you?\n/reset\nHello\n/exit\nnever read\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let turns: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        turns.len(),
        3,
        "one JSON line per message, nothing after /exit"
    );
    let p: Vec<Vec<u32>> = turns.iter().map(|t| ids(t, "prompt_ids")).collect();
    let tok = Tokenizer::o200k_harmony().unwrap();
    let second = tok.decode(&p[1]).unwrap();
    // Turn 2 carries turn 1's user message; the random model writes no final answer, so
    // no assistant message is kept (analysis never is).
    assert!(second.contains("<|start|>user<|message|>Hello<|end|><|start|>user<|message|>How are you?<|end|><|start|>assistant"), "{second}");
    assert!(
        !second.contains("<|start|>assistant<|channel|>"),
        "{second}"
    );
    // After /reset the same message gives the same prompt as the first turn.
    assert_eq!(p[2], p[0]);
    assert_eq!(
        ids(&turns[2], "generated_ids"),
        ids(&turns[0], "generated_ids")
    );
}

#[test]
fn streamed_text_output_ends_with_stats() {
    let o = run_ok(&[
        "generate",
        "--model",
        tiny().to_str().unwrap(),
        "--prompt",
        "Hi",
        "--temperature",
        "0",
        "--max-tokens",
        "5",
    ]);
    let err = stderr(&o);
    assert!(
        err.contains("5 new tokens") || err.contains("stop token"),
        "{err}"
    );
    assert!(err.contains("prefill") && err.contains("tok/s"), "{err}");
    assert!(!o.stdout.is_empty());
}

#[test]
fn bad_inputs_fail_cleanly() {
    let check = |args: &[&str], needle: &str| {
        let o = osstune().args(args).output().unwrap();
        let err = stderr(&o);
        assert_eq!(
            o.status.code(),
            Some(if err.contains("Usage") { 2 } else { 1 }),
            "{args:?}: {err}"
        );
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    };
    let t = tiny().to_str().unwrap();
    check(
        &["generate", "--model", "/nonexistent/model", "--prompt", "x"],
        "/nonexistent/model",
    );
    // A directory that is not a model.
    let empty = scratch("empty");
    std::fs::create_dir_all(&empty).unwrap();
    check(
        &[
            "generate",
            "--model",
            empty.to_str().unwrap(),
            "--prompt",
            "x",
        ],
        empty.to_str().unwrap(),
    );
    // A corrupt config.json.
    let bad = scratch("badconfig");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("config.json"), "{ not json").unwrap();
    check(
        &[
            "generate",
            "--model",
            bad.to_str().unwrap(),
            "--prompt",
            "x",
        ],
        "config.json",
    );
    check(
        &["generate", "--model", t, "--prompt", "x", "--top-p", "1.5"],
        "top-p",
    );
    check(
        &[
            "generate",
            "--model",
            t,
            "--prompt",
            "x",
            "--temperature=-1",
        ],
        "temperature",
    );
    check(&["generate", "--model", t, "--ids", "1,x"], "\"x\"");
    check(
        &["generate", "--model", t, "--ids", "999999999"],
        "outside the vocabulary",
    );
    check(
        &[
            "generate",
            "--model",
            t,
            "--prompt",
            "x",
            "--adapter",
            "/nonexistent/adapter",
        ],
        "/nonexistent/adapter",
    );
    check(&["generate", "--model", t], "Usage");
    if !cfg!(feature = "cuda") {
        check(
            &[
                "generate", "--model", t, "--prompt", "x", "--device", "cuda",
            ],
            "without CUDA",
        );
    }
}

/// Writes an adapter (design.md §2) on layer 0's o_proj with `lora_b = b_scale · pattern`.
fn write_adapter(dir: &Path, base: &Path, b_scale: f64, fingerprint: Option<&str>) {
    use candle_core::{DType, Device, Tensor};
    let cfg = osstune_model::Config::from_model_dir(base).unwrap();
    let (h, q) = (cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim);
    let r = 4usize;
    let dev = Device::Cpu;
    let pattern = |n: usize, shape: (usize, usize), f: f64| {
        Tensor::arange(0u32, n as u32, &dev)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .affine(0.37, 0.1)
            .unwrap()
            .sin()
            .unwrap()
            .affine(f, 0.0)
            .unwrap()
            .reshape(shape)
            .unwrap()
    };
    let name = "model.layers.0.self_attn.o_proj";
    let tensors = std::collections::HashMap::from([
        (
            format!("{name}.lora_a"),
            pattern(r * q, (r, q), 1.0 / (q as f64).sqrt()),
        ),
        (format!("{name}.lora_b"), pattern(h * r, (h, r), b_scale)),
    ]);
    std::fs::create_dir_all(dir).unwrap();
    candle_core::safetensors::save(&tensors, dir.join("adapters.safetensors")).unwrap();
    let fp = fingerprint.map_or_else(|| cfg.fingerprint(), str::to_string);
    let config = serde_json::json!({
        "format": "osstune-lora", "version": 1, "rank": r, "alpha": 8.0, "dropout": 0.0,
        "targets": ["o_proj"], "layers": [0],
        "base_model": { "model_type": "gpt_oss", "fingerprint": fp,
            "num_hidden_layers": cfg.num_hidden_layers, "hidden_size": h,
            "num_local_experts": cfg.num_local_experts },
    });
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
}

#[test]
fn adapter_runs_unmerged_on_the_base() {
    let base = tiny();
    let args = [
        "--prompt",
        "Hello",
        "--temperature",
        "0",
        "--max-tokens",
        "8",
    ];
    let plain = ids(&generate_json(base, &args), "generated_ids");
    let with = |dir: &Path| {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--adapter", dir.to_str().unwrap()]);
        ids(&generate_json(base, &a), "generated_ids")
    };
    // B = 0 (a freshly initialised adapter) leaves the model exactly as it was.
    let zero = scratch("adapter-zero");
    write_adapter(&zero, base, 0.0, None);
    assert_eq!(with(&zero), plain);
    // A large delta changes what the model says.
    let big = scratch("adapter-big");
    write_adapter(&big, base, 50.0, None);
    assert_ne!(with(&big), plain);
    // An adapter trained on another base is refused, naming both fingerprints.
    let other = scratch("adapter-other");
    write_adapter(&other, base, 1.0, Some("0123abcd"));
    let o = osstune()
        .args([
            "generate",
            "--prompt",
            "x",
            "--model",
            base.to_str().unwrap(),
            "--adapter",
        ])
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("0123abcd"), "{}", stderr(&o));
}

/// `bench kernels` at toy widths: every case and m prints a GB/s line, `--mapped` leaves its
/// scratch folder empty, and a width that is not whole MXFP4 groups is refused by name.
#[test]
fn bench_kernels_measures_each_case() {
    let dir = scratch("bench-kernels");
    std::fs::create_dir_all(&dir).unwrap();
    let out = osstune()
        .args(["bench", "kernels", "--hidden", "64", "--intermediate", "96"])
        .args([
            "--bf16-rows",
            "300",
            "--experts",
            "3",
            "--m",
            "1,5,30",
            "--iters",
            "1",
        ])
        .args(["--threads", "2", "--mapped"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "bench kernels: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for case in ["bf16", "mxfp4"] {
        for m in ["m=1 ", "m=5 ", "m=30 "] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(case) && l.contains(m) && l.contains("GB/s")),
                "no {case} {m} line in:\n{text}"
            );
        }
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "scratch files left"
    );

    let bad = osstune()
        .args(["bench", "kernels", "--hidden", "50", "--iters", "1"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--hidden"), "{}", stderr(&bad));
}
