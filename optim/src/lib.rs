//! osstune-optim: the optimizers osstune trains LoRA adapters with.
//!
//! - [`muon`]: Muon (momentum + Nesterov + Newton–Schulz orthogonalisation) for every parameter
//!   with two or more dimensions; 3-D expert factors are orthogonalised per expert, batched.
//! - [`adamw`]: AdamW (bias-corrected, decoupled weight decay) for 1-D parameters and anything
//!   the config routes there.
//! - [`schedule`]: linear warm-up then cosine decay, as transformers'
//!   `get_cosine_schedule_with_warmup` / `get_cosine_with_min_lr_schedule_with_warmup`.
//! - [`Optimizer`]: the two groups behind one `step`, plus state save/load for exact resume.
//!
//! Numerics are checked against `torch.optim.Muon` / `torch.optim.AdamW` and transformers'
//! schedules (fixtures from `scripts/gen_optim_fixtures.py`). Formulas: `docs/optim.md`.
//!
//! ```no_run
//! use candle_core::{backprop::GradStore, Var};
//! use osstune_optim::{OptimConfig, Optimizer, Schedule};
//!
//! fn train(vars: Vec<(String, Var)>, backward: impl Fn() -> GradStore) -> anyhow::Result<()> {
//!     let cfg = OptimConfig::default();
//!     let mut opt = Optimizer::new(vars, &cfg)?;
//!     let schedule = Schedule::new(&cfg.schedule, 40)?;
//!     for step in 0..40 {
//!         let grads = backward();
//!         opt.step(&grads, schedule.multiplier(step))?;
//!     }
//!     opt.save("ckpt/optimizer")
//! }
//! ```

pub mod adamw;
pub mod config;
pub mod muon;
mod muon_host;
pub mod optimizer;
pub mod schedule;
mod state;

pub use config::{AdamWConfig, LrAdjust, MuonConfig, NsDtype, OptimConfig};
pub use optimizer::{Group, Optimizer};
pub use schedule::{Decay, Schedule, ScheduleConfig};
