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
use osstune_model::ops::{fast_exp, max_f32, simd, sum_f32};
use osstune_model::GptOss;

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

/// Fused cross-entropy over rows of logits (host, f32): returns the summed weighted loss and,
/// if `scale` is given, d loss / d logits = (softmax − onehot) · w · scale, in two passes over
/// each row (the tensor-op version needs ~10 passes over [rows, V], which dominates a step
/// when V = 201088). Rows are split over the available threads.
fn fused_ce(
    logits: &[f32],
    v: usize,
    targets: &[u32],
    weights: &[f32],
    scale: Option<f64>,
) -> (f64, Option<Vec<f32>>) {
    let rows = targets.len();
    let mut grad = scale.map(|_| vec![0f32; rows * v]);
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .min(rows.max(1));
    let per = rows.div_ceil(threads.max(1)).max(1);
    let row_loss = |r: usize, g: Option<&mut [f32]>| -> f64 {
        simd(|| {
            let x = &logits[r * v..(r + 1) * v];
            let max = max_f32(x, f32::NEG_INFINITY);
            let t = targets[r] as usize;
            // exp(x − max) once: into the gradient row when there is one (then scaled in
            // place), else into a small scratch block. Partial sums are per 512-wide block, in
            // f64 across blocks, so long vocabularies lose nothing to f32 accumulation.
            let mut sum = 0f64;
            let mut g = g.zip(scale);
            match g.as_mut() {
                Some((g, _)) => {
                    for (gc, xc) in g.chunks_mut(512).zip(x.chunks(512)) {
                        for (gi, &xi) in gc.iter_mut().zip(xc) {
                            *gi = fast_exp(xi - max);
                        }
                        sum += sum_f32(gc) as f64;
                    }
                }
                None => {
                    let mut e = [0f32; 512];
                    for xc in x.chunks(512) {
                        for (ei, &xi) in e.iter_mut().zip(xc) {
                            *ei = fast_exp(xi - max);
                        }
                        sum += sum_f32(&e[..xc.len()]) as f64;
                    }
                }
            }
            let loss = (max as f64 + sum.ln() - x[t] as f64) * weights[r] as f64;
            if let Some((g, sc)) = g {
                let k = (weights[r] as f64 * sc / sum) as f32;
                g.iter_mut().for_each(|gi| *gi *= k);
                g[t] -= (weights[r] as f64 * sc) as f32;
            }
            loss
        })
    };
    let total = std::thread::scope(|s| {
        let mut handles = Vec::new();
        let mut grad_chunks: Vec<Option<&mut [f32]>> = match grad.as_mut() {
            Some(g) => g.chunks_mut(per * v).map(Some).collect(),
            None => (0..rows.div_ceil(per)).map(|_| None).collect(),
        };
        for (ci, gc) in grad_chunks.drain(..).enumerate() {
            let row_loss = &row_loss;
            handles.push(s.spawn(move || {
                let lo = ci * per;
                let hi = (lo + per).min(rows);
                let mut acc = 0f64;
                let mut gc = gc;
                for r in lo..hi {
                    let g = gc
                        .as_deref_mut()
                        .map(|g| &mut g[(r - lo) * v..(r - lo + 1) * v]);
                    acc += row_loss(r, g);
                }
                acc
            }));
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(f64::NAN))
            .sum::<f64>()
    });
    (total, grad)
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
    let v = model.cfg.vocab_size;
    let lm = model.lm_head.clone();
    let mut total = 0.0;
    let mut grads = Vec::new();
    for part in rows.chunks((chunk * b).max(1)) {
        let idx = Tensor::new(part, dev)?;
        let hs = h2.index_select(&idx, 0)?;
        let logits: Vec<f32> = model
            .logits(&hs)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let tg: Vec<u32> = part.iter().map(|&i| tg_all[i as usize]).collect();
        let w: Vec<f32> = part.iter().map(|&i| w_all[i as usize]).collect();
        let (l, g) = fused_ce(&logits, v, &tg, &w, grad_scale);
        total += l;
        if let Some(g) = g {
            // logits = hs · lm_headᵀ  ⇒  dL/dhs = dL/dlogits · lm_head.
            let g = Tensor::from_vec(g, (part.len(), v), dev)?.to_dtype(lm.dtype())?;
            grads.push(g.matmul(&lm)?);
        }
    }
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
