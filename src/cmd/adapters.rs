//! `osstune adapters export|import`: osstune adapters ↔ PEFT / mlx-lm files.

use super::out_guard::check_output;
use anyhow::{Context, Result};
use osstune_train::export::{self, Format};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum AdaptersCommand {
    /// Write an osstune adapter in PEFT (transformers) or mlx-lm format.
    Export {
        /// osstune adapter folder (adapters.safetensors + adapter_config.json).
        #[arg(long)]
        adapter: PathBuf,
        /// peft | mlx
        #[arg(long)]
        format: Format,
        #[arg(long)]
        out: PathBuf,
        /// Write into --out even if it exists (same-named files are replaced).
        #[arg(long)]
        overwrite: bool,
    },
    /// Read a PEFT or mlx-lm adapter back into osstune's format for a base model.
    Import {
        /// PEFT (adapter_model.safetensors) or mlx-lm (adapters.safetensors) folder.
        #[arg(long)]
        from: PathBuf,
        /// peft | mlx
        #[arg(long)]
        format: Format,
        /// The base model the adapter belongs to (its fingerprint goes into the config).
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Write into --out even if it exists (same-named files are replaced).
        #[arg(long)]
        overwrite: bool,
    },
    /// Write the logits of base + adapter for a token sequence (f32 safetensors, tensor
    /// "logits" [T, V]), for checking exports against other frameworks.
    Logits {
        #[arg(long)]
        model: PathBuf,
        /// osstune adapter folder; omit for the base model alone.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Comma-separated token ids.
        #[arg(long, value_delimiter = ',')]
        ids: Vec<u32>,
        #[arg(long)]
        out: PathBuf,
        /// Apply the adapter even though it was trained on a base with other weights.
        #[arg(long)]
        allow_other_base: bool,
    },
}

pub fn run(c: AdaptersCommand) -> Result<()> {
    match c {
        AdaptersCommand::Export {
            adapter,
            format,
            out,
            overwrite,
        } => {
            check_output(&out, &[("--adapter", &adapter)], overwrite)?;
            export::export(&adapter, &out, format)?;
            eprintln!("wrote {} adapter to {}", fmt_name(format), out.display());
        }
        AdaptersCommand::Import {
            from,
            format,
            model,
            out,
            overwrite,
        } => {
            check_output(&out, &[("--from", &from), ("--model", &model)], overwrite)?;
            let cfg = osstune_model::Config::from_model_dir(&model)
                .with_context(|| format!("reading base model {}", model.display()))?;
            let base = osstune_train::adapters::BaseModelInfo {
                model_type: cfg.model_type.clone(),
                fingerprint: Some(cfg.fingerprint()),
                num_hidden_layers: cfg.num_hidden_layers,
                hidden_size: cfg.hidden_size,
                num_local_experts: cfg.num_local_experts,
                content_digest: osstune_model::io::content_digest::content_digest_of_dir(&model)?,
            };
            import_checked(&from, &out, format, &base, &model)?;
            eprintln!("wrote osstune adapter to {}", out.display());
        }
        AdaptersCommand::Logits {
            model,
            adapter,
            ids,
            out,
            allow_other_base,
        } => logits(&model, adapter.as_deref(), &ids, &out, allow_other_base)?,
    }
    Ok(())
}

/// Imports into a temporary folder beside `out`, checks the result against the base (every
/// factor's shape and rank, layers, finite values: what `merge` and `generate --adapter`
/// would refuse later, with a worse culprit) and only then moves it into place.
fn import_checked(
    from: &Path,
    out: &Path,
    format: Format,
    base: &osstune_train::adapters::BaseModelInfo,
    model: &Path,
) -> Result<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let leaf = out
        .file_name()
        .context("--out has no folder name")?
        .to_string_lossy();
    let tmp = parent.join(format!(".{leaf}.import-tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let checked = export::import(from, &tmp, format, base).and_then(|_| {
        let ad = osstune_merge::adapter::Adapter::open(&tmp)?;
        let b = osstune_merge::base::Base::open(model)?;
        ad.check_shapes(b.layers, |l, t| b.target_shape(l, t))
            .with_context(|| format!("the adapter imported from {}", from.display()))
    });
    let moved = checked.and_then(|_| {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        for e in std::fs::read_dir(&tmp)? {
            let e = e?;
            let dst = out.join(e.file_name());
            std::fs::rename(e.path(), &dst)
                .with_context(|| format!("moving {} into place", dst.display()))?;
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&tmp);
    moved
}

fn fmt_name(f: Format) -> &'static str {
    match f {
        Format::Peft => "PEFT",
        Format::Mlx => "mlx-lm",
    }
}

fn logits(
    model_dir: &std::path::Path,
    adapter: Option<&std::path::Path>,
    ids: &[u32],
    out: &std::path::Path,
    allow_other_base: bool,
) -> Result<()> {
    use candle_core::{DType, Device, Tensor};
    use osstune_train::adapters::{safetensors_bytes, Adapters};
    use osstune_train::trainer::{attach, base_info, target_shapes};
    if ids.is_empty() {
        anyhow::bail!("--ids is empty");
    }
    let dev = Device::Cpu;
    let mut model = osstune_model::GptOss::load(model_dir, &dev, DType::F32)?;
    if allow_other_base {
        model.content_digest = None; // skip the base content check
    }
    if let Some(a) = adapter {
        let ad = Adapters::load(a, &target_shapes(&model), &base_info(&model), &dev)?;
        attach(&mut model, &ad)?;
    }
    let x = Tensor::new(ids, &dev)?.unsqueeze(0)?;
    let h = model.forward_hidden(&x)?;
    let l = model.logits(&h)?.squeeze(0)?.to_dtype(DType::F32)?;
    std::fs::write(out, safetensors_bytes(&[("logits".to_string(), l)])?)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
