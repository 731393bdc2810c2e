//! Attention softmax with the causal / sliding-window mask and the learned sinks fused in.
//!
//! The unfused path materializes a `[T, Tk]` −inf mask, adds it to the `[B, H, T, Tk]`
//! scores (one more full-size tensor forward, one more gradient node backward) and then
//! exponentiates the masked entries only to get zeros. Here each query row only touches its
//! visible key range `lo..hi`: the other probabilities are exactly 0, as before (exp(−inf)
//! is 0 and adding 0 to the row sum changes nothing), and the backward is one pass over
//! `(y, g)` instead of four candle ops. Other devices/dtypes fall back to mask + candle ops.

use crate::kernels::cpu::ops::{contiguous_f32, simd, sink_softmax_row};
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

type CResult<T> = candle_core::Result<T>;

/// Which keys query row `i` sees: queries are absolute positions `q0..q0+T`, keys
/// `k0..k0+Tk`; key `kj` is visible from `qi` iff `kj ≤ qi` and, with a window `W`,
/// `kj + W > qi` (W keys including the query itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CausalMask {
    pub q0: usize,
    pub k0: usize,
    pub window: Option<usize>,
}

impl CausalMask {
    /// Visible key columns `lo..hi` of query row `i` among `tk` keys (empty when lo ≥ hi).
    pub fn range(&self, i: usize, tk: usize) -> (usize, usize) {
        let qi = self.q0 + i;
        let hi = (qi + 1).saturating_sub(self.k0).min(tk);
        let lo = match self.window {
            Some(w) => (qi + 1).saturating_sub(w + self.k0).min(hi),
            None => 0,
        };
        (lo, hi)
    }

    /// The `[T, Tk]` additive mask (0 visible, −inf hidden), or `None` if nothing is hidden.
    pub fn additive(
        &self,
        t: usize,
        tk: usize,
        dtype: DType,
        dev: &Device,
    ) -> CResult<Option<Tensor>> {
        let mut any = false;
        let mut m = vec![0f32; t * tk];
        for i in 0..t {
            let (lo, hi) = self.range(i, tk);
            for (j, v) in m[i * tk..(i + 1) * tk].iter_mut().enumerate() {
                if j < lo || j >= hi {
                    *v = f32::NEG_INFINITY;
                    any = true;
                }
            }
        }
        if !any {
            return Ok(None);
        }
        Tensor::from_vec(m, (t, tk), dev)?.to_dtype(dtype).map(Some)
    }
}

struct MaskedSinkSoftmax {
    mask: CausalMask,
}

impl CustomOp2 for MaskedSinkSoftmax {
    fn name(&self) -> &'static str {
        "osstune-masked-sink-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "masked sink softmax")?;
        let sinks = contiguous_f32(s2, l2, "sinks")?;
        let (_, h, t, n) = l1.shape().dims4()?;
        if sinks.len() != h {
            candle_core::bail!("sinks: {} values for {h} heads", sinks.len());
        }
        let mask = self.mask;
        let mut dst = vec![0f32; x.len()];
        dst.par_chunks_mut(t * n)
            .zip(x.par_chunks(t * n))
            .enumerate()
            .for_each(|(bh, (d, s))| {
                let sink = sinks[bh % h];
                for (i, (dr, sr)) in d.chunks_mut(n).zip(s.chunks(n)).enumerate() {
                    let (lo, hi) = mask.range(i, n);
                    simd(|| sink_softmax_row(&mut dr[lo..hi], &sr[lo..hi], sink));
                }
            });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _sinks: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        // dx = y ⊙ (g − Σ g⊙y) over the kept columns (the dropped sink column gets no
        // gradient; sinks are base weights). Hidden entries have y = 0, so dx = 0 there.
        let g = g.contiguous()?;
        let dx = res.apply_op2_no_bwd(&g, &SoftmaxBwd { mask: self.mask })?;
        Ok((Some(dx), None))
    }
}

/// `(y, g) → y ⊙ (g − Σ_row g⊙y)` on the visible range of each row, zeros elsewhere.
struct SoftmaxBwd {
    mask: CausalMask,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "osstune-masked-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let y = contiguous_f32(s1, l1, "softmax backward (y)")?;
        let g = contiguous_f32(s2, l2, "softmax backward (grad)")?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("softmax backward: {:?} vs {:?}", l1.dims(), l2.dims());
        }
        let (_, _, t, n) = l1.shape().dims4()?;
        let mask = self.mask;
        let mut dst = vec![0f32; y.len()];
        dst.par_chunks_mut(t * n)
            .zip(y.par_chunks(t * n).zip(g.par_chunks(t * n)))
            .for_each(|(d, (ys, gs))| {
                for (i, ((dr, yr), gr)) in d
                    .chunks_mut(n)
                    .zip(ys.chunks(n))
                    .zip(gs.chunks(n))
                    .enumerate()
                {
                    let (lo, hi) = mask.range(i, n);
                    let (dr, yr, gr) = (&mut dr[lo..hi], &yr[lo..hi], &gr[lo..hi]);
                    let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                    for ((o, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                        *o = yv * (gv - dot);
                    }
                }
            });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }
}

/// `scores [B, H, T, Tk]` (unmasked), `sinks [H]` → attention probabilities over the keys
/// under `mask`, softmax taken with the sink as an extra column which is then dropped.
pub fn masked_sink_softmax(scores: &Tensor, sinks: &Tensor, mask: CausalMask) -> CResult<Tensor> {
    let scores = scores.contiguous()?;
    let cpu_f32 = |x: &Tensor| x.device().is_cpu() && x.dtype() == DType::F32;
    if cpu_f32(&scores) && cpu_f32(sinks) && sinks.is_contiguous() {
        return scores.apply_op2(sinks, MaskedSinkSoftmax { mask });
    }
    let (_, _, t, tk) = scores.dims4()?;
    let scores = match mask.additive(t, tk, scores.dtype(), scores.device())? {
        Some(m) => scores.broadcast_add(&m)?,
        None => scores,
    };
    crate::kernels::cpu::ops::sink_softmax(&scores, sinks)
}
