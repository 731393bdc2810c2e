//! The MoE's token dispatch and weighted combine as autograd ops. Row `m` of the expert-order
//! rows (M = N·k) belongs to token `tokens[m]` through routing slot `slots[m] = tokens[m]·k + j`.
//! - dispatch: `xs[m] = x[tokens[m]]`, `x [N, H]` → `xs [M, H]`;
//! - combine: `out[n] = Σ_j w[n·k + j] · y[row(n, j)]`, `y [M, H]` → `[N, H]`.
//!
//! Dispatch as candle's `index_select` copies serially and its backward is a zero `[N, H]` plus
//! a serial `index_add`; here both directions run parallel over rows, and the backward sums
//! each token's k rows in slot order (deterministic).
//!
//! As candle ops this is `index_select` of the weights, a broadcast multiply, a zero `[N, H]`
//! and an `index_add`, and backward as many full-size `[M, H]` passes again; here it is one
//! pass each way, parallel over tokens (every token has exactly k rows, so no two threads
//! write the same output row).

use crate::kernels::cpu::pool;
use crate::kernels::op::{contiguous_f32, storage_f32, CResult};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

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
        pool::rows(&mut dst, h, |t, d| {
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

struct Dispatch {
    /// `slots[m]`: the routing slot (token·k + j) of expert-order row m.
    slots: Vec<u32>,
    /// `rows[s]`: the inverse map.
    rows: Vec<u32>,
    k: usize,
}

impl CustomOp1 for Dispatch {
    fn name(&self) -> &'static str {
        "osstune-moe-dispatch"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "moe dispatch")?;
        let (_, h) = l.shape().dims2()?;
        let mut xs = vec![0f32; self.slots.len() * h];
        pool::rows(&mut xs, h, |i, d| {
            let t = self.slots[i] as usize / self.k;
            d.copy_from_slice(&x[t * h..(t + 1) * h]);
        });
        Ok((CpuStorage::F32(xs), Shape::from((self.slots.len(), h))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        let (n, h) = x.dims2()?;
        let g = g.contiguous()?.to_dtype(DType::F32)?;
        let (gs, gl) = g.storage_and_layout();
        let gv = storage_f32(&gs, gl, "moe dispatch gradient")?;
        let mut dx = vec![0f32; n * h];
        dx.par_chunks_mut(h).enumerate().for_each(|(t, d)| {
            for &m in &self.rows[t * self.k..(t + 1) * self.k] {
                let m = m as usize;
                for (o, &v) in d.iter_mut().zip(&gv[m * h..(m + 1) * h]) {
                    *o += v;
                }
            }
        });
        Ok(Some(Tensor::from_vec(dx, (n, h), x.device())?))
    }
}

/// `x [N, H]` (contiguous f32) → `[M, H]` in expert order; `kernels::dispatch` checked the
/// slots.
pub(crate) fn dispatch(x: &Tensor, slots: &[u32], rows: Vec<u32>, k: usize) -> CResult<Tensor> {
    x.apply_op1(Dispatch {
        slots: slots.to_vec(),
        rows,
        k,
    })
}

/// `y [M, H]` and routing weights `w [N·k]` (contiguous f32) → `[N, H]`; `rows` from
/// `slot_rows`.
pub(crate) fn combine(y: &Tensor, w: &Tensor, rows: Vec<u32>, k: usize) -> CResult<Tensor> {
    y.apply_op2(w, Combine { rows, k })
}
