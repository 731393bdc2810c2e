//! osstune-train: LoRA adapters over gpt-oss, the Muon training loop, checkpoints with exact
//! resume, and adapter import/export (PEFT, mlx-lm). One concept a file, as mlx-lm's `tuner/`.

pub mod adapters;
pub mod batches;
pub mod checkpoint;
pub mod config;
pub mod export;
pub mod loss;
pub mod metrics;
pub mod plan;
pub mod preflight;
pub mod recompute;
pub mod resume;
pub mod rng;
pub mod run_dir;
pub mod trainer;
