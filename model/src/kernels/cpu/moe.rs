//! The MoE's expert half on the CPU: the routed rows in expert order (segments of rows per
//! expert), then either the whole half as one `MoeExperts` op (`moe_experts.rs`), or, when
//! its conditions fail (LoRA dropout on an expert adapter, adapters of different ranks, no
//! adapter at all), `dispatch`, one grouped op per projection (`grouped.rs`), SwiGLU and
//! `combine`. Either way one task per expert segment instead of a dozen ops per expert.

use crate::kernels::cpu::expert_proj::LoraPart;
use crate::kernels::cpu::grouped::{GroupedLinear, GroupedLora, Segments};
use crate::kernels::cpu::moe_experts::{MoeExperts, ProjSpec};
use crate::kernels::moe::{slot_rows, ExpertLora, Experts};
use crate::quant::experts::ExpertMat;
use anyhow::Result;
use candle_core::{DType, Tensor};

/// The grouped CPU path needs dense experts as contiguous f32 (packed ones are decoded per
/// expert inside the ops) and f32 adapters on the CPU.
pub(crate) fn eligible(ex: &Experts) -> bool {
    let dense_ok = |m: &ExpertMat| match m {
        ExpertMat::Dense(t) => t.dtype() == DType::F32 && t.is_contiguous(),
        _ => true,
    };
    let lora_ok = |l: Option<&ExpertLora>| {
        l.is_none_or(|l| {
            l.a.dtype() == DType::F32 && l.b.dtype() == DType::F32 && l.a.device().is_cpu()
        })
    };
    dense_ok(ex.gate_up) && dense_ok(ex.down) && ex.adapters().into_iter().all(lora_ok)
}

/// See the module docs; `kernels::moe_experts` checked [`eligible`].
pub(crate) fn moe_experts(
    x: &Tensor,
    weights: &Tensor,
    per_expert: &[Vec<u32>],
    ex: &Experts,
) -> Result<Tensor> {
    let n = x.dim(0)?;
    let mut segs = Vec::new();
    let mut slots: Vec<u32> = Vec::with_capacity(n * ex.top_k);
    for (e, sl) in per_expert.iter().enumerate() {
        if !sl.is_empty() {
            segs.push((e, slots.len(), sl.len()));
            slots.extend_from_slice(sl);
        }
    }
    if let Some(out) = fused(x, weights, &segs, &slots, ex)? {
        return Ok(out);
    }
    grouped(x, weights, &segs, &slots, ex)
}

/// dispatch, grouped gate/up (+ LoRA), SwiGLU, grouped down (+ LoRA), combine.
fn grouped(
    x: &Tensor,
    weights: &Tensor,
    segs: &Segments,
    slots: &[u32],
    ex: &Experts,
) -> Result<Tensor> {
    let dev = x.device();
    let m = slots.len();
    let inter = ex.intermediate();
    let xs = crate::kernels::dispatch(x, slots, ex.top_k)?;
    let lora = |l: &ExpertLora, inp: &Tensor| -> Result<Tensor> {
        let op = GroupedLora {
            segs: segs.clone(),
            scale: l.scale as f32,
        };
        let inp = match &l.input {
            Some(f) => f(inp, slots)?,
            None => inp.clone(),
        };
        Ok(inp.apply_op3(l.a, l.b, op)?)
    };
    let mut u = xs.apply_op1(GroupedLinear {
        mat: ex.gate_up.clone(),
        bias: ex.gate_up_bias.to_dtype(DType::F32)?,
        segs: segs.clone(),
    })?;
    if ex.gate_lora.is_some() || ex.up_lora.is_some() {
        let zeros = || Tensor::zeros((m, inter), DType::F32, dev);
        let dg = match &ex.gate_lora {
            Some(l) => lora(l, &xs)?,
            None => zeros()?,
        };
        let du = match &ex.up_lora {
            Some(l) => lora(l, &xs)?,
            None => zeros()?,
        };
        u = (u + Tensor::cat(&[dg, du], 1)?)?;
    }
    let act = crate::kernels::swiglu(&u, ex.limit, ex.alpha)?;
    let mut y = act.apply_op1(GroupedLinear {
        mat: ex.down.clone(),
        bias: ex.down_bias.to_dtype(DType::F32)?,
        segs: segs.clone(),
    })?;
    if let Some(l) = &ex.down_lora {
        y = (y + lora(l, &act)?)?;
    }
    Ok(crate::kernels::combine(&y, weights, slots, ex.top_k)?)
}

/// The whole expert half as one `MoeExperts` op; `None` when no expert adapter is attached
/// (the plain grouped ops then carry no LoRA), their ranks differ or LoRA dropout is on
/// (the composition applies it to the gathered rows).
fn fused(
    x: &Tensor,
    weights: &Tensor,
    segs: &Segments,
    slots: &[u32],
    ex: &Experts,
) -> Result<Option<Tensor>> {
    let present: Vec<&ExpertLora> = ex.adapters().into_iter().flatten().collect();
    let Some(first) = present.first() else {
        return Ok(None);
    };
    let rank = first.rank();
    if present
        .iter()
        .any(|l| l.rank() != rank || l.input.is_some())
    {
        return Ok(None);
    }
    let inter = ex.intermediate();
    let gate_up = [(&ex.gate_lora, 0), (&ex.up_lora, inter)];
    let (gate_up, gu_a, gu_b) = proj_spec(ex.gate_up, ex.gate_up_bias, &gate_up)?;
    let (down, dn_a, dn_b) = proj_spec(ex.down, ex.down_bias, &[(&ex.down_lora, 0)])?;
    // Row e of the pack is expert e's [A_gu | B_gu | A_d | B_d]: one cat of the factors
    // viewed as [E, ·] (cat is differentiable: the packed gradient flows back to every
    // adapter's Vars).
    let e = ex.gate_up.num_experts();
    let pieces = [gu_a, gu_b, dn_a, dn_b]
        .concat()
        .into_iter()
        .map(|t| t.reshape((e, ())))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let packed = Tensor::cat(&pieces, 1)?;
    let op = MoeExperts {
        gate_up,
        down,
        rank,
        segs: segs.clone(),
        slots: slots.to_vec(),
        rows: slot_rows(slots, slots.len(), "moe experts")?,
        k: ex.top_k,
        limit: ex.limit as f32,
        alpha: ex.alpha as f32,
        saved: Default::default(),
    };
    Ok(Some(x.contiguous()?.apply_op3(
        &weights.contiguous()?,
        &packed,
        op,
    )?))
}

/// A projection's constants and its present adapters' A and B (in stacking order).
type Spec<'a> = (ProjSpec, Vec<&'a Tensor>, Vec<&'a Tensor>);

/// A projection's constants and the layout of its adapters (`(adapter, first output
/// column)`) stacked as `expert_proj.rs` expects, with the present adapters' A and B in
/// stacking order.
fn proj_spec<'a>(
    mat: &ExpertMat,
    bias: &Tensor,
    adapters: &[(&Option<ExpertLora<'a>>, usize)],
) -> Result<Spec<'a>> {
    let (mut parts, mut a_list, mut b_list) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rank0, mut brow) = (0, 0);
    for (l, col) in adapters {
        let Some(l) = l else { continue };
        let len = l.out_dim();
        parts.push(LoraPart {
            col: *col,
            len,
            rank0,
            brow,
            scale: l.scale as f32,
        });
        rank0 += l.rank();
        brow += len;
        a_list.push(l.a);
        b_list.push(l.b);
    }
    let spec = ProjSpec {
        mat: mat.clone(),
        bias: bias.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
        parts,
        rt: rank0,
        brows: brow,
    };
    Ok((spec, a_list, b_list))
}
