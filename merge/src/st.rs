//! Tensor access for merge on top of `osstune_model::io::checkpoint`: name → dtype, shape and raw
//! bytes, across a single file or an index-sharded folder. Merge reads expert slices (one
//! expert at a time) straight from the memory map, so nothing is loaded that is not being
//! folded right now.

use anyhow::{bail, Context, Result};
use candle_core::DType;
use osstune_model::io::checkpoint::Checkpoint;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    U8,
    U32,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::U32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U8 => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::U8 => "U8",
            Dtype::U32 => "U32",
        }
    }
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorInfo {
    pub fn elems(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Every tensor of a checkpoint (via `osstune_model::io::checkpoint`, memory-mapped), with the
/// slicing and f32 conversion merge needs.
pub struct Tensors {
    ck: Checkpoint,
    infos: BTreeMap<String, TensorInfo>,
}

impl Tensors {
    /// A model folder (`model.safetensors.index.json` or `model.safetensors`).
    pub fn open_dir(dir: &Path) -> Result<Tensors> {
        Self::wrap(Checkpoint::open(dir)?)
    }

    pub fn open_files(paths: &[PathBuf]) -> Result<Tensors> {
        let dir = paths
            .first()
            .and_then(|p| p.parent())
            .unwrap_or(Path::new("."));
        Self::wrap(Checkpoint::open_files(dir, paths)?)
    }

    fn wrap(ck: Checkpoint) -> Result<Tensors> {
        let mut infos = BTreeMap::new();
        for name in ck.names() {
            let i = ck.info(name)?;
            let dtype = match i.dtype {
                DType::F32 => Dtype::F32,
                DType::F16 => Dtype::F16,
                DType::BF16 => Dtype::BF16,
                DType::U8 => Dtype::U8,
                DType::U32 => Dtype::U32,
                d => bail!(
                    "{}: tensor {name} has unsupported dtype {d:?}",
                    ck.file_of(name)?.display()
                ),
            };
            infos.insert(
                name.to_string(),
                TensorInfo {
                    dtype,
                    shape: i.shape,
                },
            );
        }
        Ok(Tensors { ck, infos })
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.infos.keys()
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.infos.get(name)
    }

    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.infos.get(name).with_context(|| {
            format!(
                "tensor {name} is missing from the checkpoint in {}",
                self.ck.dir().display()
            )
        })
    }

    /// File a tensor lives in, for error messages.
    pub fn file_of(&self, name: &str) -> String {
        match self.ck.file_of(name) {
            Ok(p) => p.display().to_string(),
            Err(_) => self.ck.dir().display().to_string(),
        }
    }

    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        Ok(self.ck.bytes(name)?.0)
    }

    /// Bytes of `[index, …]` along the first axis (one expert of a `[E, …]` tensor).
    pub fn slice0(&self, name: &str, index: usize) -> Result<&[u8]> {
        let i = self.info(name)?;
        let n = *i
            .shape
            .first()
            .with_context(|| format!("tensor {name} is a scalar"))?;
        if index >= n {
            bail!("tensor {name}: index {index} out of range 0..{n}");
        }
        let b = self.bytes(name)?;
        let stride = b.len() / n;
        Ok(&b[index * stride..(index + 1) * stride])
    }

    /// Whole tensor as f32 (float dtypes only).
    pub fn f32(&self, name: &str) -> Result<Vec<f32>> {
        let i = self.info(name)?;
        to_f32(self.bytes(name)?, i.dtype).with_context(|| format!("tensor {name}"))
    }

    /// One `[index, …]` slice as f32.
    pub fn f32_slice0(&self, name: &str, index: usize) -> Result<Vec<f32>> {
        let i = self.info(name)?;
        to_f32(self.slice0(name, index)?, i.dtype).with_context(|| format!("tensor {name}"))
    }
}

/// Little-endian float bytes → f32.
pub fn to_f32(b: &[u8], dtype: Dtype) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        Dtype::U8 | Dtype::U32 => bail!("expected a float tensor, found {}", dtype.name()),
    })
}

/// f32 → little-endian bytes of `dtype` (F32 / BF16 / F16; round to nearest even).
pub fn from_f32(v: &[f32], dtype: Dtype, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    out.reserve(v.len() * dtype.size());
    match dtype {
        Dtype::F32 => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Dtype::BF16 => v
            .iter()
            .for_each(|x| out.extend_from_slice(&half::bf16::from_f32(*x).to_bits().to_le_bytes())),
        Dtype::F16 => v
            .iter()
            .for_each(|x| out.extend_from_slice(&half::f16::from_f32(*x).to_bits().to_le_bytes())),
        Dtype::U8 | Dtype::U32 => bail!("cannot write floats as {}", dtype.name()),
    }
    Ok(())
}

/// What a value reads back as after being stored in `dtype`.
pub fn round_trip(x: f32, dtype: Dtype) -> f32 {
    match dtype {
        Dtype::BF16 => half::bf16::from_f32(x).to_f32(),
        Dtype::F16 => half::f16::from_f32(x).to_f32(),
        _ => x,
    }
}
