//! A content digest of a base model, to tell two bases of the same architecture apart (the
//! `fingerprint` covers the architecture only): sha256 over the RMSNorm weights and attention
//! sinks — small tensors that every layout (HF MXFP4, HF dense, MLX, merged) stores as plain
//! floats under the same names, and that LoRA never changes. Values are rounded to bf16 (the
//! released checkpoints' dtype) before hashing, so f32 and bf16 copies of one model match.

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use osstune_model::checkpoint::Checkpoint;
use sha2::{Digest, Sha256};
use std::path::Path;

fn is_digested(name: &str) -> bool {
    name == "model.norm.weight"
        || name.ends_with(".input_layernorm.weight")
        || name.ends_with(".post_attention_layernorm.weight")
        || name.ends_with(".self_attn.sinks")
}

/// The digest of the model in `dir` (hex), or None when it holds none of those tensors.
pub fn content_digest(dir: &Path) -> Result<Option<String>> {
    let ck = Checkpoint::open(dir)?;
    let mut names: Vec<&str> = ck.names().filter(|n| is_digested(n)).collect();
    if names.is_empty() {
        return Ok(None);
    }
    names.sort_unstable();
    let mut h = Sha256::new();
    for n in names {
        // Rounded to bf16 and back: exact, and equal for f32 and bf16 copies.
        let bits: Vec<u32> = ck
            .load(n, &Device::Cpu)?
            .to_dtype(DType::F32)?
            .to_dtype(DType::BF16)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()
            .with_context(|| format!("digesting {n} of {}", dir.display()))?
            .iter()
            .map(|v| v.to_bits())
            .collect();
        h.update(n.as_bytes());
        h.update((bits.len() as u64).to_le_bytes());
        for b in bits {
            h.update(b.to_le_bytes());
        }
    }
    Ok(Some(
        h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    ))
}

/// Refuses an adapter whose recorded base digest differs from the base's (both known),
/// unless `allow` (`--allow-other-base`).
pub fn check(
    adapter: Option<&str>,
    base: Option<&str>,
    adapter_dir: &Path,
    allow: bool,
) -> Result<()> {
    let (Some(a), Some(b)) = (adapter, base) else {
        return Ok(()); // an adapter from before the digest, or a base without those tensors
    };
    if a == b {
        return Ok(());
    }
    if allow {
        eprintln!(
            "--allow-other-base: adapter {} was trained on base content {a:.16}, applying it to {b:.16}",
            adapter_dir.display()
        );
        return Ok(());
    }
    anyhow::bail!(
        "adapter {} was trained on a base with content digest {a}, but this base's is {b}: \
         same architecture, different weights (norms / attention sinks differ). Use the base it \
         was trained on, or pass --allow-other-base to apply it anyway",
        adapter_dir.display()
    )
}
