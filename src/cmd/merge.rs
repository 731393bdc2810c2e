//! `osstune merge`: fold an adapter into its base and write a full checkpoint.

use anyhow::{bail, Context, Result};
use osstune_merge::{merge, Dtype, Format, MergeOptions, VerifyOptions};
use std::path::PathBuf;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// Hugging Face layout, dense bf16 experts (`gate_up_proj` / `down_proj`); transformers loads it.
    Hf,
    /// Hugging Face layout, experts re-quantized to MXFP4 (`*_blocks` / `*_scales`).
    HfMxfp4,
    /// mlx-lm layout: experts split into gate/up/down SwitchLinear, dense.
    Mlx,
    /// mlx-lm layout with mxfp4 experts (config `quantization`).
    MlxMxfp4,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum DtypeArg {
    Bf16,
    F32,
}

#[derive(clap::Args)]
pub struct Args {
    /// Base model folder (HF MXFP4 / dense, or MLX layout).
    #[arg(long)]
    pub model: PathBuf,
    /// Adapter folder (adapters.safetensors + adapter_config.json).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output folder (must not exist; written to a temporary folder, then renamed).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "hf")]
    pub format: FormatArg,
    /// Dtype of the non-MXFP4 weights; f32 keeps the merge exact.
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: DtypeArg,
    /// Largest shard, in MB.
    #[arg(long, default_value_t = 4800)]
    pub max_shard_mb: usize,
    /// Compare logits of a probe batch: base + adapter vs merged; fail above the tolerance.
    #[arg(long)]
    pub verify: bool,
    /// Max |Δlogit| for --verify (default 1e-3 for f32 dense output, else 2% of max |logit|).
    #[arg(long)]
    pub verify_tol: Option<f32>,
    /// Tokens per probe sequence for --verify (2 sequences).
    #[arg(long, default_value_t = 16)]
    pub probe_len: usize,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Merge even though the adapter was trained on a base with other weights (same
    /// architecture, different content digest).
    #[arg(long)]
    pub allow_other_base: bool,
}

/// Refuses an adapter trained on another base of the same architecture: the content digest
/// it recorded (`base_model.content_digest`) against the base's.
fn check_base_content(args: &Args) -> Result<()> {
    let p = args.adapter.join("adapter_config.json");
    let Ok(text) = std::fs::read_to_string(&p) else {
        return Ok(()); // the merge itself reports a missing or unreadable config
    };
    let j: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))?;
    let Some(recorded) = j["base_model"]["content_digest"].as_str() else {
        return Ok(());
    };
    if args.allow_other_base {
        return Ok(());
    }
    let base = osstune_model::io::content_digest::content_digest_of_dir(&args.model)?;
    osstune_model::io::content_digest::check(Some(recorded), base.as_deref(), &args.adapter)
}

pub fn run(args: Args) -> Result<()> {
    if args.max_shard_mb == 0 {
        bail!("--max-shard-mb must be ≥ 1");
    }
    if let Some(t) = args.verify_tol {
        osstune_merge::verify::check_tolerance(t)?;
    }
    check_base_content(&args)?;
    let format = match args.format {
        FormatArg::Hf => Format::Hf,
        FormatArg::HfMxfp4 => Format::HfMxfp4,
        FormatArg::Mlx => Format::Mlx,
        FormatArg::MlxMxfp4 => Format::MlxMxfp4,
    };
    let dtype = match args.dtype {
        DtypeArg::Bf16 => Dtype::BF16,
        DtypeArg::F32 => Dtype::F32,
    };
    let opts = MergeOptions {
        model: args.model,
        adapter: args.adapter,
        out: args.out.clone(),
        format,
        dtype,
        max_shard_bytes: args.max_shard_mb.saturating_mul(1_000_000),
        base_fingerprint: None,
        progress: !args.quiet,
        verify: args.verify.then_some(VerifyOptions {
            probe_len: args.probe_len,
            tol: args.verify_tol,
        }),
    };
    let r = merge(&opts)?;
    eprint!("{}", r.survival.report());
    if let Some((v, tol)) = &r.verify {
        println!(
            "verify: max |Δlogit| {:.3e}, mean {:.3e} (tolerance {tol:.3e}; adapter effect {:.3e}, max |logit| {:.3})",
            v.max_diff, v.mean_diff, v.adapter_effect, v.max_logit
        );
    }
    println!(
        "merged {} adapted matrices into {} ({}, {} shard(s), {:.1} MB) in {:.1}s",
        r.adapted,
        args.out.display(),
        format.name(),
        r.shards.len(),
        r.bytes as f64 / 1e6,
        r.seconds
    );
    Ok(())
}
