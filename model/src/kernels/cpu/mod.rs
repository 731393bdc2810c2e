//! CPU f32 kernels.

pub mod attention;
pub mod expert_proj;
pub mod grouped;
pub mod linear_ce;
pub mod lora_linear;
pub mod masked_softmax;
pub mod moe_experts;
pub mod ops;
pub mod routing;
pub mod vecmath;
