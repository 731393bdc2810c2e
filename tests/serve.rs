//! `osstune serve` as a process: greedy answers equal `osstune generate --temperature 0` on the
//! same prompt, token for token, and a bad flag fails cleanly.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

fn osstune() -> Command {
    Command::new(env!("CARGO_BIN_EXE_osstune"))
}

/// Ends the server however the test ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

#[test]
fn served_greedy_tokens_equal_generate() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("serve-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let st = osstune()
        .args(["init-tiny", "--seed", "3", "--out"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    let model = dir.to_str().unwrap();

    let mut child = osstune()
        .args([
            "serve",
            "--model",
            model,
            "--port",
            "0",
            "--date",
            "none",
            "--reasoning",
            "high",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stderr).read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap();

    let prompt = "Explain borrowing in one sentence.";
    let body = json!({ "messages": [{ "role": "user", "content": prompt }], "temperature": 0,
        "max_tokens": 20, "return_token_ids": true });
    let r = osstune_serve::client::post_json(addr, "/v1/chat/completions", &[], &body).unwrap();
    assert_eq!(r.status, 200);
    let served = r.json().unwrap();

    let out = osstune()
        .args([
            "generate",
            "--json",
            "--model",
            model,
            "--prompt",
            prompt,
            "--temperature",
            "0",
            "--reasoning",
            "high",
            "--max-tokens",
            "20",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        ids(&served["choices"][0]["token_ids"]),
        ids(&generated["generated_ids"])
    );
    assert_eq!(
        served["usage"]["prompt_tokens"],
        generated["prompt_ids"].as_array().unwrap().len()
    );
    drop(server);

    let bad = osstune()
        .args([
            "serve", "--model", model, "--date", "someday", "--port", "0",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("error: --date"));
    let _ = std::fs::remove_dir_all(&dir);
}
