//! `osstune train`: the run folder is never lost (bug 3), one process at a time (bug 4),
//! impossible LoRA shapes and memory are refused before loading (bug 5, weak spots 4, 16),
//! Ctrl-C exits 130 with a checkpoint (weak spot 12), resume changes and data (13, 14).

use crate::common::*;
use std::process::Stdio;

#[test]
fn fresh_train_into_an_existing_run_is_refused_unless_overwrite() {
    let tmp = Scratch::new("existing-run");
    let (data, out) = (tmp.join("data"), tmp.join("out"));
    write_data(&data, 8);
    ok(&mut train(&data, &out, 2));
    let metrics_before = std::fs::read(out.join("metrics.jsonl")).unwrap();
    let adapters_before = std::fs::read(out.join("adapters.safetensors")).unwrap();
    let err = fails(&mut train(&data, &out, 3));
    assert!(
        err.contains(&out.display().to_string())
            && err.contains("--resume")
            && err.contains("--overwrite"),
        "{err}"
    );
    // Nothing of the first run was touched …
    assert_eq!(
        std::fs::read(out.join("metrics.jsonl")).unwrap(),
        metrics_before
    );
    assert_eq!(
        std::fs::read(out.join("adapters.safetensors")).unwrap(),
        adapters_before
    );
    // … and --overwrite replaces it with a fresh run of 3 steps.
    let t = ok(train(&data, &out, 3).arg("--overwrite"));
    assert!(t.contains("--overwrite: removed"), "{t}");
    assert_eq!(metrics(&out, "train").len(), 3);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_second_train_on_the_same_folder_is_refused_naming_the_pid() {
    let tmp = Scratch::new("lock");
    let (data, out) = (tmp.join("data"), tmp.join("out"));
    write_data(&data, 8);
    let mut first = train(&data, &out, 100_000)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the first run's first step", || {
        !metrics(&out, "train").is_empty()
    });
    let err = fails(train(&data, &out, 2).arg("--resume"));
    assert!(
        err.contains(&format!("process {}", first.id())) && err.contains("in use"),
        "{err}"
    );
    // kill -9 leaves the lock file behind; the lock itself dies with the process, so the
    // next run takes it (stale-lock safe).
    signal(first.id(), libc::SIGKILL);
    first.wait().unwrap();
    assert!(out.join(".osstune-train.lock").exists());
    ok(train(&data, &out, 2).arg("--overwrite"));
    assert_eq!(metrics(&out, "train").len(), 2);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_130() {
    let tmp = Scratch::new("sigint");
    let (data, out) = (tmp.join("data"), tmp.join("out"));
    write_data(&data, 8);
    let child = train(&data, &out, 100_000)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the first step", || !metrics(&out, "train").is_empty());
    signal(child.id(), libc::SIGINT);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("--resume"), "{err}");
    let latest = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    let step: usize = latest.trim_start_matches("step-").parse().unwrap();
    assert!(step >= 1, "{latest}");
    // The interrupted run resumes from there.
    let t = ok(train(&data, &out, step + 1).arg("--resume"));
    assert!(t.contains(&format!("step {step}")), "{t}");
}

#[test]
fn impossible_lora_rank_and_layers_are_refused_before_loading() {
    let tmp = Scratch::new("rank");
    let (data, out) = (tmp.join("data"), tmp.join("out"));
    write_data(&data, 4);
    let err = fails(train(&data, &out, 1).args(["--set", "lora.rank=100000"]));
    assert!(
        err.contains("lora.rank = 100000") && err.contains("≤ 64"),
        "{err}"
    );
    let err = fails(train(&data, &out, 1).args(["--set", "lora.layers=99"]));
    assert!(
        err.contains("lora.layers = 99") && err.contains("2 decoder layers"),
        "{err}"
    );
    // Nothing was trained into the folder.
    assert!(!out.join("metrics.jsonl").exists());
}

#[test]
fn a_run_predicted_not_to_fit_in_memory_is_refused_with_figures() {
    let tmp = Scratch::new("memory");
    let (data, out) = (tmp.join("data"), tmp.join("out"));
    write_data(&data, 4);
    let huge = [
        "--set",
        "train.micro_batch=4096",
        "--set",
        "data.max_seq_len=1000000",
    ];
    let err = fails(train(&data, &out, 1).args(huge));
    assert!(
        err.contains("predicted peak memory")
            && err.contains("GiB available")
            && err.contains("--skip-memory-check"),
        "{err}"
    );
}

#[test]
fn nonsense_train_values_are_refused_naming_the_key() {
    let tmp = Scratch::new("values");
    let (data, out) = (tmp.join("data"), tmp.join("out"));
    write_data(&data, 4);
    for (set, key) in [
        ("train.threads=100000", "train.threads"),
        ("lora.alpha=nan", "lora.alpha"),
        ("train.grad_clip=-1", "train.grad_clip"),
        ("train.steps=0", "train.steps"),
    ] {
        let err = fails(train(&data, &out, 1).args(["--set", set]));
        assert!(err.contains(key), "{set}: {err}");
    }
    // The flag, not only the config key (the helper's `--set train.threads=1` would win).
    let err = fails(
        bin()
            .arg("train")
            .arg("--model")
            .arg(fixture_model())
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args(["--threads", "100000"]),
    );
    assert!(err.contains("train.threads"), "{err}");
}

#[test]
fn empty_training_data_names_the_file() {
    let tmp = Scratch::new("empty-data");
    let (data, out) = (tmp.join("data"), tmp.join("out"));
    write_data(&data, 4);
    std::fs::write(data.join("train.jsonl"), "").unwrap();
    let err = fails(&mut train(&data, &out, 1));
    assert!(
        err.contains(&data.join("train.jsonl").display().to_string())
            && err.contains("no trainable sample"),
        "{err}"
    );
}

#[test]
fn val_samples_zero_skips_validation() {
    let tmp = Scratch::new("no-valid");
    let (data, out) = (tmp.join("data"), tmp.join("out"));
    write_data(&data, 4);
    let t = ok(train(&data, &out, 2).args(["--set", "train.val_samples=0"]));
    assert!(t.contains("no validation"), "{t}");
    assert!(metrics(&out, "valid").is_empty());
    assert_eq!(metrics(&out, "train").len(), 2);
}

#[test]
fn resume_may_change_learning_rates_and_records_it_but_not_the_data() {
    let tmp = Scratch::new("resume-change");
    let (data, out) = (tmp.join("data"), tmp.join("out"));
    write_data(&data, 8);
    ok(&mut train(&data, &out, 2));
    // The advice of the divergence message: lower the learning rate, then --resume.
    let t = ok(train(&data, &out, 3).arg("--resume").args([
        "--set",
        "optim.muon.lr=0.001",
        "--set",
        "train.grad_clip=1.0",
    ]));
    assert!(t.contains("changed on resume: optim.muon.lr"), "{t}");
    let r = metrics(&out, "resume");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["step"], 2);
    let changes = r[0]["changes"].to_string();
    assert!(
        changes.contains("optim.muon.lr") && changes.contains("train.grad_clip"),
        "{changes}"
    );
    // Other changes are still refused.
    let err = fails(
        train(&data, &out, 4)
            .arg("--resume")
            .args(["--set", "lora.alpha=3"]),
    );
    assert!(err.contains("config differs"), "{err}");
    // Different data: refused with both fingerprints, unless allowed.
    write_data(&data, 9);
    let err = fails(train(&data, &out, 4).arg("--resume").args([
        "--set",
        "optim.muon.lr=0.001",
        "--set",
        "train.grad_clip=1.0",
    ]));
    assert!(
        err.contains("differ from the data") && err.contains("--allow-data-change"),
        "{err}"
    );
    ok(train(&data, &out, 4)
        .args(["--resume", "--allow-data-change"])
        .args([
            "--set",
            "optim.muon.lr=0.001",
            "--set",
            "train.grad_clip=1.0",
        ]));
    assert_eq!(metrics(&out, "train").len(), 4);
}

#[test]
fn samples_longer_than_the_recipe_are_refused_with_the_convert_command() {
    let tmp = Scratch::new("too-long");
    let (data, out) = (tmp.join("data"), tmp.join("out"));
    write_data(&data, 4); // 16-token samples, trained tail
    let err = fails(train(&data, &out, 1).args(["--set", "data.max_seq_len=12"]));
    let file = data.join("train.jsonl").display().to_string();
    assert!(
        err.contains(&file)
            && err.contains("4 samples are longer than data.max_seq_len = 12")
            && err.contains("longest: 16 tokens")
            && err.contains("--max-seq-len 12"),
        "{err}"
    );
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn kill_9_mid_run_then_resume_finishes_from_the_last_checkpoint() {
    let tmp = Scratch::new("kill9");
    let (data, out) = (tmp.join("data"), tmp.join("out"));
    write_data(&data, 8);
    let mut child = train(&data, &out, 100_000)
        .args(["--set", "train.save_every=1"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let latest = || std::fs::read_to_string(out.join("checkpoints/latest")).unwrap_or_default();
    wait_until("two checkpoints", || latest().as_str() >= "step-000002");
    signal(child.id(), libc::SIGKILL);
    child.wait().unwrap();
    let step: usize = latest().trim_start_matches("step-").parse().unwrap();
    let t = ok(train(&data, &out, step + 2)
        .args(["--set", "train.save_every=1"])
        .arg("--resume"));
    assert!(t.contains(&format!("step {step}")), "{t}");
    // The log holds each step once, whatever the killed run wrote after its checkpoint.
    let steps: Vec<u64> = metrics(&out, "train")
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=step as u64 + 2).collect::<Vec<_>>());
}

#[test]
fn a_full_disk_fails_the_run_and_keeps_the_previous_checkpoint() {
    let tmp = Scratch::new("disk-full");
    let (data, out) = (tmp.join("data"), tmp.join("out"));
    write_data(&data, 8);
    ok(&mut train(&data, &out, 2));
    // A file-size limit (ulimit -f, in 512-byte blocks; SIGXFSZ ignored so writes fail with
    // EFBIG) stands in for a full disk: the next checkpoint cannot be written.
    let mut cmd = train(&data, &out, 3);
    cmd.arg("--resume");
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect();
    let script = format!(
        "trap '' XFSZ; ulimit -f 8; exec '{}' {}",
        cmd.get_program().to_string_lossy(),
        args.join(" ")
    );
    let err = fails(std::process::Command::new("sh").args(["-c", &script]));
    assert!(
        err.contains("step-000003") || err.contains("File too large"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("checkpoints/latest")).unwrap(),
        "step-000002"
    );
    // With room again, the resume completes.
    ok(train(&data, &out, 3).arg("--resume"));
}
