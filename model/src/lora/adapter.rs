//! LoRA attachment points (docs/design.md §2–3).
//!
//! Orientation follows nn.Linear: the base matrix is `W [out, in]`, the delta is
//! `scale · B · A` with `A [r, in]`, `B [out, r]`, so `delta(x) = scale · (x Aᵀ) Bᵀ`.
//! Experts carry one (A, B) pair per expert stacked on a leading axis. `A` and `B` are
//! `candle_core::Var`s owned by the trainer: the model only reads them, so gradients of a loss
//! computed through the model reach them via candle's autograd.
//!
//! `dropout` is LoRA dropout (see `dropout.rs`): `None` except inside training micro-steps,
//! where `GptOss::set_lora_dropout` sets it and the LoRA path then reads `lora_input(x)`.

use crate::lora::dropout::LoraDropout;
use crate::lora::targets::LoraTarget;
use anyhow::{bail, Context, Result};
use candle_core::{Tensor, Var};

/// Low-rank delta for a dense projection.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    /// `[r, in]`
    pub a: Var,
    /// `[out, r]`
    pub b: Var,
    pub scale: f64,
    /// Training-time dropout on the LoRA input; `None` runs the fused path.
    pub dropout: Option<LoraDropout>,
}

impl LoraLinear {
    pub fn new(a: Var, b: Var, scale: f64) -> Result<Self> {
        let (r, _) = a.dims2().context("lora_a must be [r, in]")?;
        let (_, rb) = b.dims2().context("lora_b must be [out, r]")?;
        if r != rb {
            bail!(
                "lora rank mismatch: lora_a {:?}, lora_b {:?}",
                a.dims(),
                b.dims()
            );
        }
        Ok(Self {
            a,
            b,
            scale,
            dropout: None,
        })
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// What the low-rank path reads: `x`, or `dropout(x)` (rows numbered 0..) while training.
    pub fn lora_input(&self, x: &Tensor) -> Result<Tensor> {
        match &self.dropout {
            None => Ok(x.clone()),
            Some(d) => d.apply(x, None),
        }
    }

    pub fn in_dim(&self) -> usize {
        self.a.dims()[1]
    }

    pub fn out_dim(&self) -> usize {
        self.b.dims()[0]
    }

    /// `scale · (x Aᵀ) Bᵀ` for `x [..., in]` → `[..., out]`, in `x`'s dtype.
    pub fn delta(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().context("lora input must have a feature axis")?;
        let x2 = x.reshape(((), in_dim))?;
        let a = self.a.as_tensor().to_dtype(x.dtype())?;
        let b = self.b.as_tensor().to_dtype(x.dtype())?;
        let y = x2.matmul(&a.t()?)?.matmul(&b.t()?)?;
        let y = (y * self.scale)?;
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = self.out_dim();
        Ok(y.reshape(out_dims)?)
    }
}

/// Low-rank deltas for the stacked expert projections ("SwitchLinear" in mlx-lm).
#[derive(Debug, Clone)]
pub struct SwitchLora {
    /// `[E, r, in]`
    pub a: Var,
    /// `[E, out, r]`
    pub b: Var,
    pub scale: f64,
    /// Training-time dropout on the gathered LoRA inputs; `None` runs the fused path.
    pub dropout: Option<LoraDropout>,
}

impl SwitchLora {
    pub fn new(a: Var, b: Var, scale: f64) -> Result<Self> {
        let (ea, r, _) = a.dims3().context("expert lora_a must be [E, r, in]")?;
        let (eb, _, rb) = b.dims3().context("expert lora_b must be [E, out, r]")?;
        if ea != eb || r != rb {
            bail!(
                "expert lora shape mismatch: lora_a {:?}, lora_b {:?}",
                a.dims(),
                b.dims()
            );
        }
        Ok(Self {
            a,
            b,
            scale,
            dropout: None,
        })
    }

    pub fn experts(&self) -> usize {
        self.a.dims()[0]
    }

    /// What the low-rank path reads for gathered rows `x [n, in]` whose routing slots
    /// (token · k + j) are `slots`: `x`, or `dropout(x)` while training.
    pub fn lora_input(&self, x: &Tensor, slots: &[u32]) -> Result<Tensor> {
        match &self.dropout {
            None => Ok(x.clone()),
            Some(d) => d.apply(x, Some(slots)),
        }
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[1]
    }

    pub fn in_dim(&self) -> usize {
        self.a.dims()[2]
    }

    pub fn out_dim(&self) -> usize {
        self.b.dims()[1]
    }

    /// Delta of expert `e` for the tokens routed to it: `x [n, in]` → `[n, out]`.
    pub fn delta(&self, e: usize, x: &Tensor) -> Result<Tensor> {
        let a = self.a.as_tensor().get(e)?.to_dtype(x.dtype())?;
        let b = self.b.as_tensor().get(e)?.to_dtype(x.dtype())?;
        let y = x.matmul(&a.t()?)?.matmul(&b.t()?)?;
        Ok((y * self.scale)?)
    }
}

/// What `GptOss::attach_lora` accepts: a dense or a per-expert adapter.
#[derive(Debug, Clone)]
pub enum LoraAdapter {
    Linear(LoraLinear),
    Switch(SwitchLora),
}

impl From<LoraLinear> for LoraAdapter {
    fn from(l: LoraLinear) -> Self {
        LoraAdapter::Linear(l)
    }
}

impl From<SwitchLora> for LoraAdapter {
    fn from(l: SwitchLora) -> Self {
        LoraAdapter::Switch(l)
    }
}

/// A base projection plus its optional adapter.
pub(crate) fn check_linear(target: &LoraTarget, lora: &LoraLinear) -> Result<()> {
    if target.experts.is_some() {
        bail!(
            "{} is an expert projection: attach a SwitchLora",
            target.name
        );
    }
    if lora.in_dim() != target.in_dim || lora.out_dim() != target.out_dim {
        bail!(
            "{}: lora_a {:?} / lora_b {:?} do not fit a [{}, {}] projection",
            target.name,
            lora.a.dims(),
            lora.b.dims(),
            target.out_dim,
            target.in_dim
        );
    }
    Ok(())
}

pub(crate) fn check_switch(target: &LoraTarget, lora: &SwitchLora) -> Result<()> {
    let Some(e) = target.experts else {
        bail!("{} is a dense projection: attach a LoraLinear", target.name);
    };
    if lora.experts() != e || lora.in_dim() != target.in_dim || lora.out_dim() != target.out_dim {
        bail!(
            "{}: lora_a {:?} / lora_b {:?} do not fit {} experts of [{}, {}]",
            target.name,
            lora.a.dims(),
            lora.b.dims(),
            e,
            target.out_dim,
            target.in_dim
        );
    }
    Ok(())
}

/// Where the adapter of one site lives in the model (see `GptOss::lora_slot`).
pub enum LoraSlot<'a> {
    Dense(&'a mut Option<LoraLinear>),
    Experts(&'a mut Option<SwitchLora>),
}

impl LoraSlot<'_> {
    pub fn clear(self) {
        match self {
            LoraSlot::Dense(s) => *s = None,
            LoraSlot::Experts(s) => *s = None,
        }
    }

    pub fn is_set(&self) -> bool {
        match self {
            LoraSlot::Dense(s) => s.is_some(),
            LoraSlot::Experts(s) => s.is_some(),
        }
    }

    /// Sets the dropout of the attached adapter (nothing when the slot is empty).
    pub fn set_dropout(self, d: Option<LoraDropout>) {
        match self {
            LoraSlot::Dense(Some(l)) => l.dropout = d,
            LoraSlot::Experts(Some(l)) => l.dropout = d,
            _ => {}
        }
    }
}
