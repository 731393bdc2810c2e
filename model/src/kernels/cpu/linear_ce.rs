//! Fused lm_head + cross-entropy on the CPU ("linear cross-entropy"): for a block of hidden
//! rows at a time, the block's logits `h·Wᵀ`, its loss and d loss/d logits in place, then
//! d loss/d h = G·W. The `[rows, V]` logits never exist beyond one block per thread, and
//! blocks run in parallel with single-threaded matmuls (no synchronisation inside a block).
//!
//! Per row with target t and weight w: loss = w·(logsumexp(x) − x_t) and, with a gradient
//! scale s, d/dx = w·s·(softmax(x) − onehot(t)). exp(x − max) is taken once, into the
//! gradient row; partial sums are f32 per 512 entries and f64 across, so V = 201088 loses
//! nothing to f32 accumulation. Block losses are added in block order: the result does not
//! depend on the thread count or scheduling (exact `--resume` relies on that).

use crate::kernels::cpu::frozen::{with_matrix, Frozen};
use crate::kernels::cpu::vecmath::{fast_exp, max_f32, simd, sum_f32};
use crate::kernels::op::storage_f32;
use crate::quant::matrix::Matrix;
use anyhow::{bail, Result};
use candle_core::Tensor;
use rayon::prelude::*;

/// Loss of one row of logits `x` with target `t` and weight `w`.
pub(crate) fn ce_row(x: &[f32], t: usize, w: f32) -> f64 {
    simd(|| {
        let max = max_f32(x, f32::NEG_INFINITY);
        let mut e = [0f32; 512];
        let mut sum = 0f64;
        for xc in x.chunks(512) {
            for (ei, &xi) in e.iter_mut().zip(xc) {
                *ei = fast_exp(xi - max);
            }
            sum += sum_f32(&e[..xc.len()]) as f64;
        }
        (max as f64 + sum.ln() - x[t] as f64) * w as f64
    })
}

/// `ce_row`, and the row is overwritten with its gradient w·s·(softmax(x) − onehot(t)).
pub(crate) fn ce_row_grad(x: &mut [f32], t: usize, w: f32, s: f64) -> f64 {
    simd(|| {
        let max = max_f32(x, f32::NEG_INFINITY);
        let xt = x[t];
        let mut sum = 0f64;
        for xc in x.chunks_mut(512) {
            for xi in xc.iter_mut() {
                *xi = fast_exp(*xi - max);
            }
            sum += sum_f32(xc) as f64;
        }
        let k = (w as f64 * s / sum) as f32;
        x.iter_mut().for_each(|xi| *xi *= k);
        x[t] -= (w as f64 * s) as f32;
        (max as f64 + sum.ln() - xt as f64) * w as f64
    })
}

/// Rows per block: about 8 M logits (32 MB) per block, between 8 and 512 rows. Larger blocks
/// pack the lm_head fewer times (each block is its own matmul); the size does not depend on
/// the thread count, so neither does the summation order.
fn block_rows(v: usize) -> usize {
    ((8 << 20) / v.max(1)).clamp(8, 512)
}

/// Bytes of the logits blocks alive at once: one block per thread.
pub(crate) fn workspace_bytes(threads: u64, v: u64) -> u64 {
    threads * block_rows(v as usize) as u64 * v * 4
}

thread_local! {
    /// A block's logits, kept by each thread between blocks and calls: the matmul overwrites
    /// the whole block, and a fresh 16–32 MB buffer per block would be zero-filled (or faulted
    /// in page by page) on every micro-step for nothing.
    static LOGITS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Σ loss over the rows of `h [rows, H]` (row-major) through `lm [V, H]`, and with
/// `grad_scale`, d(Σ loss · grad_scale)/dh `[rows, H]`.
pub(crate) fn linear_cross_entropy(
    h: &[f32],
    lm: &Frozen,
    hd: usize,
    targets: &[u32],
    weights: &[f32],
    grad_scale: Option<f64>,
) -> Result<(f64, Option<Vec<f32>>)> {
    let rows = targets.len();
    let v = lm.out;
    if hd == 0 || lm.inp != hd || h.len() != rows * hd || weights.len() != rows {
        bail!(
            "linear cross-entropy: h {} values, lm_head [{v}, {}], hidden {hd}, {rows} targets, {} weights",
            h.len(),
            lm.inp,
            weights.len()
        );
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= v) {
        bail!("target token {t} is outside the vocabulary (size {v})");
    }
    let blk = block_rows(v);
    let block = |b: usize, dh: Option<&mut [f32]>| -> Result<f64> {
        let r0 = b * blk;
        let n = blk.min(rows - r0);
        let mut scratch = LOGITS.with(|l| l.take());
        scratch.resize(n * v, 0.0);
        let logits = &mut scratch[..];
        let hb = &h[r0 * hd..(r0 + n) * hd];
        lm.xwt(hb, n, logits, v, false)?;
        let mut loss = 0.0;
        for (i, x) in logits.chunks_mut(v).enumerate() {
            let (t, w) = (targets[r0 + i] as usize, weights[r0 + i]);
            loss += match grad_scale {
                Some(s) => ce_row_grad(x, t, w, s),
                None => ce_row(x, t, w),
            };
        }
        if let Some(dh) = dh {
            lm.gw(logits, n, v, dh, false)?;
        }
        LOGITS.with(|l| l.replace(scratch));
        Ok(loss)
    };
    let nblocks = rows.div_ceil(blk);
    let (losses, dh): (Vec<f64>, Option<Vec<f32>>) = match grad_scale {
        Some(_) => {
            let mut dh = vec![0f32; rows * hd];
            let losses = dh
                .par_chunks_mut(blk * hd)
                .enumerate()
                .map(|(b, d)| block(b, Some(d)))
                .collect::<Result<_>>()?;
            (losses, Some(dh))
        }
        None => (
            (0..nblocks)
                .into_par_iter()
                .map(|b| block(b, None))
                .collect::<Result<_>>()?,
            None,
        ),
    };
    Ok((losses.iter().sum(), dh))
}

/// `linear_cross_entropy` on tensors: the rows `h [rows, H]` and the model's lm_head `[V, H]`
/// are read in place (the lm_head is 1.2 GB of bf16 for gpt-oss, read where it lies and widened
/// a tile at a time). Returns the summed loss and, with `grad_scale`, dh `[rows, H]`.
pub(crate) fn linear_cross_entropy_tensors(
    h: &Tensor,
    lm: &Matrix,
    targets: &[u32],
    weights: &[f32],
    grad_scale: Option<f64>,
) -> Result<(f64, Option<Tensor>)> {
    let (rows, hd) = h.dims2()?;
    let (hs, hl) = h.storage_and_layout();
    let hv = storage_f32(&hs, hl, "hidden rows")?;
    let (loss, dh) = with_matrix(lm, |lm| {
        linear_cross_entropy(hv, lm, hd, targets, weights, grad_scale)
            .map_err(candle_core::Error::wrap)
    })?;
    let dh = match dh {
        Some(d) => Some(Tensor::from_vec(d, (rows, hd), h.device())?),
        None => None,
    };
    Ok((loss, dh))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::frozen::Src;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn matches_f64_reference_across_blocks() {
        let (rows, hd, v) = (300, 24, 1000); // 128-row blocks: three, the last partial
        let h = rand(rows * hd, 1)
            .iter()
            .map(|x| x * 4.0)
            .collect::<Vec<_>>();
        let lm = rand(v * hd, 2);
        let targets: Vec<u32> = (0..rows).map(|r| ((r * 7919) % v) as u32).collect();
        let weights: Vec<f32> = (0..rows)
            .map(|r| {
                if r % 5 == 0 {
                    0.0
                } else {
                    1.0 + (r % 3) as f32
                }
            })
            .collect();
        let s = 0.37;
        let lmf = Frozen::one(v, hd, Src::F32(&lm));
        let (loss, dh) = linear_cross_entropy(&h, &lmf, hd, &targets, &weights, Some(s)).unwrap();
        let (loss_only, none) =
            linear_cross_entropy(&h, &lmf, hd, &targets, &weights, None).unwrap();
        assert!(none.is_none());
        assert!((loss - loss_only).abs() < 1e-9 * loss.abs());
        let dh = dh.unwrap();
        let (mut want, mut worst) = (0f64, 0f64);
        for r in 0..rows {
            let x: Vec<f64> = (0..v)
                .map(|j| {
                    (0..hd)
                        .map(|k| h[r * hd + k] as f64 * lm[j * hd + k] as f64)
                        .sum()
                })
                .collect();
            let m = x.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = x.iter().map(|xi| (xi - m).exp()).sum();
            let w = weights[r] as f64;
            let t = targets[r] as usize;
            want += (m + z.ln() - x[t]) * w;
            for k in 0..hd {
                let g: f64 = (0..v)
                    .map(|j| {
                        let p = (x[j] - m).exp() / z - if j == t { 1.0 } else { 0.0 };
                        p * w * s * lm[j * hd + k] as f64
                    })
                    .sum();
                worst = worst.max((g - dh[r * hd + k] as f64).abs());
            }
        }
        assert!(
            (loss - want).abs() < 1e-5 * want.abs(),
            "loss {loss} vs {want}"
        );
        assert!(worst < 1e-5, "worst |Δ dh| {worst}");
    }

    #[test]
    fn bad_shapes_and_targets_are_errors() {
        let (h, lm) = (vec![0f32; 8], vec![0f32; 12]);
        let lm = Frozen::one(3, 4, Src::F32(&lm));
        assert!(linear_cross_entropy(&h, &lm, 4, &[0, 1], &[1.0, 1.0], None).is_ok());
        assert!(linear_cross_entropy(&h, &lm, 4, &[0, 3], &[1.0, 1.0], None).is_err());
        assert!(linear_cross_entropy(&h, &lm, 4, &[0], &[1.0], None).is_err());
    }
}
