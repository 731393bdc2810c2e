//! Muon: momentum, Nesterov, Newton–Schulz orthogonalisation, shape-scaled step.
//!
//! One step for a parameter P with gradient G (all f32; β = momentum):
//!
//! ```text
//! buf ← β·buf + (1−β)·G                      (torch: buf.lerp_(G, 1−β))
//! U   ← (1−β)·G + β·buf   if nesterov, else buf
//! O   ← NS(U)                                 per matrix over the last two dims
//! P   ← P·(1 − lr·wd)                         decoupled weight decay, unadjusted lr
//! P   ← P − lr·scale(rows, cols)·O
//! ```
//!
//! This is `torch.optim.Muon` (torch/optim/_muon.py) except that NS runs in f32 by default
//! (torch: always bf16) and that tensors with more than two dimensions are accepted: every
//! leading index is its own matrix (Keller Jordan's batched behaviour), so expert factors
//! [E, r, in] / [E, out, r] are orthogonalised expert by expert, never flattened across experts
//! (MLX's `Muon` reshapes to (E, −1), which mixes experts).

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor, Var};

use crate::config::{LrAdjust, MuonConfig, NsDtype};

/// Newton–Schulz quintic on the last two dims of `g` (any number of leading batch dims).
///
/// ```text
/// X ← G / max(‖G‖_F, eps)          (Frobenius norm per matrix)
/// repeat steps:  A ← X·Xᵀ;  X ← a·X + (b·A + c·A²)·X
/// ```
///
/// on the wide orientation (torch transposes a tall matrix, iterates, transposes back). For a
/// tall X we use the identical iteration written without the transposes: A ← XᵀX,
/// X ← X·(a·I + b·A + c·A²); either way A is min(rows, cols)² — 16×16 for rank-16 LoRA
/// factors — and no transposed copy of the big tensor is made. The a·X term is folded into the
/// small matrix P = a·I + b·A + c·A² (formed in f32), so each step is two big matmuls (A, then
/// P·X) and no element-wise pass over X. The result is ≈ U·S'·Vᵀ with S' in roughly
/// [0.7, 1.2] (the coefficients trade exactness for speed). `dtype` selects the matmul dtype
/// (P is rounded to it too). Returns `g`'s dtype.
pub fn newton_schulz(
    g: &Tensor,
    steps: usize,
    coefficients: [f64; 3],
    eps: f64,
    dtype: DType,
) -> Result<Tensor> {
    let rank = g.rank();
    ensure!(
        rank >= 2,
        "Newton–Schulz needs a matrix, got shape {:?}",
        g.dims()
    );
    let (rows, cols) = (g.dims()[rank - 2], g.dims()[rank - 1]);
    let tall = rows > cols;
    let [a, b, c] = coefficients;
    let x = g.to_dtype(dtype)?.contiguous()?;
    // The norm is accumulated in f32 even for bf16 (torch's vector_norm does the same).
    let norm = x
        .to_dtype(DType::F32)?
        .sqr()?
        .sum_keepdim((rank - 2, rank - 1))?
        .sqrt()?
        .maximum(eps)?
        .to_dtype(dtype)?;
    let mut x = x.broadcast_div(&norm)?;
    let a_eye = Tensor::eye(rows.min(cols), DType::F32, g.device())?.affine(a, 0.0)?;
    for _ in 0..steps {
        let gram = if tall {
            x.t()?.matmul(&x)?
        } else {
            x.matmul(&x.t()?)?
        };
        let gram_sq = gram.matmul(&gram)?;
        let gram = gram.to_dtype(DType::F32)?.affine(b, 0.0)?;
        let gram_sq = gram_sq.to_dtype(DType::F32)?.affine(c, 0.0)?;
        // A is symmetric, so P is too and X·P is the transpose of P·Xᵀ.
        let p = (gram + gram_sq)?.broadcast_add(&a_eye)?.to_dtype(dtype)?;
        x = if tall { x.matmul(&p)? } else { p.matmul(&x)? };
    }
    Ok(x.to_dtype(g.dtype())?)
}

/// The learning-rate multiplier for a parameter of this shape; `rows`, `cols` are its last two
/// dimensions (the [out, in] of one matrix, per expert for 3-D tensors).
pub fn lr_scale(dims: &[usize], adjust: LrAdjust) -> f64 {
    let n = dims.len();
    if n < 2 {
        return 1.0;
    }
    let (rows, cols) = (dims[n - 2] as f64, dims[n - 1] as f64);
    match adjust {
        LrAdjust::Original => (rows / cols).max(1.0).sqrt(),
        LrAdjust::MatchRmsAdamw => 0.2 * rows.max(cols).sqrt(),
    }
}

/// torch's `lerp`: `a + w·(b − a)` for w < 0.5, else `b − (1 − w)·(b − a)` (the form torch
/// picks for accuracy; matching it keeps the momentum buffer bit-close to torch's).
pub(crate) fn lerp(a: &Tensor, b: &Tensor, w: f64) -> Result<Tensor> {
    let d = (b - a)?;
    Ok(if w < 0.5 {
        (a + d.affine(w, 0.0)?)?
    } else {
        (b - d.affine(1.0 - w, 0.0)?)?
    })
}

pub(crate) fn ns_dtype(d: NsDtype) -> DType {
    match d {
        NsDtype::F32 => DType::F32,
        NsDtype::Bf16 => DType::BF16,
    }
}

/// One Muon step on `var` with gradient `grad`; `buf` is its f32 momentum buffer and `lr` the
/// learning rate of this step (peak × schedule multiplier). Everything stays on the device.
pub(crate) fn step(
    name: &str,
    var: &Var,
    grad: &Tensor,
    buf: &mut Tensor,
    cfg: &MuonConfig,
    lr: f64,
) -> Result<()> {
    let mut run = || -> Result<()> {
        ensure!(
            grad.dims() == var.dims(),
            "gradient shape {:?} differs from parameter shape {:?}",
            grad.dims(),
            var.dims()
        );
        let g = grad.detach().to_dtype(DType::F32)?;
        let beta = cfg.momentum;
        *buf = lerp(buf, &g, 1.0 - beta)?;
        let update = if cfg.nesterov {
            lerp(&g, buf, beta)?
        } else {
            buf.clone()
        };
        let o = newton_schulz(
            &update,
            cfg.ns_steps,
            cfg.ns_coefficients,
            cfg.eps,
            ns_dtype(cfg.ns_dtype),
        )?;
        let mut p = var.as_tensor().detach().to_dtype(DType::F32)?;
        if cfg.weight_decay != 0.0 {
            p = p.affine(1.0 - lr * cfg.weight_decay, 0.0)?;
        }
        let adjusted = lr * lr_scale(var.dims(), cfg.lr_adjust);
        let p = (p - o.affine(adjusted, 0.0)?)?;
        var.set(&p.to_dtype(var.dtype())?)?;
        Ok(())
    };
    run().with_context(|| format!("Muon step on parameter {name}"))
}
