//! The adapter folder (docs/design.md §2): `adapters.safetensors` (f32 LoRA factors,
//! nn.Linear orientation, delta = alpha/rank · B·A) + `adapter_config.json`. The one reader and
//! writer of it: training saves and resumes through it, `generate` / `chat` / `serve` / `eval`
//! attach with [`attach_dir`], merge reads its config with [`read_config`].
//!
//! Checks name the culprit: a base other than the one trained on (fingerprint), layers outside
//! the base, a factor whose rank is not the config's rank (the config and the tensors disagree
//! — not "another model"), a shape another model would have, non-finite values.

use crate::arch::GptOss;
use crate::lora::adapter::Lora;
use crate::lora::targets::{LoraTarget, Target};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

pub const WEIGHTS_FILE: &str = "adapters.safetensors";
pub const CONFIG_FILE: &str = "adapter_config.json";

/// The base an adapter was trained on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BaseModelInfo {
    pub model_type: String,
    /// `Config::fingerprint()` of the base; `None` (null) only in hand-made adapters, which then
    /// skip the fingerprint check where the caller allows it (merge).
    pub fingerprint: Option<String>,
    pub num_hidden_layers: usize,
    pub hidden_size: usize,
    pub num_local_experts: usize,
    /// `io::content_digest` of the base's norms and sinks (absent in older adapters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_digest: Option<String>,
}

impl BaseModelInfo {
    /// What `model` is, as an adapter records it.
    pub fn of(model: &GptOss) -> Self {
        let c = &model.cfg;
        Self {
            model_type: c.model_type.clone(),
            fingerprint: Some(c.fingerprint()),
            num_hidden_layers: c.num_hidden_layers,
            hidden_size: c.hidden_size,
            num_local_experts: c.num_local_experts,
            content_digest: model.content_digest.clone(),
        }
    }
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

/// The factors of an adapter folder checked against a base: the sites they belong to and
/// their `(A, B)` tensors (f32), in registry order.
pub struct AdapterTensors {
    pub config: AdapterConfig,
    pub factors: Vec<(LoraTarget, Tensor, Tensor)>,
}

/// Reads `dir` for a base whose adaptable sites are `sites` and whose identity is `base`:
/// the fingerprint must match, `layers` must exist, every listed site must have both factors
/// with the shape the base implies (rank from the config), no other tensor may be present.
pub fn read_adapter(
    dir: &Path,
    sites: &[LoraTarget],
    base: &BaseModelInfo,
    device: &Device,
) -> Result<AdapterTensors> {
    let config = read_config(dir)?;
    if config.base_model.fingerprint.is_none() || config.base_model.fingerprint != base.fingerprint
    {
        let fp = |b: &BaseModelInfo| b.fingerprint.clone().unwrap_or_else(|| "unknown".into());
        bail!(
            "adapter {} was trained on base model {} (fingerprint {}), but this base is {} \
             (fingerprint {}): refusing to apply it to a different model",
            dir.display(),
            describe(&config.base_model),
            fp(&config.base_model),
            describe(base),
            fp(base)
        );
    }
    crate::io::content_digest::check(
        config.base_model.content_digest.as_deref(),
        base.content_digest.as_deref(),
        dir,
    )?;
    let path = dir.join(WEIGHTS_FILE);
    let mut tensors = read_safetensors(&path, device)?;
    let n_layers = base.num_hidden_layers;
    check_layers(&config.layers, n_layers, &dir.join(CONFIG_FILE))?;
    let wanted = config
        .targets
        .iter()
        .map(|t| Target::parse(t))
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("{}: targets", dir.join(CONFIG_FILE).display()))?;
    let mut factors = Vec::new();
    for s in sites.iter().filter(|s| wanted.contains(&s.target)) {
        if s.target.per_layer() && !config.layers.contains(&s.layer) {
            continue;
        }
        let (a_shape, b_shape) = factor_shapes(s, config.rank);
        let mut take = |suffix: &str, want: &[usize]| -> Result<Tensor> {
            let name = format!("{}.{suffix}", s.name);
            let t = tensors
                .remove(&name)
                .with_context(|| format!("{}: missing tensor {name}", path.display()))?;
            check_factor(&path, &name, &t, want, config.rank)?;
            Ok(t.to_dtype(DType::F32)?)
        };
        let a = take("lora_a", &a_shape)?;
        let b = take("lora_b", &b_shape)?;
        factors.push((s.clone(), a, b));
    }
    for t in &wanted {
        if !sites.iter().any(|s| s.target == *t) {
            bail!(
                "{}: LoRA target {t} does not exist in this model",
                dir.display()
            );
        }
    }
    if let Some(extra) = tensors.keys().next() {
        bail!(
            "{}: unexpected tensor {extra} (not a target of adapter_config.json)",
            path.display()
        );
    }
    Ok(AdapterTensors { config, factors })
}

/// Reads the adapter in `dir` for `model` and attaches it, unmerged (what `generate --adapter`
/// and the server do). Returns its config.
pub fn attach_dir(model: &mut GptOss, dir: &Path, device: &Device) -> Result<AdapterConfig> {
    if !dir.is_dir() {
        bail!("adapter {}: not a directory", dir.display());
    }
    let sites = model.lora_targets();
    let ad = read_adapter(dir, &sites, &BaseModelInfo::of(model), device)?;
    let scale = ad.config.scale();
    for (site, a, b) in ad.factors {
        let (a, b) = (Var::from_tensor(&a)?, Var::from_tensor(&b)?);
        model.attach_lora(&site.name, Lora::new(a, b, scale)?)?;
    }
    Ok(ad.config)
}

pub fn describe(b: &BaseModelInfo) -> String {
    format!(
        "{} with {} layers, hidden {}, {} experts",
        b.model_type, b.num_hidden_layers, b.hidden_size, b.num_local_experts
    )
}

/// (A shape, B shape) (docs/design.md §2).
pub fn factor_shapes(s: &LoraTarget, r: usize) -> (Vec<usize>, Vec<usize>) {
    match s.experts {
        Some(e) => (vec![e, r, s.in_dim], vec![e, s.out_dim, r]),
        None => (vec![r, s.in_dim], vec![s.out_dim, r]),
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
    if c.rank == 0 || !c.alpha.is_finite() {
        bail!(
            "{}: rank {} / alpha {} invalid",
            p.display(),
            c.rank,
            c.alpha
        );
    }
    Ok(c)
}

/// Every layer in adapter_config.json's `layers` must exist in the base.
pub fn check_layers(layers: &[usize], n_layers: usize, config: &Path) -> Result<()> {
    if let Some(&bad) = layers.iter().find(|&&l| l >= n_layers) {
        bail!(
            "{}: layers lists layer {bad}, but the base has {n_layers} layers (0..{n_layers})",
            config.display()
        );
    }
    Ok(())
}

/// A factor tensor must have the expected shape and only finite values.
pub fn check_factor(
    file: &Path,
    name: &str,
    t: &Tensor,
    want: &[usize],
    rank: usize,
) -> Result<()> {
    let got = t.dims();
    if got != want {
        // A is [(E,) r, in], B is [(E,) out, r]: when only the rank axis differs, the config
        // and the tensors disagree; otherwise the adapter belongs to another shape of model.
        let differing: Vec<usize> = (0..got.len().min(want.len()))
            .filter(|&i| got[i] != want[i])
            .collect();
        if got.len() == want.len() && differing.len() == 1 && want[differing[0]] == rank {
            bail!(
                "{}: tensor {name} has rank {} but adapter_config.json says rank {rank}",
                file.display(),
                got[differing[0]]
            );
        }
        bail!(
            "{}: tensor {name} has shape {got:?}, expected {want:?} (rank {rank}) for this base",
            file.display()
        );
    }
    let bad = t
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .position(|v| !v.is_finite());
    if let Some(i) = bad {
        bail!(
            "{}: tensor {name} holds a non-finite value (element {i})",
            file.display()
        );
    }
    Ok(())
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
    safetensors::tensor::serialize(views, None).context("serialising safetensors")
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
