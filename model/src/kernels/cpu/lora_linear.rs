//! A dense projection with its LoRA on the CPU: `y = x Wᵀ + b + s·(x Aᵀ) Bᵀ` as one
//! autograd op with inputs `(x, A, B)`.
//!
//! The composed version is seven graph nodes (base linear, two transposes, two matmuls, the
//! scale, the add); each costs a zero-filled gradient buffer and an add in candle's backward,
//! and candle's matmul backward also materializes transposed copies. Here `W`/`b` are
//! constants captured by the op (no gradient, as in `kernels::linear`; W read where it lies) and the backward forms
//! `dx`, `dA`, `dB` directly with five small GEMMs.

use crate::kernels::cpu::frozen::with_matrix;
use crate::kernels::cpu::ops::bias_rows;
use crate::kernels::gemm::gemm_rs;
use crate::kernels::op::{contiguous_f32, storage_f32, CResult};
use crate::quant::matrix::Matrix;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

struct LoraLinearOp {
    /// `[out, in]`, read where it lies (`frozen.rs`).
    weight: Matrix,
    /// `[out]` f32.
    bias: Option<Tensor>,
    scale: f32,
}

impl CustomOp3 for LoraLinearOp {
    fn name(&self) -> &'static str {
        "osstune-lora-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "fused lora linear input")?;
        let a = contiguous_f32(s2, l2, "fused lora linear lora_a")?;
        let b = contiguous_f32(s3, l3, "fused lora linear lora_b")?;
        let (m, inp) = l1.shape().dims2()?;
        let (r, in_a) = l2.shape().dims2()?;
        let (out, r_b) = l3.shape().dims2()?;
        let (out_w, in_w) = self.weight.out_in();
        if in_a != inp || r_b != r || out_w != out || in_w != inp {
            candle_core::bail!(
                "fused lora linear: x {:?}, A {:?}, B {:?}, W [{out_w}, {in_w}]",
                l1.dims(),
                l2.dims(),
                l3.dims(),
            );
        }
        let mut dst = bias_rows(self.bias.as_ref(), m, out)?;
        // dst += x Wᵀ ; t = x Aᵀ ; dst += s · t Bᵀ
        with_matrix(&self.weight, |w| w.xwt(x, m, &mut dst, out, true))?;
        let mut t = vec![0f32; m * r];
        gemm_rs(&mut t, false, (m, r, inp), x, (inp, 1), a, (1, inp), 1.0);
        gemm_rs(
            &mut dst,
            true,
            (m, out, r),
            &t,
            (r, 1),
            b,
            (1, r),
            self.scale,
        );
        Ok((CpuStorage::F32(dst), Shape::from((m, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (m, inp) = x.dims2()?;
        let (r, _) = a.dims2()?;
        let (out, _) = b.dims2()?;
        let g = g.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (as_, al) = a.storage_and_layout();
        let (bs, bl) = b.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let xv = storage_f32(&xs, xl, "input")?;
        let av = storage_f32(&as_, al, "lora_a")?;
        let bv = storage_f32(&bs, bl, "lora_b")?;
        let gv = storage_f32(&gs, gl, "gradient")?;
        let s = self.scale;
        let mut t = vec![0f32; m * r];
        let mut dt = vec![0f32; m * r];
        let mut da = vec![0f32; r * inp];
        let mut db = vec![0f32; out * r];
        // t = x Aᵀ ; dB = s · gᵀ t ; dt = s · g B ; dA = dtᵀ x ; dx = g W + dt A
        gemm_rs(&mut t, false, (m, r, inp), xv, (inp, 1), av, (1, inp), 1.0);
        gemm_rs(&mut db, false, (out, r, m), gv, (1, out), &t, (r, 1), s);
        gemm_rs(&mut dt, false, (m, r, out), gv, (out, 1), bv, (r, 1), s);
        gemm_rs(&mut da, false, (r, inp, m), &dt, (1, r), xv, (inp, 1), 1.0);
        let dev = x.device();
        // The first layer's projections read the (constant) embeddings: no input gradient.
        let dx = if x.track_op() {
            let mut dx = vec![0f32; m * inp];
            with_matrix(&self.weight, |w| w.gw(gv, m, out, &mut dx, false))?;
            gemm_rs(&mut dx, true, (m, inp, r), &dt, (r, 1), av, (inp, 1), 1.0);
            Some(Tensor::from_vec(dx, (m, inp), dev)?)
        } else {
            None
        };
        Ok((
            dx,
            Some(Tensor::from_vec(da, (r, inp), dev)?),
            Some(Tensor::from_vec(db, (out, r), dev)?),
        ))
    }
}

/// `x Wᵀ + b + scale·(x Aᵀ) Bᵀ` for contiguous f32 `x [m, in]` and weights on the CPU.
pub(crate) fn lora_linear(
    x: &Tensor,
    weight: &Matrix,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> CResult<Tensor> {
    let op = LoraLinearOp {
        weight: weight.clone(),
        bias: bias.cloned(),
        scale: scale as f32,
    };
    x.apply_op3(a, b, op)
}
