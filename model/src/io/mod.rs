//! Checkpoints on disk: layout detection and tensor access ([`checkpoint`]), building a
//! [`crate::GptOss`] from one ([`load`]), and seeded random checkpoints ([`tiny`]).

pub mod adapter;
pub mod checkpoint;
pub mod content_digest;
pub mod layout;
pub mod load;
pub mod real_shape;
pub mod tensor_bounds;
pub mod tiny;
