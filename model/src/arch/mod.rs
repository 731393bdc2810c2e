//! The gpt-oss decoder: embedding → L × (attention + MoE, pre-norm residual) → norm → lm_head.

pub mod attention;
pub mod gpt_oss;
pub mod linear;
pub mod moe;
pub mod rope;

pub use gpt_oss::{Block, Cache, GptOss};
