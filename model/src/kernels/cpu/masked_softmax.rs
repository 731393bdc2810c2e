//! Attention softmax with the causal / sliding-window mask and the learned sinks fused in.
//!
//! The unfused path materializes a `[T, Tk]` −inf mask, adds it to the `[B, H, T, Tk]`
//! scores (one more full-size tensor forward, one more gradient node backward) and then
//! exponentiates the masked entries only to get zeros. Here each query row only touches its
//! visible key range `lo..hi`: the other probabilities are exactly 0, as before (exp(−inf)
//! is 0 and adding 0 to the row sum changes nothing), and the backward is one pass over
//! `(y, g)` instead of four candle ops.

use crate::kernels::cpu::ops::sink_softmax_row;
use crate::kernels::cpu::pool;
use crate::kernels::cpu::vecmath::simd;
use crate::kernels::mask::CausalMask;
use crate::kernels::op::{contiguous_f32, CResult};
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

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
        pool::rows(&mut dst, t * n, |bh, d| {
            let s = &x[bh * t * n..(bh + 1) * t * n];
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

/// `scores [B, H, T, Tk]` (unmasked, contiguous f32), `sinks [H]` → attention probabilities
/// over the keys under `mask`, softmax taken with the sink as an extra column then dropped.
pub(crate) fn masked_sink_softmax(
    scores: &Tensor,
    sinks: &Tensor,
    mask: CausalMask,
) -> CResult<Tensor> {
    scores.apply_op2(sinks, MaskedSinkSoftmax { mask })
}
