//! gpt-oss MoE block (docs/gpt-oss.md §1.6): router (with bias) → top-k → softmax over the k
//! logits; per expert u = W1·t + b1 with gate/up (stored de-interleaved: rows 0..I gate, I..2I up),
//! gate capped above at `limit`, up clamped to ±limit, h = gate·σ(α·gate)·(up + 1),
//! y = W2·h + b2, output Σ weight·y.
//!
//! Only experts that received tokens run: their tokens are gathered (`index_select`), pushed
//! through two contiguous matmuls, weighted and scattered back with one `index_add` (on the
//! CPU: one fused op; see `kernels::moe_experts`). Expert LoRA deltas apply to the same
//! gathered tokens. Everything is differentiable, so gradients reach router and expert LoRA
//! weights; the routing indices themselves carry no gradient.

use crate::arch::linear::Linear;
use crate::error::NonFinite;
use crate::kernels::{self, ExpertLora, Experts, LoraInput};
use crate::lora::adapter::Lora;
use crate::lora::targets::Target;
use crate::quant::experts::ExpertMat;
use anyhow::Result;
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
    /// The expert projections' adapters (the router's sits on `router`).
    pub(crate) lora: ExpertLoras,
}

/// The adapter slots of a layer's expert projections (factors `[E, r, in]`, `[E, out, r]`).
/// `Default` is none attached, so building a `Moe` names no slot.
#[derive(Debug, Clone, Default)]
pub(crate) struct ExpertLoras {
    pub(crate) gate: Option<Lora>,
    pub(crate) up: Option<Lora>,
    pub(crate) down: Option<Lora>,
}

/// Host-side routing: the chosen experts `[N, k]`, and for each expert the flat
/// (token·k + slot) positions it serves in the `[N, k]` weight matrix, in token order.
struct Routing {
    idx: Vec<u32>,
    per_expert: Vec<Vec<u32>>,
}

fn route(logits: &Tensor, k: usize) -> Result<Routing> {
    let (n, e) = logits.dims2()?;
    let flat = logits
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut idx = Vec::with_capacity(n * k);
    let mut per_expert = vec![Vec::new(); e];
    let mut order: Vec<u32> = Vec::with_capacity(e);
    for t in 0..n {
        let row = &flat[t * e..(t + 1) * e];
        if row.iter().any(|v| v.is_nan()) {
            return Err(NonFinite {
                what: format!("router produced NaN logits (token {t})"),
            }
            .into());
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
            per_expert[ex as usize].push((t * k + slot) as u32);
        }
    }
    Ok(Routing { idx, per_expert })
}

/// An attached expert adapter as the kernels take it, with its LoRA dropout (if any) as the
/// low-rank path's input.
fn expert_lora(l: &Option<Lora>) -> Option<ExpertLora<'_>> {
    l.as_ref().map(|l| ExpertLora {
        a: l.a().as_tensor(),
        b: l.b().as_tensor(),
        scale: l.scale(),
        input: l.dropout().map(|_| {
            Box::new(move |x: &Tensor, slots: &[u32]| l.lora_input(x, Some(slots)))
                as Box<LoraInput>
        }),
    })
}

impl Moe {
    pub fn num_experts(&self) -> usize {
        self.gate_up.num_experts()
    }

    pub fn intermediate(&self) -> usize {
        self.down.out_in().1
    }

    /// The adapter attached to one of this layer's MoE targets (router, gate, up, down), to
    /// read; attaching goes through `GptOss::attach_lora` / `lora_slot`.
    pub fn lora(&self, target: Target) -> Option<&Lora> {
        match target {
            Target::Router => self.router.lora(),
            Target::Gate => self.lora.gate.as_ref(),
            Target::Up => self.lora.up.as_ref(),
            Target::Down => self.lora.down.as_ref(),
            _ => None,
        }
    }

    /// `x [N, H]` → `[N, H]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        let dev = x.device();
        let logits = self.router.forward(x)?;
        let routing = route(&logits, self.top_k)?;
        let idx = Tensor::new(routing.idx.as_slice(), dev)?.reshape((n, self.top_k))?;
        let top = logits.gather(&idx, 1)?;
        let weights = kernels::softmax_last_dim(&top)?.flatten_all()?;
        let experts = Experts {
            gate_up: &self.gate_up,
            gate_up_bias: &self.gate_up_bias,
            down: &self.down,
            down_bias: &self.down_bias,
            gate_lora: expert_lora(&self.lora.gate),
            up_lora: expert_lora(&self.lora.up),
            down_lora: expert_lora(&self.lora.down),
            top_k: self.top_k,
            limit: self.limit,
            alpha: self.alpha,
        };
        kernels::moe_experts(x, &weights, &routing.per_expert, &experts)
    }
}
