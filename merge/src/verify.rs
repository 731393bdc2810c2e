//! `--verify`: the merged checkpoint must compute what base + adapter computes. A fixed probe
//! batch goes through (1) the base, (2) the base with the adapter attached unmerged (the same
//! path training and `generate --adapter` use), (3) the merged checkpoint; all in f32 on the
//! CPU. The models are loaded one after the other, so at most one is resident.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use osstune_model::arch::gpt_oss::GptOss;
use osstune_model::io::adapter::attach_dir;
use osstune_model::Config;
use std::path::Path;

pub struct Verify {
    /// max |logit(merged) − logit(base + adapter)|
    pub max_diff: f32,
    /// mean |logit(merged) − logit(base + adapter)|: small next to `max_diff` means a few
    /// positions moved (an expert-routing flip), not the whole distribution.
    pub mean_diff: f32,
    /// max |logit(base + adapter) − logit(base)|: how much the adapter matters at all.
    pub adapter_effect: f32,
    /// max |logit(base + adapter)|
    pub max_logit: f32,
}

/// A `--verify-tol` must be a finite number ≥ 0 (NaN would make every comparison pass).
pub fn check_tolerance(tol: f32) -> Result<()> {
    if !(tol.is_finite() && tol >= 0.0) {
        bail!("--verify-tol must be a finite number ≥ 0, got {tol}");
    }
    Ok(())
}

/// Whether the merged logits are close enough. Written so that NaN anywhere fails: the
/// comparison is true only for two ordered numbers with `diff ≤ tol`.
pub fn within_tolerance(max_diff: f32, tol: f32) -> bool {
    max_diff <= tol && tol.is_finite()
}

/// Bytes a probe of 2 × `len` tokens needs beyond the weights (f32): three logits tensors
/// and their difference, the residual stream and per-layer projections, and, where the
/// attention is not fused, [Hq, T, T] scores and probabilities.
pub fn probe_bytes(cfg: &Config, len: usize) -> u128 {
    let (t, v, h) = (
        2 * len as u128,
        cfg.vocab_size as u128,
        cfg.hidden_size as u128,
    );
    let hq = cfg.num_attention_heads as u128;
    t * v * 4 * 4 + t * h * 4 * 16 + 2 * hq * (len as u128).pow(2) * 4 * 2
}

/// `--probe-len` must be ≥ 1, within the model's context and fit in memory.
pub fn check_probe_len(cfg: &Config, len: usize) -> Result<()> {
    if len == 0 {
        bail!("--probe-len must be ≥ 1 token (the probe is 2 sequences of that length)");
    }
    let ctx = cfg.context_len();
    if len > ctx {
        bail!("--probe-len {len} exceeds the model's context of {ctx} tokens");
    }
    let need = probe_bytes(cfg, len);
    if let Some(avail) = osstune_train::preflight::mem_available() {
        if need > avail as u128 {
            bail!(
                "--probe-len {len} needs about {:.2} GiB for the probe's logits and \
                 activations, more than the {:.2} GiB available; use a shorter probe",
                need as f64 / (1u64 << 30) as f64,
                avail as f64 / (1u64 << 30) as f64
            );
        }
    }
    Ok(())
}

/// Probe ids: 2 sequences × `len` tokens, seeded, inside the vocabulary.
pub fn probe_ids(vocab: usize, len: usize, dev: &Device) -> Result<Tensor> {
    let mut rng = osstune_rng::SplitMix64::new(0x9e37_79b9_7f4a_7c15);
    let ids: Vec<u32> = (0..2 * len)
        .map(|_| rng.below(vocab as u64) as u32)
        .collect();
    Ok(Tensor::from_vec(ids, (2, len), dev)?)
}

fn logits(model: &GptOss, ids: &Tensor) -> Result<Tensor> {
    let h = model.forward_hidden(ids)?;
    Ok(model.logits(&h)?.to_dtype(DType::F32)?)
}

fn max_abs(a: &Tensor, b: Option<&Tensor>) -> Result<f32> {
    let d = match b {
        Some(b) => (a - b)?,
        None => a.clone(),
    };
    Ok(d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

pub fn verify(base: &Path, adapter: &Path, merged: &Path, len: usize) -> Result<Verify> {
    let dev = Device::Cpu;
    let mut model = GptOss::load(base, &dev, DType::F32)
        .with_context(|| format!("verify: loading base {}", base.display()))?;
    let ids = probe_ids(model.cfg.vocab_size, len, &dev)?;
    let plain = logits(&model, &ids)?;
    // The adapter's base identity (content digest) was checked before the merge started,
    // where `--allow-other-base` applies; here only the numbers are compared.
    model.content_digest = None;
    attach_dir(&mut model, adapter, &dev)
        .with_context(|| format!("verify: loading adapter {}", adapter.display()))?;
    let reference = logits(&model, &ids)?;
    drop(model);
    let merged_model = GptOss::load(merged, &dev, DType::F32)
        .with_context(|| format!("verify: loading merged {}", merged.display()))?;
    let got = logits(&merged_model, &ids)?;
    Ok(Verify {
        max_diff: max_abs(&got, Some(&reference))?,
        mean_diff: (&got - &reference)?.abs()?.mean_all()?.to_scalar::<f32>()?,
        adapter_effect: max_abs(&reference, Some(&plain))?,
        max_logit: max_abs(&reference, None)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_checks_fail_closed() {
        for bad in [f32::NAN, -1e-3, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(check_tolerance(bad).is_err(), "{bad}");
        }
        check_tolerance(0.0).unwrap();
        assert!(within_tolerance(0.5, 1.0));
        assert!(!within_tolerance(f32::NAN, 1.0));
        assert!(!within_tolerance(0.5, f32::NAN));
        assert!(!within_tolerance(2.0, 1.0));
    }
}
