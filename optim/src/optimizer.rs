//! The trainer-facing optimizer: named parameters routed to Muon or AdamW, one `step`.

use std::collections::HashSet;

use anyhow::{bail, ensure, Result};
use candle_core::{backprop::GradStore, DType, Tensor, Var};

use crate::adamw::{self, AdamWState};
use crate::config::OptimConfig;
use crate::muon;
use crate::muon_host::{self, HostStep};

/// Elements of Muon parameters updated on the host at once (each holds 4 host copies).
const HOST_BATCH: usize = 1 << 24;

/// Which optimizer a parameter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Muon,
    AdamW,
}

impl Group {
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Muon => "muon",
            Group::AdamW => "adamw",
        }
    }
}

pub(crate) enum ParamState {
    Muon { momentum: Tensor },
    AdamW(AdamWState),
}

pub(crate) struct Param {
    pub name: String,
    pub var: Var,
    pub state: ParamState,
}

impl Param {
    pub fn group(&self) -> Group {
        match self.state {
            ParamState::Muon { .. } => Group::Muon,
            ParamState::AdamW(_) => Group::AdamW,
        }
    }
}

/// Muon for matrices (and stacks of them), AdamW for the rest.
pub struct Optimizer {
    pub(crate) cfg: OptimConfig,
    pub(crate) params: Vec<Param>,
    /// Number of `step` calls so far.
    pub(crate) steps: u64,
}

impl Optimizer {
    /// Routes each `(name, var)`: ndim >= 2 → Muon unless the name contains an entry of
    /// `cfg.adamw_params`; everything else → AdamW. State (f32, on each var's device) is
    /// allocated here, zero-initialised, so its memory is known before the first step.
    pub fn new(params: Vec<(String, Var)>, cfg: &OptimConfig) -> Result<Self> {
        cfg.validate()?;
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(params.len());
        for (name, var) in params {
            ensure!(
                seen.insert(name.clone()),
                "parameter {name} is listed twice"
            );
            ensure!(
                var.dtype().is_float(),
                "parameter {name} has dtype {:?}; the optimizers need a float dtype",
                var.dtype()
            );
            let to_adamw = cfg.adamw_params.iter().any(|p| name.contains(p.as_str()));
            let zeros = || Tensor::zeros(var.shape(), DType::F32, var.device());
            let state = if var.rank() >= 2 && !to_adamw {
                ParamState::Muon { momentum: zeros()? }
            } else {
                ParamState::AdamW(AdamWState {
                    m: zeros()?,
                    v: zeros()?,
                    t: 0,
                })
            };
            out.push(Param { name, var, state });
        }
        Ok(Self {
            cfg: cfg.clone(),
            params: out,
            steps: 0,
        })
    }

    /// One update of every parameter that has a gradient in `grads` (others are skipped and
    /// their state left untouched, as torch does). Group learning rates are the configured peak
    /// lrs times `lr_multiplier` (the schedule's value for this step).
    pub fn step(&mut self, grads: &GradStore, lr_multiplier: f64) -> Result<()> {
        if !lr_multiplier.is_finite() || lr_multiplier < 0.0 {
            bail!("learning-rate multiplier must be finite and >= 0, got {lr_multiplier}");
        }
        let muon_lr = self.cfg.muon.lr * lr_multiplier;
        let adamw_lr = self.cfg.adamw.lr * lr_multiplier;
        // CPU f32 Muon parameters: read out, updated together on the host, written back, in
        // batches of at most `HOST_BATCH` elements so the host copies stay bounded.
        let mut batch: Vec<(usize, HostStep)> = Vec::new();
        let mut batch_elems = 0;
        for i in 0..self.params.len() {
            let p = &mut self.params[i];
            let Some(grad) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            match &mut p.state {
                ParamState::Muon { momentum } if muon_host::eligible(&p.var, &self.cfg.muon) => {
                    batch.push((i, HostStep::read(&p.name, &p.var, grad, momentum)?));
                    batch_elems += p.var.elem_count();
                    if batch_elems >= HOST_BATCH {
                        self.run_host(std::mem::take(&mut batch), muon_lr)?;
                        batch_elems = 0;
                    }
                }
                ParamState::Muon { momentum } => {
                    muon::step(&p.name, &p.var, grad, momentum, &self.cfg.muon, muon_lr)?
                }
                ParamState::AdamW(s) => {
                    adamw::step(&p.name, &p.var, grad, s, &self.cfg.adamw, adamw_lr)?
                }
            }
        }
        self.run_host(batch, muon_lr)?;
        self.steps += 1;
        Ok(())
    }

    /// Host Muon steps, in parallel, each written back into its parameter.
    fn run_host(&mut self, batch: Vec<(usize, HostStep)>, lr: f64) -> Result<()> {
        let (index, mut steps): (Vec<usize>, Vec<HostStep>) = batch.into_iter().unzip();
        muon_host::run_all(&mut steps, &self.cfg.muon, lr);
        for (i, s) in index.into_iter().zip(steps) {
            let p = &mut self.params[i];
            if let ParamState::Muon { momentum } = &mut p.state {
                s.write(&p.var, momentum)?;
            }
        }
        Ok(())
    }

    /// Number of completed `step` calls (restored by `load`).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn config(&self) -> &OptimConfig {
        &self.cfg
    }

    /// `(name, group, element count)` of every parameter, in construction order.
    pub fn groups(&self) -> Vec<(&str, Group, usize)> {
        self.params
            .iter()
            .map(|p| (p.name.as_str(), p.group(), p.var.elem_count()))
            .collect()
    }

    /// Bytes of optimizer state (f32): 1 buffer per Muon element, 2 per AdamW element.
    pub fn state_bytes(&self) -> usize {
        self.params
            .iter()
            .map(|p| match p.group() {
                Group::Muon => 4 * p.var.elem_count(),
                Group::AdamW => 8 * p.var.elem_count(),
            })
            .sum()
    }
}
