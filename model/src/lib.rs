//! gpt-oss in candle: the architecture, LoRA attachment points, fused kernels, checkpoint
//! formats and KV-cached generation. The folders are the layers, each importing only the ones
//! listed before it (docs/architecture.md draws the picture):
//!
//! - [`config`]: `config.json` → [`Config`];
//! - [`quant`]: weight storage codecs (MXFP4, MLX affine) and packed expert stacks;
//! - [`kernels`]: one dispatch point per fused op (reference composition + device backends);
//! - [`lora`]: the LoRA target registry, adapter factors and dropout masks;
//! - [`arch`]: the decoder itself (attention, MoE, the model);
//! - [`io`]: checkpoint layouts, loading, adapter folders, random checkpoints;
//! - [`generate`]: sampling and the generation loop.

pub mod arch;
pub mod config;
pub mod device;
pub mod error;
pub mod generate;
pub mod io;
pub mod kernels;
pub mod lora;
pub mod quant;
mod validate;

pub use arch::{Cache, GptOss};
pub use config::Config;
pub use lora::{Lora, LoraDropout, LoraTarget, Target};
