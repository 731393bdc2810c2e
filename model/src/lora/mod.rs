//! LoRA: which projections can be adapted ([`targets`]), the factors attached to them
//! ([`adapter`]) and training-time dropout on their input ([`dropout`]).

pub mod adapter;
pub mod dropout;
pub mod targets;

pub use adapter::Lora;
pub use dropout::LoraDropout;
pub use targets::{LoraTarget, Target};
