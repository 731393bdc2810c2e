//! A frozen dense weight matrix `[out, in]` (nn.Linear orientation) in the storage it was
//! loaded with. On the CPU in f32, a checkpoint's bf16 (or f16, f32) matrix stays in the
//! file mapping and the kernels widen it a tile at a time in cache; anywhere else (GPU, a
//! bf16 model, tensors built in memory) it is a tensor of the model's dtype on its device.

use crate::quant::bytes::Bytes;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// Stored element types a mapped matrix may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    F32,
    Bf16,
    F16,
}

impl Stored {
    pub fn from_dtype(d: DType) -> Option<Self> {
        Some(match d {
            DType::F32 => Stored::F32,
            DType::BF16 => Stored::Bf16,
            DType::F16 => Stored::F16,
            _ => return None,
        })
    }

    pub fn dtype(self) -> DType {
        match self {
            Stored::F32 => DType::F32,
            Stored::Bf16 => DType::BF16,
            Stored::F16 => DType::F16,
        }
    }

    pub fn size(self) -> usize {
        self.dtype().size_in_bytes()
    }
}

#[derive(Debug, Clone)]
pub enum Matrix {
    /// A tensor `[out, in]` on the model's device.
    Tensor(Tensor),
    /// Little-endian values `[out, in]` where the checkpoint holds them.
    Mapped {
        bytes: Bytes,
        stored: Stored,
        out: usize,
        inp: usize,
    },
}

impl From<Tensor> for Matrix {
    fn from(t: Tensor) -> Self {
        Matrix::Tensor(t)
    }
}

impl Matrix {
    /// A mapped matrix, checking the byte count.
    pub fn mapped(bytes: Bytes, stored: Stored, (out, inp): (usize, usize)) -> Result<Self> {
        if bytes.len() != out * inp * stored.size() {
            bail!(
                "{} bytes do not hold a [{out}, {inp}] {stored:?} matrix",
                bytes.len()
            );
        }
        Ok(Matrix::Mapped {
            bytes,
            stored,
            out,
            inp,
        })
    }

    pub fn out_in(&self) -> (usize, usize) {
        match self {
            Matrix::Tensor(t) => {
                let d = t.dims();
                (d[0], d[1])
            }
            Matrix::Mapped { out, inp, .. } => (*out, *inp),
        }
    }

    /// The tensor itself when it is one.
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Matrix::Tensor(t) => Some(t),
            Matrix::Mapped { .. } => None,
        }
    }

    /// The whole matrix as a tensor in `dtype` on `dev` (a copy for a mapped one: for the
    /// reference compositions, tests and small models).
    pub fn to_tensor(&self, dtype: DType, dev: &Device) -> Result<Tensor> {
        match self {
            Matrix::Tensor(t) => Ok(t.to_dtype(dtype)?.to_device(dev)?),
            Matrix::Mapped {
                bytes,
                stored,
                out,
                inp,
            } => Ok(
                Tensor::from_raw_buffer(bytes.as_slice(), stored.dtype(), &[*out, *inp], dev)?
                    .to_dtype(dtype)?,
            ),
        }
    }

    /// Rows `ids` as a tensor `[ids.len(), in]` in `dtype` on `dev` (an embedding lookup):
    /// only those rows are read.
    pub fn rows(&self, ids: &[u32], dtype: DType, dev: &Device) -> Result<Tensor> {
        let (out, inp) = self.out_in();
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= out) {
            bail!("row {bad} is outside the matrix ({out} rows)");
        }
        match self {
            Matrix::Tensor(t) => {
                let idx = Tensor::new(ids, t.device())?;
                Ok(t.index_select(&idx, 0)?.to_dtype(dtype)?.to_device(dev)?)
            }
            Matrix::Mapped { bytes, stored, .. } => {
                let row = inp * stored.size();
                let b = bytes.as_slice();
                let mut raw = Vec::with_capacity(ids.len() * row);
                for &i in ids {
                    let i = i as usize;
                    raw.extend_from_slice(&b[i * row..(i + 1) * row]);
                }
                Ok(
                    Tensor::from_raw_buffer(&raw, stored.dtype(), &[ids.len(), inp], dev)?
                        .to_dtype(dtype)?,
                )
            }
        }
    }

    /// Bytes this matrix occupies where it lies (checkpoint map or device memory).
    pub fn stored_bytes(&self) -> usize {
        match self {
            Matrix::Tensor(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Matrix::Mapped { bytes, .. } => bytes.len(),
        }
    }
}
