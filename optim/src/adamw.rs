//! AdamW (bias-corrected, decoupled weight decay), as `torch.optim.AdamW` (single-tensor path):
//!
//! ```text
//! t ← t + 1
//! P ← P·(1 − lr·wd)
//! m ← β1·m + (1−β1)·G            (torch: m.lerp_(G, 1−β1))
//! v ← β2·v + (1−β2)·G²
//! P ← P − (lr / (1−β1^t)) · m / (sqrt(v) / sqrt(1−β2^t) + eps)
//! ```
//!
//! `t` counts the steps this parameter actually received a gradient (torch keeps it per
//! parameter too).

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Tensor, Var};

use crate::config::AdamWConfig;
use crate::muon::lerp;

/// The state of one parameter: first and second moments (f32) and its step count.
pub(crate) struct AdamWState {
    pub m: Tensor,
    pub v: Tensor,
    pub t: u64,
}

/// One AdamW step on `var`; `lr` is this step's learning rate (peak × schedule multiplier).
/// Bias corrections are host scalars from the step count, so nothing is read back from the device.
pub(crate) fn step(
    name: &str,
    var: &Var,
    grad: &Tensor,
    s: &mut AdamWState,
    cfg: &AdamWConfig,
    lr: f64,
) -> Result<()> {
    let mut run = || -> Result<()> {
        ensure!(
            grad.dims() == var.dims(),
            "gradient shape {:?} differs from parameter shape {:?}",
            grad.dims(),
            var.dims()
        );
        let g = grad.detach().to_dtype(DType::F32)?;
        s.t += 1;
        let t = i32::try_from(s.t).context("AdamW step count overflows i32")?;
        let mut p = var.as_tensor().detach().to_dtype(DType::F32)?;
        if cfg.weight_decay != 0.0 {
            p = p.affine(1.0 - lr * cfg.weight_decay, 0.0)?;
        }
        s.m = lerp(&s.m, &g, 1.0 - cfg.beta1)?;
        s.v = (s.v.affine(cfg.beta2, 0.0)? + g.sqr()?.affine(1.0 - cfg.beta2, 0.0)?)?;
        let bias1 = 1.0 - cfg.beta1.powi(t);
        let bias2_sqrt = (1.0 - cfg.beta2.powi(t)).sqrt();
        let denom = s.v.sqrt()?.affine(1.0 / bias2_sqrt, cfg.eps)?;
        let p = (p - (&s.m / denom)?.affine(lr / bias1, 0.0)?)?;
        var.set(&p.to_dtype(var.dtype())?)?;
        Ok(())
    };
    run().with_context(|| format!("AdamW step on parameter {name}"))
}
