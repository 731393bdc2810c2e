//! The LoRA target registry: every projection of gpt-oss that osstune can adapt, as data.
//!
//! One row per target says where it lives (module path), whether it is one matrix or a stack
//! of per-expert matrices, its shape for a given [`Config`], and its names in the other
//! formats. Everything that handles adapters — attaching, clearing, dropout, training,
//! export to PEFT / mlx-lm, the memory plan, merging — walks this table instead of keeping a
//! list of its own, so adding a target is one row here plus the slot that holds it in the
//! model (`GptOss::lora_slot`) and, if PEFT names it differently, its export mapping.
//!
//! Names follow mlx-lm's `tuner/utils.py` (`keys` as module paths) and PEFT's
//! `target_modules` / `target_parameters` (https://huggingface.co/docs/peft).

use crate::config::Config;
use anyhow::{bail, Result};
use std::fmt;

/// An adaptable projection (in creation and save order within a layer; model-level targets
/// after all layers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Router,
    Gate,
    Up,
    Down,
    LmHead,
}

/// How PEFT (https://huggingface.co/docs/peft) holds a target's LoRA on transformers'
/// `GptOssForCausalLM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peft {
    /// A `lora.Linear` on an nn.Linear module, listed in `target_modules` under this name;
    /// tensors `base_model.model.{path}.lora_A.weight` / `lora_B.weight` in our orientation.
    Module(&'static str),
    /// A `ParamWrapper` on a parameter, listed in `target_parameters` under this name; same
    /// tensor names and orientation as a module.
    Parameter(&'static str),
    /// One LoRA on a 3-D expert parameter (listed in `target_parameters`); gate and up share
    /// PEFT's fused `gate_up_proj` (the layout is in osstune-train's `export`).
    Experts(&'static str),
}

/// One row of the registry.
struct Row {
    target: Target,
    /// The name in configs and `adapter_config.json` (`lora.targets`).
    name: &'static str,
    /// Module path: inside `model.layers.{L}.` for per-layer targets, else from the root.
    module: &'static str,
    per_layer: bool,
    experts: bool,
    /// On in the default config (the recipe's "all targets including the router").
    default: bool,
    peft: Peft,
    /// mlx-lm can load it: its `linear_to_lora_layers` adapts modules inside the last N
    /// decoder layers only.
    mlx: bool,
}

const fn row(
    target: Target,
    name: &'static str,
    module: &'static str,
    per_layer: bool,
    experts: bool,
    default: bool,
    peft: Peft,
) -> Row {
    Row {
        target,
        name,
        module,
        per_layer,
        experts,
        default,
        peft,
        mlx: per_layer,
    }
}

#[rustfmt::skip]
const REGISTRY: [Row; 9] = [
    // target, name, module, per layer, experts, default, PEFT
    row(Target::Q, "q_proj", "self_attn.q_proj", true, false, true, Peft::Module("q_proj")),
    row(Target::K, "k_proj", "self_attn.k_proj", true, false, true, Peft::Module("k_proj")),
    row(Target::V, "v_proj", "self_attn.v_proj", true, false, true, Peft::Module("v_proj")),
    row(Target::O, "o_proj", "self_attn.o_proj", true, false, true, Peft::Module("o_proj")),
    row(Target::Router, "router", "mlp.router", true, false, true, Peft::Parameter("mlp.router.weight")),
    row(Target::Gate, "gate_proj", "mlp.experts.gate_proj", true, true, true, Peft::Experts("mlp.experts.gate_up_proj")),
    row(Target::Up, "up_proj", "mlp.experts.up_proj", true, true, true, Peft::Experts("mlp.experts.gate_up_proj")),
    row(Target::Down, "down_proj", "mlp.experts.down_proj", true, true, true, Peft::Experts("mlp.experts.down_proj")),
    // Off by default: the recipe adapts the decoder only. The untied output head is a plain
    // [V, H] projection; its LoRA is dense.
    row(Target::LmHead, "lm_head", "lm_head", false, false, false, Peft::Module("lm_head")),
];

/// The registry is indexed by the enum's discriminant: a row out of order, or a variant
/// without a row, fails the build rather than answering with another target's row.
const ROWS_IN_ENUM_ORDER: () = {
    let mut i = 0;
    while i < REGISTRY.len() {
        assert!(
            REGISTRY[i].target as usize == i,
            "target registry out of enum order"
        );
        i += 1;
    }
    assert!(
        REGISTRY.len() == Target::LmHead as usize + 1,
        "a target without a row"
    );
};

impl Target {
    /// Every target, in registry order.
    pub const ALL: [Target; 9] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Router,
        Target::Gate,
        Target::Up,
        Target::Down,
        Target::LmHead,
    ];

    fn row(self) -> &'static Row {
        #[allow(clippy::let_unit_value)]
        let () = ROWS_IN_ENUM_ORDER;
        // Row i is variant i: checked when the crate compiles (`ROWS_IN_ENUM_ORDER`).
        &REGISTRY[self as usize]
    }

    /// The targets a default config adapts.
    pub fn defaults() -> impl Iterator<Item = Target> {
        Self::ALL.into_iter().filter(|t| t.row().default)
    }

    /// Config / `adapter_config.json` name (`q_proj`, `router`, `lm_head`, …).
    pub fn name(self) -> &'static str {
        self.row().name
    }

    /// Module path (inside `model.layers.{L}.` when [`Target::per_layer`]).
    pub fn module(self) -> &'static str {
        self.row().module
    }

    /// One adapter per decoder layer (else one for the whole model).
    pub fn per_layer(self) -> bool {
        self.row().per_layer
    }

    /// A stack of per-expert matrices (factors `[E, r, in]`, `[E, out, r]`).
    pub fn is_expert(self) -> bool {
        self.row().experts
    }

    /// How PEFT names and wraps it.
    pub fn peft(self) -> Peft {
        self.row().peft
    }

    /// Whether mlx-lm's adapter loader can hold it.
    pub fn mlx(self) -> bool {
        self.row().mlx
    }

    pub fn parse(name: &str) -> Result<Target> {
        match Self::ALL.into_iter().find(|t| t.name() == name) {
            Some(t) => Ok(t),
            None => bail!(
                "unknown LoRA target {name:?} (known: {})",
                Self::ALL.map(|t| t.name()).join(", ")
            ),
        }
    }

    /// `(in, out)` of one matrix of this target in a model of `cfg`.
    pub fn in_out(self, cfg: &Config) -> (usize, usize) {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (q, kv) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
        let (e, i) = (cfg.num_local_experts, cfg.intermediate_size);
        match self {
            Target::Q => (h, q),
            Target::K | Target::V => (h, kv),
            Target::O => (q, h),
            Target::Router => (h, e),
            Target::Gate | Target::Up => (h, i),
            Target::Down => (i, h),
            Target::LmHead => (h, cfg.vocab_size),
        }
    }

    /// Adapter tensor-name prefix at `layer` (ignored for model-level targets).
    pub fn path(self, layer: usize) -> String {
        if self.per_layer() {
            format!("model.layers.{layer}.{}", self.module())
        } else {
            self.module().to_string()
        }
    }

    /// `(target, layer)` from an adapter tensor-name prefix (the inverse of [`Target::path`]).
    pub fn from_path(path: &str) -> Option<(Target, usize)> {
        if let Some(rest) = path.strip_prefix("model.layers.") {
            let (layer, module) = rest.split_once('.')?;
            let layer = layer.parse().ok()?;
            let t = Self::ALL
                .into_iter()
                .find(|t| t.per_layer() && t.module() == module)?;
            return Some((t, layer));
        }
        let t = Self::ALL
            .into_iter()
            .find(|t| !t.per_layer() && t.module() == path)?;
        Some((t, 0))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One adaptable projection of a particular model: a target at a layer, with its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraTarget {
    pub target: Target,
    /// The decoder layer (0 for model-level targets).
    pub layer: usize,
    /// Adapter tensor-name prefix, e.g. `model.layers.3.self_attn.q_proj`, `lm_head`.
    pub name: String,
    /// Input features of the base matrix.
    pub in_dim: usize,
    /// Output features of the base matrix.
    pub out_dim: usize,
    /// `Some(E)` for expert projections (A is `[E, r, in]`, B is `[E, out, r]`).
    pub experts: Option<usize>,
}

impl LoraTarget {
    pub fn new(target: Target, layer: usize, cfg: &Config) -> Self {
        let (in_dim, out_dim) = target.in_out(cfg);
        Self {
            target,
            layer,
            name: target.path(layer),
            in_dim,
            out_dim,
            experts: target.is_expert().then_some(cfg.num_local_experts),
        }
    }

    /// The short target kind used in `adapter_config.json` (`q_proj`, `router`, `gate_proj`, …).
    pub fn kind(&self) -> &'static str {
        self.target.name()
    }

    /// Trainable parameters of a rank-`r` adapter here.
    pub fn params(&self, r: usize) -> usize {
        self.experts.unwrap_or(1) * r * (self.in_dim + self.out_dim)
    }
}

/// Every adaptable projection of a model of `cfg`: layer by layer in registry order, then the
/// model-level targets.
pub fn all_sites(cfg: &Config) -> Vec<LoraTarget> {
    let mut out = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        for t in Target::ALL.into_iter().filter(|t| t.per_layer()) {
            out.push(LoraTarget::new(t, l, cfg));
        }
    }
    for t in Target::ALL.into_iter().filter(|t| !t.per_layer()) {
        out.push(LoraTarget::new(t, 0, cfg));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_covers_every_target() {
        for t in Target::ALL {
            assert_eq!(
                REGISTRY.iter().filter(|r| r.target == t).count(),
                1,
                "{t:?}"
            );
        }
    }

    #[test]
    fn paths_round_trip() {
        for t in Target::ALL {
            let layer = if t.per_layer() { 7 } else { 0 };
            assert_eq!(Target::from_path(&t.path(layer)), Some((t, layer)), "{t}");
            assert_eq!(Target::parse(t.name()).unwrap(), t);
        }
        assert_eq!(Target::from_path("model.layers.x.self_attn.q_proj"), None);
        assert_eq!(Target::from_path("model.layers.1.lm_head"), None);
        assert!(Target::parse("qproj").is_err());
        assert!(!Target::defaults().any(|t| t == Target::LmHead));
    }
}
