//! Reading an osstune adapter (docs/design.md §2) for folding: `adapters.safetensors` (f32,
//! nn.Linear orientation, delta = alpha/rank · B·A) + `adapter_config.json`. Tensors stay
//! memory-mapped; deltas are computed one matrix (or one expert) at a time.

use crate::st::{Dtype, Tensors};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use osstune_model::io::adapter::read_config;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A LoRA attachment point: the model's target registry.
pub use osstune_model::Target;

pub use osstune_model::io::adapter::AdapterConfig;

/// Shape a target has in the base: `experts` is `Some(E)` for expert matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetShape {
    pub experts: Option<usize>,
    pub out: usize,
    pub inp: usize,
}

pub struct Adapter {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    pub scale: f32,
    file: PathBuf,
    tensors: Tensors,
    /// (layer, target) pairs that have both lora_a and lora_b.
    present: BTreeSet<(usize, Target)>,
}

impl Adapter {
    pub fn open(dir: &Path) -> Result<Adapter> {
        let config = read_config(dir)?;
        let scale = (config.alpha / config.rank as f64) as f32;
        let file = dir.join("adapters.safetensors");
        if !file.exists() {
            bail!(
                "{}: missing (adapter folder {})",
                file.display(),
                dir.display()
            );
        }
        let tensors = Tensors::open_files(std::slice::from_ref(&file))?;
        let mut a_seen = BTreeSet::new();
        let mut b_seen = BTreeSet::new();
        for name in tensors.names() {
            let (layer, target, is_a) = parse_name(name).with_context(|| {
                format!(
                    "{}: tensor {name} is not an osstune LoRA tensor \
                     (model.layers.N.<module>.lora_a|lora_b, or lm_head.lora_a|lora_b)",
                    file.display()
                )
            })?;
            let info = tensors.info(name)?;
            if info.dtype != Dtype::F32 {
                bail!(
                    "{}: tensor {name} is {}, adapters are F32",
                    file.display(),
                    info.dtype.name()
                );
            }
            if is_a { &mut a_seen } else { &mut b_seen }.insert((layer, target));
        }
        if let Some(x) = a_seen.symmetric_difference(&b_seen).next() {
            bail!(
                "{}: {} has only one of lora_a / lora_b",
                file.display(),
                x.1.path(x.0)
            );
        }
        Ok(Adapter {
            dir: dir.to_path_buf(),
            config,
            scale,
            file,
            tensors,
            present: a_seen,
        })
    }

    pub fn has(&self, layer: usize, t: Target) -> bool {
        self.present.contains(&(layer, t))
    }

    pub fn targets(&self) -> impl Iterator<Item = &(usize, Target)> {
        self.present.iter()
    }

    /// Checks the adapter against the base: layer range and every A/B shape. `shape_of`
    /// gives a target's shape in the base (None if the base has no such module).
    pub fn check_shapes(
        &self,
        layers: usize,
        shape_of: impl Fn(usize, Target) -> Result<TargetShape>,
    ) -> Result<()> {
        let r = self.config.rank;
        for &(l, t) in &self.present {
            let (na, nb) = names(l, t);
            if t.per_layer() && l >= layers {
                bail!(
                    "{}: {na} is for layer {l}, the base has {layers} layers",
                    self.file.display()
                );
            }
            let s = shape_of(l, t)?;
            let (want_a, want_b) = match s.experts {
                Some(e) => (vec![e, r, s.inp], vec![e, s.out, r]),
                None => (vec![r, s.inp], vec![s.out, r]),
            };
            for (n, want) in [(&na, want_a), (&nb, want_b)] {
                let got = &self.tensors.info(n)?.shape;
                if *got != want {
                    bail!(
                        "{}: {}",
                        self.file.display(),
                        shape_mismatch(n, got, &want, r)
                    );
                }
            }
        }
        self.check_finite()
    }

    /// Every adapter value must be finite: a NaN would poison every merged weight it touches.
    pub fn check_finite(&self) -> Result<()> {
        for &(l, t) in &self.present {
            let (na, nb) = names(l, t);
            for n in [&na, &nb] {
                if let Some(i) = self.tensors.f32(n)?.iter().position(|v| !v.is_finite()) {
                    bail!(
                        "{}: tensor {n} holds a non-finite value (element {i})",
                        self.file.display()
                    );
                }
            }
        }
        Ok(())
    }

    /// scale·B·A for a plain linear target, [out, in]; None if not adapted.
    pub fn linear_delta(&self, layer: usize, t: Target) -> Result<Option<Vec<f32>>> {
        if !self.has(layer, t) {
            return Ok(None);
        }
        let (na, nb) = names(layer, t);
        let a = self.tensors.f32(&na)?;
        let b = self.tensors.f32(&nb)?;
        self.ba(&na, &b, &a).map(Some)
    }

    /// scale·B_e·A_e for expert `e` of an expert target, [out, in]; None if not adapted.
    pub fn expert_delta(&self, layer: usize, t: Target, e: usize) -> Result<Option<Vec<f32>>> {
        if !self.has(layer, t) {
            return Ok(None);
        }
        let (na, nb) = names(layer, t);
        let a = self.tensors.f32_slice0(&na, e)?;
        let b = self.tensors.f32_slice0(&nb, e)?;
        self.ba(&na, &b, &a).map(Some)
    }

    fn ba(&self, name: &str, b: &[f32], a: &[f32]) -> Result<Vec<f32>> {
        let r = self.config.rank;
        let (out, inp) = (b.len() / r, a.len() / r);
        for (x, which) in a
            .iter()
            .zip(std::iter::repeat("lora_a"))
            .chain(b.iter().zip(std::iter::repeat("lora_b")))
        {
            if !x.is_finite() {
                bail!(
                    "{}: {name} ({which}) holds a non-finite value",
                    self.file.display()
                );
            }
        }
        let bt = Tensor::from_slice(b, (out, r), &Device::Cpu)?;
        let at = Tensor::from_slice(a, (r, inp), &Device::Cpu)?;
        let d = (bt.matmul(&at)? * self.scale as f64)?;
        Ok(d.flatten_all()?.to_vec1::<f32>()?)
    }
}

fn names(layer: usize, t: Target) -> (String, String) {
    let m = t.path(layer);
    (format!("{m}.lora_a"), format!("{m}.lora_b"))
}

/// Why a factor's shape is not the one the base needs: the rank (when only the rank axis
/// differs, the adapter's config and tensors disagree) or the model.
fn shape_mismatch(name: &str, got: &[usize], want: &[usize], r: usize) -> String {
    // A is [(E,) r, in] and B is [(E,) out, r]: the rank axis is the one that differs.
    let differing: Vec<usize> = (0..want.len().min(got.len()))
        .filter(|&i| got[i] != want[i])
        .collect();
    if got.len() == want.len() && differing.len() == 1 && want[differing[0]] == r {
        format!(
            "{name} has rank {} but adapter_config.json says rank {r}: the config and the              tensors disagree",
            got[differing[0]]
        )
    } else {
        format!(
            "{name} has shape {got:?}, the base needs {want:?} (rank {r}): this adapter was              made for another model"
        )
    }
}

/// `{target path}.lora_{a,b}` → (layer, target, is_a); model-level targets have layer 0.
fn parse_name(name: &str) -> Option<(usize, Target, bool)> {
    let (path, leaf) = name.rsplit_once('.')?;
    let is_a = match leaf {
        "lora_a" => true,
        "lora_b" => false,
        _ => return None,
    };
    let (t, layer) = Target::from_path(path)?;
    Some((layer, t, is_a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert_eq!(
            parse_name("model.layers.3.mlp.experts.up_proj.lora_b"),
            Some((3, Target::Up, false))
        );
        assert_eq!(
            parse_name("model.layers.0.self_attn.q_proj.lora_a"),
            Some((0, Target::Q, true))
        );
        assert_eq!(
            parse_name("lm_head.lora_a"),
            Some((0, Target::LmHead, true))
        );
        assert_eq!(parse_name("model.layers.0.self_attn.q_proj.weight"), None);
        assert_eq!(parse_name("model.layers.x.mlp.router.lora_a"), None);
        assert_eq!(
            parse_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
            None
        );
    }
}
