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
use candle_core::{DType, Device, Tensor};
use osstune_model::kernels::cpu::linear_ce::{ce_row, ce_row_grad, linear_cross_entropy_cpu};
use osstune_model::GptOss;
use rayon::prelude::*;

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

/// Cross-entropy over rows of logits on the host (the device-generic path: logits come from
/// candle): summed weighted loss and, with `scale`, d loss / d logits. Rows in parallel,
/// losses added in row order (deterministic).
fn host_ce(
    logits: &[f32],
    v: usize,
    targets: &[u32],
    weights: &[f32],
    scale: Option<f64>,
) -> (f64, Option<Vec<f32>>) {
    let row = |r: usize| (targets[r] as usize, weights[r]);
    match scale {
        Some(s) => {
            let mut g = logits.to_vec();
            let losses: Vec<f64> = g
                .par_chunks_mut(v)
                .enumerate()
                .map(|(r, x)| ce_row_grad(x, row(r).0, row(r).1, s))
                .collect();
            (losses.iter().sum(), Some(g))
        }
        None => {
            let losses: Vec<f64> = logits
                .par_chunks(v)
                .enumerate()
                .map(|(r, x)| ce_row(x, row(r).0, row(r).1))
                .collect();
            (losses.iter().sum(), None)
        }
    }
}

/// CPU f32: the trained rows through the fused lm_head + loss kernel in one call.
fn cpu_loss(
    model: &GptOss,
    h2: &Tensor,
    rows: &[u32],
    tg_all: &[u32],
    w_all: &[f32],
    grad_scale: Option<f64>,
) -> Result<Option<(f64, Vec<Tensor>)>> {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !f32_cpu(h2) || !f32_cpu(&model.lm_head) {
        return Ok(None);
    }
    let hs = h2.index_select(&Tensor::new(rows, h2.device())?, 0)?;
    let tg: Vec<u32> = rows.iter().map(|&i| tg_all[i as usize]).collect();
    let w: Vec<f32> = rows.iter().map(|&i| w_all[i as usize]).collect();
    let out = linear_cross_entropy_cpu(&hs, &model.lm_head, &tg, &w, grad_scale)?;
    Ok(out.map(|(loss, dh)| (loss, dh.into_iter().collect())))
}

/// Other devices/dtypes: logits from candle `rows_per_chunk` rows at a time, cross-entropy on
/// the host, dL/dhs = dL/dlogits · lm_head per chunk.
fn chunked_loss(
    model: &GptOss,
    h2: &Tensor,
    rows: &[u32],
    tg_all: &[u32],
    w_all: &[f32],
    rows_per_chunk: usize,
    grad_scale: Option<f64>,
) -> Result<(f64, Vec<Tensor>)> {
    let dev = h2.device();
    let v = model.cfg.vocab_size;
    let lm = &model.lm_head;
    let mut total = 0.0;
    let mut grads = Vec::new();
    for part in rows.chunks(rows_per_chunk.max(1)) {
        let idx = Tensor::new(part, dev)?;
        let hs = h2.index_select(&idx, 0)?;
        let logits: Vec<f32> = model
            .logits(&hs)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let tg: Vec<u32> = part.iter().map(|&i| tg_all[i as usize]).collect();
        let w: Vec<f32> = part.iter().map(|&i| w_all[i as usize]).collect();
        let (l, g) = host_ce(&logits, v, &tg, &w, grad_scale);
        total += l;
        if let Some(g) = g {
            // logits = hs · lm_headᵀ  ⇒  dL/dhs = dL/dlogits · lm_head.
            let g = Tensor::from_vec(g, (part.len(), v), dev)?.to_dtype(lm.dtype())?;
            grads.push(g.matmul(lm)?);
        }
    }
    Ok((total, grads))
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
    let h2 = h.reshape((b * t, hd))?;
    let (total, grads) = match cpu_loss(model, &h2, &rows, &tg_all, &w_all, grad_scale)? {
        Some(r) => r,
        None => chunked_loss(model, &h2, &rows, &tg_all, &w_all, chunk * b, grad_scale)?,
    };
    let Some(_) = grad_scale else {
        return Ok((total, None));
    };
    let g = if grads.is_empty() {
        h.zeros_like()?
    } else {
        let idx = Tensor::new(rows.as_slice(), dev)?;
        let gs = Tensor::cat(&grads, 0)?.to_dtype(h.dtype())?;
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
