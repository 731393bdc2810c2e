//! The MoE's weighted combine as one autograd op: `out[n] = Σ_j w[n·k + j] · y[row(n, j)]`,
//! where row `m` of the expert outputs `y [M, H]` (M = N·k, rows in expert order) came from
//! token `tokens[m]` through routing slot `slots[m] = tokens[m]·k + j`.
//!
//! As candle ops this is `index_select` of the weights, a broadcast multiply, a zero `[N, H]`
//! and an `index_add`, and backward as many full-size `[M, H]` passes again; here it is one
//! pass each way, parallel over tokens (every token has exactly k rows, so no two threads
//! write the same output row).

use crate::ops::{contiguous_f32, storage_f32};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

type CResult<T> = candle_core::Result<T>;

struct Combine {
    /// `rows[n·k + j]`: the row of `y` holding token n's j-th expert output.
    rows: Vec<u32>,
    k: usize,
}

impl CustomOp2 for Combine {
    fn name(&self) -> &'static str {
        "osstune-moe-combine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let y = contiguous_f32(s1, l1, "moe combine")?;
        let w = contiguous_f32(s2, l2, "moe combine weights")?;
        let (_, h) = l1.shape().dims2()?;
        let n = self.rows.len() / self.k;
        let mut dst = vec![0f32; n * h];
        dst.par_chunks_mut(h).enumerate().for_each(|(t, d)| {
            for j in 0..self.k {
                let s = t * self.k + j;
                let m = self.rows[s] as usize;
                let wv = w[s];
                for (o, &v) in d.iter_mut().zip(&y[m * h..(m + 1) * h]) {
                    *o += wv * v;
                }
            }
        });
        Ok((CpuStorage::F32(dst), Shape::from((n, h))))
    }

    fn bwd(
        &self,
        y: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let (m_rows, h) = y.dims2()?;
        // `combine` hands the op contiguous f32 inputs; the incoming gradient may be strided.
        let g = g.contiguous()?.to_dtype(DType::F32)?;
        let (ys, yl) = y.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let yv = storage_f32(&ys, yl, "moe combine")?;
        let wv = storage_f32(&ws, wl, "moe combine weights")?;
        let gv = storage_f32(&gs, gl, "moe combine gradient")?;
        // dy[row(n, j)] = w[n·k + j] · g[n] ; dw[n·k + j] = g[n] · y[row(n, j)]
        let mut dy = vec![0f32; m_rows * h];
        let mut slot_of = vec![0usize; m_rows];
        for (s, &m) in self.rows.iter().enumerate() {
            slot_of[m as usize] = s;
        }
        dy.par_chunks_mut(h).enumerate().for_each(|(m, d)| {
            let s = slot_of[m];
            let (t, wm) = (s / self.k, wv[s]);
            for (o, &gv) in d.iter_mut().zip(&gv[t * h..(t + 1) * h]) {
                *o = wm * gv;
            }
        });
        let dw: Vec<f32> = (0..self.rows.len())
            .into_par_iter()
            .map(|s| {
                let (t, m) = (s / self.k, self.rows[s] as usize);
                let gr = &gv[t * h..(t + 1) * h];
                gr.iter()
                    .zip(&yv[m * h..(m + 1) * h])
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect();
        let dev = y.device();
        Ok((
            Some(Tensor::from_vec(dy, (m_rows, h), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
        ))
    }
}

/// `y [M, H]` (row m from slot `slots[m]` = token·k + j) and routing weights `w [N·k]` →
/// `[N, H]`. Every slot must be used exactly once (top-k routing guarantees it).
pub fn combine(y: &Tensor, w: &Tensor, slots: &[u32], k: usize) -> CResult<Tensor> {
    let n_slots = w.elem_count();
    if slots.len() != n_slots || y.dim(0)? != n_slots || k == 0 || !n_slots.is_multiple_of(k) {
        candle_core::bail!(
            "moe combine: {} rows, {} slots, {n_slots} weights, k = {k}",
            y.dim(0)?,
            slots.len()
        );
    }
    let mut rows = vec![u32::MAX; n_slots];
    for (m, &s) in slots.iter().enumerate() {
        match rows.get_mut(s as usize) {
            Some(r) if *r == u32::MAX => *r = m as u32,
            _ => candle_core::bail!("moe combine: slot {s} used twice or out of range"),
        }
    }
    y.contiguous()?
        .apply_op2(&w.contiguous()?, Combine { rows, k })
}
