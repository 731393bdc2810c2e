//! `--verify`: the merged checkpoint must compute what base + adapter computes. A fixed probe
//! batch goes through (1) the base, (2) the base with the adapter attached unmerged (the same
//! path training and `generate --adapter` use), (3) the merged checkpoint; all in f32 on the
//! CPU. The models are loaded one after the other, so at most one is resident.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use osstune_model::arch::gpt_oss::GptOss;
use osstune_train::adapters::Adapters;
use osstune_train::trainer;
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

/// Probe ids: 2 sequences × `len` tokens, seeded, inside the vocabulary.
pub fn probe_ids(vocab: usize, len: usize, dev: &Device) -> Result<Tensor> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let ids: Vec<u32> = (0..2 * len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
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
    let shapes = trainer::target_shapes(&model);
    let ad = Adapters::load(adapter, &shapes, &trainer::base_info(&model), &dev)
        .with_context(|| format!("verify: loading adapter {}", adapter.display()))?;
    trainer::attach(&mut model, &ad)?;
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
