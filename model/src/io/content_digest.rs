//! A content digest of a base model, to tell two bases of one architecture apart (the config
//! `fingerprint` covers the architecture only): sha256 over the RMSNorm weights and attention
//! sinks — small tensors that every layout (HF MXFP4, HF dense, MLX, merged) stores as plain
//! floats under the same names, and that LoRA never changes. Values are rounded to bf16 (the
//! released checkpoints' dtype) before hashing, so f32 and bf16 copies of one model match.
//! Merges of one base keep its digest: it tells bases apart, not a base from its merges.

use crate::io::checkpoint::Checkpoint;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use sha2::{Digest, Sha256};
use std::path::Path;

fn is_digested(name: &str) -> bool {
    name == "model.norm.weight"
        || name.ends_with(".input_layernorm.weight")
        || name.ends_with(".post_attention_layernorm.weight")
        || name.ends_with(".self_attn.sinks")
}

/// The digest (hex) of the checkpoint `ck`, or None when it holds none of those tensors.
pub fn content_digest(ck: &Checkpoint) -> Result<Option<String>> {
    let mut names: Vec<&str> = ck.names().filter(|n| is_digested(n)).collect();
    if names.is_empty() {
        return Ok(None);
    }
    names.sort_unstable();
    let mut h = Sha256::new();
    for n in names {
        // Rounded to bf16 and back to f32: exact, and equal for f32 and bf16 copies.
        let v = ck
            .load(n, &Device::Cpu)?
            .to_dtype(DType::F32)?
            .to_dtype(DType::BF16)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()
            .with_context(|| format!("digesting {n}"))?;
        h.update(n.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        for x in v {
            h.update(x.to_bits().to_le_bytes());
        }
    }
    Ok(Some(
        h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    ))
}

/// The digest of the model folder `dir`.
pub fn content_digest_of_dir(dir: &Path) -> Result<Option<String>> {
    content_digest(&Checkpoint::open(dir)?)
}

/// Refuses an adapter whose recorded base digest differs from the base's, when both are
/// known (adapters from before the digest, and callers that opt out, pass None).
pub fn check(adapter: Option<&str>, base: Option<&str>, adapter_dir: &Path) -> Result<()> {
    match (adapter, base) {
        (Some(a), Some(b)) if a != b => bail!(
            "adapter {} was trained on a base with content digest {a}, but this base's is {b}: \
             same architecture, other weights (norms / attention sinks differ). Use the base it \
             was trained on, or pass --allow-other-base to apply it anyway",
            adapter_dir.display()
        ),
        _ => Ok(()),
    }
}
