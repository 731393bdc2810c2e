//! LoRA adapters: creation, `adapters.safetensors` + `adapter_config.json` (design.md §2).
//!
//! Each adapted projection W [out, in] gets delta = scale · B · A with A [r, in], B [out, r],
//! scale = alpha / rank. Experts carry per-expert factors A [E, r, in], B [E, out, r].
//! Initialisation (as mlx-lm and PEFT's Linear LoRA): A ~ U(−1/√in, +1/√in) from the run's
//! seed, B = 0 — so the adapted model starts exactly equal to the base, and the first step's
//! gradient reaches B only (∂L/∂A ∝ Bᵀ = 0). All factors are f32 whatever the base dtype.

use crate::config::TrainConfig;
use crate::rng::{SplitMix64, PURPOSE_INIT};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use osstune_model::io::adapter::read_adapter;
use osstune_model::{LoraTarget, Target};
use std::path::Path;

pub use osstune_model::io::adapter::{
    factor_shapes, read_config, read_safetensors, safetensors_bytes, AdapterConfig, BaseModelInfo,
    CONFIG_FILE, WEIGHTS_FILE,
};

/// One adaptable projection of the base model (a site of `osstune_model`'s target registry).
pub type TargetShape = LoraTarget;

/// A pair of LoRA factors.
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub shape: TargetShape,
    pub a: Var,
    pub b: Var,
}

/// The trainable adapter set, in registry order (see `select_targets`).
#[derive(Debug, Clone)]
pub struct Adapters {
    pub config: AdapterConfig,
    pub pairs: Vec<LoraPair>,
}

/// Selects the targets named in the config: per-layer targets in the last `last_layers`
/// layers (0 = all), model-level targets (`lm_head`) whenever named. Registry order: layer by
/// layer, then the model-level ones.
pub fn select_targets(
    all: &[TargetShape],
    targets: &[String],
    last_layers: usize,
    num_layers: usize,
) -> Result<Vec<TargetShape>> {
    let first = if last_layers == 0 || last_layers >= num_layers {
        0
    } else {
        num_layers - last_layers
    };
    let wanted = targets
        .iter()
        .map(|t| Target::parse(t))
        .collect::<Result<Vec<_>>>()?;
    for t in &wanted {
        if !all.iter().any(|s| s.target == *t) {
            bail!("LoRA target {t} does not exist in this model");
        }
    }
    let mut sel: Vec<TargetShape> = all
        .iter()
        .filter(|s| wanted.contains(&s.target) && (!s.target.per_layer() || s.layer >= first))
        .cloned()
        .collect();
    sel.sort_by_key(|s| (!s.target.per_layer(), s.layer, s.target));
    Ok(sel)
}

impl Adapters {
    /// Fresh adapters: A ~ U(±1/√in) (seeded per tensor), B = 0.
    pub fn init(
        shapes: Vec<TargetShape>,
        cfg: &TrainConfig,
        base: BaseModelInfo,
        device: &Device,
    ) -> Result<Self> {
        let r = cfg.lora.rank;
        let mut pairs = Vec::with_capacity(shapes.len());
        for (i, s) in shapes.into_iter().enumerate() {
            let (a_shape, b_shape) = factor_shapes(&s, r);
            let n: usize = a_shape.iter().product();
            let bound = 1.0 / (s.in_dim as f32).sqrt();
            let mut rng = SplitMix64::derive(cfg.train.seed, PURPOSE_INIT, i as u64);
            let data: Vec<f32> = (0..n)
                .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
                .collect();
            let a = Var::from_tensor(&Tensor::from_vec(data, a_shape, device)?)?;
            let b = Var::from_tensor(&Tensor::zeros(b_shape, DType::F32, device)?)?;
            pairs.push(LoraPair { shape: s, a, b });
        }
        let layers = layer_list(&pairs);
        Ok(Self {
            config: AdapterConfig {
                format: "osstune-lora".into(),
                version: 1,
                rank: r,
                alpha: cfg.lora.alpha,
                dropout: cfg.lora.dropout,
                targets: cfg.lora.targets.clone(),
                layers,
                base_model: base,
            },
            pairs,
        })
    }

    pub fn scale(&self) -> f64 {
        self.config.scale()
    }

    pub fn vars(&self) -> Vec<Var> {
        self.pairs
            .iter()
            .flat_map(|p| [p.a.clone(), p.b.clone()])
            .collect()
    }

    /// (tensor name, var) in save order.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.pairs
            .iter()
            .flat_map(|p| {
                [
                    (format!("{}.lora_a", p.shape.name), p.a.clone()),
                    (format!("{}.lora_b", p.shape.name), p.b.clone()),
                ]
            })
            .collect()
    }

    pub fn num_params(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// Writes `adapters.safetensors` and `adapter_config.json` into `dir` (atomically each).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tensors: Vec<(String, Tensor)> = self
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        let bytes = safetensors_bytes(&tensors)?;
        crate::checkpoint::write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
        crate::checkpoint::write_atomic(
            &dir.join(CONFIG_FILE),
            &serde_json::to_vec_pretty(&self.config)?,
        )
    }

    /// Loads adapters saved by `save`, checked against the base (see
    /// `osstune_model::io::adapter::read_adapter`).
    pub fn load(
        dir: &Path,
        all: &[TargetShape],
        base: &BaseModelInfo,
        device: &Device,
    ) -> Result<Self> {
        let ad = read_adapter(dir, all, base, device)?;
        let pairs = ad
            .factors
            .into_iter()
            .map(|(shape, a, b)| {
                Ok(LoraPair {
                    shape,
                    a: Var::from_tensor(&a)?,
                    b: Var::from_tensor(&b)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: ad.config,
            pairs,
        })
    }

    /// Copies values from another adapter set with the same layout (resume).
    pub fn assign_from(&self, other: &Adapters) -> Result<()> {
        if self.pairs.len() != other.pairs.len() {
            bail!("adapter layouts differ");
        }
        for (p, q) in self.pairs.iter().zip(&other.pairs) {
            if p.shape.name != q.shape.name {
                bail!("adapter layouts differ at {}", p.shape.name);
            }
            p.a.set(q.a.as_tensor())?;
            p.b.set(q.b.as_tensor())?;
        }
        Ok(())
    }
}

fn layer_list(pairs: &[LoraPair]) -> Vec<usize> {
    let mut l: Vec<usize> = pairs
        .iter()
        .filter(|p| p.shape.target.per_layer())
        .map(|p| p.shape.layer)
        .collect();
    l.sort();
    l.dedup();
    l
}
