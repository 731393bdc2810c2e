//! `osstune demo`: the whole pipeline on the embedded default, with no downloads.
//!
//! init-tiny (MXFP4 experts) → data convert (bundled sessions, seeded 90/10 split) →
//! train (configs/tiny.toml: Muon, 40 steps, validation) → merge --verify → generate.
//!
//! Each stage runs exactly as its own subcommand would from the command line (the demo builds
//! the same argument lists), so the demo is also a tour of the commands a user types.

use anyhow::{Context, Result};
use osstune_train::metrics::{read_records, Record};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The bundled inputs live in the source tree; a binary built from a checkout finds them there.
const SESSIONS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sessions");
const TINY_CONFIG: &str = include_str!("../../configs/tiny.toml");

#[derive(clap::Args)]
pub struct Args {
    /// Folder for every artifact (model, data, adapters, merged model). Replaced if it exists.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Training steps (the tiny recipe has 40).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Session logs to convert instead of the bundled examples.
    #[arg(long)]
    pub sessions: Option<PathBuf>,
    /// Tokens to generate from the merged model at the end.
    #[arg(long, default_value_t = 48)]
    pub max_tokens: usize,
}

/// Runs one stage as `osstune ARGS…` and returns its wall time in seconds.
fn stage(title: &str, args: &[String]) -> Result<f64> {
    println!("\n=== {title}\n$ osstune {}", args.join(" "));
    let start = Instant::now();
    crate::run_args(args).with_context(|| format!("demo stage `osstune {}` failed", args[0]))?;
    Ok(start.elapsed().as_secs_f64())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

pub fn run(a: Args) -> Result<()> {
    let out = a.out;
    let sessions = a.sessions.unwrap_or_else(|| PathBuf::from(SESSIONS_DIR));
    if !sessions.exists() {
        anyhow::bail!(
            "sample sessions not found at {} (the demo reads them from the source checkout it was built from); pass --sessions DIR",
            sessions.display()
        );
    }
    // Re-running the demo replaces its own earlier output, and nothing else.
    let marker = out.join(".osstune-demo");
    if out.exists() {
        let empty = std::fs::read_dir(&out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty && !marker.exists() {
            anyhow::bail!(
                "{} exists and is not an earlier demo's output; choose another --out",
                out.display()
            );
        }
        std::fs::remove_dir_all(&out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::write(&marker, "").with_context(|| format!("cannot write {}", marker.display()))?;
    let base = out.join("base");
    let data = out.join("data");
    let adapters = out.join("adapters");
    let merged = out.join("merged");
    let config = out.join("tiny.toml");
    std::fs::write(&config, TINY_CONFIG)
        .with_context(|| format!("cannot write {}", config.display()))?;
    let total = Instant::now();
    let max_seq_len = osstune_train::config::TrainConfig::load(Some(&config), &[])?
        .data
        .max_seq_len
        .to_string();

    let args = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (base_s, data_s, adapters_s, merged_s) = (s(&base), s(&data), s(&adapters), s(&merged));

    stage(
        "1/5 a tiny gpt-oss-shaped base model (MXFP4 experts, real o200k_harmony vocabulary)",
        &args(&[
            "init-tiny",
            "--out",
            &base_s,
            "--preset",
            "tiny",
            "--experts",
            "mxfp4",
            "--seed",
            "0",
        ]),
    )?;
    stage(
        "2/5 session logs → Harmony samples, seeded 90/10 split",
        &args(&[
            "data",
            "convert",
            &s(&sessions),
            "--out",
            &data_s,
            "--seed",
            "42",
            "--valid-fraction",
            "0.1",
            // Fit the samples to the recipe's length here, where the target turn is kept
            // (training refuses longer samples rather than cut their end).
            "--max-seq-len",
            &max_seq_len,
        ]),
    )?;
    let mut train = args(&[
        "train",
        "--config",
        &s(&config),
        "--model",
        &base_s,
        "--data",
        &data_s,
        "--out",
        &adapters_s,
    ]);
    if let Some(n) = a.steps {
        train.extend(["--steps".to_string(), n.to_string()]);
    }
    let train_secs = stage("3/5 LoRA training (Muon + AdamW, warm-up + cosine)", &train)?;
    stage(
        "4/5 merge the adapters into a full checkpoint, verified against base + adapter",
        &args(&[
            "merge",
            "--model",
            &base_s,
            "--adapter",
            &adapters_s,
            "--out",
            &merged_s,
            "--dtype",
            "f32",
            "--verify",
        ]),
    )?;
    stage(
        "5/5 generate from the merged model (greedy)",
        &args(&[
            "generate",
            "--model",
            &merged_s,
            "--prompt",
            "List the files in the repository and explain what the build script does.",
            "--temperature",
            "0",
            "--max-tokens",
            &a.max_tokens.to_string(),
        ]),
    )?;

    // Agent-trace metrics on the held-out samples, base vs adapted (docs/eval.md); a random
    // tiny model scores poorly, the point is that the pipeline runs.
    let valid = data.join("valid.jsonl");
    let has_valid = std::fs::metadata(&valid).is_ok_and(|m| m.len() > 0);
    let (eval_base, eval_adapted) = (out.join("eval-base"), out.join("eval-adapted"));
    if has_valid {
        for (title, dir, adapter) in [
            (
                "eval: the base model on the held-out sessions",
                &eval_base,
                None,
            ),
            (
                "eval: base + adapters on the same sessions",
                &eval_adapted,
                Some(&adapters_s),
            ),
        ] {
            let mut v = args(&[
                "eval",
                "sessions",
                "--model",
                &base_s,
                "--data",
                &s(&valid),
                "--max-tokens",
                "32",
                "--max-seq-len",
                "512",
                "--out",
                &s(dir),
            ]);
            if let Some(a) = adapter {
                v.extend(["--adapter".to_string(), a.clone()]);
            }
            stage(title, &v)?;
        }
    }

    summary(
        &out,
        &data,
        &adapters,
        &merged,
        train_secs,
        total.elapsed().as_secs_f64(),
    )?;
    if has_valid {
        println!("\n  held-out sessions, base vs adapted (osstune eval compare):");
        print!(
            "{}",
            super::eval::compare_sessions(&eval_base, &eval_adapted)?
        );
    }
    Ok(())
}

fn summary(
    out: &Path,
    data: &Path,
    adapters: &Path,
    merged: &Path,
    train_secs: f64,
    secs: f64,
) -> Result<()> {
    let stats_path = data.join("stats.json");
    let stats: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&stats_path)
            .with_context(|| format!("cannot read {}", stats_path.display()))?,
    )
    .with_context(|| format!("{}: not a stats file", stats_path.display()))?;
    let records = read_records(&adapters.join("metrics.jsonl"))?;
    let (mut train, mut valid, mut tokens) = (Vec::new(), Vec::new(), 0usize);
    for r in &records {
        match r {
            Record::Train {
                loss, tokens: t, ..
            } => {
                train.push(*loss);
                tokens += t;
            }
            Record::Valid { loss, .. } => valid.push(*loss),
            Record::Resume { .. } => {}
        }
    }
    println!(
        "\n=== demo finished in {secs:.0} s; artifacts under {}",
        out.display()
    );
    println!("  base model    {}", out.join("base").display());
    println!(
        "  samples       {} kept → train {} / valid {}   ({})",
        stats["samples_kept"],
        stats["train"],
        stats["valid"],
        data.display()
    );
    if let (Some(first), Some(last)) = (train.first(), train.last()) {
        println!(
            "  train loss    {first:.3} → {last:.3} over {} steps",
            train.len()
        );
    }
    if let (Some(first), Some(last)) = (valid.first(), valid.last()) {
        println!("  valid loss    {first:.3} → {last:.3}");
    }
    if train_secs > 0.0 {
        println!(
            "  training      {:.0} tokens/s (validation and checkpoints included)",
            tokens as f64 / train_secs
        );
    }
    println!("  adapters      {}", adapters.display());
    println!("  merged model  {}", merged.display());
    Ok(())
}
