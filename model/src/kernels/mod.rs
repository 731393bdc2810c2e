//! Fused ops for the hot path.

pub mod cpu;
