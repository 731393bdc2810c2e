//! The MoE's expert half on the CPU as one autograd op: token dispatch, gate/up projection,
//! gpt-oss's SwiGLU, down projection, each with its LoRA, and the weighted combine.
//!
//! Inputs: the normed hidden state `h [N, H]`, the routing weights `w [N·k]` (softmax of the
//! top-k router logits, so the router's LoRA gets its gradient through them) and every expert
//! adapter packed into one matrix `p [E, stride]`: row e is expert e's `[A_gu | B_gu | A_d |
//! B_d]`, where gate and up are stacked as in `expert_proj.rs`. Expert-major, so the pack is a
//! single `cat` of the adapters' factors viewed as `[E, ·]` (one copy per forward, the least a
//! three-input op allows), and each expert's gradient is one contiguous block.
//!
//! As separate ops (dispatch, two grouped projections, combine) the gathered rows `[M, H]`,
//! the activation `[M, I]` and the expert outputs `[M, H]` (M = N·k) are graph nodes, each
//! with a zero-filled gradient and an add in candle's backward. Here one task per expert
//! segment gathers its rows, runs gate/up, SwiGLU and down while the rows are in cache, and
//! the backward walks the same segment in reverse; only the pre-activation and the expert
//! outputs are kept for the backward (the activation and the gathered rows are recomputed).

use crate::kernels::cpu::expert_proj::{LoraPart, Proj};
use crate::kernels::cpu::grouped::{for_segments, segment_experts, segment_rows, Segments};
use crate::kernels::cpu::ops::{swiglu_row, swiglu_row_grad};
use crate::kernels::cpu::vecmath::simd;
use crate::kernels::op::{contiguous_f32, storage_f32, CResult, Saved};
use crate::quant::experts::ExpertMat;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// One projection's constants and adapter layout inside the packed vector.
pub(crate) struct ProjSpec {
    pub mat: ExpertMat,
    /// `[E, out]` f32.
    pub bias: Vec<f32>,
    pub parts: Vec<LoraPart>,
    /// Stacked rank (0 without adapters) and stacked B rows.
    pub rt: usize,
    pub brows: usize,
}

pub(crate) struct MoeExperts {
    pub gate_up: ProjSpec,
    pub down: ProjSpec,
    /// Rank of every adapter.
    pub rank: usize,
    pub segs: Segments,
    /// `slots[m]`: routing slot (token·k + j) of expert-order row m; `rows` is its inverse.
    pub slots: Vec<u32>,
    pub rows: Vec<u32>,
    pub k: usize,
    pub limit: f32,
    pub alpha: f32,
    /// The pre-activation `[M, 2I]` and expert outputs `[M, H]` from the forward.
    pub saved: Saved<(Vec<f32>, Vec<f32>)>,
}

impl MoeExperts {
    fn experts(&self) -> usize {
        self.gate_up.bias.len() / self.gate_up.mat.out_in().0.max(1)
    }

    /// Sizes of one expert's `[A_gu, B_gu, A_d, B_d]` blocks in the packed adapters.
    fn blocks(&self) -> [usize; 4] {
        let (gs, ds) = (&self.gate_up, &self.down);
        [
            gs.rt * gs.mat.out_in().1,
            gs.brows * self.rank,
            ds.rt * ds.mat.out_in().1,
            ds.brows * self.rank,
        ]
    }

    /// The two projections over the packed adapters (or their gradient's shape).
    fn projs<'a>(&'a self, p: &'a [f32]) -> CResult<(Proj<'a>, Proj<'a>)> {
        let e = self.experts();
        let (gs, ds) = (&self.gate_up, &self.down);
        let sizes = self.blocks();
        let stride: usize = sizes.iter().sum();
        if p.len() != e * stride {
            candle_core::bail!(
                "moe experts: packed adapters hold {} values, expected {e} experts of {sizes:?}",
                p.len()
            );
        }
        let at = |i: usize| &p[sizes[..i].iter().sum::<usize>()..];
        let proj = |s: &'a ProjSpec, a: &'a [f32], b: &'a [f32]| Proj {
            mat: &s.mat,
            bias: &s.bias,
            a,
            b,
            stride,
            parts: &s.parts,
            r: self.rank,
            rt: s.rt,
            brows: s.brows,
        };
        let (gu, dn) = (proj(gs, at(0), at(1)), proj(ds, at(2), at(3)));
        gu.check(e)?;
        dn.check(e)?;
        Ok((gu, dn))
    }

    /// Rows `start..start+len` of the expert order, gathered from `h [N, H]`.
    fn gather(&self, h: &[f32], hd: usize, start: usize, len: usize) -> Vec<f32> {
        let mut x = Vec::with_capacity(len * hd);
        for &s in &self.slots[start..start + len] {
            let t = s as usize / self.k;
            x.extend_from_slice(&h[t * hd..(t + 1) * hd]);
        }
        x
    }

    fn activate(&self, u: &[f32], inter: usize) -> Vec<f32> {
        let mut act = vec![0f32; u.len() / 2];
        for (o, ur) in act.chunks_mut(inter).zip(u.chunks(2 * inter)) {
            simd(|| swiglu_row(o, ur, self.limit, self.alpha));
        }
        act
    }
}

/// Splits a `[E, size]` gradient buffer into each segment's expert block (empty blocks when
/// the adapters hold nothing).
fn expert_blocks<'a>(
    buf: &'a mut [f32],
    size: usize,
    segs: &Segments,
) -> CResult<Vec<&'a mut [f32]>> {
    if size == 0 {
        return Ok(segs.iter().map(|_| Default::default()).collect());
    }
    segment_experts(buf, size, segs)
}

impl CustomOp3 for MoeExperts {
    fn name(&self) -> &'static str {
        "osstune-moe-experts"
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
        let h = contiguous_f32(s1, l1, "moe experts input")?;
        let w = contiguous_f32(s2, l2, "moe routing weights")?;
        let p = contiguous_f32(s3, l3, "moe expert adapters")?;
        let (n, hd) = l1.shape().dims2()?;
        let (gu, dn) = self.projs(p)?;
        let (two_i, in_gu) = gu.out_in();
        let (h_out, inter) = dn.out_in();
        let m = self.slots.len();
        if in_gu != hd || h_out != hd || two_i != 2 * inter || w.len() != m || n * self.k != m {
            candle_core::bail!(
                "moe experts: input {:?}, {} weights, gate_up {:?}, down {:?}, k = {}",
                l1.dims(),
                w.len(),
                gu.out_in(),
                dn.out_in(),
                self.k
            );
        }
        let mut u = vec![0f32; m * two_i];
        let mut y = vec![0f32; m * hd];
        let items = self.segs.iter().zip(
            segment_rows(&mut u, two_i, &self.segs)?
                .into_iter()
                .zip(segment_rows(&mut y, hd, &self.segs)?),
        );
        for_segments(items.collect(), |(&(e, start, len), (ur, yr))| {
            let x = self.gather(h, hd, start, len);
            gu.forward(e, &x, ur)?;
            dn.forward(e, &self.activate(ur, inter), yr)
        })?;
        // out[t] = Σ_j w[t·k + j] · y[row(t, j)], in slot order.
        let mut out = vec![0f32; n * hd];
        out.par_chunks_mut(hd).enumerate().for_each(|(t, o)| {
            let slots = t * self.k..(t + 1) * self.k;
            for (&mr, &ws) in self.rows[slots.clone()].iter().zip(&w[slots]) {
                let mr = mr as usize;
                for (ov, &yv) in o.iter_mut().zip(&y[mr * hd..(mr + 1) * hd]) {
                    *ov += ws * yv;
                }
            }
        });
        self.saved.put((u, y))?;
        Ok((CpuStorage::F32(out), Shape::from((n, hd))))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        p: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, hd) = h.dims2()?;
        let g = g.contiguous()?.to_dtype(DType::F32)?;
        let (hs, hl) = h.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (ps, pl) = p.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let hv = storage_f32(&hs, hl, "moe experts input")?;
        let wv = storage_f32(&ws, wl, "moe routing weights")?;
        let pv = storage_f32(&ps, pl, "moe expert adapters")?;
        let gv = storage_f32(&gs, gl, "moe experts gradient")?;
        let (u, y) = self.saved.take()?;
        let (gu, dn) = self.projs(pv)?;
        let (two_i, inter) = (gu.out_in().0, dn.out_in().1);
        let m = self.slots.len();
        if u.len() != m * two_i || y.len() != m * hd {
            candle_core::bail!("moe experts: backward without a matching forward");
        }
        // dw[s] = g[t] · y[row(s)]
        let dw: Vec<f32> = (0..m)
            .into_par_iter()
            .map(|s| {
                let (t, mr) = (s / self.k, self.rows[s] as usize);
                let gr = &gv[t * hd..(t + 1) * hd];
                gr.iter()
                    .zip(&y[mr * hd..(mr + 1) * hd])
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect();
        let mut dxs = vec![0f32; m * hd];
        let mut dp = vec![0f32; pv.len()];
        let sizes = self.blocks();
        // Each segment's expert block of the gradient, split as the pack is.
        let grads = expert_blocks(&mut dp, sizes.iter().sum(), &self.segs)?
            .into_iter()
            .map(|blk| {
                let (da_gu, rest) = blk.split_at_mut(sizes[0]);
                let (db_gu, rest) = rest.split_at_mut(sizes[1]);
                let (da_d, db_d) = rest.split_at_mut(sizes[2]);
                ((da_gu, db_gu), (da_d, db_d))
            });
        let items = self.segs.iter().zip(
            segment_rows(&mut dxs, hd, &self.segs)?
                .into_iter()
                .zip(grads),
        );
        for_segments(items.collect(), |(&(e, start, len), (dx, (gu_g, dn_g)))| {
            let ((da_gu, db_gu), (da_d, db_d)) = (gu_g, dn_g);
            let ur = &u[start * two_i..(start + len) * two_i];
            let act = self.activate(ur, inter);
            // dy[m] = w[slot(m)] · g[token(m)]
            let mut dy = vec![0f32; len * hd];
            for (d, &s) in dy.chunks_mut(hd).zip(&self.slots[start..start + len]) {
                let (t, ws) = (s as usize / self.k, wv[s as usize]);
                for (o, &gg) in d.iter_mut().zip(&gv[t * hd..(t + 1) * hd]) {
                    *o = ws * gg;
                }
            }
            let mut dact = vec![0f32; len * inter];
            dn.backward(e, &act, &dy, &mut dact, da_d, db_d)?;
            let mut du = vec![0f32; len * two_i];
            for ((d, uu), ga) in du
                .chunks_mut(two_i)
                .zip(ur.chunks(two_i))
                .zip(dact.chunks(inter))
            {
                simd(|| swiglu_row_grad(d, uu, ga, self.limit, self.alpha));
            }
            let x = self.gather(hv, hd, start, len);
            gu.backward(e, &x, &du, dx, da_gu, db_gu)
        })?;
        // dh[t] = Σ_j dxs[row(t, j)], in slot order.
        let mut dh = vec![0f32; n * hd];
        dh.par_chunks_mut(hd).enumerate().for_each(|(t, d)| {
            for &mr in &self.rows[t * self.k..(t + 1) * self.k] {
                let mr = mr as usize;
                for (o, &v) in d.iter_mut().zip(&dxs[mr * hd..(mr + 1) * hd]) {
                    *o += v;
                }
            }
        });
        let dev = h.device();
        Ok((
            Some(Tensor::from_vec(dh, (n, hd), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(dp, p.shape(), dev)?),
        ))
    }
}
