//! `osstune train`: LoRA training (Muon + AdamW) on converted samples.

use anyhow::{Context, Result};
use osstune_train::config::TrainConfig;
use osstune_train::run_dir::{self, RunLock};
use osstune_train::trainer::{Outcome, RunOptions, StartOptions, Trainer};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// Training recipe (TOML), e.g. configs/tiny.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Base model directory (overrides model.path).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Folder with train.jsonl / valid.jsonl (overrides data.path).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output folder (overrides train.out).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Optimizer steps (overrides train.steps).
    #[arg(long)]
    steps: Option<usize>,
    /// Continue from the latest checkpoint in the output folder.
    #[arg(long)]
    resume: bool,
    /// Print the predicted peak memory for this config and model, and exit.
    #[arg(long)]
    plan: bool,
    /// Recompute each decoder layer in backward (less memory, ~1 extra forward).
    #[arg(long)]
    activation_checkpointing: bool,
    /// CPU worker threads (overrides train.threads).
    #[arg(long)]
    threads: Option<usize>,
    /// Seed (overrides train.seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Any other config value: `--set optim.muon.lr=2e-2 --set lora.rank=8` (TOML values).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Replace the training run already in --out (its checkpoints, metrics and adapters).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// With --resume: continue even though train.jsonl / valid.jsonl changed.
    #[arg(long, requires = "resume")]
    allow_data_change: bool,
    /// Start even when the predicted peak memory (--plan) exceeds the available memory.
    #[arg(long)]
    skip_memory_check: bool,
}

fn overrides(a: &Args) -> Vec<String> {
    let q = |p: &PathBuf| format!("{:?}", p.display().to_string());
    let mut o = Vec::new();
    if let Some(p) = &a.model {
        o.push(format!("model.path={}", q(p)));
    }
    if let Some(p) = &a.data {
        o.push(format!("data.path={}", q(p)));
    }
    if let Some(p) = &a.out {
        o.push(format!("train.out={}", q(p)));
    }
    if let Some(s) = a.steps {
        o.push(format!("train.steps={s}"));
    }
    if let Some(t) = a.threads {
        o.push(format!("train.threads={t}"));
    }
    if let Some(s) = a.seed {
        o.push(format!("train.seed={s}"));
    }
    if a.activation_checkpointing {
        o.push("train.activation_checkpointing=true".into());
    }
    o.extend(a.set.iter().cloned());
    o
}

pub fn run(a: Args) -> Result<()> {
    let cfg = TrainConfig::load(a.config.as_deref(), &overrides(&a))?;
    if cfg.train.threads > 0 {
        // candle's CPU kernels size their pools from this before first use.
        std::env::set_var("RAYON_NUM_THREADS", cfg.train.threads.to_string());
    }
    if a.plan {
        let model = cfg
            .model
            .path
            .clone()
            .context("--plan needs the base model: --model DIR or model.path")?;
        let p = osstune_train::plan::plan(&cfg, &model)?;
        print!("{}", p.render());
        return Ok(());
    }
    // The run folder first (cheap): one process at a time, and never over a previous run
    // by accident. The lock is held until this function returns (or the process ends).
    let out = cfg
        .train
        .out
        .clone()
        .context("no output folder: set train.out in the config or pass --out")?;
    let _lock = RunLock::acquire(&out)?;
    if !a.resume {
        let removed = run_dir::prepare_fresh(&out, a.overwrite)?;
        if !removed.is_empty() {
            eprintln!(
                "--overwrite: removed {} from {}",
                removed.join(", "),
                out.display()
            );
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    osstune_train::trainer::install_ctrlc(stop.clone())?;
    let start = StartOptions {
        resume: a.resume,
        allow_data_change: a.allow_data_change,
        skip_memory_check: a.skip_memory_check,
    };
    let mut trainer = Trainer::start(cfg, &start)?;
    eprintln!(
        "training {} LoRA parameters ({} tensors) for {} steps",
        trainer.adapters.num_params(),
        trainer.vars.len(),
        trainer.cfg.train.steps
    );
    let opts = RunOptions {
        resume: a.resume,
        progress: !a.quiet,
        stop,
    };
    let s = trainer.run(&opts)?;
    match s.outcome {
        Outcome::Finished => {
            if let (Some(f), Some(l)) = (s.first_valid_loss, s.last_valid_loss) {
                eprintln!("validation loss {f:.4} -> {l:.4}");
            }
            eprintln!(
                "adapters: {} (metrics.jsonl, loss.svg, checkpoints/ beside them)",
                s.out.display()
            );
        }
        Outcome::Interrupted { step } => {
            eprintln!(
                "stopped at step {step}; continue with the same command plus --resume ({})",
                s.out.display()
            );
            // 130 = 128 + SIGINT, as a shell reports a Ctrl-C'd command, so scripts can tell
            // an interrupted run (its checkpoint is saved) from a finished one.
            drop(trainer);
            drop(_lock);
            std::process::exit(130);
        }
    }
    Ok(())
}
