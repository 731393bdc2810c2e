//! `config.json` of a gpt-oss checkpoint (docs/gpt-oss.md §1.1).
//!
//! Accepts the hub spelling (`rope_theta` + `rope_scaling`), transformers v5's
//! `rope_parameters`, and the MLX `quantization` dictionary (kept raw; `quant` interprets it).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RopeScaling {
    #[serde(default = "default_rope_type", alias = "type")]
    pub rope_type: String,
    #[serde(default = "default_factor")]
    pub factor: f64,
    #[serde(default = "default_beta_fast")]
    pub beta_fast: f64,
    #[serde(default = "default_beta_slow")]
    pub beta_slow: f64,
    #[serde(default = "default_orig_max")]
    pub original_max_position_embeddings: usize,
    #[serde(default)]
    pub truncate: bool,
    /// Only present in v5 `rope_parameters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
}

fn default_rope_type() -> String {
    "yarn".into()
}
fn default_factor() -> f64 {
    32.0
}
fn default_beta_fast() -> f64 {
    32.0
}
fn default_beta_slow() -> f64 {
    1.0
}
fn default_orig_max() -> usize {
    4096
}
fn default_theta() -> f64 {
    150000.0
}
fn default_eps() -> f64 {
    1e-5
}
fn default_limit() -> f64 {
    7.0
}
fn default_alpha() -> f64 {
    1.702
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub num_local_experts: usize,
    /// Hub configs carry both `num_experts_per_tok` and `experts_per_token`; `from_json`
    /// folds the latter into the former.
    pub num_experts_per_tok: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    pub rope_parameters: Option<RopeScaling>,
    #[serde(default = "default_limit")]
    pub swiglu_limit: f64,
    #[serde(default = "default_alpha")]
    pub swiglu_alpha: f64,
    #[serde(default = "default_true")]
    pub attention_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub pad_token_id: Option<serde_json::Value>,
    /// MLX per-module quantization (docs/gpt-oss.md §2.5); raw, see `quant::QuantSpec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization_config: Option<serde_json::Value>,
}

impl Config {
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("invalid {}", path.display()))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let raw: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
        match raw.get("model_type").and_then(|v| v.as_str()) {
            Some("gpt_oss") => {}
            Some(other) => bail!("unsupported model_type {other:?} (expected \"gpt_oss\")"),
            None => bail!("missing model_type (expected \"gpt_oss\")"),
        }
        let mut raw = raw;
        if let Some(obj) = raw.as_object_mut() {
            if let Some(k) = obj.remove("experts_per_token") {
                obj.entry("num_experts_per_tok").or_insert(k);
            }
        }
        let cfg: Config = serde_json::from_value(raw)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        crate::validate::check_fields(self)?;
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads.max(1))
            || self.num_key_value_heads == 0
        {
            bail!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!("head_dim {} must be even", self.head_dim);
        }
        if self.num_experts_per_tok == 0 || self.num_experts_per_tok > self.num_local_experts {
            bail!(
                "num_experts_per_tok {} must be in 1..={}",
                self.num_experts_per_tok,
                self.num_local_experts
            );
        }
        if let Some(lt) = &self.layer_types {
            if lt.len() != self.num_hidden_layers {
                bail!(
                    "layer_types has {} entries, num_hidden_layers is {}",
                    lt.len(),
                    self.num_hidden_layers
                );
            }
            for t in lt {
                if t != "sliding_attention" && t != "full_attention" {
                    bail!("unknown layer type {t:?}");
                }
            }
        }
        let rope = self.rope();
        if rope.rope_type != "yarn" && rope.rope_type != "default" {
            bail!("unsupported rope_type {:?}", rope.rope_type);
        }
        Ok(())
    }

    /// The RoPE parameters, from either spelling (v5 `rope_parameters` wins when both exist).
    pub fn rope(&self) -> RopeScaling {
        let mut r = self
            .rope_parameters
            .clone()
            .or_else(|| self.rope_scaling.clone())
            .unwrap_or(RopeScaling {
                rope_type: default_rope_type(),
                factor: default_factor(),
                beta_fast: default_beta_fast(),
                beta_slow: default_beta_slow(),
                original_max_position_embeddings: default_orig_max(),
                truncate: false,
                rope_theta: None,
            });
        if r.rope_theta.is_none() {
            r.rope_theta = Some(self.rope_theta.unwrap_or_else(default_theta));
        }
        r
    }

    pub fn rope_base(&self) -> f64 {
        self.rope().rope_theta.unwrap_or_else(default_theta)
    }

    /// Whether layer `l` uses sliding-window attention (`layer_types`, else even layers).
    pub fn is_sliding(&self, l: usize) -> bool {
        match &self.layer_types {
            Some(lt) => lt.get(l).is_some_and(|t| t == "sliding_attention"),
            None => l.is_multiple_of(2),
        }
    }

    pub fn window(&self) -> usize {
        self.sliding_window.unwrap_or(128)
    }

    /// sha256 over the architecture fields only, so MXFP4, dense and MLX copies of one model
    /// share it (design.md §2).
    pub fn fingerprint(&self) -> String {
        let rope = self.rope();
        let layer_types: Vec<bool> = (0..self.num_hidden_layers)
            .map(|l| self.is_sliding(l))
            .collect();
        let arch = serde_json::json!({
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "num_local_experts": self.num_local_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "sliding_window": self.window(),
            "sliding_layers": layer_types,
            "rope_theta": self.rope_base(),
            "rope_type": rope.rope_type,
            "rope_factor": rope.factor,
            "rope_beta_fast": rope.beta_fast,
            "rope_beta_slow": rope.beta_slow,
            "rope_original_max": rope.original_max_position_embeddings,
            "rope_truncate": rope.truncate,
            "swiglu_limit": self.swiglu_limit,
            "swiglu_alpha": self.swiglu_alpha,
            "rms_norm_eps": self.rms_norm_eps,
        });
        let digest = Sha256::digest(arch.to_string().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The MLX quantization dictionary, if any (`quantization`, else an MLX-style
    /// `quantization_config` — HF's `{"quant_method": "mxfp4"}` is not one).
    pub fn mlx_quantization(&self) -> Option<&serde_json::Value> {
        self.quantization.as_ref().or_else(|| {
            self.quantization_config
                .as_ref()
                .filter(|q| q.get("quant_method").is_none())
        })
    }
}
