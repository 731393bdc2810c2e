//! Stacked expert matrices `[E, out, in]` (nn.Linear orientation) in whichever storage the
//! checkpoint had. Quantized experts stay packed; `expert(e)` dequantizes one expert's
//! matrix when it is used, so a model is never expanded to a dense copy.

use crate::quant::mxfp4;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

#[derive(Debug, Clone)]
pub enum ExpertMat {
    /// `[E, out, in]` in the model dtype.
    Dense(Tensor),
    /// MXFP4: blocks `[E, out, in/32, 16]` U8, scales `[E, out, in/32]` U8.
    Mxfp4 { blocks: Tensor, scales: Tensor },
    /// MLX affine: `w` `[E, out, in·bits/32]` as raw U32 bytes reinterpreted U8
    /// `[E, out, in·bits/8]`, scales/biases `[E, out, in/group]` f32.
    Affine {
        w: Tensor,
        scales: Tensor,
        biases: Tensor,
        bits: usize,
        group: usize,
    },
}

impl ExpertMat {
    pub fn num_experts(&self) -> usize {
        match self {
            ExpertMat::Dense(t) => t.dims()[0],
            ExpertMat::Mxfp4 { blocks, .. } => blocks.dims()[0],
            ExpertMat::Affine { w, .. } => w.dims()[0],
        }
    }

    /// `(out, in)` of one expert.
    pub fn out_in(&self) -> (usize, usize) {
        match self {
            ExpertMat::Dense(t) => (t.dims()[1], t.dims()[2]),
            ExpertMat::Mxfp4 { scales, .. } => (scales.dims()[1], scales.dims()[2] * 32),
            ExpertMat::Affine { w, bits, .. } => (w.dims()[1], w.dims()[2] * 8 / bits),
        }
    }

    pub fn is_quantized(&self) -> bool {
        !matches!(self, ExpertMat::Dense(_))
    }

    /// Expert `e`'s matrix `[out, in]` in `dtype` on `dev`.
    pub fn expert(&self, e: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
        match self {
            ExpertMat::Dense(t) => Ok(t.get(e)?),
            ExpertMat::Mxfp4 { blocks, scales } => {
                let w = mxfp4::dequantize(&blocks.get(e)?, &scales.get(e)?, dtype)?;
                Ok(w.to_device(dev)?)
            }
            ExpertMat::Affine {
                w,
                scales,
                biases,
                bits,
                group,
            } => {
                let (out, inp) = self.out_in();
                let wb = w.get(e)?.flatten_all()?.to_vec1::<u8>()?;
                let s = scales.get(e)?.flatten_all()?.to_vec1::<f32>()?;
                let b = biases.get(e)?.flatten_all()?.to_vec1::<f32>()?;
                let v = crate::quant::affine::affine_dequantize(&wb, &s, &b, out, *bits, *group)?;
                Ok(Tensor::from_vec(v, (out, inp), &Device::Cpu)?
                    .to_dtype(dtype)?
                    .to_device(dev)?)
            }
        }
    }

    /// The whole stack dequantized, `[E, out, in]` (tests and small models only).
    pub fn dense_all(&self, dtype: DType, dev: &Device) -> Result<Tensor> {
        let n = self.num_experts();
        if n == 0 {
            bail!("no experts");
        }
        let all = (0..n)
            .map(|e| self.expert(e, dtype, dev))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&all, 0)?)
    }
}
