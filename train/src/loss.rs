//! Cross-entropy over the trained tokens, computed in chunks of the sequence so the logits
//! ([B, T, V] — V = 201088 for gpt-oss) never exist whole.
//!
//! Normalisation: one optimizer step accumulates several micro-batches. Its loss is
//!
//!   L = Σ_{micro-batches} Σ_{trained tokens t} −log p(token_t) / N_step
//!
//! where N_step is the number of trained tokens in ALL micro-batches of the step (known before
//! the first forward, since the batches are drawn up front). Every trained token therefore has
//! the same weight however the tokens fall into micro-batches or how much padding there is —
//! the "sum, then divide by the total" convention (mlx-lm's `ntoks`-weighted average; not the
//! mean of per-micro-batch means, which would overweight short micro-batches).
//!
//! The backward pass is split in two at the final hidden state h [B, T, H]:
//! 1. only trained positions have a target, so only their rows of h go through the lm_head,
//!    a chunk of rows at a time; d loss / d logits = (softmax − onehot) · w / N_step is formed
//!    directly in a fused pass (no autograd through log-softmax), and dL/dh_rows =
//!    dL/dlogits · lm_head (`GptOss::logits` is `h · lm_headᵀ`, the final norm being part of
//!    `forward_hidden`); the rows are scattered back into dL/dh;
//! 2. the chunks' dL/dh are concatenated and pushed through the decoder in one backward of
//!    Σ(h · dL/dh), which delivers the LoRA gradients.
//!
//! Only one chunk of logits is alive at a time.

use crate::batches::MicroBatch;
use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use osstune_model::{kernels, GptOss};

/// Inputs of a micro-batch as tensors.
pub struct BatchTensors {
    pub inputs: Tensor,
    pub targets: Tensor,
    pub weights: Tensor,
}

impl BatchTensors {
    pub fn new(mb: &MicroBatch, device: &Device) -> Result<Self> {
        let shape = (mb.batch, mb.len);
        Ok(Self {
            inputs: Tensor::from_vec(mb.inputs.clone(), shape, device)?,
            targets: Tensor::from_vec(mb.targets.clone(), shape, device)?,
            weights: Tensor::from_vec(mb.weights.clone(), shape, device)?,
        })
    }
}

/// Loss over the final hidden state `h` [B, T, H] (detached); with `grad_scale`, also
/// dL/dh [B, T, H]. Only the trained positions go through the lm_head (prompt tokens have
/// no target), `chunk · B` rows at a time.
pub fn hidden_loss(
    model: &GptOss,
    h: &Tensor,
    bt: &BatchTensors,
    chunk: usize,
    grad_scale: Option<f64>,
) -> Result<(f64, Option<Tensor>)> {
    let (b, t, hd) = h.dims3()?;
    let dev = h.device();
    let w_all: Vec<f32> = bt.weights.flatten_all()?.to_vec1()?;
    let tg_all: Vec<u32> = bt.targets.flatten_all()?.to_vec1()?;
    let rows: Vec<u32> = (0..w_all.len() as u32)
        .filter(|&i| w_all[i as usize] > 0.0)
        .collect();
    let idx = Tensor::new(rows.as_slice(), dev)?;
    let hs = h.reshape((b * t, hd))?.index_select(&idx, 0)?;
    let tg: Vec<u32> = rows.iter().map(|&i| tg_all[i as usize]).collect();
    let w: Vec<f32> = rows.iter().map(|&i| w_all[i as usize]).collect();
    let (total, dh) =
        kernels::linear_cross_entropy(&hs, &model.lm_head, (&tg, &w), grad_scale, chunk * b)?;
    let Some(dh) = dh else {
        return Ok((total, None));
    };
    let g = if rows.is_empty() {
        h.zeros_like()?
    } else {
        let gs = dh.to_dtype(h.dtype())?;
        Tensor::zeros((b * t, hd), h.dtype(), dev)?
            .index_add(&idx, &gs, 0)?
            .reshape((b, t, hd))?
    };
    Ok((total, Some(g)))
}

/// Forward + backward of one micro-batch. Returns the summed token loss and the gradients of
/// `Σ token losses · grad_scale` with respect to every LoRA variable.
pub fn micro_step(
    model: &GptOss,
    bt: &BatchTensors,
    chunk: usize,
    grad_scale: f64,
) -> Result<(f64, GradStore)> {
    let hidden = model.forward_hidden(&bt.inputs)?;
    let (loss, g) = hidden_loss(model, &hidden.detach(), bt, chunk, Some(grad_scale))?;
    let g = g.context("internal: no hidden gradient")?;
    let g = g.to_dtype(hidden.dtype())?;
    let grads = (hidden * g)?.sum_all()?.backward()?;
    Ok((loss, grads))
}

/// Summed token loss of a micro-batch, no gradients.
pub fn eval_loss(model: &GptOss, bt: &BatchTensors, chunk: usize) -> Result<f64> {
    let hidden = model.forward_hidden(&bt.inputs)?.detach();
    Ok(hidden_loss(model, &hidden, bt, chunk, None)?.0)
}
