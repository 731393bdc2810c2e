//! `osstune bench optim`: one optimizer step on a realistic LoRA parameter set.
//!
//! Default set: the expert LoRA factors of one gpt-oss-120b projection,
//! A [128, 16, 2880] and B [128, 2880, 16]. A 120b layer has three such pairs
//! (gate, up, down; intermediate = hidden = 2880) and the model 36 layers, so the per-layer
//! and per-model figures are the measured time × 3 and × 108 (attention and router factors
//! are ~1% of the elements and left out).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use osstune_optim::{muon::newton_schulz, NsDtype, OptimConfig, Optimizer};

#[derive(clap::Args)]
pub struct Args {
    /// Experts per tensor.
    #[arg(long, default_value_t = 128)]
    experts: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Hidden / intermediate size (the other side of each factor).
    #[arg(long, default_value_t = 2880)]
    hidden: usize,
    /// Expert projections per layer (gate, up, down) used for the per-layer extrapolation.
    #[arg(long, default_value_t = 3)]
    pairs_per_layer: usize,
    /// Layers in the model, for the per-model extrapolation.
    #[arg(long, default_value_t = 36)]
    layers: usize,
    /// Timed steps (after one untimed warm-up step).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Newton–Schulz dtype: f32 or bf16.
    #[arg(long, default_value = "f32")]
    ns_dtype: String,
    /// cpu, cuda or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Runs `f` once untimed, then `iters` times; returns (mean, min) milliseconds.
fn time(dev: &Device, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    f()?;
    dev.synchronize()?;
    let mut all = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        dev.synchronize()?;
        all.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    let min = all.iter().cloned().fold(f64::INFINITY, f64::min);
    Ok((mean, min))
}

pub fn run(args: Args) -> Result<()> {
    if args.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let ns_dtype = match args.ns_dtype.as_str() {
        "f32" => NsDtype::F32,
        "bf16" => NsDtype::Bf16,
        other => bail!("--ns-dtype must be f32 or bf16, got {other:?}"),
    };
    let dev = osstune_model::device::parse_device(&args.device)?;
    let (e, r, h) = (args.experts, args.rank, args.hidden);
    let a = Var::from_tensor(&Tensor::randn(0f32, 0.02, (e, r, h), &dev)?)?;
    let b = Var::from_tensor(&Tensor::zeros((e, h, r), DType::F32, &dev)?)?;
    let mut grads = GradStore::default();
    grads.insert(a.as_tensor(), Tensor::randn(0f32, 1e-3, (e, r, h), &dev)?);
    grads.insert(b.as_tensor(), Tensor::randn(0f32, 1e-3, (e, h, r), &dev)?);
    let params = vec![
        ("experts.lora_a".to_string(), a),
        ("experts.lora_b".to_string(), b),
    ];
    let elems = 2 * e * r * h;
    let scale_layer = args.pairs_per_layer as f64;
    let scale_model = scale_layer * args.layers as f64;

    println!(
        "optimizer step on A [{e}, {r}, {h}] + B [{e}, {h}, {r}] ({:.1} M params), device {}, {} iters",
        elems as f64 / 1e6,
        args.device,
        args.iters
    );
    println!(
        "{:<22} {:>10} {:>10} {:>14} {:>14}",
        "", "mean ms", "min ms", "per layer ms", "per model s"
    );
    let report = |label: &str, (mean, min): (f64, f64)| {
        println!(
            "{label:<22} {mean:>10.2} {min:>10.2} {:>14.1} {:>14.2}",
            mean * scale_layer,
            mean * scale_model / 1e3
        );
    };

    let mut cfg = OptimConfig::default();
    cfg.muon.ns_dtype = ns_dtype;
    let mut muon = Optimizer::new(params.clone(), &cfg)?;
    report(
        &format!("muon step (ns {})", args.ns_dtype),
        time(&dev, args.iters, || muon.step(&grads, 1.0))?,
    );

    // Newton–Schulz alone on the same two tensors, to show its share of the step.
    let dtype = match ns_dtype {
        NsDtype::F32 => DType::F32,
        NsDtype::Bf16 => DType::BF16,
    };
    let (ga, gb) = (
        grads
            .get(params[0].1.as_tensor())
            .context("gradient of A")?
            .clone(),
        grads
            .get(params[1].1.as_tensor())
            .context("gradient of B")?
            .clone(),
    );
    let c = cfg.muon.ns_coefficients;
    report(
        "  of which NS",
        time(&dev, args.iters, || {
            newton_schulz(&ga, cfg.muon.ns_steps, c, cfg.muon.eps, dtype)?;
            newton_schulz(&gb, cfg.muon.ns_steps, c, cfg.muon.eps, dtype)?;
            Ok(())
        })?,
    );

    // The same tensors through AdamW (an empty pattern routes every parameter there).
    let adamw_cfg = OptimConfig {
        adamw_params: vec![String::new()],
        ..OptimConfig::default()
    };
    let mut adamw = Optimizer::new(params, &adamw_cfg)?;
    report(
        "adamw step",
        time(&dev, args.iters, || adamw.step(&grads, 1.0))?,
    );
    println!(
        "(per layer = × {} expert projections, per model = × {} layers; optimizer state: Muon {:.0} MB, AdamW {:.0} MB for this set)",
        args.pairs_per_layer,
        args.layers,
        muon.state_bytes() as f64 / 1e6,
        adamw.state_bytes() as f64 / 1e6
    );
    Ok(())
}
