//! Stacked expert matrices `[E, out, in]` (nn.Linear orientation) in whichever storage the
//! checkpoint had. Quantized experts stay packed (on the CPU: in the checkpoint's memory map,
//! see [`Packed`]); `expert(e)` dequantizes one expert's matrix when it is used, so a model
//! is never expanded to a dense copy.

use crate::quant::bytes::Bytes;
use crate::quant::mxfp4;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// One stored MXFP4 tensor of a [`Packed`] stack: blocks `[E, rows, in/32, 16]`, scales
/// `[E, rows, in/32]`.
#[derive(Debug, Clone)]
pub struct PackedPart {
    pub blocks: Bytes,
    pub scales: Bytes,
    pub rows: usize,
}

/// MXFP4 experts where the checkpoint holds them. The parts stack along the row axis (MLX
/// stores gate and up as two tensors; HF one `gate_up`). `interleaved`: HF's single
/// `gate_up` part, whose stored rows alternate gate, up, gate, … (docs/gpt-oss.md §2.1); the
/// model's row order is all gate rows, then all up rows, and the kernels read row `i` from
/// stored row `2i` (gate) or `2(i − I) + 1` (up), so nothing is reordered in memory.
#[derive(Debug, Clone)]
pub struct Packed {
    parts: Vec<PackedPart>,
    experts: usize,
    inp: usize,
    interleaved: bool,
}

/// Expert e's rows of one part: the model rows `row0..row0 + rows` and their stored bytes.
pub struct ExpertPart<'a> {
    pub row0: usize,
    pub rows: usize,
    pub blocks: &'a [u8],
    pub scales: &'a [u8],
    /// Model row i of this part is stored row `2i` / `2(i − rows/2) + 1` (see [`Packed`]).
    pub interleaved: bool,
}

impl Packed {
    pub fn new(
        parts: Vec<PackedPart>,
        experts: usize,
        inp: usize,
        interleaved: bool,
    ) -> Result<Self> {
        if parts.is_empty()
            || !inp.is_multiple_of(mxfp4::GROUP)
            || (interleaved && parts.len() != 1)
        {
            bail!(
                "mxfp4 experts: {} parts, input {inp}, interleaved {interleaved}",
                parts.len()
            );
        }
        for (i, p) in parts.iter().enumerate() {
            let groups = experts * p.rows * inp / mxfp4::GROUP;
            if p.blocks.len() != groups * mxfp4::GROUP_BYTES || p.scales.len() != groups {
                bail!(
                    "mxfp4 experts part {i}: {} block bytes and {} scales for [{experts}, {}, {inp}]",
                    p.blocks.len(),
                    p.scales.len(),
                    p.rows
                );
            }
            if interleaved && p.rows % 2 != 0 {
                bail!(
                    "interleaved gate/up experts need an even row count, found {}",
                    p.rows
                );
            }
        }
        Ok(Self {
            parts,
            experts,
            inp,
            interleaved,
        })
    }

    pub fn out(&self) -> usize {
        self.parts.iter().map(|p| p.rows).sum()
    }

    /// `self`'s rows, then `other`'s (MLX's separate gate and up).
    pub fn stack_rows(self, other: Packed) -> Result<Packed> {
        if self.interleaved
            || other.interleaved
            || self.experts != other.experts
            || self.inp != other.inp
        {
            bail!("cannot stack these mxfp4 expert matrices by rows");
        }
        let mut parts = self.parts;
        parts.extend(other.parts);
        Packed::new(parts, self.experts, self.inp, false)
    }

    /// Expert `e`'s parts, in model row order.
    pub fn expert_parts(&self, e: usize) -> impl Iterator<Item = ExpertPart<'_>> {
        let g = self.inp / mxfp4::GROUP;
        let mut row0 = 0;
        self.parts.iter().map(move |p| {
            let n = p.rows * g;
            let part = ExpertPart {
                row0,
                rows: p.rows,
                blocks: &p.blocks.as_slice()[e * n * 16..(e + 1) * n * 16],
                scales: &p.scales.as_slice()[e * n..(e + 1) * n],
                interleaved: self.interleaved,
            };
            row0 += p.rows;
            part
        })
    }

    /// Expert `e`'s `[out, in]` f32 values in model row order into `out`.
    pub fn dequantize_expert(&self, e: usize, out: &mut [f32]) {
        let inp = self.inp;
        let g = inp / mxfp4::GROUP;
        for p in self.expert_parts(e) {
            for i in 0..p.rows {
                let r = stored_row(i, p.rows, p.interleaved);
                mxfp4::dequantize_into(
                    &p.blocks[r * g * 16..(r + 1) * g * 16],
                    &p.scales[r * g..(r + 1) * g],
                    &mut out[(p.row0 + i) * inp..(p.row0 + i + 1) * inp],
                );
            }
        }
    }

    /// Whether every part is read from a file mapping.
    pub fn is_mapped(&self) -> bool {
        self.parts
            .iter()
            .all(|p| p.blocks.is_mapped() && p.scales.is_mapped())
    }

    /// Bytes of blocks and scales.
    pub fn stored_bytes(&self) -> usize {
        self.parts
            .iter()
            .map(|p| p.blocks.len() + p.scales.len())
            .sum()
    }
}

/// Stored row of model row `i` in a part of `rows` rows (see [`Packed`]).
pub fn stored_row(i: usize, rows: usize, interleaved: bool) -> usize {
    match interleaved {
        false => i,
        true if i < rows / 2 => 2 * i,
        true => 2 * (i - rows / 2) + 1,
    }
}

/// Model row of stored row `s` in a part of `rows` rows: the inverse of [`stored_row`].
pub fn model_row(s: usize, rows: usize, interleaved: bool) -> usize {
    match interleaved {
        false => s,
        true if s.is_multiple_of(2) => s / 2,
        true => rows / 2 + s / 2,
    }
}

#[derive(Debug, Clone)]
pub enum ExpertMat {
    /// `[E, out, in]` in the model dtype.
    Dense(Tensor),
    /// MXFP4 on a GPU: blocks `[E, out, in/32, 16]` U8, scales `[E, out, in/32]` U8.
    Mxfp4 { blocks: Tensor, scales: Tensor },
    /// MXFP4 on the CPU, where the checkpoint holds it.
    Packed(Packed),
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
            ExpertMat::Packed(p) => p.experts,
            ExpertMat::Affine { w, .. } => w.dims()[0],
        }
    }

    /// `(out, in)` of one expert.
    pub fn out_in(&self) -> (usize, usize) {
        match self {
            ExpertMat::Dense(t) => (t.dims()[1], t.dims()[2]),
            ExpertMat::Mxfp4 { scales, .. } => (scales.dims()[1], scales.dims()[2] * 32),
            ExpertMat::Packed(p) => (p.out(), p.inp),
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
            ExpertMat::Packed(p) => {
                let (out, inp) = self.out_in();
                let mut w = vec![0f32; out * inp];
                p.dequantize_expert(e, &mut w);
                Ok(Tensor::from_vec(w, (out, inp), &Device::Cpu)?
                    .to_dtype(dtype)?
                    .to_device(dev)?)
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

#[cfg(test)]
mod tests {
    use super::{model_row, stored_row};

    #[test]
    fn model_row_inverts_stored_row() {
        for rows in [2, 6, 5760] {
            for interleaved in [false, true] {
                for i in 0..rows {
                    let s = stored_row(i, rows, interleaved);
                    assert!(s < rows);
                    assert_eq!(
                        model_row(s, rows, interleaved),
                        i,
                        "{rows} {interleaved} {i}"
                    );
                }
            }
        }
    }
}
