//! The attention core for training and cache-free prefill on the CPU as one autograd op:
//! RoPE on q and k, GQA, the causal / sliding-window mask, learned sinks, softmax and the
//! value product — forward and backward.
//!
//! Composed from candle ops the core is about ten graph nodes (head transposes, RoPE,
//! scaling, two batched matmuls over the whole `[T, T]` score matrix, the softmax), each with
//! a full-size result and a full-size gradient. Here queries go in blocks, and a block only
//! multiplies the keys it can see: on a sliding layer at most W + block keys, on a full layer
//! the keys up to the block's end. Nothing `[T, T]` is kept: the forward stores one
//! log-sum-exp per query row (sink included) and the backward recomputes each block's
//! probabilities from it (flash-attention's scheme), so memory is O(T) per head, not O(T²).
//!
//! Inputs are the projections as they come out of the linears: `q [B, T, Hq·D]`,
//! `k`/`v [B, T, Hkv·D]`; the output is `[B, T, Hq·D]`, ready for `o_proj`. Query head h uses
//! KV head h / (Hq/Hkv). Queries and keys share positions `offset..offset+T` (no cache).
//! Work is split over (batch, KV head, query block) in the forward and (batch, KV head) in
//! the backward, whose key/value gradients collect from every block; the matmuls inside a
//! task run single-threaded.

use crate::kernels::cpu::vecmath::{fast_exp, max_f32, simd, sum_f32};
use crate::kernels::gemm::gemm_ld;
use crate::kernels::mask::CausalMask;
use crate::kernels::op::{contiguous_f32, storage_f32, CResult, Saved};
use crate::kernels::AttentionShape;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Rows of scores per block (query positions × heads sharing a KV head): large enough for
/// efficient matmuls, small enough that a causal block wastes little on hidden keys.
const BLOCK_ROWS: usize = 256;

struct FusedAttention {
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    mask: CausalMask,
    /// `[T, D/2]` rotation for positions `offset..offset+T`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// `[Hq]`
    sinks: Vec<f32>,
    /// `[B, Hq, T]` log-sum-exp of each query row, from the forward for the backward.
    lse: Saved<Vec<f32>>,
}

/// Where one `(batch, KV head)` group's block lives: query positions `i0..i1`, score rows
/// `(i − i0)·rep + r` for query head `g·rep + r`, keys `lo..hi`.
#[derive(Clone, Copy)]
struct Block {
    i0: usize,
    i1: usize,
    lo: usize,
    hi: usize,
}

impl FusedAttention {
    fn rep(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    fn positions_per_block(&self) -> usize {
        (BLOCK_ROWS / self.rep()).max(1)
    }

    fn blocks(&self, t: usize) -> Vec<Block> {
        let step = self.positions_per_block();
        (0..t)
            .step_by(step)
            .map(|i0| {
                let i1 = (i0 + step).min(t);
                let lo = self.mask.range(i0, t).0;
                let hi = self.mask.range(i1 - 1, t).1.max(lo);
                Block { i0, i1, lo, hi }
            })
            .collect()
    }

    /// Rotates `x` (D values at position `i`) into `out`; `sign` −1 applies the inverse
    /// (transposed) rotation, which is what gradients need.
    fn rotate(&self, out: &mut [f32], x: &[f32], i: usize, scale: f32, sign: f32) {
        let h = self.head_dim / 2;
        let (c, s) = (&self.cos[i * h..(i + 1) * h], &self.sin[i * h..(i + 1) * h]);
        for k in 0..h {
            let (x1, x2) = (x[k], x[k + h]);
            let sn = sign * s[k];
            out[k] = (x1 * c[k] - x2 * sn) * scale;
            out[k + h] = (x2 * c[k] + x1 * sn) * scale;
        }
    }

    /// Rotated, 1/√D-scaled queries of group `(bi, g)` as `[T, rep, D]` (a block's rows are
    /// then one contiguous matrix) and its rotated keys as `[T, D]`.
    fn rotated(&self, q: &[f32], k: &[f32], t: usize, bi: usize, g: usize) -> (Vec<f32>, Vec<f32>) {
        let (hq, hkv, d, rep) = (self.n_heads, self.n_kv_heads, self.head_dim, self.rep());
        let scale = 1.0 / (d as f32).sqrt();
        let mut qr = vec![0f32; t * rep * d];
        let mut kr = vec![0f32; t * d];
        for i in 0..t {
            for r in 0..rep {
                let src = ((bi * t + i) * hq + g * rep + r) * d;
                let dst = (i * rep + r) * d;
                self.rotate(&mut qr[dst..dst + d], &q[src..src + d], i, scale, 1.0);
            }
            let src = ((bi * t + i) * hkv + g) * d;
            self.rotate(&mut kr[i * d..(i + 1) * d], &k[src..src + d], i, 1.0, 1.0);
        }
        (qr, kr)
    }

    /// Scores of block `bk` (`[rows, hi − lo]`) for group `g`: `Q_blk · K[lo..hi]ᵀ`.
    fn scores(&self, qr: &[f32], kr: &[f32], bk: Block) -> Vec<f32> {
        let (d, rep) = (self.head_dim, self.rep());
        let (rows, w) = ((bk.i1 - bk.i0) * rep, bk.hi - bk.lo);
        let mut s = vec![0f32; rows * w];
        let qb = &qr[bk.i0 * rep * d..];
        gemm_ld(
            &mut s,
            w,
            false,
            (rows, w, d),
            qb,
            (d, 1),
            &kr[bk.lo * d..],
            (1, d),
            1.0,
        );
        s
    }

    /// The visible columns of score row `row` of block `bk`, relative to `bk.lo`.
    fn visible(&self, bk: Block, row: usize, t: usize) -> (usize, usize) {
        let (a, z) = self.mask.range(bk.i0 + row / self.rep(), t);
        let a = a.clamp(bk.lo, bk.hi);
        (a - bk.lo, z.clamp(a, bk.hi) - bk.lo)
    }
}

/// Sink softmax of the visible columns `a..z` of a score row, in place (the rest → 0);
/// returns the row's log-sum-exp, sink included.
#[inline(always)]
fn softmax_row(sr: &mut [f32], a: usize, z: usize, sink: f32) -> f32 {
    let vis = &mut sr[a..z];
    let m = max_f32(vis, sink);
    vis.iter_mut().for_each(|x| *x = fast_exp(*x - m));
    let sum = fast_exp(sink - m) + sum_f32(vis);
    let inv = 1.0 / sum;
    vis.iter_mut().for_each(|x| *x *= inv);
    sr[..a].fill(0.0);
    sr[z..].fill(0.0);
    m + sum.ln()
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "osstune-fused-attention"
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
        let q = contiguous_f32(s1, l1, "attention q")?;
        let k = contiguous_f32(s2, l2, "attention k")?;
        let v = contiguous_f32(s3, l3, "attention v")?;
        let (b, t, _) = l1.shape().dims3()?;
        let (hq, hkv, d, rep) = (self.n_heads, self.n_kv_heads, self.head_dim, self.rep());
        self.check(l1, l2, l3)?;
        let blocks = self.blocks(t);
        let groups: Vec<(Vec<f32>, Vec<f32>)> = (0..b * hkv)
            .into_par_iter()
            .map(|bg| self.rotated(q, k, t, bg / hkv, bg % hkv))
            .collect();
        // Every (group, block) is independent in the forward.
        let outs: Vec<(Vec<f32>, Vec<f32>)> = (0..b * hkv * blocks.len())
            .into_par_iter()
            .map(|job| {
                let (bg, bk) = (job / blocks.len(), blocks[job % blocks.len()]);
                let (bi, g) = (bg / hkv, bg % hkv);
                let (qr, kr) = &groups[bg];
                let w = bk.hi - bk.lo;
                let mut s = self.scores(qr, kr, bk);
                let rows = (bk.i1 - bk.i0) * rep;
                let mut lse = vec![0f32; rows];
                for (row, sr) in s.chunks_mut(w.max(1)).take(rows).enumerate() {
                    let (a, z) = self.visible(bk, row, t);
                    let sink = self.sinks[g * rep + row % rep];
                    lse[row] = simd(|| softmax_row(sr, a, z, sink));
                }
                let mut o = vec![0f32; rows * d];
                let vb = &v[((bi * t + bk.lo) * hkv + g) * d..];
                gemm_ld(
                    &mut o,
                    d,
                    false,
                    (rows, d, w),
                    &s,
                    (w, 1),
                    vb,
                    (hkv * d, 1),
                    1.0,
                );
                (o, lse)
            })
            .collect();
        let mut dst = vec![0f32; b * t * hq * d];
        let mut lse_all = vec![0f32; b * hq * t];
        for (job, (o, lse)) in outs.iter().enumerate() {
            let (bg, bk) = (job / blocks.len(), blocks[job % blocks.len()]);
            let (bi, g) = (bg / hkv, bg % hkv);
            for (row, (orow, &l)) in o.chunks(d).zip(lse).enumerate() {
                let (i, h) = (bk.i0 + row / rep, g * rep + row % rep);
                let at = ((bi * t + i) * hq + h) * d;
                dst[at..at + d].copy_from_slice(orow);
                lse_all[(bi * hq + h) * t + i] = l;
            }
        }
        self.lse.put(lse_all)?;
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t, _) = q.dims3()?;
        let (hq, hkv, d, rep) = (self.n_heads, self.n_kv_heads, self.head_dim, self.rep());
        let grad = grad.contiguous()?.to_dtype(DType::F32)?;
        // The op's inputs and output are contiguous f32 (see `attention`).
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (os, ol) = out.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let qv = storage_f32(&qs, ql, "attention q")?;
        let kv = storage_f32(&ks, kl, "attention k")?;
        let vv = storage_f32(&vs, vl, "attention v")?;
        let ov = storage_f32(&os, ol, "attention output")?;
        let gv = storage_f32(&gs, gl, "attention gradient")?;
        let lse = self.lse.get()?;
        if lse.len() != b * hq * t {
            candle_core::bail!("fused attention: backward without a matching forward");
        }
        let blocks = self.blocks(t);
        // dK/dV of a group collect from every block: one task per group, blocks in order.
        let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..b * hkv)
            .into_par_iter()
            .map(|bg| {
                let (bi, g) = (bg / hkv, bg % hkv);
                let (qr, kr) = self.rotated(qv, kv, t, bi, g);
                let mut dqr = vec![0f32; t * rep * d];
                let mut dkr = vec![0f32; t * d];
                let mut dv = vec![0f32; t * d];
                let vb0 = (bi * t * hkv + g) * d;
                for &bk in &blocks {
                    let (rows, w) = ((bk.i1 - bk.i0) * rep, bk.hi - bk.lo);
                    // dO rows of the block and δ = rowsum(dO ⊙ O) (= Σ P·dP, sinks included).
                    let mut dob = vec![0f32; rows * d];
                    let mut delta = vec![0f32; rows];
                    for row in 0..rows {
                        let (i, h) = (bk.i0 + row / rep, g * rep + row % rep);
                        let at = ((bi * t + i) * hq + h) * d;
                        dob[row * d..(row + 1) * d].copy_from_slice(&gv[at..at + d]);
                        delta[row] = gv[at..at + d]
                            .iter()
                            .zip(&ov[at..at + d])
                            .map(|(a, b)| a * b)
                            .sum();
                    }
                    let mut p = self.scores(&qr, &kr, bk);
                    for (row, pr) in p.chunks_mut(w.max(1)).take(rows).enumerate() {
                        let (a, z) = self.visible(bk, row, t);
                        let (i, h) = (bk.i0 + row / rep, g * rep + row % rep);
                        let l = lse[(bi * hq + h) * t + i];
                        simd(|| {
                            pr[a..z].iter_mut().for_each(|x| *x = fast_exp(*x - l));
                            pr[..a].fill(0.0);
                            pr[z..].fill(0.0);
                        });
                    }
                    let vb = &vv[vb0 + bk.lo * hkv * d..];
                    // dV += Pᵀ dO ; dP = dO Vᵀ ; dS = P ⊙ (dP − δ) ; dQ += dS K ; dK += dSᵀ Q
                    let dvb = &mut dv[bk.lo * d..];
                    gemm_ld(dvb, d, true, (w, d, rows), &p, (1, w), &dob, (d, 1), 1.0);
                    let mut ds = vec![0f32; rows * w];
                    gemm_ld(
                        &mut ds,
                        w,
                        false,
                        (rows, w, d),
                        &dob,
                        (d, 1),
                        vb,
                        (1, hkv * d),
                        1.0,
                    );
                    simd(|| {
                        let rows = ds.chunks_mut(w.max(1)).zip(p.chunks(w.max(1)));
                        for ((dr, pr), &dl) in rows.zip(&delta) {
                            for (x, &pv) in dr.iter_mut().zip(pr) {
                                *x = pv * (*x - dl);
                            }
                        }
                    });
                    let qb = &qr[bk.i0 * rep * d..];
                    let dqb = &mut dqr[bk.i0 * rep * d..];
                    gemm_ld(
                        dqb,
                        d,
                        true,
                        (rows, d, w),
                        &ds,
                        (w, 1),
                        &kr[bk.lo * d..],
                        (d, 1),
                        1.0,
                    );
                    let dkb = &mut dkr[bk.lo * d..];
                    gemm_ld(dkb, d, true, (w, d, rows), &ds, (1, w), qb, (d, 1), 1.0);
                }
                (dqr, dkr, dv)
            })
            .collect();
        // Back to the projections' layout through the transposed rotation (and 1/√D for q).
        let scale = 1.0 / (d as f32).sqrt();
        let mut dq = vec![0f32; b * t * hq * d];
        let mut dk = vec![0f32; b * t * hkv * d];
        let mut dv = vec![0f32; b * t * hkv * d];
        for (bg, (dqr, dkr, dvg)) in parts.iter().enumerate() {
            let (bi, g) = (bg / hkv, bg % hkv);
            for i in 0..t {
                for r in 0..rep {
                    let at = ((bi * t + i) * hq + g * rep + r) * d;
                    let src = (i * rep + r) * d;
                    self.rotate(&mut dq[at..at + d], &dqr[src..src + d], i, scale, -1.0);
                }
                let at = ((bi * t + i) * hkv + g) * d;
                self.rotate(&mut dk[at..at + d], &dkr[i * d..(i + 1) * d], i, 1.0, -1.0);
                dv[at..at + d].copy_from_slice(&dvg[i * d..(i + 1) * d]);
            }
        }
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

impl FusedAttention {
    fn check(&self, l1: &Layout, l2: &Layout, l3: &Layout) -> CResult<()> {
        let (b, t, qd) = l1.shape().dims3()?;
        let (d, hkv) = (self.head_dim, self.n_kv_heads);
        let kvd = (b, t, hkv * d);
        if qd != self.n_heads * d || l2.shape().dims3()? != kvd || l3.shape().dims3()? != kvd {
            candle_core::bail!(
                "fused attention: q {:?}, k {:?}, v {:?} do not fit {} heads / {hkv} KV heads × {d}",
                l1.dims(),
                l2.dims(),
                l3.dims(),
                self.n_heads
            );
        }
        if self.cos.len() < t * d / 2 || self.sin.len() < t * d / 2 {
            candle_core::bail!("fused attention: rotation table shorter than {t} positions");
        }
        Ok(())
    }
}

/// Whether the shape suits this kernel: whole groups of query heads per KV head, and an even
/// head dimension (RoPE's two halves).
pub(crate) fn eligible(shape: AttentionShape) -> bool {
    shape.n_kv_heads > 0
        && shape.n_heads.is_multiple_of(shape.n_kv_heads)
        && shape.head_dim.is_multiple_of(2)
}

/// The attention core (see the module docs) on CPU f32 `q`, `k`, `v`.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (cos, sin, sinks): (&Tensor, &Tensor, &Tensor),
    shape: AttentionShape,
    mask: CausalMask,
) -> CResult<Tensor> {
    let host =
        |x: &Tensor| -> CResult<Vec<f32>> { x.to_dtype(DType::F32)?.flatten_all()?.to_vec1() };
    let op = FusedAttention {
        n_heads: shape.n_heads,
        n_kv_heads: shape.n_kv_heads,
        head_dim: shape.head_dim,
        mask,
        cos: host(cos)?,
        sin: host(sin)?,
        sinks: host(sinks)?,
        lse: Saved::default(),
    };
    q.apply_op3(k, v, op)
}
