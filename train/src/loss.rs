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
//!
//! With an `lm_head` adapter (off by default) the logits also carry its low-rank delta, so
//! step 1 runs per chunk through candle: each chunk's rows become a leaf, the logits
//! `h·Wᵀ + scale·(h·Aᵀ)·Bᵀ` are formed, and one backward of Σ(logits · dL/dlogits) gives
//! that chunk's dL/dh rows and its share of the lm_head LoRA gradients (summed over chunks).

use crate::batches::MicroBatch;
use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use osstune_model::kernels::{self, reference::host_ce};
use osstune_model::{GptOss, Lora};

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

/// What [`hidden_loss`] returns: the summed loss and, when gradients were asked for,
/// dL/dh `[B, T, H]` and the gradients of the lm_head adapter (reached without going through
/// h, so they are not part of the decoder's backward).
pub struct HiddenLoss {
    pub loss: f64,
    pub dh: Option<Tensor>,
    pub head: Vec<(Tensor, Tensor)>,
}

impl HiddenLoss {
    /// Adds the lm_head adapter's gradients to the decoder's gradient store.
    pub fn add_head_grads(&self, store: &mut GradStore) -> Result<()> {
        for (var, g) in &self.head {
            let sum = match store.remove(var) {
                Some(prev) => (prev + g)?,
                None => g.clone(),
            };
            store.insert(var, sum);
        }
        Ok(())
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
) -> Result<HiddenLoss> {
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
    let (total, dh, head) = match model.lm_head_lora() {
        Some(l) => head_lora_loss(model, l, &hs, &rows, (&tg, &w), grad_scale, chunk * b)?,
        None => {
            let (total, dh) = kernels::linear_cross_entropy(
                &hs,
                &model.lm_head,
                (&tg, &w),
                grad_scale,
                chunk * b,
            )?;
            (total, dh, Vec::new())
        }
    };
    let Some(dh) = dh else {
        return Ok(HiddenLoss {
            loss: total,
            dh: None,
            head,
        });
    };
    let g = if rows.is_empty() {
        h.zeros_like()?
    } else {
        let gs = dh.to_dtype(h.dtype())?;
        Tensor::zeros((b * t, hd), h.dtype(), dev)?
            .index_add(&idx, &gs, 0)?
            .reshape((b, t, hd))?
    };
    Ok(HiddenLoss {
        loss: total,
        dh: Some(g),
        head,
    })
}

/// The loss with an lm_head adapter: per chunk of rows, logits through the base head and
/// the adapter (its dropout numbers rows by their flat position, as dense projections do),
/// host cross-entropy, and one backward of Σ(logits · dL/dlogits). Returns the loss, dL/dhs
/// `[rows, H]` and the adapter's gradients.
type HeadLoss = (f64, Option<Tensor>, Vec<(Tensor, Tensor)>);

fn head_lora_loss(
    model: &GptOss,
    lora: &Lora,
    hs: &Tensor,
    rows: &[u32],
    (tg, w): (&[u32], &[f32]),
    grad_scale: Option<f64>,
    rows_per_chunk: usize,
) -> Result<HeadLoss> {
    let (n, hd) = hs.dims2()?;
    let v = model.cfg.vocab_size;
    let (a, b) = (lora.a().as_tensor(), lora.b().as_tensor());
    let (mut total, mut dh) = (0.0, Vec::new());
    let (mut ga, mut gb): (Option<Tensor>, Option<Tensor>) = (None, None);
    let step = rows_per_chunk.max(1);
    for r0 in (0..n).step_by(step) {
        let part = r0..(r0 + step).min(n);
        let leaf = Var::from_tensor(&hs.narrow(0, r0, part.len())?)?;
        let x = leaf.as_tensor();
        let lora_in = lora.lora_input(x, Some(&rows[part.clone()]))?;
        let logits = (kernels::linear(x, &model.lm_head, None)? + lora.delta(&lora_in, None)?)?;
        let values: Vec<f32> = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let (l, g) = host_ce(&values, v, &tg[part.clone()], &w[part.clone()], grad_scale);
        total += l;
        let Some(g) = g else { continue };
        let g = Tensor::from_vec(g, (part.len(), v), hs.device())?.to_dtype(logits.dtype())?;
        let gs = (logits * g)?.sum_all()?.backward()?;
        dh.push(
            gs.get(x)
                .context("internal: no gradient for the head rows")?
                .clone(),
        );
        for (acc, t) in [(&mut ga, a), (&mut gb, b)] {
            if let Some(gt) = gs.get(t) {
                *acc = Some(match acc.take() {
                    Some(prev) => (prev + gt)?,
                    None => gt.clone(),
                });
            }
        }
    }
    let dh = match grad_scale {
        None => None,
        Some(_) if dh.is_empty() => Some(Tensor::zeros((0, hd), hs.dtype(), hs.device())?),
        Some(_) => Some(Tensor::cat(&dh, 0)?),
    };
    let head = [(a, ga), (b, gb)]
        .into_iter()
        .filter_map(|(var, g)| Some((var.clone(), g?)))
        .collect();
    Ok((total, dh, head))
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
    let out = hidden_loss(model, &hidden.detach(), bt, chunk, Some(grad_scale))?;
    let g = out.dh.as_ref().context("internal: no hidden gradient")?;
    let g = g.to_dtype(hidden.dtype())?;
    let mut grads = (hidden * g)?.sum_all()?.backward()?;
    out.add_head_grads(&mut grads)?;
    Ok((out.loss, grads))
}

/// Summed token loss of a micro-batch, no gradients.
pub fn eval_loss(model: &GptOss, bt: &BatchTensors, chunk: usize) -> Result<f64> {
    let hidden = model.forward_hidden(&bt.inputs)?.detach();
    Ok(hidden_loss(model, &hidden, bt, chunk, None)?.loss)
}
