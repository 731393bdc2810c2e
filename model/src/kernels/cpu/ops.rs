//! The small differentiable ops of the hot path on the CPU in f32: softmax over the last
//! axis, RMSNorm, half-split RoPE, a constant-weight linear and gpt-oss's clamped SwiGLU.
//!
//! candle-nn's fused `rms_norm`, `softmax_last_dim` and `rope` have no backward pass, and the
//! trainer back-propagates through every layer to reach the LoRA weights; candle's matmul
//! backward also forms the gradient of a frozen weight. These ops run one parallel pass per
//! row each way, with a backward written in candle ops or one more pass. Callers go through
//! `kernels::{softmax_last_dim, rms_norm, rope, linear, swiglu}`, which pick this backend.

use crate::kernels::cpu::frozen::with_matrix;
use crate::kernels::cpu::pool;
use crate::kernels::cpu::vecmath::{fast_exp, max_f32, simd, sum_f32};
use crate::kernels::op::{contiguous_f32, storage_f32, CResult};
use crate::quant::matrix::Matrix;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor, D};
use rayon::prelude::*;

/// Softmax of one row of scores `sr` with the learned sink as an extra (dropped) column,
/// written to `dr`.
#[inline(always)]
pub(crate) fn sink_softmax_row(dr: &mut [f32], sr: &[f32], sink: f32) {
    let m = max_f32(sr, sink);
    for (o, &v) in dr.iter_mut().zip(sr) {
        *o = fast_exp(v - m);
    }
    let inv = 1.0 / (fast_exp(sink - m) + sum_f32(dr));
    dr.iter_mut().for_each(|o| *o *= inv);
}

// ---------------------------------------------------------------------------------------------
// softmax over the last axis

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "osstune-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let src = contiguous_f32(s, l, "softmax")?;
        let n = l.dims().last().copied().unwrap_or(1).max(1);
        let mut dst = vec![0f32; src.len()];
        pool::rows(&mut dst, n, |i, d| {
            let s = &src[i * n..(i + 1) * n];
            simd(|| {
                let m = max_f32(s, f32::NEG_INFINITY);
                for (o, &v) in d.iter_mut().zip(s) {
                    *o = fast_exp(v - m);
                }
                let inv = 1.0 / sum_f32(d);
                d.iter_mut().for_each(|o| *o *= inv);
            })
        });
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        // dx = y ⊙ (g − Σ g⊙y)
        let dot = (g * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some((res * g.broadcast_sub(&dot)?)?))
    }
}

pub(crate) fn softmax_last_dim(x: &Tensor) -> CResult<Tensor> {
    x.apply_op1(Softmax)
}

// ---------------------------------------------------------------------------------------------
// RMSNorm, f32 math

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "osstune-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "rms_norm")?;
        let w = contiguous_f32(s2, l2, "rms_norm weight")?;
        let n = w.len();
        let eps = self.eps;
        let mut dst = vec![0f32; x.len()];
        pool::rows(&mut dst, n, |i, d| {
            let s = &x[i * n..(i + 1) * n];
            simd(|| {
                let ms = s.iter().map(|v| v * v).sum::<f32>() / n as f32;
                let r = 1.0 / (ms + eps).sqrt();
                for ((o, &v), &wv) in d.iter_mut().zip(s).zip(w) {
                    *o = v * r * wv;
                }
            })
        });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        // y = x·r·w, r = (mean x² + eps)^-½  ⇒  dx = r·gw − x·r³·mean(gw⊙x)
        let gw = g.broadcast_mul(w)?;
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps as f64)?
            .sqrt()?
            .recip()?;
        let dot = (&gw * x)?.mean_keepdim(D::Minus1)?;
        let r3 = r.powf(3.0)?;
        let dx = (gw.broadcast_mul(&r)? - x.broadcast_mul(&(r3 * dot)?)?)?;
        Ok((Some(dx), None))
    }
}

/// RMSNorm of contiguous f32 rows (docs/gpt-oss.md §1.3).
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> CResult<Tensor> {
    x.apply_op2(w, RmsNorm { eps: eps as f32 })
}

// ---------------------------------------------------------------------------------------------
// half-split ("NeoX") rotary embedding on [B, H, T, D] with cos/sin [T, D/2]

struct Rope;

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "osstune-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "rope")?;
        let cos = contiguous_f32(s2, l2, "rope cos")?;
        let sin = contiguous_f32(s3, l3, "rope sin")?;
        let dims = l1.dims();
        let (t, d) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let h = d / 2;
        let mut dst = vec![0f32; x.len()];
        pool::rows(&mut dst, t * d, |j, o| {
            let s = &x[j * t * d..(j + 1) * t * d];
            for i in 0..t {
                let (c, sn) = (&cos[i * h..(i + 1) * h], &sin[i * h..(i + 1) * h]);
                let row = &s[i * d..(i + 1) * d];
                let out = &mut o[i * d..(i + 1) * d];
                for k in 0..h {
                    let (x1, x2) = (row[k], row[k + h]);
                    out[k] = x1 * c[k] - x2 * sn[k];
                    out[k + h] = x2 * c[k] + x1 * sn[k];
                }
            }
        });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The rotation is orthogonal: its transpose is the rotation by −θ.
        let gx = crate::kernels::rope(&g.contiguous()?, cos, &sin.neg()?)?;
        Ok((Some(gx), None, None))
    }
}

/// Rotates contiguous f32 `x [B, H, T, D]` by `cos`, `sin` `[T, D/2]`.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> CResult<Tensor> {
    x.apply_op3(cos, sin, Rope)
}

// ---------------------------------------------------------------------------------------------
// y = x Wᵀ + b with a frozen W (read where it lies, see `frozen.rs`)

struct FrozenLinear {
    weight: Matrix,
    bias: Option<Tensor>,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "osstune-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "linear input")?;
        let (m, inp) = l.shape().dims2()?;
        let (out, in_w) = self.weight.out_in();
        if inp != in_w {
            candle_core::bail!("linear: input {:?} for a [{out}, {in_w}] weight", l.dims());
        }
        let mut dst = bias_rows(self.bias.as_ref(), m, out)?;
        with_matrix(&self.weight, |w| w.xwt(x, m, &mut dst, out, true))?;
        Ok((CpuStorage::F32(dst), Shape::from((m, out))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        // The weight is frozen: only the input gets a gradient (candle's matmul would also
        // form the full weight gradient, as expensive as the forward).
        let (m, inp) = x.dims2()?;
        let (out, _) = self.weight.out_in();
        let g = g.contiguous()?;
        let (gs, gl) = g.storage_and_layout();
        let gv = storage_f32(&gs, gl, "linear gradient")?;
        let mut dx = vec![0f32; m * inp];
        with_matrix(&self.weight, |w| w.gw(gv, m, out, &mut dx, false))?;
        Ok(Some(Tensor::from_vec(dx, (m, inp), x.device())?))
    }
}

/// `m` copies of the bias row (zeros without one): the output a product accumulates into.
pub(crate) fn bias_rows(bias: Option<&Tensor>, m: usize, out: usize) -> CResult<Vec<f32>> {
    let Some(bias) = bias else {
        return Ok(vec![0f32; m * out]);
    };
    let (bs, bl) = bias.storage_and_layout();
    let bv = storage_f32(&bs, bl, "bias")?;
    if bv.len() != out {
        candle_core::bail!("bias {:?} for {out} outputs", bl.dims());
    }
    let mut d = Vec::with_capacity(m * out);
    for _ in 0..m {
        d.extend_from_slice(bv);
    }
    Ok(d)
}

/// `x [n, in] · wᵀ + b` for a frozen `w [out, in]` (no gradient to `w` or `b`), contiguous f32
/// `x` on the CPU.
pub(crate) fn linear(x: &Tensor, w: &Matrix, b: Option<&Tensor>) -> CResult<Tensor> {
    x.apply_op1(FrozenLinear {
        weight: w.clone(),
        bias: b.cloned(),
    })
}

// ---------------------------------------------------------------------------------------------
// gpt-oss clamped SwiGLU on u = [gate | up] (docs/gpt-oss.md §1.6)

struct SwiGlu {
    limit: f32,
    alpha: f32,
}

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "osstune-swiglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let u = contiguous_f32(s, l, "swiglu")?;
        let (n, two_i) = l.shape().dims2()?;
        let i = two_i / 2;
        let (lim, alpha) = (self.limit, self.alpha);
        let mut dst = vec![0f32; n * i];
        pool::rows(&mut dst, i, |j, d| {
            simd(|| swiglu_row(d, &u[j * two_i..(j + 1) * two_i], lim, alpha))
        });
        Ok((CpuStorage::F32(dst), Shape::from((n, i))))
    }

    fn bwd(&self, u: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        let (n, two_i) = u.dims2()?;
        let i = two_i / 2;
        let (u, g) = (u.contiguous()?, g.contiguous()?);
        let (us, ul) = u.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let (uv, gv) = (
            storage_f32(&us, ul, "swiglu")?,
            storage_f32(&gs, gl, "swiglu grad")?,
        );
        let (lim, alpha) = (self.limit, self.alpha);
        let mut du = vec![0f32; n * two_i];
        du.par_chunks_mut(two_i)
            .zip(uv.par_chunks(two_i).zip(gv.par_chunks(i)))
            .for_each(|(d, (r, gr))| simd(|| swiglu_row_grad(d, r, gr, lim, alpha)));
        Ok(Some(Tensor::from_vec(du, (n, two_i), u.device())?))
    }
}

#[inline(always)]
pub(crate) fn swiglu_row(d: &mut [f32], r: &[f32], lim: f32, alpha: f32) {
    let (g, up) = r.split_at(d.len());
    for ((o, &gv), &uv) in d.iter_mut().zip(g).zip(up) {
        let gv = gv.min(lim);
        let uv = uv.clamp(-lim, lim);
        let sig = 1.0 / (1.0 + fast_exp(-alpha * gv));
        *o = gv * sig * (uv + 1.0);
    }
}

/// d/du of one row: gate half then up half of `d`, from the row `r` and its output grad `gr`.
#[inline(always)]
pub(crate) fn swiglu_row_grad(d: &mut [f32], r: &[f32], gr: &[f32], lim: f32, alpha: f32) {
    let i = gr.len();
    let (dg, dup) = d.split_at_mut(i);
    let (gate, up) = r.split_at(i);
    let rows = dg
        .iter_mut()
        .zip(dup.iter_mut())
        .zip(gate.iter().zip(up))
        .zip(gr);
    for (((dg, dup), (&gate, &up)), &g) in rows {
        let gc = gate.min(lim);
        let uc = up.clamp(-lim, lim);
        let sig = 1.0 / (1.0 + fast_exp(-alpha * gc));
        let glu = gc * sig;
        // d glu/d gate = σ + α·g·σ(1−σ); no gradient where a clamp is active (torch's clamp
        // passes it at the boundary itself).
        let dgate = g * (uc + 1.0) * (sig + alpha * gc * sig * (1.0 - sig));
        *dg = if gate <= lim { dgate } else { 0.0 };
        *dup = if up >= -lim && up <= lim {
            g * glu
        } else {
            0.0
        };
    }
}

/// `u [n, 2I]` = gate columns then up columns → `min(g, L)·σ(α·min(g, L))·(clamp(u, ±L) + 1)`.
pub(crate) fn swiglu(u: &Tensor, limit: f64, alpha: f64) -> CResult<Tensor> {
    u.apply_op1(SwiGlu {
        limit: limit as f32,
        alpha: alpha as f32,
    })
}
