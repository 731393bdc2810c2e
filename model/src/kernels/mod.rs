//! Fused ops, each behind one dispatch point: the layers (`arch/`) and the trainer call the
//! functions of this module and never test devices or dtypes themselves.
//!
//! An op is
//! - a reference composition of candle ops that runs on any device and dtype
//!   ([`reference`]); it defines the op's values and gradients;
//! - zero or more backends: today CPU f32 (`cpu/`); [`cuda`] and [`metal`] are the places
//!   for GPU kernels;
//! - an eligibility rule: the shared [`backend`] rule (which backend family the tensors live
//!   on) plus the op's own conditions (shapes, adapters), in its dispatch function below;
//! - where `train --plan` models its memory, an estimate in [`memory`].
//!
//! Adding a backend kernel for an op (say CUDA attention) is one file and one registration:
//! write `kernels/cuda/attention.rs` (a `CustomOp` with `cuda_fwd` and a backward, declared
//! in `cuda/mod.rs`), and add the arm `Some(Backend::Cuda) => cuda::attention::attention(..)`
//! to `attention` here (and to its estimate in `memory.rs` if it keeps less). The test harness
//! (`model/tests/kernels.rs`) already runs every op on every device candle was built for and
//! compares it with the reference, forward and gradients.

pub(crate) mod cpu;
pub mod cuda;
pub(crate) mod gemm;
pub mod mask;
pub mod memory;
pub mod metal;
pub mod moe;
pub(crate) mod op;
pub mod reference;

pub use mask::CausalMask;
pub use moe::{combine, dispatch, moe_experts, ExpertLora, Experts, LoraInput};
pub use op::CResult;

use crate::quant::matrix::Matrix;
use candle_core::{DType, DeviceLocation, Tensor};

/// A family of kernels: where the tensors live and which dtypes its kernels take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Host kernels on contiguous f32 (rayon + the `gemm` crate).
    Cpu,
    /// Kernels for `Device::Cuda` tensors (none yet: every op runs its reference there).
    Cuda,
    /// Kernels for `Device::Metal` tensors (none yet).
    Metal,
}

/// The one backend rule: the backend whose kernels could take all of `xs` — they share one
/// device and one dtype and are contiguous, and the backend takes that dtype (the CPU kernels
/// are f32 only). `None`: only the reference composition applies.
pub fn backend(xs: &[&Tensor]) -> Option<Backend> {
    let first = xs.first()?;
    let (loc, dtype) = (first.device().location(), first.dtype());
    let same = xs
        .iter()
        .all(|x| x.device().location() == loc && x.dtype() == dtype && x.is_contiguous());
    if !same {
        return None;
    }
    backend_at(loc, dtype)
}

/// [`backend`] for tensors that would live at `loc` with `dtype` (what `train --plan` asks
/// before any tensor exists).
pub fn backend_at(loc: DeviceLocation, dtype: DType) -> Option<Backend> {
    match loc {
        DeviceLocation::Cpu => (dtype == DType::F32).then_some(Backend::Cpu),
        DeviceLocation::Cuda { .. } => Some(Backend::Cuda),
        DeviceLocation::Metal { .. } => Some(Backend::Metal),
    }
}

/// Softmax over the last axis.
pub fn softmax_last_dim(x: &Tensor) -> CResult<Tensor> {
    match backend(&[x]) {
        Some(Backend::Cpu) => cpu::ops::softmax_last_dim(x),
        _ => reference::softmax_last_dim(x),
    }
}

/// RMSNorm of the rows of `x` with weight `w` `[H]`, computed in f32 and cast back to `x`'s
/// dtype (docs/gpt-oss.md §1.3).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> CResult<Tensor> {
    match backend(&[x, w]) {
        Some(Backend::Cpu) => cpu::ops::rms_norm(x, w, eps),
        _ => reference::rms_norm(x, w, eps),
    }
}

/// Half-split ("NeoX") rotary embedding of `x [B, H, T, D]` with `cos`, `sin` `[T, D/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> CResult<Tensor> {
    let x = x.contiguous()?;
    let (cos, sin) = (cos.contiguous()?, sin.contiguous()?);
    match backend(&[&x, &cos, &sin]) {
        Some(Backend::Cpu) => cpu::ops::rope(&x, &cos, &sin),
        _ => reference::rope(&x, &cos, &sin),
    }
}

/// Whether the CPU kernels can read `w` where it lies: mapped bytes, or a contiguous f32
/// tensor on the CPU.
fn cpu_matrix(w: &Matrix) -> bool {
    match w {
        Matrix::Mapped { .. } => true,
        Matrix::Tensor(t) => backend(&[t]) == Some(Backend::Cpu),
    }
}

/// The backend for tensors `xs` and a frozen matrix `w`: the CPU kernels take `w` in any
/// storage; every other backend (and the reference) a tensor on the tensors' device.
fn backend_with(xs: &[&Tensor], w: &Matrix) -> Option<Backend> {
    match (backend(xs), w) {
        (Some(Backend::Cpu), w) if cpu_matrix(w) => Some(Backend::Cpu),
        (Some(Backend::Cpu), _) => None,
        (rule, Matrix::Tensor(t)) if backend(&[xs[0], t]) == rule => rule,
        _ => None,
    }
}

/// `x [n, in] · wᵀ + b` for a frozen `w [out, in]`: no gradient to `w` or `b` (candle's
/// matmul backward would form the weight gradient, as expensive as the forward).
pub fn linear(x: &Tensor, w: &Matrix, b: Option<&Tensor>) -> CResult<Tensor> {
    let x = x.contiguous()?;
    let rule = match b {
        Some(b) => backend_with(&[&x, b], w),
        None => backend_with(&[&x], w),
    };
    match rule {
        Some(Backend::Cpu) => cpu::ops::linear(&x, w, b),
        _ => reference::linear(&x, &reference_weight(w, &x)?, b),
    }
}

/// `w` as a tensor of `x`'s dtype on its device, for the reference compositions (a copy
/// unless it already is one).
fn reference_weight(w: &Matrix, x: &Tensor) -> CResult<Tensor> {
    w.to_tensor(x.dtype(), x.device())
        .map_err(candle_core::Error::wrap)
}

/// gpt-oss's clamped SwiGLU on `u [n, 2I]` (gate columns, then up columns, docs/gpt-oss.md §1.6):
/// `min(g, L)·σ(α·min(g, L))·(clamp(u, ±L) + 1)`.
pub fn swiglu(u: &Tensor, limit: f64, alpha: f64) -> CResult<Tensor> {
    let u = u.contiguous()?;
    match backend(&[&u]) {
        Some(Backend::Cpu) => cpu::ops::swiglu(&u, limit, alpha),
        _ => reference::swiglu(&u, limit, alpha),
    }
}

/// `scores [B, H, T, Tk]` (unmasked), `sinks [H]` → attention probabilities over the keys
/// under `mask`, softmax taken with the learned sink as an extra column which is then
/// dropped (docs/gpt-oss.md §1.4).
pub fn masked_sink_softmax(scores: &Tensor, sinks: &Tensor, mask: CausalMask) -> CResult<Tensor> {
    let scores = scores.contiguous()?;
    match backend(&[&scores, sinks]) {
        Some(Backend::Cpu) => cpu::masked_softmax::masked_sink_softmax(&scores, sinks, mask),
        _ => reference::masked_sink_softmax(&scores, sinks, mask),
    }
}

/// Heads of the attention core: `n_heads` query heads share `n_kv_heads` key/value heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// The attention core without a KV cache (training, cache-free prefill): RoPE on the
/// projections `q [B, T, Hq·D]`, `k`/`v [B, T, Hkv·D]` (positions `mask.q0..`, queries and
/// keys alike), GQA, the causal / sliding-window `mask`, learned `sinks [Hq]`, softmax and
/// the value product → `[B, T, Hq·D]`. `cos`/`sin` `[T, D/2]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (cos, sin, sinks): (&Tensor, &Tensor, &Tensor),
    shape: AttentionShape,
    mask: CausalMask,
) -> CResult<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    match backend(&[&q, &k, &v]) {
        Some(Backend::Cpu) if cpu::attention::eligible(shape) => {
            cpu::attention::attention(&q, &k, &v, (cos, sin, sinks), shape, mask)
        }
        _ => reference::attention(&q, &k, &v, (cos, sin, sinks), shape, mask),
    }
}

/// Cached decoding's half of attention: the projections as heads `[B, H, T, D]` with RoPE on
/// q and k (through [`rope`]), ready to join a KV cache.
pub fn split_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    shape: AttentionShape,
) -> CResult<(Tensor, Tensor, Tensor)> {
    reference::split_heads(q, k, v, (cos, sin), shape)
}

/// Cached decoding's attention: rotated heads `q [B, Hq, T, D]` over the cached and new keys
/// `k`/`v [B, Hkv, Tk, D]` → `[B, T, Hq·D]`. No backend has a kernel for it yet, so it is the
/// reference composition (on [`masked_sink_softmax`]); the first one adds
/// `match backend(&[q, k, v]) { .. }` here.
pub fn attention_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    sinks: &Tensor,
    shape: AttentionShape,
    mask: CausalMask,
) -> CResult<Tensor> {
    reference::attention_heads(q, k, v, sinks, shape, mask)
}

/// A dense projection with its LoRA: `x Wᵀ + b + scale·(x Aᵀ) Bᵀ` for `x [m, in]`,
/// `A [r, in]`, `B [out, r]`; gradients reach `x`, `A` and `B` (W and b are constants).
pub fn lora_linear(
    x: &Tensor,
    (weight, bias): (&Matrix, Option<&Tensor>),
    (a, b): (&Tensor, &Tensor),
    scale: f64,
) -> CResult<Tensor> {
    let x = x.contiguous()?;
    let rule = match bias {
        Some(bias) => backend_with(&[&x, a, b, bias], weight),
        None => backend_with(&[&x, a, b], weight),
    };
    match rule {
        Some(Backend::Cpu) => cpu::lora_linear::lora_linear(&x, weight, bias, a, b, scale),
        _ => {
            let w = reference_weight(weight, &x)?;
            reference::lora_linear(&x, (&w, bias), (a, b), scale)
        }
    }
}

/// Summed weighted cross-entropy of the rows `h [rows, H]` through the lm_head `lm [V, H]`
/// (`targets`, `weights` per row) and, with `grad_scale`, d(Σ loss · grad_scale)/dh
/// `[rows, H]`. The `[rows, V]` logits never exist whole: the CPU kernel goes one block of
/// rows per thread, the reference `chunk_rows` rows at a time.
pub fn linear_cross_entropy(
    h: &Tensor,
    lm: &Matrix,
    (targets, weights): (&[u32], &[f32]),
    grad_scale: Option<f64>,
    chunk_rows: usize,
) -> anyhow::Result<(f64, Option<Tensor>)> {
    let hc = h.contiguous()?;
    match backend_with(&[&hc], lm) {
        Some(Backend::Cpu) => {
            cpu::linear_ce::linear_cross_entropy_tensors(&hc, lm, targets, weights, grad_scale)
        }
        _ => {
            let lm = reference_weight(lm, h)?;
            reference::linear_cross_entropy(h, &lm, (targets, weights), grad_scale, chunk_rows)
        }
    }
}
