//! gpt-oss MoE block (spec §1.6): router (with bias) → top-k → softmax over the k logits;
//! per expert u = W1·t + b1 with gate/up (stored de-interleaved: rows 0..I gate, I..2I up),
//! gate capped above at `limit`, up clamped to ±limit, h = gate·σ(α·gate)·(up + 1),
//! y = W2·h + b2, output Σ weight·y.
//!
//! Only experts that received tokens run: their tokens are gathered (`index_select`), pushed
//! through two contiguous matmuls, weighted and scattered back with one `index_add` (on the
//! CPU fast path: one `MoeExperts` op, or with LoRA dropout the `dispatch` op, grouped matmuls
//! and the `combine` op). Expert LoRA deltas apply to the same gathered tokens. Everything is
//! differentiable, so gradients reach router and expert LoRA weights; the routing indices
//! themselves carry no gradient.

use crate::arch::linear::Linear;
use crate::kernels::cpu::expert_proj::LoraPart;
use crate::kernels::cpu::grouped::{GroupedLinear, GroupedLora, Segments};
use crate::kernels::cpu::moe_experts::{MoeExperts, ProjSpec};
use crate::kernels::cpu::ops;
use crate::kernels::cpu::routing::{combine, dispatch, slot_rows};
use crate::lora::adapter::SwitchLora;
use crate::quant::experts::ExpertMat;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

#[derive(Debug, Clone)]
pub struct Moe {
    /// `[E, H]` + bias `[E]`; may carry a LoRA.
    pub router: Linear,
    /// `[E, 2I, H]`, gate rows first, then up rows.
    pub gate_up: ExpertMat,
    /// `[E, 2I]`, same row order.
    pub gate_up_bias: Tensor,
    /// `[E, H, I]`
    pub down: ExpertMat,
    /// `[E, H]`
    pub down_bias: Tensor,
    pub top_k: usize,
    pub limit: f64,
    pub alpha: f64,
    pub gate_lora: Option<SwitchLora>,
    pub up_lora: Option<SwitchLora>,
    pub down_lora: Option<SwitchLora>,
}

/// Host-side routing: for each expert, the tokens it serves and their flat (token·k + slot)
/// positions in the `[N, k]` weight matrix.
struct Routing {
    idx: Vec<u32>,
    per_expert: Vec<(Vec<u32>, Vec<u32>)>,
}

fn route(logits: &Tensor, k: usize) -> Result<Routing> {
    let (n, e) = logits.dims2()?;
    let flat = logits
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut idx = Vec::with_capacity(n * k);
    let mut per_expert = vec![(Vec::new(), Vec::new()); e];
    let mut order: Vec<u32> = Vec::with_capacity(e);
    for t in 0..n {
        let row = &flat[t * e..(t + 1) * e];
        if row.iter().any(|v| v.is_nan()) {
            bail!("router produced NaN logits (token {t})");
        }
        order.clear();
        order.extend(0..e as u32);
        // Largest first; ties toward the lower expert id (torch.topk on CPU does the same).
        order.sort_by(|&a, &b| {
            row[b as usize]
                .partial_cmp(&row[a as usize])
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b))
        });
        for (slot, &ex) in order[..k].iter().enumerate() {
            idx.push(ex);
            per_expert[ex as usize].0.push(t as u32);
            per_expert[ex as usize].1.push((t * k + slot) as u32);
        }
    }
    Ok(Routing { idx, per_expert })
}

fn lora_f32(l: &Option<SwitchLora>) -> bool {
    l.as_ref().is_none_or(|l| {
        l.a.dtype() == DType::F32 && l.b.dtype() == DType::F32 && l.a.device().is_cpu()
    })
}

/// A projection's constants and the layout of its adapters (`(adapter, first output
/// column)`) stacked as `grouped_fused` expects, with the stacked `(A, B)` when any is present.
fn proj_spec(
    mat: &ExpertMat,
    bias: &Tensor,
    adapters: &[(&Option<SwitchLora>, usize)],
) -> Result<(ProjSpec, Option<(Tensor, Tensor)>)> {
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
        a_list.push(l.a.as_tensor());
        b_list.push(l.b.as_tensor());
    }
    let stacked = match a_list.len() {
        0 => None,
        1 => Some((a_list[0].clone(), b_list[0].clone())),
        _ => Some((Tensor::cat(&a_list, 1)?, Tensor::cat(&b_list, 1)?)),
    };
    let spec = ProjSpec {
        mat: mat.clone(),
        bias: bias.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
        parts,
        rt: rank0,
        brows: brow,
    };
    Ok((spec, stacked))
}

impl Moe {
    /// The grouped CPU path needs f32 activations, CPU tensors and f32 adapters.
    fn grouped_ok(&self, x: &Tensor) -> bool {
        let dense_ok = |m: &ExpertMat| match m {
            ExpertMat::Dense(t) => t.dtype() == DType::F32 && t.is_contiguous(),
            _ => true,
        };
        x.device().is_cpu()
            && x.dtype() == DType::F32
            && dense_ok(&self.gate_up)
            && dense_ok(&self.down)
            && lora_f32(&self.gate_lora)
            && lora_f32(&self.up_lora)
            && lora_f32(&self.down_lora)
    }

    /// All routed rows in expert order: one `MoeExperts` op when the adapters allow it, else
    /// dispatch, one op per projection (see `grouped`), SwiGLU and combine.
    fn forward_grouped(&self, x: &Tensor, weights: &Tensor, routing: &Routing) -> Result<Tensor> {
        let n = x.dim(0)?;
        let dev = x.device();
        let inter = self.intermediate();
        let mut segs = Vec::new();
        let mut slots: Vec<u32> = Vec::with_capacity(n * self.top_k);
        for (e, (_, sl)) in routing.per_expert.iter().enumerate() {
            if !sl.is_empty() {
                segs.push((e, slots.len(), sl.len()));
                slots.extend_from_slice(sl);
            }
        }
        if let Some(out) = self.fused_experts(x, weights, &segs, &slots)? {
            return Ok(out);
        }
        let m = slots.len();
        let xs = dispatch(x, &slots, self.top_k)?;
        let lora = |l: &SwitchLora, inp: &Tensor| -> Result<Tensor> {
            let op = GroupedLora {
                segs: segs.clone(),
                scale: l.scale as f32,
            };
            let inp = l.lora_input(inp, &slots)?;
            Ok(inp.apply_op3(l.a.as_tensor(), l.b.as_tensor(), op)?)
        };
        let mut u = xs.apply_op1(GroupedLinear {
            mat: self.gate_up.clone(),
            bias: self.gate_up_bias.to_dtype(DType::F32)?,
            segs: segs.clone(),
        })?;
        if self.gate_lora.is_some() || self.up_lora.is_some() {
            let zeros = || Tensor::zeros((m, inter), DType::F32, dev);
            let dg = match &self.gate_lora {
                Some(l) => lora(l, &xs)?,
                None => zeros()?,
            };
            let du = match &self.up_lora {
                Some(l) => lora(l, &xs)?,
                None => zeros()?,
            };
            u = (u + Tensor::cat(&[dg, du], 1)?)?;
        }
        let act = ops::swiglu(&u, self.limit, self.alpha)?;
        let mut y = act.apply_op1(GroupedLinear {
            mat: self.down.clone(),
            bias: self.down_bias.to_dtype(DType::F32)?,
            segs: segs.clone(),
        })?;
        if let Some(l) = &self.down_lora {
            y = (y + lora(l, &act)?)?;
        }
        Ok(combine(&y, weights, &slots, self.top_k)?)
    }

    /// The whole expert half as one `MoeExperts` op; `None` when no expert adapter is attached
    /// (the plain grouped ops then carry no LoRA), their ranks differ or LoRA dropout is on
    /// (the composition applies it to the gathered rows).
    fn fused_experts(
        &self,
        x: &Tensor,
        weights: &Tensor,
        segs: &Segments,
        slots: &[u32],
    ) -> Result<Option<Tensor>> {
        let all = [&self.gate_lora, &self.up_lora, &self.down_lora];
        let present: Vec<&SwitchLora> = all.iter().filter_map(|l| l.as_ref()).collect();
        let Some(first) = present.first() else {
            return Ok(None);
        };
        let rank = first.rank();
        if present
            .iter()
            .any(|l| l.rank() != rank || l.dropout.is_some())
        {
            return Ok(None);
        }
        let inter = self.intermediate();
        let gate_up = [(&self.gate_lora, 0), (&self.up_lora, inter)];
        let (gate_up, gu_ab) = proj_spec(&self.gate_up, &self.gate_up_bias, &gate_up)?;
        let (down, dn_ab) = proj_spec(&self.down, &self.down_bias, &[(&self.down_lora, 0)])?;
        // [A_gu | B_gu | A_d | B_d], each flattened (cat is differentiable: the packed
        // gradient flows back to every adapter's Vars).
        let mut pieces = Vec::new();
        for (a, b) in gu_ab.into_iter().chain(dn_ab) {
            pieces.push(a.flatten_all()?);
            pieces.push(b.flatten_all()?);
        }
        let packed = Tensor::cat(&pieces, 0)?;
        let op = MoeExperts {
            gate_up,
            down,
            rank,
            segs: segs.clone(),
            slots: slots.to_vec(),
            rows: slot_rows(slots, slots.len(), "moe experts")?,
            k: self.top_k,
            limit: self.limit as f32,
            alpha: self.alpha as f32,
            saved: Default::default(),
        };
        Ok(Some(x.contiguous()?.apply_op3(
            &weights.contiguous()?,
            &packed,
            op,
        )?))
    }

    pub fn num_experts(&self) -> usize {
        self.gate_up.num_experts()
    }

    pub fn intermediate(&self) -> usize {
        self.down.out_in().1
    }

    /// `x [N, H]` → `[N, H]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, h) = x.dims2()?;
        let dev = x.device();
        let dtype = x.dtype();
        let inter = self.intermediate();
        let logits = self.router.forward(x)?;
        let routing = route(&logits, self.top_k)?;
        let idx = Tensor::new(routing.idx.as_slice(), dev)?.reshape((n, self.top_k))?;
        let top = logits.gather(&idx, 1)?;
        let weights = ops::softmax_last_dim(&top)?.flatten_all()?;
        if self.grouped_ok(x) {
            return self.forward_grouped(x, &weights, &routing);
        }

        let mut outs = Vec::new();
        let mut tokens: Vec<u32> = Vec::with_capacity(n * self.top_k);
        for (e, (tok, slots)) in routing.per_expert.iter().enumerate() {
            if tok.is_empty() {
                continue;
            }
            let tok_t = Tensor::new(tok.as_slice(), dev)?;
            let slot_t = Tensor::new(slots.as_slice(), dev)?;
            let xe = x.index_select(&tok_t, 0)?;
            let w1 = self.gate_up.expert(e, dtype, dev)?;
            let mut u = ops::linear(&xe, &w1, Some(&self.gate_up_bias.get(e)?))?;
            if self.gate_lora.is_some() || self.up_lora.is_some() {
                let zeros = || Tensor::zeros((xe.dim(0)?, inter), dtype, dev);
                let dg = match &self.gate_lora {
                    Some(l) => l.delta(e, &l.lora_input(&xe, slots)?)?,
                    None => zeros()?,
                };
                let du = match &self.up_lora {
                    Some(l) => l.delta(e, &l.lora_input(&xe, slots)?)?,
                    None => zeros()?,
                };
                u = (u + Tensor::cat(&[dg, du], 1)?)?;
            }
            let act = ops::swiglu(&u, self.limit, self.alpha)?;
            let w2 = self.down.expert(e, dtype, dev)?;
            let mut y = ops::linear(&act, &w2, Some(&self.down_bias.get(e)?))?;
            if let Some(l) = &self.down_lora {
                y = (y + l.delta(e, &l.lora_input(&act, slots)?)?)?;
            }
            let we = weights.index_select(&slot_t, 0)?.unsqueeze(1)?;
            outs.push(y.broadcast_mul(&we)?);
            tokens.extend_from_slice(tok);
        }
        let ys = Tensor::cat(&outs, 0)?;
        let tokens = Tensor::from_vec(tokens, ys.dims()[0], dev)?;
        let zeros = Tensor::zeros((n, h), dtype, dev)?;
        Ok(zeros.index_add(&tokens, &ys, 0)?)
    }
}
