//! `osstune generate` / `chat` are bounded by the model's context before any prefill (weak
//! spot 15); nonsense config.json values are refused naming their key (weak spot 2).

use crate::common::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One `init-tiny` checkpoint (real tokenizer vocabulary) shared by this process's tests.
fn tiny() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("osstune-faults-tiny-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        ok(bin()
            .args(["init-tiny", "--preset", "tiny", "--seed", "3", "--out"])
            .arg(&d));
        d
    })
}

fn generate(extra: &[&str]) -> std::process::Command {
    let mut c = bin();
    c.arg("generate")
        .arg("--model")
        .arg(tiny())
        .args(["--temperature", "0", "--json"])
        .args(extra);
    c
}

#[test]
fn generation_is_bounded_by_the_context_before_prefill() {
    let err = fails(&mut generate(&[
        "--ids",
        "1,2,3,4,5",
        "--max-context",
        "6",
        "--max-tokens",
        "2",
    ]));
    assert!(
        err.contains("the prompt has 5 tokens") && err.contains("context of 6 tokens"),
        "{err}"
    );
    let err = fails(&mut generate(&["--ids", "1", "--max-tokens", "10000000"]));
    assert!(err.contains("--max-tokens 10000000"), "{err}");
    let err = fails(&mut generate(&["--ids", "1", "--max-context", "200000"]));
    assert!(
        err.contains("exceeds the model's context of 131072"),
        "{err}"
    );
    let err = fails(&mut generate(&["--ids", "1", "--max-context", "0"]));
    assert!(err.contains("--max-context must be"), "{err}");
    // Within bounds it generates exactly up to the limit.
    let t = ok(&mut generate(&[
        "--ids",
        "1,2,3",
        "--max-context",
        "8",
        "--max-tokens",
        "5",
    ]));
    assert!(t.contains("\"prompt_tokens\":3"), "{t}");
}

#[test]
fn chat_refuses_a_turn_beyond_the_context_and_goes_on() {
    use std::io::Write;
    let mut child = bin()
        .arg("chat")
        .arg("--model")
        .arg(tiny())
        .args(["--temperature", "0", "--json", "--max-tokens", "2"])
        .args(["--max-context", "80"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let long = "word ".repeat(100);
    writeln!(child.stdin.as_mut().unwrap(), "{long}\nhi\n/exit").unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("exceeds the context of 80 tokens"), "{err}");
    // The short message after it was answered, with only itself in the history.
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 1, "{out}");
}

#[test]
fn nonsense_config_values_are_refused_naming_the_key() {
    let tmp = Scratch::new("config-values");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_model().join("config.json")).unwrap(),
    )
    .unwrap();
    for (key, value) in [
        ("sliding_window", serde_json::json!(0)),
        ("rms_norm_eps", serde_json::json!(-1.0)),
        ("vocab_size", serde_json::json!(0)),
        ("hidden_size", serde_json::json!(0)),
        ("num_hidden_layers", serde_json::json!(1_000_000_000u64)),
    ] {
        let dir = tmp.join(key);
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = cfg.clone();
        c[key] = value;
        std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
        // `--plan` reads config.json only: it must refuse, not print a plan.
        let err = fails(bin().args(["train", "--plan", "--model"]).arg(&dir));
        assert!(
            err.contains(key) && err.contains("config.json"),
            "{key}: {err}"
        );
    }
}
