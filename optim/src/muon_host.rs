//! Muon on the host for CPU f32 parameters with f32 Newton–Schulz: the same arithmetic as
//! [`crate::muon`], on slices, every parameter in parallel.
//!
//! LoRA factors are small matrices (16 × 512, and 16 of them per expert factor), so the candle
//! composition spends most of its time in per-op dispatch: about 45 ops per parameter, 3 000 a
//! step on the bench preset, where the arithmetic itself is ~1 GFLOP. Here one parameter is
//! one task: momentum, Newton–Schulz per matrix with single-threaded matmuls, the update, and
//! its tensors written back once. Each parameter's result is the same whichever thread runs it.

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor, Var};
use rayon::prelude::*;

use crate::config::MuonConfig;
use crate::muon::lr_scale;

/// One Muon parameter's step on the host: its values, gradient and momentum buffer, read out
/// of the tensors, updated in place by [`HostStep::run`].
pub(crate) struct HostStep {
    pub name: String,
    dims: Vec<usize>,
    p: Vec<f32>,
    g: Vec<f32>,
    buf: Vec<f32>,
}

/// Whether a Muon parameter can take the host path: a CPU f32 parameter, f32 Newton–Schulz.
pub(crate) fn eligible(var: &Var, cfg: &MuonConfig) -> bool {
    var.device().is_cpu() && var.dtype() == DType::F32 && cfg.ns_dtype == crate::NsDtype::F32
}

impl HostStep {
    pub fn read(name: &str, var: &Var, grad: &Tensor, buf: &Tensor) -> Result<Self> {
        let read = || -> Result<Self> {
            ensure!(
                grad.dims() == var.dims(),
                "gradient shape {:?} differs from parameter shape {:?}",
                grad.dims(),
                var.dims()
            );
            let host = |t: &Tensor| -> Result<Vec<f32>> {
                Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
            };
            Ok(Self {
                name: name.to_string(),
                dims: var.dims().to_vec(),
                p: host(var.as_tensor())?,
                g: host(grad)?,
                buf: host(buf)?,
            })
        };
        read().with_context(|| format!("Muon step on parameter {name}"))
    }

    /// Momentum, Newton–Schulz and the update (see `muon::step` for the formulas).
    fn run(&mut self, cfg: &MuonConfig, lr: f64) {
        let n = self.dims.len();
        let (rows, cols) = (self.dims[n - 2], self.dims[n - 1]);
        let beta = cfg.momentum;
        for (b, &g) in self.buf.iter_mut().zip(&self.g) {
            *b = lerp(*b, g, 1.0 - beta);
        }
        let mut u: Vec<f32> = if cfg.nesterov {
            self.g
                .iter()
                .zip(&self.buf)
                .map(|(&g, &b)| lerp(g, b, beta))
                .collect()
        } else {
            self.buf.clone()
        };
        let mut scratch = Scratch::default();
        for m in u.chunks_mut((rows * cols).max(1)) {
            newton_schulz_host(m, rows, cols, cfg, &mut scratch);
        }
        let decay = (1.0 - lr * cfg.weight_decay) as f32;
        let step = (lr * lr_scale(&self.dims, cfg.lr_adjust)) as f32;
        for (p, &o) in self.p.iter_mut().zip(&u) {
            if cfg.weight_decay != 0.0 {
                *p *= decay;
            }
            *p -= o * step;
        }
    }

    /// The new values into `var`, the new momentum into `buf`.
    pub fn write(self, var: &Var, buf: &mut Tensor) -> Result<()> {
        let (dev, dims) = (var.device(), self.dims.as_slice());
        let write = || -> candle_core::Result<()> {
            var.set(&Tensor::from_vec(self.p, dims, dev)?)?;
            *buf = Tensor::from_vec(self.buf, dims, dev)?;
            Ok(())
        };
        write().with_context(|| format!("Muon step on parameter {}", self.name))
    }
}

/// Runs every step, in parallel.
pub(crate) fn run_all(steps: &mut [HostStep], cfg: &MuonConfig, lr: f64) {
    steps.par_iter_mut().for_each(|s| s.run(cfg, lr));
}

/// torch's `lerp` in f32, as `muon::lerp` computes it through candle (weight rounded to f32).
fn lerp(a: f32, b: f32, w: f64) -> f32 {
    let d = b - a;
    if w < 0.5 {
        a + d * w as f32
    } else {
        b - d * (1.0 - w) as f32
    }
}

#[derive(Default)]
struct Scratch {
    gram: Vec<f32>,
    gram_sq: Vec<f32>,
    next: Vec<f32>,
}

/// `muon::newton_schulz` for one row-major `rows × cols` matrix in f32, in place.
fn newton_schulz_host(x: &mut [f32], rows: usize, cols: usize, cfg: &MuonConfig, s: &mut Scratch) {
    let [a, b, c] = cfg.ns_coefficients;
    let (a, b, c) = (a as f32, b as f32, c as f32);
    let norm = x.iter().map(|&v| v * v).sum::<f32>().sqrt();
    let inv = 1.0 / norm.max(cfg.eps as f32);
    x.iter_mut().for_each(|v| *v *= inv);
    let tall = rows > cols;
    let k = rows.min(cols);
    s.gram.resize(k * k, 0.0);
    s.gram_sq.resize(k * k, 0.0);
    s.next.resize(rows * cols, 0.0);
    for _ in 0..cfg.ns_steps {
        // A = XᵀX (tall) or XXᵀ (wide): k × k.
        if tall {
            matmul(&mut s.gram, (k, k, rows), x, (1, cols), x, (cols, 1));
        } else {
            matmul(&mut s.gram, (k, k, cols), x, (cols, 1), x, (1, cols));
        }
        matmul(&mut s.gram_sq, (k, k, k), &s.gram, (k, 1), &s.gram, (k, 1));
        // P = a·I + b·A + c·A², into `gram`.
        for (i, (p, &q)) in s.gram.iter_mut().zip(&s.gram_sq).enumerate() {
            *p = b * *p + c * q + if i % (k + 1) == 0 { a } else { 0.0 };
        }
        if tall {
            matmul(&mut s.next, (rows, cols, k), x, (cols, 1), &s.gram, (k, 1));
        } else {
            matmul(&mut s.next, (rows, cols, k), &s.gram, (k, 1), x, (cols, 1));
        }
        x.copy_from_slice(&s.next);
    }
}

/// `dst[m×n] = a[m×k] · b[k×n]` (row-major dst), single-threaded; a and b by (row, col) strides.
fn matmul(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= m * n);
    assert!(k == 0 || a.len() > (m - 1) * a_rs + (k - 1) * a_cs);
    assert!(k == 0 || b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    // SAFETY: every element addressed through the strides lies inside the slices, as checked.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::muon::newton_schulz;

    fn pseudo(n: usize, seed: u64) -> Vec<f32> {
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

    /// The host iteration equals the candle one for wide, tall, square and batched shapes.
    #[test]
    fn host_newton_schulz_matches_candle() {
        let cfg = MuonConfig::default();
        for dims in [
            vec![16, 512],
            vec![512, 16],
            vec![48, 48],
            vec![3, 8, 64],
            vec![4, 64, 8],
        ] {
            let n: usize = dims.iter().product();
            let v = pseudo(n, dims[0] as u64 * 31 + dims[1] as u64);
            let t =
                Tensor::from_vec(v.clone(), dims.as_slice(), &candle_core::Device::Cpu).unwrap();
            let want: Vec<f32> = newton_schulz(&t, 5, cfg.ns_coefficients, cfg.eps, DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let (rows, cols) = (dims[dims.len() - 2], dims[dims.len() - 1]);
            let mut got = v;
            let mut s = Scratch::default();
            for m in got.chunks_mut(rows * cols) {
                newton_schulz_host(m, rows, cols, &cfg, &mut s);
            }
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= 1e-5 * scale,
                "{dims:?}: max error {err} (scale {scale})"
            );
        }
    }

    #[test]
    fn zero_matrix_stays_zero() {
        let cfg = MuonConfig::default();
        let mut x = vec![0f32; 16 * 32];
        newton_schulz_host(&mut x, 16, 32, &cfg, &mut Scratch::default());
        assert!(x.iter().all(|&v| v == 0.0));
    }
}
