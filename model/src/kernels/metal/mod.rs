//! Metal kernels: none yet. Every op runs its reference composition on Metal tensors
//! (`kernels::backend` answers `Some(Backend::Metal)` for them; no op has a `Backend::Metal`
//! arm).
//!
//! To add one: a file here with a candle `CustomOp*` implementing `metal_fwd` (and `bwd`),
//! declared below behind `#[cfg(feature = "metal")]`, plus the arm
//! `Some(Backend::Metal) => metal::<op>::<op>(..)` in the op's dispatch function in
//! `kernels/mod.rs` (and in `memory.rs` if it keeps less than the reference). The harness
//! (`model/tests/kernels.rs`, `--features metal`) tests it against the reference.
