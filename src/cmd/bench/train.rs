//! `osstune bench train`: LoRA training tokens/s and peak RSS on the bench preset, measured
//! like the transformers + PEFT anchor benchmark (`peft_bench.py`: random token batches,
//! every token trained, one step = forward with cross-entropy + backward + optimizer step,
//! median over the measured steps after warm-up steps).
//!
//! `--preset gpt-oss-20b|gpt-oss-120b [--layers N] [--model-cache DIR]` trains on a
//! release-shaped random checkpoint instead (see `preset`). Beside tokens/s it prints the
//! FLOP of a step (`cost::train_flops`), the FLOP/s achieved, and the machine's measured f32
//! GEMM FLOP/s for scale.

use super::preset::{self, ReleasePreset};
use super::{cost, machine};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Var};
use osstune_model::io::tiny::{write_tiny, ExpertFormat, Preset};
use osstune_model::GptOss;
use osstune_optim::Optimizer;
use osstune_train::adapters::{select_targets, Adapters};
use osstune_train::batches::{MicroBatch, Sample};
use osstune_train::config::TrainConfig;
use osstune_train::loss::{self, BatchTensors};
use osstune_train::rng::SplitMix64;
use osstune_train::trainer::{attach, base_info, target_shapes};
use osstune_train::{plan, recompute};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Base model (default: a fresh bench-preset checkpoint, dense f32 experts, seed 0 —
    /// the shapes of make_tiny.py "bench").
    #[arg(long, conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// A release-shaped random checkpoint instead (bf16, MXFP4 experts).
    #[arg(long, value_enum)]
    preset: Option<ReleasePreset>,
    /// With --preset: the first N layers only (a real-width slice).
    #[arg(long, requires = "preset")]
    layers: Option<usize>,
    /// With --preset: keep the checkpoint in DIR and reuse it when it holds the same preset
    /// and layers (default: a temporary folder, removed afterwards).
    #[arg(long, requires = "preset")]
    model_cache: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    batch: usize,
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// Measured steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Unmeasured warm-up steps.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 16)]
    rank: usize,
    #[arg(long, default_value_t = 32.0)]
    alpha: f64,
    /// Muon learning rate (peft_bench.py's default).
    #[arg(long, default_value_t = 2e-2)]
    lr: f64,
    /// Recompute each layer in backward.
    #[arg(long)]
    activation_checkpointing: bool,
    /// Sequence positions per lm_head/cross-entropy chunk.
    #[arg(long, default_value_t = 256)]
    loss_chunk: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string());
    if let Some(p) = a.preset {
        let ck = preset::prepare(p, a.layers, a.model_cache.as_deref(), 0, "train")?;
        return bench(&a, &ck.dir);
    }
    let tmp;
    let model_dir = match &a.model {
        Some(d) => d.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!("osstune-bench-train-{}", std::process::id()));
            write_tiny(&tmp, Preset::Bench, 0, ExpertFormat::Dense)
                .context("writing the bench-preset model")?;
            tmp.clone()
        }
    };
    let result = bench(&a, &model_dir);
    if a.model.is_none() {
        let _ = std::fs::remove_dir_all(&model_dir);
    }
    result
}

fn bench(a: &Args, model_dir: &std::path::Path) -> Result<()> {
    let dev = Device::Cpu;
    let t_load = Instant::now();
    let mut model = GptOss::load(model_dir, &dev, DType::F32)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let cfg = TrainConfig::load(
        None,
        &[
            format!("lora.rank={}", a.rank),
            format!("lora.alpha={}", a.alpha),
            format!("optim.muon.lr={}", a.lr),
            format!("train.micro_batch={}", a.batch),
            "train.grad_accum=1".to_string(),
            format!("data.max_seq_len={}", a.seq + 1),
            format!("train.loss_chunk={}", a.loss_chunk),
            format!(
                "train.activation_checkpointing={}",
                a.activation_checkpointing
            ),
        ],
    )?;
    let shapes = select_targets(
        &target_shapes(&model),
        &cfg.lora.targets,
        0,
        model.cfg.num_hidden_layers,
    )?;
    let lora_macs = cost::lora_macs_per_token(&model.cfg, &shapes, a.rank);
    let flops = cost::train_flops(
        &model.cfg,
        a.batch,
        a.seq,
        lora_macs,
        a.activation_checkpointing,
    );
    let ad = Adapters::init(shapes, &cfg, base_info(&model), &dev)?;
    attach(&mut model, &ad)?;
    let named = ad.named_vars();
    let vars: Vec<Var> = named.iter().map(|(_, v)| v.clone()).collect();
    let mut opt = Optimizer::new(named, &cfg.optim)?;
    let v = model.cfg.vocab_size as u64;
    let mut rng = SplitMix64::new(0);
    let n_tok = a.batch * a.seq;
    let mut steps = Vec::new();
    let mut fb = Vec::new();
    let mut losses = Vec::new();
    for i in 0..a.warmup + a.steps {
        // seq + 1 tokens per row: every one of the `seq` positions predicts a target.
        let samples: Vec<Sample> = (0..a.batch)
            .map(|_| Sample {
                input_ids: (0..=a.seq).map(|_| rng.below(v) as u32).collect(),
                loss_mask: std::iter::once(0).chain((0..a.seq).map(|_| 1)).collect(),
            })
            .collect();
        let mb = MicroBatch::from_samples(&samples.iter().collect::<Vec<_>>());
        let t0 = Instant::now();
        let bt = BatchTensors::new(&mb, &dev)?;
        let scale = 1.0 / mb.n_trained() as f64;
        let (l, gs) = if a.activation_checkpointing {
            recompute::micro_step(&model, &vars, &bt, a.loss_chunk, scale)?
        } else {
            loss::micro_step(&model, &bt, a.loss_chunk, scale)?
        };
        let gs = recompute::keep_vars(gs, &vars);
        let t1 = Instant::now();
        opt.step(&gs, 1.0)?;
        let t2 = Instant::now();
        if i >= a.warmup {
            steps.push((t2 - t0).as_secs_f64());
            fb.push((t1 - t0).as_secs_f64());
            losses.push(l * scale);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
        v[v.len() / 2]
    };
    let first_loss = losses.first().copied().unwrap_or(f64::NAN);
    let last_loss = losses.last().copied().unwrap_or(f64::NAN);
    let step_s = med(&mut steps);
    let fb_s = med(&mut fb);
    let tps = n_tok as f64 / step_s;
    let peak = plan::peak_rss().unwrap_or(0) as f64 / (1u64 << 20) as f64;
    let predicted = plan::plan(&cfg, model_dir)?.total() as f64 / (1u64 << 20) as f64;
    // After the peak is read: the probe's tensors must not set it.
    let n_params = ad.num_params();
    drop((model, ad, opt, vars));
    let flop_s = flops.total() as f64 / step_s;
    let (gm, gk, gn) = (1024, 2880, 2880);
    let gemm = machine::gemm_flops(gm, gk, gn, 3)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "tokens_per_s": tps, "median_step_s": step_s, "median_fwd_bwd_s": fb_s,
                "median_opt_s": step_s - fb_s, "peak_rss_mib": peak, "predicted_peak_mib": predicted,
                "batch": a.batch, "seq": a.seq, "threads": a.threads, "steps": a.steps,
                "warmup": a.warmup, "trainable_params": n_params,
                "activation_checkpointing": a.activation_checkpointing, "load_s": load_s,
                "loss_first": first_loss, "loss_last": last_loss,
                "step_flops": flops.total(), "forward_flops": flops.forward,
                "backward_flops": flops.backward, "recompute_flops": flops.recompute,
                "achieved_flop_per_s": flop_s, "gemm_f32_flop_per_s": gemm,
                "gemm_shape": [gm, gk, gn], "fraction_of_gemm": flop_s / gemm,
            })
        );
    } else {
        println!(
            "osstune train B={} T={} threads={} r={} alpha={} muon: {tps:.1} tok/s, median step {step_s:.3}s \
             (fwd+bwd {fb_s:.3} / opt {:.4}), peak RSS {peak:.0} MiB (plan predicted {predicted:.0} MiB), \
             trainable {}, loss {first_loss:.3}->{last_loss:.3}{}",
            a.batch,
            a.seq,
            a.threads,
            a.rank,
            a.alpha,
            step_s - fb_s,
            n_params,
            if a.activation_checkpointing { ", activation checkpointing" } else { "" }
        );
        println!(
            "step compute: {:.2} GFLOP (forward {:.2} + backward {:.2} + recompute {:.2}) = {:.2} GFLOP/s",
            flops.total() as f64 / 1e9,
            flops.forward as f64 / 1e9,
            flops.backward as f64 / 1e9,
            flops.recompute as f64 / 1e9,
            flop_s / 1e9
        );
        println!(
            "f32 GEMM (measured, candle CPU [{gm},{gk}]x[{gk},{gn}], {} threads): {:.2} GFLOP/s; training achieves {:.1}% of it",
            a.threads,
            gemm / 1e9,
            100.0 * flop_s / gemm
        );
    }
    Ok(())
}
