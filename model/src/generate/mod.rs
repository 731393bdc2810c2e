//! Inference: token sampling and the KV-cached generation loop.

pub mod generation;
pub mod sampling;
