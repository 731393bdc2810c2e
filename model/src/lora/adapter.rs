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

/// The low-rank adapter of one site (a [`LoraTarget`]), dense or per-expert.
///
/// Storage: a dense site holds `A [r, in]` and `B [out, r]`, with no experts axis; an expert
/// site holds one pair per expert on a leading axis, `A [E, r, in]` and `B [E, out, r]`.
/// Dense factors get no `E = 1` axis because every kernel then takes the Vars as they are:
/// the dense ones (`kernels::lora_linear`, the lm_head's loss) multiply 2-D factors, the
/// expert ones index the stacked 3-D factors by expert, and neither reshapes or copies an
/// adapter per forward. [`Lora::experts`] tells the two apart.
#[derive(Debug, Clone)]
pub struct Lora {
    /// `[r, in]` or `[E, r, in]`
    a: Var,
    /// `[out, r]` or `[E, out, r]`
    b: Var,
    scale: f64,
    /// Training-time dropout on the LoRA input; `None` runs the fused paths.
    dropout: Option<LoraDropout>,
}

impl Lora {
    /// An adapter from its factors: both 2-D (`[r, in]`, `[out, r]`) for a dense site, or both
    /// 3-D (`[E, r, in]`, `[E, out, r]`) for an expert site; the delta is scaled by `scale`.
    pub fn new(a: Var, b: Var, scale: f64) -> Result<Self> {
        let fits = match (a.dims(), b.dims()) {
            (&[r, _], &[_, rb]) => r == rb,
            (&[e, r, _], &[eb, _, rb]) => e == eb && r == rb,
            _ => false,
        };
        if !fits {
            bail!(
                "lora factors must be [r, in] and [out, r] (dense) or [E, r, in] and \
                 [E, out, r] (experts) of one rank: lora_a {:?}, lora_b {:?}",
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

    /// `A`: `[r, in]`, or `[E, r, in]` for experts.
    pub fn a(&self) -> &Var {
        &self.a
    }

    /// `B`: `[out, r]`, or `[E, out, r]` for experts.
    pub fn b(&self) -> &Var {
        &self.b
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// `Some(E)` for a per-expert adapter, `None` for a dense one.
    pub fn experts(&self) -> Option<usize> {
        let d = self.a.dims();
        (d.len() == 3).then(|| d[0])
    }

    fn lead(&self) -> usize {
        self.a.rank() - 2
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[self.lead()]
    }

    pub fn in_dim(&self) -> usize {
        self.a.dims()[self.lead() + 1]
    }

    pub fn out_dim(&self) -> usize {
        self.b.dims()[self.lead()]
    }

    pub fn dropout(&self) -> Option<LoraDropout> {
        self.dropout
    }

    /// Sets (or with `None` clears) the dropout on the LoRA input; see `lora::dropout`.
    pub fn set_dropout(&mut self, d: Option<LoraDropout>) {
        self.dropout = d;
    }

    /// What the low-rank path reads for `x [..., in]`: `x`, or `dropout(x)` while training.
    /// Rows are numbered 0.. (a dense projection's flattened input) or by `rows` (gathered
    /// expert rows: their routing slots token · k + j).
    pub fn lora_input(&self, x: &Tensor, rows: Option<&[u32]>) -> Result<Tensor> {
        match &self.dropout {
            None => Ok(x.clone()),
            Some(d) => d.apply(x, rows),
        }
    }

    /// `scale · (x Aᵀ) Bᵀ` for `x [..., in]` → `[..., out]`, in `x`'s dtype: the dense
    /// adapter's (`expert` = `None`), or expert `e`'s for the rows routed to it (`Some(e)`).
    pub fn delta(&self, x: &Tensor, expert: Option<usize>) -> Result<Tensor> {
        let (a, b) = match (expert, self.experts()) {
            (None, None) => (self.a.as_tensor().clone(), self.b.as_tensor().clone()),
            (Some(e), Some(_)) => (self.a.as_tensor().get(e)?, self.b.as_tensor().get(e)?),
            (None, Some(_)) => bail!("lora delta: an expert adapter needs the expert"),
            (Some(_), None) => bail!("lora delta: a dense adapter has no experts"),
        };
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().context("lora input must have a feature axis")?;
        let x2 = x.reshape(((), in_dim))?;
        let a = a.to_dtype(x.dtype())?;
        let b = b.to_dtype(x.dtype())?;
        let y = x2.matmul(&a.t()?)?.matmul(&b.t()?)?;
        let y = (y * self.scale)?;
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = self.out_dim();
        Ok(y.reshape(out_dims)?)
    }

    /// Checks the factors fit `site` (its kind, experts and matrix shape).
    pub(crate) fn check(&self, site: &LoraTarget) -> Result<()> {
        match (site.experts, self.experts()) {
            (Some(_), None) => bail!(
                "{} is an expert projection: its adapter needs factors with an experts axis \
                 ([E, r, in], [E, out, r])",
                site.name
            ),
            (None, Some(_)) => bail!(
                "{} is a dense projection: its adapter needs 2-D factors ([r, in], [out, r])",
                site.name
            ),
            _ => {}
        }
        if self.experts() != site.experts
            || self.in_dim() != site.in_dim
            || self.out_dim() != site.out_dim
        {
            let experts = site
                .experts
                .map_or(String::new(), |e| format!("{e} experts of "));
            bail!(
                "{}: lora_a {:?} / lora_b {:?} do not fit {experts}a [{}, {}] projection",
                site.name,
                self.a.dims(),
                self.b.dims(),
                site.out_dim,
                site.in_dim
            );
        }
        Ok(())
    }
}
