//! Grouped expert projection with its LoRA deltas in the same op:
//! `ys[rows of e] = xs[rows] · W_eᵀ + b_e + Σ_p s_p · (xs[rows] · A_e[p]ᵀ) · B_e[p]ᵀ`
//! written into the output columns of part `p`.
//!
//! gate/up share one `[M, 2I]` output (gate columns, then up columns) with separate
//! adapters; as `GroupedLinear` + two `GroupedLora` + `cat` + add that is five `[M, 2I]`
//! tensors forward and as many zero-filled gradients and adds backward. Here the adapters'
//! A are stacked along the rank axis (`[E, R, in]`, R = Σ r_p) and their B along the output
//! axis (`[E, Σ out_p, r]`, a cheap `cat` of the Vars, differentiable), and one op does
//! everything. Gradients: xs, A and B; the base weights are constants, as in `GroupedLinear`.

use crate::experts::ExpertMat;
use crate::grouped::{
    for_segments, gemm_ld, gemm_rs, segment_experts, segment_rows, with_expert, Segments,
};
use crate::ops::{contiguous_f32, simd, storage_f32, swiglu_row, swiglu_row_grad};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use std::sync::Mutex;

type CResult<T> = candle_core::Result<T>;

/// One adapter of a grouped projection: output columns `col..col+len`, rank columns
/// `rank0..rank0+r` of the stacked A, rows `brow..brow+len` of the stacked B.
#[derive(Debug, Clone, Copy)]
pub struct LoraPart {
    pub col: usize,
    pub len: usize,
    pub rank0: usize,
    pub brow: usize,
    pub scale: f32,
}

pub struct GroupedLinearLora {
    pub mat: ExpertMat,
    /// `[E, out]` f32
    pub bias: Tensor,
    pub segs: Segments,
    pub parts: Vec<LoraPart>,
    /// Rank of every part.
    pub rank: usize,
    /// gpt-oss's clamped SwiGLU applied to the `[gate | up]` output inside the op (the MoE's
    /// gate/up projection): the op then returns the activation `[M, out/2]`. Each segment's
    /// pre-activation is activated while it is still in cache, and the backward turns the
    /// activation's gradient into the projection's per segment, so neither the activation
    /// as a separate graph node nor its `[M, out]` gradient exist.
    pub swiglu: Option<SwiGluEpilogue>,
}

#[derive(Debug)]
pub struct SwiGluEpilogue {
    pub limit: f32,
    pub alpha: f32,
    /// The pre-activation `[M, out]`, from the forward for the backward.
    pub saved: Mutex<Vec<f32>>,
}

impl GroupedLinearLora {
    fn check(&self, out: usize, r_total: usize, b_rows: usize, r: usize) -> CResult<()> {
        let bad = r != self.rank
            || self.parts.iter().any(|p| {
                p.col + p.len > out || p.rank0 + self.rank > r_total || p.brow + p.len > b_rows
            });
        if bad {
            candle_core::bail!("grouped lora linear: parts do not fit A/B/output shapes");
        }
        Ok(())
    }
}

impl CustomOp3 for GroupedLinearLora {
    fn name(&self) -> &'static str {
        "osstune-grouped-linear-lora"
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
        let x = contiguous_f32(s1, l1, "grouped op")?;
        let a = contiguous_f32(s2, l2, "grouped op")?;
        let b = contiguous_f32(s3, l3, "grouped op")?;
        let (m, inp) = l1.shape().dims2()?;
        let (_, rt, in_a) = l2.shape().dims3()?;
        let (_, brows, r) = l3.shape().dims3()?;
        let (out, in2) = self.mat.out_in();
        if inp != in2 || in_a != inp {
            candle_core::bail!("grouped lora linear: input {inp} vs expert {in2} / A {in_a}");
        }
        self.check(out, rt, brows, r)?;
        let bias = self.bias.flatten_all()?.to_vec1::<f32>()?;
        let mut dst = vec![0f32; m * out];
        let half = out / 2;
        let mut act = vec![0f32; if self.swiglu.is_some() { m * half } else { 0 }];
        let act_rows = match self.swiglu {
            Some(_) => segment_rows(&mut act, half, &self.segs)?,
            None => self.segs.iter().map(|_| Default::default()).collect(),
        };
        let items = self.segs.iter().zip(
            segment_rows(&mut dst, out, &self.segs)?
                .into_iter()
                .zip(act_rows),
        );
        for_segments(items.collect(), |(&(e, start, len), (d, act_d))| {
            for row in d.chunks_mut(out) {
                row.copy_from_slice(&bias[e * out..(e + 1) * out]);
            }
            let xr = &x[start * inp..(start + len) * inp];
            with_expert(&self.mat, e, |w| {
                gemm_rs(d, true, (len, out, inp), xr, (inp, 1), w, (1, inp), 1.0)
            })?;
            // t = x A_eᵀ for all parts at once, then each part's B into its columns.
            let mut t = vec![0f32; len * rt];
            let ae = &a[e * rt * inp..(e + 1) * rt * inp];
            gemm_rs(
                &mut t,
                false,
                (len, rt, inp),
                xr,
                (inp, 1),
                ae,
                (1, inp),
                1.0,
            );
            let be = &b[e * brows * r..(e + 1) * brows * r];
            for p in &self.parts {
                gemm_ld(
                    &mut d[p.col..],
                    out,
                    true,
                    (len, p.len, r),
                    &t[p.rank0..],
                    (rt, 1),
                    &be[p.brow * r..],
                    (1, r),
                    p.scale,
                );
            }
            if let Some(sw) = &self.swiglu {
                for (o, u) in act_d.chunks_mut(half).zip(d.chunks(out)) {
                    simd(|| swiglu_row(o, u, sw.limit, sw.alpha));
                }
            }
            Ok(())
        })?;
        if let Some(sw) = &self.swiglu {
            *sw.saved
                .lock()
                .map_err(|_| candle_core::Error::Msg("swiglu lock".into()))? = dst;
            return Ok((CpuStorage::F32(act), Shape::from((m, half))));
        }
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
        let (ne, rt, _) = a.dims3()?;
        let (_, brows, r) = b.dims3()?;
        let (out, _) = self.mat.out_in();
        let g = g.contiguous()?.to_dtype(DType::F32)?;
        let (xs, xl) = x.storage_and_layout();
        let (as_, al) = a.storage_and_layout();
        let (bs, bl) = b.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let xv = storage_f32(&xs, xl, "grouped op")?;
        let av = storage_f32(&as_, al, "grouped op")?;
        let bv = storage_f32(&bs, bl, "grouped op")?;
        let gv = storage_f32(&gs, gl, "grouped op")?;
        let saved = match &self.swiglu {
            Some(sw) => {
                let u = std::mem::take(
                    &mut *sw
                        .saved
                        .lock()
                        .map_err(|_| candle_core::Error::Msg("swiglu lock".into()))?,
                );
                if u.len() != m * out {
                    candle_core::bail!("grouped lora linear: backward without a matching forward");
                }
                Some((u, sw.limit, sw.alpha))
            }
            None => None,
        };
        let mut dx = vec![0f32; m * inp];
        let mut da = vec![0f32; ne * rt * inp];
        let mut db = vec![0f32; ne * brows * r];
        let items = self.segs.iter().zip(
            segment_rows(&mut dx, inp, &self.segs)?.into_iter().zip(
                segment_experts(&mut da, rt * inp, &self.segs)?
                    .into_iter()
                    .zip(segment_experts(&mut db, brows * r, &self.segs)?),
            ),
        );
        for_segments(items.collect(), |(&(e, start, len), (dxr, (dae, dbe)))| {
            let xr = &xv[start * inp..(start + len) * inp];
            // The projection's output gradient: given, or through the SwiGLU epilogue.
            let du;
            let gr = match &saved {
                None => &gv[start * out..(start + len) * out],
                Some((u, lim, alpha)) => {
                    let half = out / 2;
                    let mut d = vec![0f32; len * out];
                    let ur = &u[start * out..(start + len) * out];
                    let ga = &gv[start * half..(start + len) * half];
                    for ((dr, uu), gg) in d.chunks_mut(out).zip(ur.chunks(out)).zip(ga.chunks(half))
                    {
                        simd(|| swiglu_row_grad(dr, uu, gg, *lim, *alpha));
                    }
                    du = d;
                    &du
                }
            };
            let ae = &av[e * rt * inp..(e + 1) * rt * inp];
            let be = &bv[e * brows * r..(e + 1) * brows * r];
            let mut t = vec![0f32; len * rt];
            let mut dt = vec![0f32; len * rt];
            // t = x Aᵀ ; per part: dB_p += s gₚᵀ tₚ, dtₚ = s gₚ B_p ; dA += dtᵀ x ;
            // dx = g W + dt A
            gemm_rs(
                &mut t,
                false,
                (len, rt, inp),
                xr,
                (inp, 1),
                ae,
                (1, inp),
                1.0,
            );
            for p in &self.parts {
                let gp = &gr[p.col..];
                gemm_rs(
                    &mut dbe[p.brow * r..(p.brow + p.len) * r],
                    true,
                    (p.len, r, len),
                    gp,
                    (1, out),
                    &t[p.rank0..],
                    (rt, 1),
                    p.scale,
                );
                gemm_ld(
                    &mut dt[p.rank0..],
                    rt,
                    false,
                    (len, r, p.len),
                    gp,
                    (out, 1),
                    &be[p.brow * r..],
                    (r, 1),
                    p.scale,
                );
            }
            gemm_rs(dae, true, (rt, inp, len), &dt, (1, rt), xr, (inp, 1), 1.0);
            with_expert(&self.mat, e, |w| {
                gemm_rs(dxr, false, (len, inp, out), gr, (out, 1), w, (inp, 1), 1.0)
            })?;
            gemm_rs(dxr, true, (len, inp, rt), &dt, (rt, 1), ae, (inp, 1), 1.0);
            Ok(())
        })?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (m, inp), dev)?),
            Some(Tensor::from_vec(da, a.dims(), dev)?),
            Some(Tensor::from_vec(db, b.dims(), dev)?),
        ))
    }
}
