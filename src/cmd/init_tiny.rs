//! `osstune init-tiny`: a seeded random gpt-oss-shaped checkpoint in the HF layout.

use anyhow::Result;
use osstune_model::io::tiny::{write_tiny, ExpertFormat, Preset};
use std::path::PathBuf;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PresetArg {
    /// Real o200k_harmony vocabulary (201088), hidden 64, 4 layers, 8 experts top-2, bf16.
    Tiny,
    /// CPU benchmark shapes: hidden 512, 4 layers, 16 experts top-4, vocab 8192, f32.
    Bench,
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
}

pub fn run(args: Args) -> Result<()> {
    let preset = match args.preset {
        PresetArg::Tiny => Preset::Tiny,
        PresetArg::Bench => Preset::Bench,
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
