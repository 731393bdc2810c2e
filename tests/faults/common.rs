//! Shared helpers: scratch folders, the binary, and tiny training runs on the fixture model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch folder removed on drop (the root package has no tempfile dependency).
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("osstune-faults-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_osstune"))
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The 2-layer fixture model (hidden 64, 4 experts, vocabulary 384).
pub fn fixture_model() -> PathBuf {
    root().join("fixtures/train/model")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `cmd`, asserts success, returns stdout + stderr.
pub fn ok(cmd: &mut Command) -> String {
    let o = cmd.output().expect("running osstune");
    let t = text(&o);
    assert!(o.status.success(), "osstune failed:\n{t}");
    t
}

/// Runs `cmd`, asserts exit status 1 with an `error:` line and no panic; returns stderr.
pub fn fails(cmd: &mut Command) -> String {
    let o = cmd.output().expect("running osstune");
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "expected exit 1:\n{t}");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("error: "), "no error line:\n{t}");
    assert!(!err.contains("panicked"), "panic:\n{t}");
    err
}

/// Synthetic samples for the fixture model: random prompt, fixed trained answer.
pub fn write_data(dir: &Path, n_train: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, n) in [("train.jsonl", n_train), ("valid.jsonl", 2)] {
        let lines: Vec<String> = (0..n)
            .map(|i| {
                let mut ids: Vec<u32> = (0..6).map(|j| (i * 31 + j * 17) % 300 + 20).collect();
                ids.extend((0..10).map(|j| 5 + j * 2));
                let mask: Vec<u8> = (0..16).map(|j| (j >= 6) as u8).collect();
                format!("{{\"input_ids\":{ids:?},\"loss_mask\":{mask:?}}}")
            })
            .collect();
        std::fs::write(dir.join(name), lines.join("\n") + "\n").unwrap();
    }
}

/// `osstune train` on the fixture model with a small, fast recipe.
pub fn train(data: &Path, out: &Path, steps: usize) -> Command {
    let mut c = bin();
    c.arg("train")
        .arg("--model")
        .arg(fixture_model())
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--steps", &steps.to_string(), "--quiet"])
        .args(["--set", "lora.rank=4", "--set", "train.grad_accum=1"])
        .args(["--set", "data.max_seq_len=32", "--set", "train.threads=1"]);
    c
}

/// Polls `cond` every 50 ms for up to 120 s.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(t0.elapsed().as_secs() < 120, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Lines of `metrics.jsonl` of kind `kind`.
pub fn metrics(out: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == kind)
        .collect()
}

/// Sends `signal` to process `pid`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a child's pid and a standard signal number.
    let r = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(r, 0, "kill({pid}, {signal}) failed");
}
