//! Optimizer configuration: one serde struct the trainer embeds in its TOML config, e.g.
//!
//! ```toml
//! [optim.muon]
//! lr = 1e-5
//! momentum = 0.95
//! ns_steps = 5
//!
//! [optim.adamw]
//! lr = 1e-5
//!
//! [optim.schedule]
//! warmup_ratio = 0.05
//! ```
//!
//! Every field has a default (the published recipe), so any subset may be given.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

use crate::schedule::ScheduleConfig;

/// Both parameter groups, the routing rule and the learning-rate schedule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    pub muon: MuonConfig,
    pub adamw: AdamWConfig,
    /// Parameters whose name contains any of these strings go to AdamW even when they have
    /// two or more dimensions (the default rule is ndim >= 2 -> Muon, else AdamW).
    pub adamw_params: Vec<String>,
    pub schedule: ScheduleConfig,
}

/// How Muon scales its learning rate by the matrix shape. `rows`, `cols` are the last two
/// dimensions of the parameter, read as the canonical nn.Linear orientation [out, in]
/// (osstune stores every LoRA factor that way: A [r, in], B [out, r], experts [E, r, in] /
/// [E, out, r]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrAdjust {
    /// `sqrt(max(1, rows / cols))` (Keller Jordan's Muon; torch's `adjust_lr_fn="original"`).
    Original,
    /// `0.2 * sqrt(max(rows, cols))` (Moonshot; torch's `"match_rms_adamw"`): update RMS ≈
    /// AdamW's, so AdamW learning rates carry over.
    MatchRmsAdamw,
}

/// Dtype the Newton–Schulz iteration runs in. The momentum buffer and the parameter update
/// stay f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NsDtype {
    /// f32 throughout (default; matches torch's algorithm run in f32 to ~1e-6).
    F32,
    /// bf16 matmuls, as torch.optim.Muon and Keller's Muon do (faster on GPUs).
    Bf16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MuonConfig {
    /// Peak learning rate (the schedule multiplies it).
    pub lr: f64,
    /// β in `buf = β·buf + (1−β)·g`.
    pub momentum: f64,
    /// Update with `(1−β)·g + β·buf` instead of `buf`.
    pub nesterov: bool,
    pub ns_steps: usize,
    /// Quintic coefficients (a, b, c): X ← a·X + (b·A + c·A²)·X, A = X·Xᵀ.
    pub ns_coefficients: [f64; 3],
    /// The Frobenius norm is clamped below at eps before normalising (torch's rule).
    pub eps: f64,
    /// Decoupled: `p ← p·(1 − lr·wd)` with the unadjusted lr, before the update.
    pub weight_decay: f64,
    pub lr_adjust: LrAdjust,
    pub ns_dtype: NsDtype,
}

impl Default for MuonConfig {
    fn default() -> Self {
        Self {
            lr: 1e-5,
            momentum: 0.95,
            nesterov: true,
            ns_steps: 5,
            ns_coefficients: [3.4445, -4.7750, 2.0315],
            eps: 1e-7,
            weight_decay: 0.0,
            lr_adjust: LrAdjust::Original,
            ns_dtype: NsDtype::F32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Peak learning rate (the schedule multiplies it).
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled: `p ← p·(1 − lr·wd)` before the Adam update.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl OptimConfig {
    /// Rejects values that would silently train nothing or diverge (negative rates, betas
    /// outside [0, 1), …). The message names the field as written in the TOML.
    pub fn validate(&self) -> Result<()> {
        let m = &self.muon;
        let finite_nonneg = |v: f64| v.is_finite() && v >= 0.0;
        ensure!(
            finite_nonneg(m.lr),
            "optim.muon.lr must be >= 0, got {}",
            m.lr
        );
        ensure!(
            (0.0..1.0).contains(&m.momentum),
            "optim.muon.momentum must be in [0, 1), got {}",
            m.momentum
        );
        ensure!(
            (1..=100).contains(&m.ns_steps),
            "optim.muon.ns_steps must be in 1..=100, got {}",
            m.ns_steps
        );
        ensure!(
            m.ns_coefficients.iter().all(|c| c.is_finite()),
            "optim.muon.ns_coefficients must be finite, got {:?}",
            m.ns_coefficients
        );
        ensure!(
            m.eps.is_finite() && m.eps > 0.0,
            "optim.muon.eps must be > 0, got {}",
            m.eps
        );
        ensure!(
            finite_nonneg(m.weight_decay),
            "optim.muon.weight_decay must be >= 0, got {}",
            m.weight_decay
        );
        let a = &self.adamw;
        ensure!(
            finite_nonneg(a.lr),
            "optim.adamw.lr must be >= 0, got {}",
            a.lr
        );
        ensure!(
            (0.0..1.0).contains(&a.beta1),
            "optim.adamw.beta1 must be in [0, 1), got {}",
            a.beta1
        );
        ensure!(
            (0.0..1.0).contains(&a.beta2),
            "optim.adamw.beta2 must be in [0, 1), got {}",
            a.beta2
        );
        ensure!(
            a.eps.is_finite() && a.eps > 0.0,
            "optim.adamw.eps must be > 0, got {}",
            a.eps
        );
        ensure!(
            finite_nonneg(a.weight_decay),
            "optim.adamw.weight_decay must be >= 0, got {}",
            a.weight_decay
        );
        self.schedule.validate()
    }
}
