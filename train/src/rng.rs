//! The trainer's random streams: the project's one generator (`osstune_rng::SplitMix64`),
//! with a purpose per stream so they never collide.

pub use osstune_rng::SplitMix64;

/// RNG purposes, so streams never collide.
pub const PURPOSE_SHUFFLE: u64 = 1;
pub const PURPOSE_INIT: u64 = 2;
pub const PURPOSE_DROPOUT: u64 = 3;
