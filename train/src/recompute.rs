//! Activation checkpointing per decoder layer (`train.activation_checkpointing`).
//!
//! candle has no "no-grad" mode and no hook to free a sub-graph, so checkpointing is done by
//! hand around the decoder loop:
//! - forward: each layer runs on a detached copy of its input and its output is detached at
//!   once, so the layer's graph (activations, dequantized expert matrices) is dropped right
//!   after it is computed; only the layer inputs x_l [B, T, H] are kept;
//! - backward: from the last layer down, the layer is run again on x_l made a leaf, and one
//!   backward of Σ(y_l · dL/dy_l) yields dL/dx_l and the layer's LoRA gradients.
//!
//! Cost: one extra forward per layer; memory: one layer's graph plus L·B·T·H floats.
//! The per-layer forward mirrors `osstune_model::arch::gpt_oss::Block::forward` (pre-norm attention,
//! then pre-norm MoE, both residual); `tests` checks the gradients against the plain path.
//! LoRA dropout needs nothing here: its masks are a pure function of the seed the trainer set
//! for this micro-step (see `osstune_model::lora::dropout`), so the recompute draws the same masks
//! as the first forward.

use crate::loss::{hidden_loss, BatchTensors};
use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use osstune_model::{kernels, GptOss};

/// Forward + backward of one micro-batch with per-layer recomputation. Same contract as
/// `loss::micro_step`.
pub fn micro_step(
    model: &GptOss,
    vars: &[Var],
    bt: &BatchTensors,
    chunk: usize,
    grad_scale: f64,
) -> Result<(f64, GradStore)> {
    let (_, t) = bt.inputs.dims2()?;
    let (cos, sin) = model.rope.cos_sin(0, t, &model.device)?;
    let mut inputs: Vec<Tensor> = Vec::with_capacity(model.layers.len());
    let eps = model.cfg.rms_norm_eps;
    let mut x = model.embed_tokens(&bt.inputs)?;
    for (l, block) in model.layers.iter().enumerate() {
        inputs.push(x.clone());
        x = block
            .forward(&x, &cos, &sin, 0, eps, None)
            .with_context(|| format!("layer {l}"))?
            .detach();
    }
    // Final norm and loss on a leaf of the last layer's output.
    let last = Var::from_tensor(&x)?;
    let hidden = kernels::rms_norm(last.as_tensor(), &model.norm, model.cfg.rms_norm_eps)?;
    let out = hidden_loss(model, &hidden.detach(), bt, chunk, Some(grad_scale))?;
    let g = out.dh.as_ref().context("internal: no hidden gradient")?;
    let mut grads = (hidden * g.to_dtype(x.dtype())?)?.sum_all()?.backward()?;
    let mut g = grads
        .remove(last.as_tensor())
        .context("internal: no gradient at the last layer")?;
    let mut all = GradStore::default();
    for (l, block) in model.layers.iter().enumerate().rev() {
        let leaf = Var::from_tensor(&inputs[l])?;
        let y = block
            .forward(leaf.as_tensor(), &cos, &sin, 0, eps, None)
            .with_context(|| format!("layer {l} (recompute)"))?;
        let mut gs = (y * g)?.sum_all()?.backward()?;
        g = match gs.remove(leaf.as_tensor()) {
            Some(gx) => gx,
            None => leaf.as_tensor().zeros_like()?,
        };
        // Keep only the LoRA gradients (candle also returns gradients of frozen tensors).
        all.extend(keep_vars(gs, vars))?;
    }
    out.add_head_grads(&mut all)?;
    Ok((out.loss, all))
}

/// A gradient store with only the entries of `vars`.
pub fn keep_vars(mut gs: GradStore, vars: &[Var]) -> GradStore {
    let mut out = GradStore::default();
    for v in vars {
        if let Some(g) = gs.remove(v.as_tensor()) {
            out.insert(v.as_tensor(), g);
        }
    }
    out
}
