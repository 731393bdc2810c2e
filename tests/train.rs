//! `osstune train` / `osstune adapters` end to end through the built binary: the recipe on the
//! tiny preset learns; a failed checkpoint write leaves the previous checkpoint current and
//! `--resume` continues from it; `--plan` predicts the measured peak memory; adapters export.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch folder removed on drop (the root package has no tempfile dependency).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("osstune-train-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_osstune"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running osstune");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "osstune failed:\n{text}");
    text
}

/// Synthetic samples for the fixture model (vocab 384): random prompt, fixed trained answer.
fn write_data(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, n) in [("train.jsonl", 12u32), ("valid.jsonl", 2)] {
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

fn valid_losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "valid")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn tiny_recipe_learns_on_sample_sessions() {
    let tmp = Scratch::new("learns");
    let model = tmp.path().join("model");
    let data = tmp.path().join("data");
    let out = tmp.path().join("out");
    run(bin().args(["init-tiny", "--out"]).arg(&model));
    run(bin()
        .args(["data", "convert"])
        .arg(root().join("examples/sessions"))
        .args(["--max-seq-len", "512", "--out"])
        .arg(&data));
    run(bin()
        .arg("train")
        .arg("--config")
        .arg(root().join("configs/tiny.toml"))
        .arg("--model")
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .arg("--quiet"));
    let v = valid_losses(&out);
    assert!(v.len() >= 2, "{v:?}");
    let (first, last) = (v[0], *v.last().unwrap());
    assert!(
        last < first - 0.15,
        "validation loss did not fall clearly: {first} -> {last} ({v:?})"
    );
    for f in ["adapters.safetensors", "adapter_config.json", "loss.svg"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
}

#[test]
fn failed_checkpoint_write_keeps_previous_and_resume_continues() {
    let tmp = Scratch::new("ckpt");
    let data = tmp.path().join("data");
    write_data(&data);
    let out = tmp.path().join("out");
    let model = root().join("fixtures/train/model");
    let train = |steps: &str| {
        let mut c = bin();
        c.arg("train")
            .arg("--model")
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args(["--steps", steps, "--quiet"])
            .args(["--set", "lora.rank=4", "--set", "train.grad_accum=1"])
            .args([
                "--set",
                "train.save_every=1",
                "--set",
                "data.max_seq_len=32",
            ]);
        c
    };
    run(&mut train("4"));
    let latest = || std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    assert_eq!(latest(), "step-000004");
    // Extending the run, the first new checkpoint write fails half-way (test hook) …
    let o = train("6")
        .arg("--resume")
        .env("OSSTUNE_TEST_FAIL_CHECKPOINT_WRITE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success() && err.contains("checkpoint write"),
        "{err}"
    );
    // … the previous checkpoint is still current and complete …
    assert_eq!(latest(), "step-000004");
    for f in ["adapters.safetensors", "adapter_config.json", "state.json"] {
        assert!(out.join("checkpoints/step-000004").join(f).exists(), "{f}");
    }
    // … and a resume picks it up and finishes.
    let text = run(train("6").arg("--resume"));
    assert!(text.contains("step 4"), "{text}");
    assert_eq!(latest(), "step-000006");

    // The trained adapter exports to PEFT and mlx-lm.
    for fmt in ["peft", "mlx"] {
        let dst = tmp.path().join(fmt);
        run(bin()
            .args(["adapters", "export", "--format", fmt, "--adapter"])
            .arg(&out)
            .arg("--out")
            .arg(&dst));
        assert!(dst.join("adapter_config.json").exists());
    }
}

#[test]
fn plan_predicts_measured_peak_memory() {
    // `bench train` measures peak RSS and prints the plan's prediction for the same config.
    let tmp = Scratch::new("plan");
    let model = tmp.path().join("model");
    run(bin()
        .args([
            "init-tiny",
            "--preset",
            "bench",
            "--experts",
            "dense",
            "--out",
        ])
        .arg(&model));
    for extra in [&[][..], &["--activation-checkpointing"][..]] {
        let text = run(bin()
            .args(["bench", "train", "--json", "--steps", "1", "--warmup", "0"])
            .args(["--seq", "128", "--model"])
            .arg(&model)
            .args(extra));
        let j: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        let (peak, pred) = (
            j["peak_rss_mib"].as_f64().unwrap(),
            j["predicted_peak_mib"].as_f64().unwrap(),
        );
        eprintln!("{extra:?}: measured {peak:.0} MiB, predicted {pred:.0} MiB");
        assert!(
            pred > 0.6 * peak && pred < 1.5 * peak,
            "{extra:?}: plan {pred:.0} MiB vs measured {peak:.0} MiB"
        );
    }
    // --plan itself prints the breakdown.
    let text = run(bin()
        .args(["train", "--plan", "--model"])
        .arg(&model)
        .args(["--config"])
        .arg(root().join("configs/fable5.toml")));
    assert!(
        text.contains("predicted peak") && text.contains("optimizer state"),
        "{text}"
    );
}
