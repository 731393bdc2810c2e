//! The MoE's expert half behind one dispatch point: token dispatch, the expert projections
//! with their LoRA, SwiGLU and the weighted combine (docs/gpt-oss.md §1.6), plus `dispatch` and
//! `combine` as ops of their own. Routing (router, top-k) stays in `arch/moe.rs`; it hands
//! over, per expert, the routing slots (token·k + j) it serves.

use crate::kernels::cpu;
use crate::kernels::op::CResult;
use crate::kernels::reference::lora_delta;
use crate::kernels::{backend, Backend};
use crate::quant::experts::ExpertMat;
use anyhow::Result;
use candle_core::Tensor;

/// What the low-rank path of an expert adapter reads, given the gathered rows and their
/// routing slots (LoRA dropout while training).
pub type LoraInput<'a> = dyn Fn(&Tensor, &[u32]) -> Result<Tensor> + 'a;

/// One per-expert adapter: `a [E, r, in]`, `b [E, out, r]`, `scale`.
pub struct ExpertLora<'a> {
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub scale: f64,
    /// `None`: the gathered rows themselves (what the fused op requires).
    pub input: Option<Box<LoraInput<'a>>>,
}

impl ExpertLora<'_> {
    pub fn rank(&self) -> usize {
        self.a.dims()[1]
    }

    pub fn out_dim(&self) -> usize {
        self.b.dims()[1]
    }

    /// Expert `e`'s delta for its gathered rows `x [n, in]` with routing slots `slots`.
    fn delta(&self, e: usize, x: &Tensor, slots: &[u32]) -> Result<Tensor> {
        let x = match &self.input {
            Some(f) => f(x, slots)?,
            None => x.clone(),
        };
        Ok(lora_delta(
            &x,
            &self.a.get(e)?,
            &self.b.get(e)?,
            self.scale,
        )?)
    }
}

/// The expert weights of one MoE layer and their adapters.
pub struct Experts<'a> {
    /// `[E, 2I, H]`, gate rows first, then up rows; bias `[E, 2I]`.
    pub gate_up: &'a ExpertMat,
    pub gate_up_bias: &'a Tensor,
    /// `[E, H, I]`; bias `[E, H]`.
    pub down: &'a ExpertMat,
    pub down_bias: &'a Tensor,
    pub gate_lora: Option<ExpertLora<'a>>,
    pub up_lora: Option<ExpertLora<'a>>,
    pub down_lora: Option<ExpertLora<'a>>,
    pub top_k: usize,
    pub limit: f64,
    pub alpha: f64,
}

impl Experts<'_> {
    pub fn intermediate(&self) -> usize {
        self.down.out_in().1
    }

    pub(crate) fn adapters(&self) -> [Option<&ExpertLora<'_>>; 3] {
        [
            self.gate_lora.as_ref(),
            self.up_lora.as_ref(),
            self.down_lora.as_ref(),
        ]
    }
}

/// `Σ_j w[n·k + j] · Expert_{e(n, j)}(x[n])` for `x [N, H]`, routing weights `w [N·k]` and
/// `per_expert[e]`: the routing slots expert e serves, in token order (empty for experts no
/// token chose). Gradients reach `x`, `w` and every adapter.
pub fn moe_experts(
    x: &Tensor,
    weights: &Tensor,
    per_expert: &[Vec<u32>],
    ex: &Experts,
) -> Result<Tensor> {
    match backend(&[x]) {
        Some(Backend::Cpu) if cpu::moe::eligible(ex) => {
            cpu::moe::moe_experts(x, weights, per_expert, ex)
        }
        _ => moe_experts_reference(x, weights, per_expert, ex),
    }
}

/// The reference: per expert that received tokens, gather them, two linears with the LoRA
/// deltas, SwiGLU, weight, and scatter back with one `index_add`.
pub fn moe_experts_reference(
    x: &Tensor,
    weights: &Tensor,
    per_expert: &[Vec<u32>],
    ex: &Experts,
) -> Result<Tensor> {
    let (n, h) = x.dims2()?;
    let (dev, dtype) = (x.device(), x.dtype());
    let inter = ex.intermediate();
    let k = ex.top_k as u32;
    let mut outs = Vec::new();
    let mut tokens: Vec<u32> = Vec::with_capacity(n * ex.top_k);
    for (e, slots) in per_expert.iter().enumerate() {
        if slots.is_empty() {
            continue;
        }
        let tok: Vec<u32> = slots.iter().map(|&s| s / k).collect();
        let tok_t = Tensor::new(tok.as_slice(), dev)?;
        let slot_t = Tensor::new(slots.as_slice(), dev)?;
        let xe = x.index_select(&tok_t, 0)?;
        let w1 = ex.gate_up.expert(e, dtype, dev)?;
        let mut u = crate::kernels::reference::linear(&xe, &w1, Some(&ex.gate_up_bias.get(e)?))?;
        if ex.gate_lora.is_some() || ex.up_lora.is_some() {
            let zeros = || Tensor::zeros((xe.dim(0)?, inter), dtype, dev);
            let dg = match &ex.gate_lora {
                Some(l) => l.delta(e, &xe, slots)?,
                None => zeros()?,
            };
            let du = match &ex.up_lora {
                Some(l) => l.delta(e, &xe, slots)?,
                None => zeros()?,
            };
            u = (u + Tensor::cat(&[dg, du], 1)?)?;
        }
        let act = crate::kernels::swiglu(&u, ex.limit, ex.alpha)?;
        let w2 = ex.down.expert(e, dtype, dev)?;
        let mut y = crate::kernels::reference::linear(&act, &w2, Some(&ex.down_bias.get(e)?))?;
        if let Some(l) = &ex.down_lora {
            y = (y + l.delta(e, &act, slots)?)?;
        }
        let we = weights.index_select(&slot_t, 0)?.unsqueeze(1)?;
        outs.push(y.broadcast_mul(&we)?);
        tokens.extend_from_slice(&tok);
    }
    let ys = Tensor::cat(&outs, 0)?;
    let tokens = Tensor::from_vec(tokens, ys.dims()[0], dev)?;
    let zeros = Tensor::zeros((n, h), dtype, dev)?;
    Ok(zeros.index_add(&tokens, &ys, 0)?)
}

/// `rows[s]`: the expert-order row of routing slot `s`, checking every slot is used once.
pub(crate) fn slot_rows(slots: &[u32], n_slots: usize, what: &str) -> CResult<Vec<u32>> {
    let mut rows = vec![u32::MAX; n_slots];
    for (m, &s) in slots.iter().enumerate() {
        match rows.get_mut(s as usize) {
            Some(r) if *r == u32::MAX => *r = m as u32,
            _ => candle_core::bail!("{what}: slot {s} used twice or out of range"),
        }
    }
    Ok(rows)
}

/// `x [N, H]` → `[M, H]` in expert order: row m is token `slots[m] / k`'s. Every one of the
/// N·k slots must appear exactly once (top-k routing guarantees it).
pub fn dispatch(x: &Tensor, slots: &[u32], k: usize) -> CResult<Tensor> {
    let n = x.dim(0)?;
    if k == 0 || slots.len() != n * k {
        candle_core::bail!("moe dispatch: {n} tokens, k = {k}, {} slots", slots.len());
    }
    let rows = slot_rows(slots, n * k, "moe dispatch")?;
    let x = x.contiguous()?;
    match backend(&[&x]) {
        Some(Backend::Cpu) => cpu::routing::dispatch(&x, slots, rows, k),
        _ => crate::kernels::reference::dispatch(&x, slots, k),
    }
}

/// `y [M, H]` (row m from slot `slots[m]` = token·k + j) and routing weights `w [N·k]` →
/// `[N, H]`. Every slot must be used exactly once (top-k routing guarantees it).
pub fn combine(y: &Tensor, w: &Tensor, slots: &[u32], k: usize) -> CResult<Tensor> {
    let n_slots = w.elem_count();
    if slots.len() != n_slots || y.dim(0)? != n_slots || k == 0 || !n_slots.is_multiple_of(k) {
        candle_core::bail!(
            "moe combine: {} rows, {} slots, {n_slots} weights, k = {k}",
            y.dim(0)?,
            slots.len()
        );
    }
    let rows = slot_rows(slots, n_slots, "moe combine")?;
    let (y, w) = (y.contiguous()?, w.contiguous()?);
    match backend(&[&y, &w]) {
        Some(Backend::Cpu) => cpu::routing::combine(&y, &w, rows, k),
        _ => crate::kernels::reference::combine(&y, &w, slots, k),
    }
}
