//! `osstune merge` end to end through the binary, on the tiny preset: merged checkpoints verify
//! against base + adapter, greedy generation from the merged model equals generation with the
//! adapter attached, and bad inputs fail with a clear message and no output.

use osstune_merge::adapter::Target;
use osstune_merge::synth::{write_random_adapter, AdapterSpec};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn osstune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_osstune"))
        .args(args)
        .output()
        .expect("running osstune")
}

fn ok(args: &[&str]) -> String {
    let o = osstune(args);
    assert!(
        o.status.success(),
        "osstune {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn work(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("osstune-e2e-merge-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn adapter(base: &Path, out: &Path) {
    let spec = AdapterSpec {
        rank: 4,
        alpha: 8.0,
        seed: 9,
        layers: None,
        targets: &Target::ALL,
        b_range: 0.05,
        fingerprint: None,
    };
    write_random_adapter(base, out, &spec).unwrap();
}

fn greedy(model: &Path, adapter: Option<&Path>) -> serde_json::Value {
    let mut args = vec![
        "generate",
        "--model",
        s(model),
        "--ids",
        "200006,1428,200008,17,29,31,200007",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--json",
    ];
    if let Some(a) = adapter {
        args.extend(["--adapter", s(a)]);
    }
    let out = ok(&args);
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["generated_ids"].clone()
}

#[test]
fn merge_verify_and_generate_match_the_adapter() {
    for experts in ["mxfp4", "dense"] {
        let d = work(experts);
        let base = d.join("base");
        ok(&[
            "init-tiny",
            "--out",
            s(&base),
            "--experts",
            experts,
            "--seed",
            "4",
        ]);
        adapter(&base, &d.join("ad"));
        for format in ["hf", "mlx"] {
            let out = d.join(format!("merged-{format}"));
            let text = ok(&[
                "merge",
                "--model",
                s(&base),
                "--adapter",
                s(&d.join("ad")),
                "--out",
                s(&out),
                "--format",
                format,
                "--dtype",
                "f32",
                "--verify",
                "--verify-tol",
                "1e-4",
                "--quiet",
            ]);
            assert!(text.contains("verify: max |Δlogit|"), "{text}");
            assert!(text.contains("delta survival"), "{text}");
            let merged = greedy(&out, None);
            let with_adapter = greedy(&base, Some(&d.join("ad")));
            let plain = greedy(&base, None);
            assert_eq!(
                merged, with_adapter,
                "{experts} → {format}: greedy tokens differ"
            );
            assert!(merged.as_array().is_some_and(|a| !a.is_empty()));
            assert_ne!(
                merged, plain,
                "the adapter must change greedy decoding for this check to mean anything"
            );
            eprintln!("{experts} → {format}: {merged} (base alone: {plain})");
        }
        // bf16 default output, MXFP4 re-quantized: reported and loadable.
        let q = d.join("merged-q");
        let text = ok(&[
            "merge",
            "--model",
            s(&base),
            "--adapter",
            s(&d.join("ad")),
            "--out",
            s(&q),
            "--format",
            "hf-mxfp4",
            "--quiet",
        ]);
        for g in ["gate_proj", "up_proj", "down_proj", "q_proj"] {
            assert!(text.contains(g), "survival line for {g}: {text}");
        }
        assert!(greedy(&q, None).as_array().is_some_and(|a| !a.is_empty()));
        std::fs::remove_dir_all(&d).unwrap();
    }
}

#[test]
fn refuses_adapter_of_another_base() {
    let d = work("refuse");
    ok(&[
        "init-tiny",
        "--out",
        s(&d.join("a")),
        "--experts",
        "dense",
        "--seed",
        "1",
    ]);
    ok(&[
        "init-tiny",
        "--out",
        s(&d.join("b")),
        "--preset",
        "bench",
        "--experts",
        "dense",
        "--seed",
        "1",
    ]);
    adapter(&d.join("b"), &d.join("ad"));
    let out = d.join("out");
    let o = osstune(&[
        "merge",
        "--model",
        s(&d.join("a")),
        "--adapter",
        s(&d.join("ad")),
        "--out",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("adapter_config.json"),
        "{err}"
    );
    assert!(!out.exists());
    // A missing adapter folder names the file.
    let o = osstune(&[
        "merge",
        "--model",
        s(&d.join("a")),
        "--adapter",
        s(&d.join("nope")),
        "--out",
        s(&out),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope/adapter_config.json"));
    assert!(!out.exists());
    std::fs::remove_dir_all(&d).unwrap();
}
