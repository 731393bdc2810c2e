//! `osstune merge`: tolerances fail closed (bug 6), the probe is bounded (bug 7, weak spot
//! 8), stale temporaries are cleaned (weak spot 6), shards get Hugging Face's 1-based names
//! (weak spot 7).

use crate::common::*;
use std::path::PathBuf;
use std::process::Command;

fn base() -> PathBuf {
    root().join("fixtures/merge/base")
}

fn merge(out: &std::path::Path) -> Command {
    let mut c = bin();
    c.arg("merge")
        .arg("--model")
        .arg(base())
        .arg("--adapter")
        .arg(root().join("fixtures/merge/adapter"))
        .arg("--out")
        .arg(out)
        .arg("--quiet");
    c
}

#[test]
fn non_finite_or_negative_verify_tolerances_are_refused() {
    let tmp = Scratch::new("tol");
    let out = tmp.join("out");
    for tol in ["NaN", "inf", "-1e-3", "-0.5"] {
        let err = fails(
            merge(&out)
                .arg("--verify")
                .arg(format!("--verify-tol={tol}")),
        );
        assert!(
            err.contains("--verify-tol must be a finite number"),
            "{tol}: {err}"
        );
        assert!(!out.exists(), "{tol}: output written");
    }
}

#[test]
fn probe_length_is_bounded() {
    let tmp = Scratch::new("probe");
    let out = tmp.join("out");
    let err = fails(merge(&out).args(["--verify", "--probe-len", "0"]));
    assert!(err.contains("--probe-len must be ≥ 1"), "{err}");
    // Beyond the context (131072 tokens) …
    let err = fails(merge(&out).args(["--verify", "--probe-len", "1000000"]));
    assert!(err.contains("exceeds the model's context"), "{err}");
    // … and within it but beyond memory ([Hq, T, T] attention and T × V logits).
    let err = fails(merge(&out).args(["--verify", "--probe-len", "131072"]));
    assert!(err.contains("GiB available"), "{err}");
    assert!(!out.exists());
}

#[test]
fn zero_shard_size_is_refused() {
    let tmp = Scratch::new("shard0");
    let err = fails(merge(&tmp.join("out")).args(["--max-shard-mb", "0"]));
    assert!(err.contains("--max-shard-mb"), "{err}");
}

#[test]
fn merge_cleans_stale_temporaries_and_writes_one_based_shard_names() {
    let tmp = Scratch::new("stale");
    let out = tmp.join("merged");
    // What `kill -9` during a merge leaves: a hidden temporary of a process that is gone
    // (pids above the kernel's pid_max never exist) …
    let stale = tmp.join(".merged.tmp-4999999");
    std::fs::create_dir_all(stale.join("partial")).unwrap();
    let t = ok(merge(&out).args(["--dtype", "f32", "--max-shard-mb", "1"]));
    assert!(!stale.exists(), "stale temporary left");
    assert!(t.contains("left by an interrupted merge"), "{t}");
    // … and shards named like transformers' save_pretrained, listed in the index.
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let mut shards: Vec<String> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    shards.sort();
    shards.dedup();
    let n = shards.len();
    let want: Vec<String> = (1..=n)
        .map(|i| format!("model-{i:05}-of-{n:05}.safetensors"))
        .collect();
    assert_eq!(shards, want);
    for s in &shards {
        assert!(out.join(s).exists(), "{s}");
    }
    // No temporary of this merge is left either.
    let hidden: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}
