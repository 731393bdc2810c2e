//! How weights are stored: MXFP4 (the gpt-oss release), MLX affine groups, and the stacked
//! expert matrices that keep whichever storage the checkpoint had.

pub mod affine;
pub mod bytes;
pub mod experts;
pub mod matrix;
pub mod mxfp4;
