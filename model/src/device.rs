//! The one parser of device and dtype names (`cpu`, `cuda`, `metal`; `f32`, `bf16`, `f16`,
//! and `auto` for a device's natural compute dtype), shared by the training config, every
//! command's `--device` / `--dtype` and the benches.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

/// Opens device `name` (device 0 for cuda / metal), saying how to rebuild when this binary was
/// built without that backend.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" if cfg!(feature = "cuda") => Device::new_cuda(0).context("opening CUDA device 0"),
        "metal" if cfg!(feature = "metal") => {
            Device::new_metal(0).context("opening Metal device 0")
        }
        "cuda" => bail!(
            "cuda: this osstune was built without CUDA (rebuild with \
             `cargo build --release --features cuda`)"
        ),
        "metal" => bail!(
            "metal: this osstune was built without Metal (rebuild with \
             `cargo build --release --features metal`)"
        ),
        _ => bail!("unknown device {name:?} (cpu, cuda, metal)"),
    }
}

/// The compute dtype `name` means on device `device` (a name as [`parse_device`] takes):
/// `auto` is f32 on the CPU — its kernels read the bf16 and MXFP4 weights where they lie in
/// the checkpoint's memory map and widen them in registers, so f32 compute holds no copy of
/// the weights and is the fastest there — and bf16 on a GPU, whose weights are device tensors.
pub fn resolve_dtype(name: &str, device: &str) -> Result<DType> {
    match name {
        "auto" if device == "cpu" => Ok(DType::F32),
        "auto" => Ok(DType::BF16),
        _ => parse_dtype(name),
    }
}

pub fn parse_dtype(name: &str) -> Result<DType> {
    Ok(match name {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        _ => bail!("unknown dtype {name:?} (f32, bf16, f16)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("tpu")
            .unwrap_err()
            .to_string()
            .contains("cpu, cuda, metal"));
        assert_eq!(parse_dtype("bf16").unwrap(), DType::BF16);
        assert!(parse_dtype("f8").is_err());
        assert_eq!(resolve_dtype("auto", "cpu").unwrap(), DType::F32);
        assert_eq!(resolve_dtype("auto", "cuda").unwrap(), DType::BF16);
        assert_eq!(resolve_dtype("f16", "cpu").unwrap(), DType::F16);
        assert!(resolve_dtype("f8", "cpu").is_err());
        if !cfg!(feature = "cuda") {
            let e = parse_device("cuda").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
