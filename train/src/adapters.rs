//! LoRA adapters: creation, `adapters.safetensors` + `adapter_config.json` (design.md §2).
//!
//! Each adapted projection W [out, in] gets delta = scale · B · A with A [r, in], B [out, r],
//! scale = alpha / rank. Experts carry per-expert factors A [E, r, in], B [E, out, r].
//! Initialisation (as mlx-lm and PEFT's Linear LoRA): A ~ U(−1/√in, +1/√in) from the run's
//! seed, B = 0 — so the adapted model starts exactly equal to the base, and the first step's
//! gradient reaches B only (∂L/∂A ∝ Bᵀ = 0). All factors are f32 whatever the base dtype.

use crate::config::{TrainConfig, ALL_TARGETS};
use crate::rng::{SplitMix64, PURPOSE_INIT};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

pub const WEIGHTS_FILE: &str = "adapters.safetensors";
pub const CONFIG_FILE: &str = "adapter_config.json";

/// One adaptable projection of the base model (from `GptOss::lora_targets()`).
#[derive(Debug, Clone, PartialEq)]
pub struct TargetShape {
    /// Module path, e.g. `model.layers.3.self_attn.q_proj`, `model.layers.3.mlp.experts.down_proj`.
    pub name: String,
    pub layer: usize,
    /// One of `config::ALL_TARGETS`.
    pub target: String,
    pub d_in: usize,
    pub d_out: usize,
    /// `Some(E)` for per-expert (SwitchLinear) factors.
    pub experts: Option<usize>,
}

/// A pair of LoRA factors.
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub shape: TargetShape,
    pub a: Var,
    pub b: Var,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BaseModelInfo {
    pub model_type: String,
    pub fingerprint: String,
    pub num_hidden_layers: usize,
    pub hidden_size: usize,
    pub num_local_experts: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdapterConfig {
    pub format: String,
    pub version: u32,
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
    pub layers: Vec<usize>,
    pub base_model: BaseModelInfo,
}

impl AdapterConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// The trainable adapter set, in a fixed order (layer, then `ALL_TARGETS` order).
#[derive(Debug, Clone)]
pub struct Adapters {
    pub config: AdapterConfig,
    pub pairs: Vec<LoraPair>,
}

/// Selects the targets named in the config, in the last `layers` layers (0 = all).
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
    let order = |t: &str| {
        ALL_TARGETS
            .iter()
            .position(|x| *x == t)
            .unwrap_or(usize::MAX)
    };
    let mut sel: Vec<TargetShape> = all
        .iter()
        .filter(|t| t.layer >= first && targets.contains(&t.target))
        .cloned()
        .collect();
    for t in targets {
        if !all.iter().any(|s| &s.target == t) {
            bail!("LoRA target {t:?} does not exist in this model");
        }
    }
    sel.sort_by_key(|t| (t.layer, order(&t.target)));
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
            let bound = 1.0 / (s.d_in as f32).sqrt();
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

    /// Loads adapters saved by `save`, checking them against the base model: the fingerprint
    /// must match and every tensor must have the shape the base implies.
    pub fn load(
        dir: &Path,
        all: &[TargetShape],
        base: &BaseModelInfo,
        device: &Device,
    ) -> Result<Self> {
        let config = read_config(dir)?;
        if config.base_model.fingerprint != base.fingerprint {
            bail!(
                "adapter {} was trained on base model {} (fingerprint {}), but this base is {} \
                 (fingerprint {}): refusing to apply it to a different model",
                dir.display(),
                describe(&config.base_model),
                config.base_model.fingerprint,
                describe(base),
                base.fingerprint
            );
        }
        let path = dir.join(WEIGHTS_FILE);
        let mut tensors = read_safetensors(&path, device)?;
        let mut pairs = Vec::new();
        let n_layers = base.num_hidden_layers;
        crate::adapter_checks::check_layers(&config.layers, n_layers, &dir.join(CONFIG_FILE))?;
        let shapes = select_targets(all, &config.targets, 0, n_layers)?
            .into_iter()
            .filter(|s| config.layers.contains(&s.layer));
        for s in shapes {
            let (a_shape, b_shape) = factor_shapes(&s, config.rank);
            let mut take = |suffix: &str, want: &[usize]| -> Result<Var> {
                let name = format!("{}.{suffix}", s.name);
                let t = tensors
                    .remove(&name)
                    .with_context(|| format!("{}: missing tensor {name}", path.display()))?;
                crate::adapter_checks::check_factor(&path, &name, &t, want, config.rank)?;
                Ok(Var::from_tensor(&t.to_dtype(DType::F32)?)?)
            };
            let a = take("lora_a", &a_shape)?;
            let b = take("lora_b", &b_shape)?;
            pairs.push(LoraPair { shape: s, a, b });
        }
        if let Some(extra) = tensors.keys().next() {
            bail!(
                "{}: unexpected tensor {extra} (not a target of adapter_config.json)",
                path.display()
            );
        }
        Ok(Self { config, pairs })
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

fn describe(b: &BaseModelInfo) -> String {
    format!(
        "{} with {} layers, hidden {}, {} experts",
        b.model_type, b.num_hidden_layers, b.hidden_size, b.num_local_experts
    )
}

fn layer_list(pairs: &[LoraPair]) -> Vec<usize> {
    let mut l: Vec<usize> = pairs.iter().map(|p| p.shape.layer).collect();
    l.sort();
    l.dedup();
    l
}

/// (A shape, B shape) per design.md §2.
pub fn factor_shapes(s: &TargetShape, r: usize) -> (Vec<usize>, Vec<usize>) {
    match s.experts {
        Some(e) => (vec![e, r, s.d_in], vec![e, s.d_out, r]),
        None => (vec![r, s.d_in], vec![s.d_out, r]),
    }
}

pub fn read_config(dir: &Path) -> Result<AdapterConfig> {
    let p = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let c: AdapterConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    if c.format != "osstune-lora" {
        bail!(
            "{}: format is {:?}, expected \"osstune-lora\" (use `osstune adapters import` for PEFT/mlx-lm adapters)",
            p.display(),
            c.format
        );
    }
    if c.version != 1 {
        bail!("{}: unsupported version {}", p.display(), c.version);
    }
    if c.rank == 0 {
        bail!("{}: rank 0", p.display());
    }
    Ok(c)
}

/// Serialises f32 tensors to safetensors bytes (names kept in the given order's set).
pub fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::with_capacity(tensors.len());
    for (n, t) in tensors {
        let v: Vec<f32> = t
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()
            .with_context(|| format!("reading tensor {n}"))?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        data.push((n.clone(), bytes, t.dims().to_vec()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, b, s)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .with_context(|| format!("tensor {n}"))
        })
        .collect::<Result<_>>()?;
    safetensors::tensor::serialize(views, &None).context("serialising safetensors")
}

/// Reads every tensor of a safetensors file (f32, bf16 or f16 → kept in its dtype).
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let raw = view.data();
        let t = match view.dtype() {
            safetensors::Dtype::F32 => {
                let v: Vec<f32> = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                Tensor::from_vec(v, shape, device)?
            }
            safetensors::Dtype::BF16 => {
                let v: Vec<f32> = raw
                    .chunks_exact(2)
                    .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                    .collect();
                Tensor::from_vec(v, shape, device)?
            }
            safetensors::Dtype::F16 => {
                let v: Vec<f32> = raw
                    .chunks_exact(2)
                    .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                    .collect();
                Tensor::from_vec(v, shape, device)?
            }
            d => bail!(
                "{}: tensor {name} has unsupported dtype {d:?}",
                path.display()
            ),
        };
        out.insert(name, t);
    }
    Ok(out)
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as i32;
    let man = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if man == 0 {
            sign
        } else {
            // Subnormal: value = man · 2^-24.
            let v = man as f32 * (2f32).powi(-24);
            return if sign != 0 { -v } else { v };
        }
    } else if exp == 31 {
        sign | 0x7f80_0000 | (man << 13)
    } else {
        sign | (((exp - 15 + 127) as u32) << 23) | (man << 13)
    };
    f32::from_bits(bits)
}
