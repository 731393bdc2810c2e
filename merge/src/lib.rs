//! osstune-merge: fold LoRA adapters into a full gpt-oss checkpoint (W' = W + alpha/r · B·A)
//! and write it as Hugging Face (bf16 or MXFP4 experts) or MLX layout.
//!
//! Streaming: the output is planned up front (`plan`), then produced tensor by tensor in
//! layer order, experts one at a time, and appended to the shard being written (`writer`).
//! Peak memory is one expert matrix plus a layer's MXFP4 scales, independent of depth.

pub mod adapter;
pub mod base;
pub mod plan;
pub mod st;
pub mod survival;
pub mod synth;
pub mod verify;
pub mod writer;

mod fold;

pub use fold::{merge, MergeOptions, MergeReport, VerifyOptions};
pub use plan::Format;
pub use st::Dtype;
