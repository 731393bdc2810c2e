//! Helpers shared by the model's integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use candle_core::Tensor;
use std::path::PathBuf;

/// A folder under `fixtures/model/` (written by scripts/gen_model_fixtures.py).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/model")
        .join(name)
}

/// max |a − b| over all elements, as f32.
pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
