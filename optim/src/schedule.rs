//! Learning-rate schedule: linear warm-up, then cosine decay to a floor.
//!
//! With `T` total optimizer steps, `W = ceil(warmup_ratio · T)` (or `warmup_steps` when set)
//! and floor `f = min_lr_ratio`, optimizer step `k` (0-based: the first step is k = 0) uses
//! `lr = peak · multiplier(k)` with
//!
//! ```text
//! multiplier(k) = k / max(1, W)                                   if k < W
//!               = f + (1 − f) · ½ · (1 + cos(π · p)),             otherwise,
//!                 p = min(1, (k − W) / max(1, T − W))
//! ```
//!
//! This is exactly transformers' `get_cosine_schedule_with_warmup` (f = 0) and
//! `get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate = f)` with `num_cycles = 0.5`, as the
//! HF Trainer applies them (`LambdaLR` starts at lr_lambda(0) and `scheduler.step()` follows
//! each optimizer step), with W computed like `TrainingArguments.get_warmup_steps`
//! (`math.ceil(T · ratio)`, in f64). Consequences worth knowing: step 0 has lr 0 whenever
//! W > 0 (its gradient still feeds the momentum / Adam moments), and the last step's lr is not
//! yet the floor. The only deviation: `p` is clamped to 1, so steps past `T` stay at the
//! floor instead of following the cosine back up.
//!
//! Recipe (T = 40, ratio 0.05 → W = 2): multipliers 0, 0.5, 1, 0.99829, …, 0.00171.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// What follows the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    /// Half a cosine from 1 down to the floor over the remaining steps.
    Cosine,
    /// Stay at 1 (the floor is ignored).
    Constant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Warm-up length as a fraction of the total steps: W = ceil(ratio · T).
    pub warmup_ratio: f64,
    /// Warm-up length in steps; overrides `warmup_ratio` when set.
    pub warmup_steps: Option<u64>,
    pub decay: Decay,
    /// The floor of the cosine as a fraction of the peak lr (0 = decay to zero).
    pub min_lr_ratio: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            warmup_ratio: 0.05,
            warmup_steps: None,
            decay: Decay::Cosine,
            min_lr_ratio: 0.0,
        }
    }
}

impl ScheduleConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (0.0..=1.0).contains(&self.warmup_ratio),
            "optim.schedule.warmup_ratio must be in [0, 1], got {}",
            self.warmup_ratio
        );
        ensure!(
            (0.0..=1.0).contains(&self.min_lr_ratio),
            "optim.schedule.min_lr_ratio must be in [0, 1], got {}",
            self.min_lr_ratio
        );
        Ok(())
    }
}

/// A schedule resolved for a run of `total_steps` optimizer steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    warmup: u64,
    total: u64,
    decay: Decay,
    floor: f64,
}

impl Schedule {
    pub fn new(cfg: &ScheduleConfig, total_steps: u64) -> Result<Self> {
        cfg.validate()?;
        ensure!(total_steps > 0, "the schedule needs at least one step");
        let warmup = match cfg.warmup_steps {
            Some(w) => w,
            // Same f64 product and ceil as Python's math.ceil(total * ratio).
            None => (total_steps as f64 * cfg.warmup_ratio).ceil() as u64,
        };
        Ok(Self {
            warmup,
            total: total_steps,
            decay: cfg.decay,
            floor: cfg.min_lr_ratio,
        })
    }

    pub fn warmup_steps(&self) -> u64 {
        self.warmup
    }

    pub fn total_steps(&self) -> u64 {
        self.total
    }

    /// The factor applied to every group's peak lr at optimizer step `step` (0-based).
    pub fn multiplier(&self, step: u64) -> f64 {
        if step < self.warmup {
            return step as f64 / self.warmup.max(1) as f64;
        }
        match self.decay {
            Decay::Constant => 1.0,
            Decay::Cosine => {
                let span = self.total.saturating_sub(self.warmup).max(1) as f64;
                let progress = ((step - self.warmup) as f64 / span).min(1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                (cosine * (1.0 - self.floor) + self.floor).max(0.0)
            }
        }
    }

    /// The learning rate at optimizer step `step` (0-based) for a group with peak `peak_lr`.
    pub fn lr_at(&self, step: u64, peak_lr: f64) -> f64 {
        peak_lr * self.multiplier(step)
    }
}
