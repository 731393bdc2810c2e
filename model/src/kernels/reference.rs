//! The reference composition of every fused op: candle ops only, so they run (and
//! differentiate) on any device and dtype. They define what the backends compute; the dispatch
//! functions in `kernels` fall back to them, and `model/tests/kernels.rs` compares every
//! backend against them. The MoE's expert half is in `moe.rs`.

use crate::kernels::cpu::linear_ce::{ce_row, ce_row_grad};
use crate::kernels::mask::CausalMask;
use crate::kernels::op::CResult;
use crate::kernels::AttentionShape;
use candle_core::{DType, Tensor, D};
use rayon::prelude::*;

pub fn softmax_last_dim(x: &Tensor) -> CResult<Tensor> {
    candle_nn::ops::softmax(x, D::Minus1)
}

pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> CResult<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let y = xf.broadcast_div(&(ms + eps)?.sqrt()?)?;
    y.broadcast_mul(&w.to_dtype(DType::F32)?)?.to_dtype(dtype)
}

pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> CResult<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let (c, s) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
    let o1 = (x1.broadcast_mul(&c)? - x2.broadcast_mul(&s)?)?;
    let o2 = (x2.broadcast_mul(&c)? + x1.broadcast_mul(&s)?)?;
    Tensor::cat(&[o1, o2], D::Minus1)
}

pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> CResult<Tensor> {
    let y = x.matmul(&w.t()?)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

pub fn swiglu(u: &Tensor, limit: f64, alpha: f64) -> CResult<Tensor> {
    let i = u.dim(1)? / 2;
    let gate = u.narrow(1, 0, i)?.minimum(limit)?;
    let up = u.narrow(1, i, i)?.clamp(-limit, limit)?;
    let glu = (&gate * candle_nn::ops::sigmoid(&(&gate * alpha)?)?)?;
    glu * (up + 1.0)?
}

/// `scores [B, H, T, Tk]` (already masked with −inf), `sinks [H]` → probabilities over the
/// keys, softmax taken with the sink as an extra column which is then dropped.
pub fn sink_softmax(scores: &Tensor, sinks: &Tensor) -> CResult<Tensor> {
    let (b, h, t, n) = scores.dims4()?;
    let dtype = scores.dtype();
    let s = scores.to_dtype(DType::F32)?;
    let col = sinks
        .to_dtype(DType::F32)?
        .reshape((1, h, 1, 1))?
        .broadcast_as((b, h, t, 1))?
        .contiguous()?;
    let all = Tensor::cat(&[&s, &col], D::Minus1)?;
    let p = candle_nn::ops::softmax(&all, D::Minus1)?;
    p.narrow(D::Minus1, 0, n)?.contiguous()?.to_dtype(dtype)
}

/// The additive `[T, Tk]` mask, then [`sink_softmax`].
pub fn masked_sink_softmax(scores: &Tensor, sinks: &Tensor, mask: CausalMask) -> CResult<Tensor> {
    let (_, _, t, tk) = scores.dims4()?;
    let scores = match mask.additive(t, tk, scores.dtype(), scores.device())? {
        Some(m) => scores.broadcast_add(&m)?,
        None => scores.clone(),
    };
    sink_softmax(&scores, sinks)
}

/// Heads split, RoPE, GQA without repeating K/V (query heads `g·rep..(g+1)·rep` share KV
/// head g, so `[B, Hq, T, D]` is viewed as `[B, Hkv, rep·T, D]`), masked sink softmax and the
/// value product. The same composition serves cached decoding: see [`attention_heads`].
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (cos, sin, sinks): (&Tensor, &Tensor, &Tensor),
    shape: AttentionShape,
    mask: CausalMask,
) -> CResult<Tensor> {
    let (q, k, v) = split_heads(q, k, v, (cos, sin), shape)?;
    attention_heads(&q, &k, &v, sinks, shape, mask)
}

/// The projections `[B, T, H·D]` as heads `[B, H, T, D]`, with RoPE applied to q and k
/// (through `kernels::rope`, the cached path's per-head op).
pub fn split_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    shape: AttentionShape,
) -> CResult<(Tensor, Tensor, Tensor)> {
    let (b, t, _) = q.dims3()?;
    let d = shape.head_dim;
    let heads = |y: &Tensor, n: usize| -> CResult<Tensor> {
        y.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()
    };
    let q = heads(q, shape.n_heads)?;
    let k = heads(k, shape.n_kv_heads)?;
    let v = heads(v, shape.n_kv_heads)?;
    let dtype = q.dtype();
    let (cos, sin) = if dtype == DType::F32 {
        (cos.clone(), sin.clone())
    } else {
        (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?)
    };
    let q = crate::kernels::rope(&q, &cos, &sin)?;
    let k = crate::kernels::rope(&k, &cos, &sin)?;
    Ok((q, k, v))
}

/// Attention of rotated heads `q [B, Hq, T, D]` over `k`/`v [B, Hkv, Tk, D]` (keys at
/// positions `mask.k0..`) → `[B, T, Hq·D]`.
pub fn attention_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    sinks: &Tensor,
    shape: AttentionShape,
    mask: CausalMask,
) -> CResult<Tensor> {
    let (b, hq, t, d) = q.dims4()?;
    let (hkv, tk) = (shape.n_kv_heads, k.dim(2)?);
    let rep = hq / hkv;
    let scale = 1.0 / (d as f64).sqrt();
    let qg = (q * scale)?.reshape((b, hkv, rep * t, d))?;
    let scores = qg.matmul(&k.t()?)?.reshape((b, hq, t, tk))?;
    let sinks = sinks.to_dtype(q.dtype())?;
    let probs = crate::kernels::masked_sink_softmax(&scores, &sinks, mask)?;
    probs
        .reshape((b, hkv, rep * t, tk))?
        .matmul(v)?
        .reshape((b, hq, t, d))?
        .transpose(1, 2)?
        .reshape((b, t, hq * d))
}

/// `linear(x, W, b) + scale·(x Aᵀ) Bᵀ`, the adapter cast to `x`'s dtype.
pub fn lora_linear(
    x: &Tensor,
    (weight, bias): (&Tensor, Option<&Tensor>),
    (a, b): (&Tensor, &Tensor),
    scale: f64,
) -> CResult<Tensor> {
    let base = linear(x, weight, bias)?;
    base + lora_delta(x, a, b, scale)?
}

/// `scale·(x Aᵀ) Bᵀ` for `x [n, in]`, `A [r, in]`, `B [out, r]` cast to `x`'s dtype.
pub fn lora_delta(x: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> CResult<Tensor> {
    let a = a.to_dtype(x.dtype())?;
    let b = b.to_dtype(x.dtype())?;
    x.matmul(&a.t()?)?.matmul(&b.t()?)? * scale
}

/// Logits from candle `chunk_rows` rows at a time, the cross-entropy on the host, and
/// dL/dh = dL/dlogits · lm per chunk.
pub fn linear_cross_entropy(
    h: &Tensor,
    lm: &Tensor,
    (targets, weights): (&[u32], &[f32]),
    grad_scale: Option<f64>,
    chunk_rows: usize,
) -> anyhow::Result<(f64, Option<Tensor>)> {
    let (rows, hd) = h.dims2()?;
    let v = lm.dim(0)?;
    if targets.len() != rows || weights.len() != rows {
        anyhow::bail!(
            "linear cross-entropy: {rows} rows, {} targets, {} weights",
            targets.len(),
            weights.len()
        );
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= v) {
        anyhow::bail!("target token {t} is outside the vocabulary (size {v})");
    }
    let step = chunk_rows.max(1);
    let mut total = 0.0;
    let mut grads = Vec::new();
    for r0 in (0..rows).step_by(step) {
        let n = step.min(rows - r0);
        let logits: Vec<f32> = linear(&h.narrow(0, r0, n)?, lm, None)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let part = r0..r0 + n;
        let (l, g) = host_ce(
            &logits,
            v,
            &targets[part.clone()],
            &weights[part],
            grad_scale,
        );
        total += l;
        if let Some(g) = g {
            // logits = h · lmᵀ  ⇒  dL/dh = dL/dlogits · lm.
            let g = Tensor::from_vec(g, (n, v), h.device())?.to_dtype(lm.dtype())?;
            grads.push(g.matmul(lm)?);
        }
    }
    let dh = match grad_scale {
        None => None,
        Some(_) if grads.is_empty() => Some(Tensor::zeros((0, hd), lm.dtype(), h.device())?),
        Some(_) => Some(Tensor::cat(&grads, 0)?),
    };
    Ok((total, dh))
}

/// Cross-entropy over rows of logits on the host: summed weighted loss and, with `scale`,
/// d loss / d logits. Rows in parallel, losses added in row order (deterministic).
pub fn host_ce(
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

/// `x [N, H]` → rows `x[slots[m] / k]`.
pub fn dispatch(x: &Tensor, slots: &[u32], k: usize) -> CResult<Tensor> {
    let tokens: Vec<u32> = slots.iter().map(|&s| s / k as u32).collect();
    x.index_select(&Tensor::new(tokens.as_slice(), x.device())?, 0)
}

/// `y [M, H]`, `w [N·k]` → `out[n] = Σ_m [slots[m] / k = n] · w[slots[m]] · y[m]`.
pub fn combine(y: &Tensor, w: &Tensor, slots: &[u32], k: usize) -> CResult<Tensor> {
    let dev = y.device();
    let n = w.elem_count() / k;
    let tokens: Vec<u32> = slots.iter().map(|&s| s / k as u32).collect();
    let slot_t = Tensor::new(slots, dev)?;
    let ws = w.flatten_all()?.index_select(&slot_t, 0)?.unsqueeze(1)?;
    Tensor::zeros((n, y.dim(1)?), y.dtype(), dev)?.index_add(
        &Tensor::new(tokens.as_slice(), dev)?,
        &y.broadcast_mul(&ws)?,
        0,
    )
}
