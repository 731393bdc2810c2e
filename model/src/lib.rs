//! gpt-oss in candle: config, layers, checkpoint loading (HF dense / MXFP4, MLX), LoRA
//! attachment points, KV-cached generation.
//!
//! Module owners while the workspace is being built: everything here belongs to the model
//! issue except `sampling` and `generation` (the generate CLI work).

pub mod attention;
pub mod checkpoint;
pub mod combine;
pub mod config;
pub mod dropout;
pub mod experts;
pub mod fused_attention;
pub mod fused_lora;
pub mod generation;
pub mod grouped;
pub mod grouped_fused;
pub mod linear;
pub mod linear_ce;
pub mod load;
pub mod lora;
pub mod masked_softmax;
pub mod model;
pub mod moe;
pub mod moe_fused;
pub mod mxfp4;
pub mod ops;
pub mod quant;
pub mod rope;
pub mod sampling;
pub mod tensor_bounds;
pub mod tiny;
mod validate;
pub mod vecmath;

pub use config::Config;
pub use dropout::LoraDropout;
pub use lora::{LoraAdapter, LoraLinear, LoraTarget, SwitchLora};
pub use model::{Cache, GptOss};
