//! CPU f32 kernels: parallel over rows / blocks / expert segments (`pool.rs` says on which
//! threads), `gemm` for the products, and the AVX2 + FMA row loops of `vecmath.rs`. Called
//! only through `kernels`' dispatch functions, which checked the tensors are contiguous f32
//! on the CPU.

pub(crate) mod attention;
pub(crate) mod expert_proj;
pub(crate) mod frozen;
pub(crate) mod grouped;
pub(crate) mod linear_ce;
pub(crate) mod lora_linear;
pub(crate) mod masked_softmax;
pub(crate) mod matvec;
pub(crate) mod moe;
pub(crate) mod moe_experts;
pub(crate) mod ops;
pub(crate) mod pool;
pub(crate) mod routing;
pub(crate) mod vecmath;
