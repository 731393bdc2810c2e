//! CUDA kernels: none yet. Every op runs its reference composition on CUDA tensors
//! (`kernels::backend` already answers `Some(Backend::Cuda)` for them; no op has a
//! `Backend::Cuda` arm).
//!
//! To add one, e.g. attention:
//! 1. write `cuda/attention.rs`: a struct implementing candle's `CustomOp3` with `cuda_fwd`
//!    (launch the kernel on the `CudaStorage`s, https://docs.rs/candle-core) and `bwd`
//!    (further ops, or candle ops), and a `pub(crate) fn attention(..)` with the signature of
//!    `kernels::attention`; declare it below as `pub(crate) mod attention;` behind
//!    `#[cfg(feature = "cuda")]`;
//! 2. register it: in `kernels/mod.rs`'s `attention`, the arm
//!    `Some(Backend::Cuda) => cuda::attention::attention(..)` (with a guard for the shapes it
//!    takes), and in `memory.rs` an arm if it keeps less than the reference.
//!
//! `cargo test --release -p osstune-model --features cuda --test kernels` then compares it
//! with the reference, forward and gradients, on the odd shapes the harness already has.
