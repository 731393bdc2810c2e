//! The newcomer path end to end: `osstune demo` with a shortened training run.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn demo_runs_the_whole_pipeline() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo-e2e");
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_osstune"))
        .args(["demo", "--steps", "6", "--max-tokens", "8", "--out"])
        .arg(&out)
        .output()
        .expect("run osstune demo");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "demo failed:\n{stdout}\n{stderr}");

    // Every stage left its artifact where the summary says.
    for f in [
        "base/config.json",
        "data/train.jsonl",
        "data/valid.jsonl",
        "data/stats.json",
        "adapters/adapters.safetensors",
        "adapters/adapter_config.json",
        "adapters/metrics.jsonl",
        "merged/config.json",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    // The bundled sessions give a seeded 90/10 split (fitted to the recipe's 512 tokens).
    let count = |f: &str| {
        std::fs::read_to_string(out.join(f))
            .unwrap()
            .lines()
            .count()
    };
    let (train, valid) = (count("data/train.jsonl"), count("data/valid.jsonl"));
    assert!(train >= 20 && valid >= 2, "split {train}/{valid}");
    // The merge was verified against base + adapter, and the summary reports the run.
    assert!(stdout.contains("verify: max |Δlogit|"), "{stdout}");
    assert!(stdout.contains("train loss"), "{stdout}");
    assert!(stdout.contains("valid loss"), "{stdout}");
    assert!(stdout.contains("demo finished"), "{stdout}");
}

#[test]
fn demo_refuses_to_replace_a_folder_it_did_not_write() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo-not-ours");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "keep me").unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_osstune"))
        .args(["demo", "--out"])
        .arg(&out)
        .output()
        .expect("run osstune demo");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not an earlier demo's output"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "keep me"
    );
}
