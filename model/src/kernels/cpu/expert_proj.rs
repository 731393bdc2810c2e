//! One grouped expert projection with its LoRA deltas, per expert segment:
//! `d[rows of e] = xs[rows] · W_eᵀ + b_e + Σ_p s_p · (xs[rows] · A_e[p]ᵀ) · B_e[p]ᵀ`
//! written into the output columns of part `p`, and the matching backward.
//!
//! gate/up share one `[M, 2I]` output (gate columns, then up columns) with separate adapters:
//! per expert, their A are stacked along the rank axis (`[R, in]`, R = Σ r_p) and their B along
//! the output axis (`[Σ out_p, r]`), so one `x·Aᵀ` serves both. The MoE op (`moe_experts.rs`)
//! runs a segment's gate/up, SwiGLU and down back to back through these kernels. Base weights
//! are constants (no gradient), read where they lie (`frozen.rs`).

use crate::kernels::cpu::frozen::with_expert;
use crate::kernels::gemm::{gemm_ld, gemm_rs};
use crate::kernels::op::CResult;
use crate::quant::experts::ExpertMat;

/// One adapter of a grouped projection: output columns `col..col+len`, rank columns
/// `rank0..rank0+r` of the stacked A, rows `brow..brow+len` of the stacked B.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoraPart {
    pub col: usize,
    pub len: usize,
    pub rank0: usize,
    pub brow: usize,
    pub scale: f32,
}

/// A grouped projection's weights and (possibly no) adapters, borrowed for one pass:
/// `bias [E, out]`; expert e's stacked A `[rt, in]` starts at `a[e · stride]` and its stacked
/// B `[brows, r]` at `b[e · stride]` (empty when `parts` is).
pub(crate) struct Proj<'a> {
    pub mat: &'a ExpertMat,
    pub bias: &'a [f32],
    pub a: &'a [f32],
    pub b: &'a [f32],
    /// Distance between consecutive experts' blocks in `a` and in `b`.
    pub stride: usize,
    pub parts: &'a [LoraPart],
    /// Rank of every part; `rt` = stacked rank, `brows` = stacked B rows.
    pub r: usize,
    pub rt: usize,
    pub brows: usize,
}

impl Proj<'_> {
    pub fn out_in(&self) -> (usize, usize) {
        self.mat.out_in()
    }

    /// Sizes of one expert's A and B blocks.
    pub fn a_len(&self) -> usize {
        self.rt * self.out_in().1
    }

    pub fn b_len(&self) -> usize {
        self.brows * self.r
    }

    fn expert_a(&self, e: usize) -> &[f32] {
        &self.a[e * self.stride..e * self.stride + self.a_len()]
    }

    fn expert_b(&self, e: usize) -> &[f32] {
        &self.b[e * self.stride..e * self.stride + self.b_len()]
    }

    /// `t = x A_eᵀ` `[len, rt]`: every part's rank columns at once.
    fn x_at(&self, e: usize, x: &[f32]) -> Vec<f32> {
        let inp = self.out_in().1;
        let len = x.len() / inp.max(1);
        let mut t = vec![0f32; len * self.rt];
        let a = self.expert_a(e);
        gemm_rs(
            &mut t,
            false,
            (len, self.rt, inp),
            x,
            (inp, 1),
            a,
            (1, inp),
            1.0,
        );
        t
    }

    /// Checks the parts fit the stacked shapes and the slices hold `experts` of each.
    pub fn check(&self, experts: usize) -> CResult<()> {
        let (out, _) = self.out_in();
        let bad = self.parts.iter().any(|p| {
            p.col + p.len > out || p.rank0 + self.r > self.rt || p.brow + p.len > self.brows
        }) || self.bias.len() != experts * out;
        // The last expert's blocks end inside the slices.
        let fits =
            |s: &[f32], len: usize| experts == 0 || (experts - 1) * self.stride + len <= s.len();
        let bad = bad || !fits(self.a, self.a_len()) || !fits(self.b, self.b_len());
        if bad {
            candle_core::bail!("grouped lora projection: parts or adapters do not fit the shapes");
        }
        Ok(())
    }

    /// `d [len, out] = x [len, in] · W_eᵀ + b_e + Σ_p s_p·(x A_pᵀ) B_pᵀ` (d overwritten).
    pub fn forward(&self, e: usize, x: &[f32], d: &mut [f32]) -> CResult<()> {
        let (out, inp) = self.out_in();
        let len = x.len() / inp.max(1);
        for row in d.chunks_mut(out) {
            row.copy_from_slice(&self.bias[e * out..(e + 1) * out]);
        }
        with_expert(self.mat, e, |w| w.xwt(x, len, d, out, true))?;
        if self.parts.is_empty() {
            return Ok(());
        }
        // t = x A_eᵀ for all parts at once, then each part's B into its columns.
        let (rt, r) = (self.rt, self.r);
        let t = self.x_at(e, x);
        let be = self.expert_b(e);
        for p in self.parts {
            gemm_ld(
                &mut d[p.col..],
                out,
                true,
                (len, p.len, r),
                &t[p.rank0..],
                (rt, 1),
                &be[p.brow * r..],
                (1, r),
                p.scale,
            );
        }
        Ok(())
    }

    /// From `g [len, out]`: `dx [len, in]` (overwritten), and expert e's adapter gradients
    /// added into `da [rt, in]` and `db [brows, r]`.
    pub fn backward(
        &self,
        e: usize,
        x: &[f32],
        g: &[f32],
        dx: &mut [f32],
        da: &mut [f32],
        db: &mut [f32],
    ) -> CResult<()> {
        let (out, inp) = self.out_in();
        let len = x.len() / inp.max(1);
        with_expert(self.mat, e, |w| w.gw(g, len, out, dx, false))?;
        if self.parts.is_empty() {
            return Ok(());
        }
        let (rt, r) = (self.rt, self.r);
        let (ae, be) = (self.expert_a(e), self.expert_b(e));
        // t = x Aᵀ ; per part: dB_p += s gₚᵀ tₚ, dtₚ = s gₚ B_p ; dA += dtᵀ x ; dx += dt A
        let t = self.x_at(e, x);
        let mut dt = vec![0f32; len * rt];
        for p in self.parts {
            let gp = &g[p.col..];
            gemm_rs(
                &mut db[p.brow * r..(p.brow + p.len) * r],
                true,
                (p.len, r, len),
                gp,
                (1, out),
                &t[p.rank0..],
                (rt, 1),
                p.scale,
            );
            gemm_ld(
                &mut dt[p.rank0..],
                rt,
                false,
                (len, r, p.len),
                gp,
                (out, 1),
                &be[p.brow * r..],
                (r, 1),
                p.scale,
            );
        }
        gemm_rs(da, true, (rt, inp, len), &dt, (1, rt), x, (inp, 1), 1.0);
        gemm_rs(dx, true, (len, inp, rt), &dt, (rt, 1), ae, (inp, 1), 1.0);
        Ok(())
    }
}
