//! Grouped (segment-wise) expert matmuls as single autograd ops, for the MoE on the CPU when
//! the whole expert half cannot run as one op (`moe_experts.rs`), e.g. under LoRA dropout.
//!
//! Tokens are gathered once in expert order (`xs [M, in]`, M = N·k); segment `(e, start,
//! len)` rows go through expert `e`. One op per projection instead of a dozen per expert
//! keeps the autograd graph (and its zero-fill + add per node in backward) small. Base
//! weights are constants captured by the op, read where they lie (`frozen.rs`).

use crate::kernels::cpu::frozen::with_expert;
use crate::kernels::cpu::pool;
use crate::kernels::gemm::gemm_rs;
use crate::kernels::op::{contiguous_f32, num_threads, storage_f32, CResult};
use crate::quant::experts::ExpertMat;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Tensor};
use std::sync::Mutex;

/// `(expert, first row, rows)`
pub(crate) type Segments = Vec<(usize, usize, usize)>;

/// Runs `f` on every segment's work item: one segment per task when there are enough to
/// keep the threads busy (their gemms then run single-threaded, see `gemm::threads`), else in
/// order with each gemm split across threads. Segment-level tasks need no synchronisation
/// inside a segment's handful of small matmuls, which is where per-gemm splitting lost time.
///
/// Tasks go largest segment first, each thread taking the next as it frees up (longest
/// processing time first). Routed token counts are uneven, and rayon's halving split of the
/// list would leave one thread idle behind the heavier half. Every item writes only its own
/// segment's rows and expert blocks, so the order changes no result. A decoded token's
/// segments (a row or a few each) run on `pool.rs`'s spinning workers, others on rayon's.
pub(crate) fn for_segments<X: Send>(
    items: Vec<(&(usize, usize, usize), X)>,
    f: impl Fn((&(usize, usize, usize), X)) -> CResult<()> + Sync + Send,
) -> CResult<()> {
    let n = num_threads();
    if items.len() < 2 * n {
        return items.into_iter().try_for_each(f);
    }
    let mut items = items;
    items.sort_by_key(|(&(_, _, len), _)| std::cmp::Reverse(len));
    let longest = items[0].0 .2;
    let queue: Vec<Mutex<Option<_>>> = items.into_iter().map(|i| Mutex::new(Some(i))).collect();
    pool::run(longest, queue.len(), |i| {
        let item = queue[i]
            .lock()
            .map_err(|_| candle_core::Error::Msg("grouped op: task queue poisoned".into()))?
            .take();
        item.map_or(Ok(()), &f)
    })
}

/// Splits a row-major `[M, width]` buffer into each segment's rows, in `segs` order (which
/// must be ascending and non-overlapping, as `Moe` builds them).
pub(crate) fn segment_rows<'a>(
    mut buf: &'a mut [f32],
    width: usize,
    segs: &Segments,
) -> CResult<Vec<&'a mut [f32]>> {
    let mut out = Vec::with_capacity(segs.len());
    let mut at = 0;
    for &(_, start, len) in segs {
        if start < at || (start + len - at) * width > buf.len() {
            candle_core::bail!("grouped op: segments out of order or out of range");
        }
        let (_, tail) = std::mem::take(&mut buf).split_at_mut((start - at) * width);
        let (mine, tail) = tail.split_at_mut(len * width);
        out.push(mine);
        buf = tail;
        at = start + len;
    }
    Ok(out)
}

/// Each segment's expert block of a `[E, size]` buffer (each expert appears at most once).
pub(crate) fn segment_experts<'a>(
    buf: &'a mut [f32],
    size: usize,
    segs: &Segments,
) -> CResult<Vec<&'a mut [f32]>> {
    let mut blocks: Vec<Option<&mut [f32]>> = buf.chunks_mut(size.max(1)).map(Some).collect();
    segs.iter()
        .map(
            |&(e, _, _)| match blocks.get_mut(e).and_then(Option::take) {
                Some(b) => Ok(b),
                None => candle_core::bail!("grouped op: expert {e} repeated or out of range"),
            },
        )
        .collect()
}

/// `ys[rows of segment e] = xs[rows] · W_eᵀ + b_e`.
pub(crate) struct GroupedLinear {
    pub mat: ExpertMat,
    /// `[E, out]` f32
    pub bias: Tensor,
    pub segs: Segments,
}

impl CustomOp1 for GroupedLinear {
    fn name(&self) -> &'static str {
        "osstune-grouped-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "grouped op")?;
        let (m, inp) = l.shape().dims2()?;
        let (out, in2) = self.mat.out_in();
        if inp != in2 {
            candle_core::bail!("grouped linear: input {inp} vs expert input {in2}");
        }
        // Borrowed in place: a copy of every expert's bias per call (1.1 MB a layer at
        // gpt-oss-20b shapes) cost a decoded token ~1 ms.
        let (bs, bl) = self.bias.storage_and_layout();
        let bias = storage_f32(&bs, bl, "grouped linear bias")?;
        if bias.len() < self.mat.num_experts() * out {
            candle_core::bail!(
                "grouped linear: bias {:?} for {} experts of {out} outputs",
                bl.dims(),
                self.mat.num_experts()
            );
        }
        let mut dst = vec![0f32; m * out];
        let items = self
            .segs
            .iter()
            .zip(segment_rows(&mut dst, out, &self.segs)?);
        for_segments(items.collect(), |(&(e, start, len), d)| {
            for row in d.chunks_mut(out) {
                row.copy_from_slice(&bias[e * out..(e + 1) * out]);
            }
            let xr = &x[start * inp..(start + len) * inp];
            with_expert(&self.mat, e, |w| w.xwt(xr, len, d, out, true))
        })?;
        Ok((CpuStorage::F32(dst), Shape::from((m, out))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        let g = g.contiguous()?.to_dtype(DType::F32)?;
        let gv = g.flatten_all()?.to_vec1::<f32>()?;
        let (m, inp) = x.dims2()?;
        let (out, _) = self.mat.out_in();
        let mut dx = vec![0f32; m * inp];
        let items = self
            .segs
            .iter()
            .zip(segment_rows(&mut dx, inp, &self.segs)?);
        for_segments(items.collect(), |(&(e, start, len), d)| {
            let gr = &gv[start * out..(start + len) * out];
            // dx = g · W_e
            with_expert(&self.mat, e, |w| w.gw(gr, len, out, d, false))
        })?;
        Ok(Some(Tensor::from_vec(dx, (m, inp), x.device())?))
    }
}

/// `ys[rows of e] = scale · (xs[rows] · A_eᵀ) · B_eᵀ` with gradients for xs, A and B.
pub(crate) struct GroupedLora {
    pub segs: Segments,
    pub scale: f32,
}

impl CustomOp3 for GroupedLora {
    fn name(&self) -> &'static str {
        "osstune-grouped-lora"
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
        let (_, r, _) = l2.shape().dims3()?;
        let (_, out, _) = l3.shape().dims3()?;
        let mut dst = vec![0f32; m * out];
        let items = self
            .segs
            .iter()
            .zip(segment_rows(&mut dst, out, &self.segs)?);
        for_segments(items.collect(), |(&(e, start, len), d)| {
            let mut t = vec![0f32; len * r];
            let xr = &x[start * inp..(start + len) * inp];
            let ae = &a[e * r * inp..(e + 1) * r * inp];
            let be = &b[e * out * r..(e + 1) * out * r];
            gemm_rs(
                &mut t,
                false,
                (len, r, inp),
                xr,
                (inp, 1),
                ae,
                (1, inp),
                1.0,
            );
            gemm_rs(d, false, (len, out, r), &t, (r, 1), be, (1, r), self.scale);
            Ok(())
        })?;
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
        let (ne, r, _) = a.dims3()?;
        let (_, out, _) = b.dims3()?;
        let xv = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let av = a.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let bv = b.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let gv = g.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let (mut dx, mut da, mut db) = (
            vec![0f32; m * inp],
            vec![0f32; ne * r * inp],
            vec![0f32; ne * out * r],
        );
        let s = self.scale;
        let items = self.segs.iter().zip(
            segment_rows(&mut dx, inp, &self.segs)?.into_iter().zip(
                segment_experts(&mut da, r * inp, &self.segs)?
                    .into_iter()
                    .zip(segment_experts(&mut db, out * r, &self.segs)?),
            ),
        );
        for_segments(items.collect(), |(&(e, start, len), (dxr, (dae, dbe)))| {
            let xr = &xv[start * inp..(start + len) * inp];
            let gr = &gv[start * out..(start + len) * out];
            let ae = &av[e * r * inp..(e + 1) * r * inp];
            let be = &bv[e * out * r..(e + 1) * out * r];
            let mut t = vec![0f32; len * r];
            let mut dt = vec![0f32; len * r];
            // t = x Aᵀ ; dB += s · gᵀ t ; dt = s · g B ; dA += dtᵀ x ; dx = dt A
            gemm_rs(
                &mut t,
                false,
                (len, r, inp),
                xr,
                (inp, 1),
                ae,
                (1, inp),
                1.0,
            );
            gemm_rs(dbe, true, (out, r, len), gr, (1, out), &t, (r, 1), s);
            gemm_rs(&mut dt, false, (len, r, out), gr, (out, 1), be, (r, 1), s);
            gemm_rs(dae, true, (r, inp, len), &dt, (1, r), xr, (inp, 1), 1.0);
            gemm_rs(dxr, false, (len, inp, r), &dt, (r, 1), ae, (inp, 1), 1.0);
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
