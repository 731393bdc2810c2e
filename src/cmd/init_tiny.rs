//! `osstune init-tiny`: a seeded random gpt-oss-shaped checkpoint in the HF layout.

use anyhow::{bail, Result};
use osstune_model::io::real_shape::{checkpoint_size, release_shape, write_release_layout};
use osstune_model::io::tiny::{write_tiny, ExpertFormat, Preset};
use std::path::PathBuf;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PresetArg {
    /// Real o200k_harmony vocabulary (201088), hidden 64, 4 layers, 8 experts top-2, bf16.
    Tiny,
    /// CPU benchmark shapes: hidden 512, 4 layers, 16 experts top-4, vocab 8192, f32.
    Bench,
    /// The real gpt-oss-20b shapes in the release layout (MXFP4 experts, bf16 rest, sharded;
    /// 12.8 GiB for all 24 layers), streamed a tensor at a time.
    #[value(name = "gpt-oss-20b")]
    GptOss20b,
    /// The real gpt-oss-120b shapes (60.8 GiB for all 36 layers), streamed likewise.
    #[value(name = "gpt-oss-120b")]
    GptOss120b,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ExpertsArg {
    /// Experts packed as MXFP4 `*_blocks`/`*_scales`, like the released checkpoints.
    Mxfp4,
    /// Dense `gate_up_proj`/`down_proj` expert tensors.
    Dense,
}

#[derive(clap::Args)]
pub struct Args {
    /// Output directory (config.json + model.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "tiny")]
    pub preset: PresetArg,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "mxfp4")]
    pub experts: ExpertsArg,
    /// Write into --out even if it exists (same-named files are replaced).
    #[arg(long)]
    pub overwrite: bool,
    /// gpt-oss-20b / -120b presets: the first N layers only (a real-width slice).
    #[arg(long)]
    pub layers: Option<usize>,
    /// gpt-oss-20b / -120b presets: tensor bytes per shard at most (a tensor is never split).
    #[arg(long, default_value_t = 4800)]
    pub max_shard_mb: u64,
}

pub fn run(args: Args) -> Result<()> {
    let release = match args.preset {
        PresetArg::GptOss20b => Some("gpt-oss-20b"),
        PresetArg::GptOss120b => Some("gpt-oss-120b"),
        _ => None,
    };
    if let Some(name) = release {
        return write_release(&args, name);
    }
    if args.layers.is_some() {
        bail!("--layers applies to the gpt-oss-20b and gpt-oss-120b presets");
    }
    let preset = match args.preset {
        PresetArg::Tiny => Preset::Tiny,
        _ => Preset::Bench,
    };
    let experts = match args.experts {
        ExpertsArg::Mxfp4 => ExpertFormat::Mxfp4,
        ExpertsArg::Dense => ExpertFormat::Dense,
    };
    super::out_guard::check_output(&args.out, &[], args.overwrite)?;
    let n = write_tiny(&args.out, preset, args.seed, experts)?;
    println!(
        "wrote {} ({} parameters, seed {})",
        args.out.display(),
        n,
        args.seed
    );
    Ok(())
}

/// A release-shaped checkpoint, streamed (never more than a chunk of it in memory).
fn write_release(args: &Args, name: &str) -> Result<()> {
    let mut shape = release_shape(name).expect("a release preset");
    if let Some(n) = args.layers {
        if n == 0 || n > shape.layers {
            bail!("--layers {n}: {name} has 1..={} layers", shape.layers);
        }
        shape.layers = n;
    }
    if !matches!(args.experts, ExpertsArg::Mxfp4) {
        bail!("--preset {name} is written in the release layout: MXFP4 experts only");
    }
    if args.max_shard_mb == 0 {
        bail!("--max-shard-mb must be > 0");
    }
    super::out_guard::check_output(&args.out, &[], args.overwrite)?;
    let (_, bytes) = checkpoint_size(&shape);
    println!(
        "writing {name} shapes, {} layers, {:.2} GiB into {}",
        shape.layers,
        bytes as f64 / (1u64 << 30) as f64,
        args.out.display()
    );
    let s = write_release_layout(&args.out, &shape, args.seed, args.max_shard_mb << 20)?;
    println!(
        "wrote {} ({} parameters in {} shards, {:.2} GiB, seed {})",
        args.out.display(),
        s.params,
        s.shards,
        s.bytes as f64 / (1u64 << 30) as f64,
        args.seed
    );
    Ok(())
}
