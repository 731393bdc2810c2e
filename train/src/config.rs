//! Training configuration: a TOML file (see `configs/*.toml`) whose every value can be
//! overridden from the command line with `--set section.key=value` (any depth:
//! `--set optim.muon.lr=2e-2`) (the value is parsed as
//! TOML, so `--set lora.targets=["q_proj","v_proj"]` works) or with the dedicated flags of
//! `osstune train`. Unknown keys are errors, so a typo never silently trains the wrong thing.

use anyhow::{bail, Context, Result};
use osstune_model::Target;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Upper bound of `train.threads` / `--threads`: more threads than this only cost time
/// spawning them.
pub const MAX_THREADS: usize = 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub lora: LoraSection,
    /// Muon / AdamW / schedule, as the optim crate defines them (`[optim.muon]`,
    /// `[optim.adamw]`, `[optim.schedule]`).
    #[serde(default)]
    pub optim: osstune_optim::OptimConfig,
    #[serde(default)]
    pub train: TrainSection,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// Base model directory (HF or MLX layout).
    pub path: Option<PathBuf>,
    /// Compute dtype of the base: "f32" or "bf16". LoRA parameters are always f32.
    pub dtype: String,
    /// "cpu", "cuda" or "metal".
    pub device: String,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            path: None,
            dtype: "f32".into(),
            device: "cpu".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// Folder holding `train.jsonl` and `valid.jsonl` (written by `osstune data convert`).
    pub path: Option<PathBuf>,
    /// Longest sample in tokens; a data folder with longer samples is refused (convert it
    /// with `osstune data convert --max-seq-len` of the same value).
    pub max_seq_len: usize,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            path: None,
            max_seq_len: 4096,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSection {
    pub rank: usize,
    pub alpha: f64,
    /// Dropout on the LoRA input (the base path never sees dropout), training micro-steps
    /// only; masks are seeded per (seed, step, micro-batch, adapter), see `trainer::dropout_seed`.
    pub dropout: f64,
    /// Registry names (`osstune_model::Target`); default: every decoder target, router
    /// included (`lm_head` is available, off by default).
    pub targets: Vec<String>,
    /// Adapt the last N decoder layers only (0 = all), as mlx-lm's `num_layers`.
    pub layers: usize,
}

impl Default for LoraSection {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            dropout: 0.0,
            targets: Target::defaults().map(|t| t.name().to_string()).collect(),
            layers: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Optimizer steps.
    pub steps: usize,
    pub micro_batch: usize,
    pub grad_accum: usize,
    pub seed: u64,
    /// Output folder: adapters, checkpoints, metrics.jsonl, loss.svg.
    pub out: Option<PathBuf>,
    /// Validate every N steps (plus at start and end); 0 = only start and end.
    pub val_every: usize,
    /// Validation samples used: absent = the whole valid.jsonl, 0 = no validation.
    pub val_samples: Option<usize>,
    /// Checkpoint every N steps (plus at the end); 0 = only at the end.
    pub save_every: usize,
    /// Sequence positions per chunk of the lm_head + cross-entropy (bounds logits memory).
    pub loss_chunk: usize,
    /// Recompute each decoder layer in the backward pass instead of keeping its activations.
    pub activation_checkpointing: bool,
    /// Worker threads for the CPU backend (0 = candle's default).
    pub threads: usize,
    /// Clip the global gradient L2 norm to this value (0 = off).
    pub grad_clip: f64,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            steps: 40,
            micro_batch: 2,
            grad_accum: 8,
            seed: 42,
            out: None,
            val_every: 10,
            val_samples: None,
            save_every: 10,
            loss_chunk: 256,
            activation_checkpointing: false,
            threads: 0,
            grad_clip: 0.0,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML config and applies `key=value` overrides (dotted keys, TOML values; a
    /// value that is not valid TOML is taken as a string).
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let mut root = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config {}", p.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("parsing config {}", p.display()))?
            }
            None => toml::Table::new(),
        };
        for o in overrides {
            apply_override(&mut root, o)?;
        }
        let what = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "defaults".into());
        let cfg: TrainConfig = toml::Value::Table(root)
            .try_into()
            .with_context(|| format!("config {what} (after overrides)"))?;
        cfg.validate().with_context(|| format!("config {what}"))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let l = &self.lora;
        if l.rank == 0 {
            bail!("lora.rank must be > 0");
        }
        if !(0.0..1.0).contains(&l.dropout) {
            bail!("lora.dropout must be in [0, 1), got {}", l.dropout);
        }
        if l.targets.is_empty() {
            bail!("lora.targets is empty");
        }
        for t in &l.targets {
            Target::parse(t).context("lora.targets")?;
        }
        let t = &self.train;
        if t.micro_batch == 0 || t.grad_accum == 0 {
            bail!("train.micro_batch and train.grad_accum must be > 0");
        }
        if t.loss_chunk == 0 {
            bail!("train.loss_chunk must be > 0");
        }
        if self.data.max_seq_len < 2 {
            bail!("data.max_seq_len must be ≥ 2");
        }
        if t.threads > MAX_THREADS {
            bail!(
                "train.threads = {} is more than {MAX_THREADS} (0 = one per core)",
                t.threads
            );
        }
        if t.steps == 0 {
            bail!("train.steps must be > 0");
        }
        if !(l.alpha.is_finite() && l.alpha > 0.0) {
            bail!("lora.alpha must be a finite number > 0, got {}", l.alpha);
        }
        if !(t.grad_clip.is_finite() && t.grad_clip >= 0.0) {
            bail!("train.grad_clip must be >= 0, got {}", t.grad_clip);
        }
        self.optim.validate()?;
        if !["auto", "f32", "bf16", "f16"].contains(&self.model.dtype.as_str()) {
            bail!(
                "model.dtype must be auto, f32, bf16 or f16, got {:?}",
                self.model.dtype
            );
        }
        Ok(())
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("serialising the training config")
    }

    /// LoRA scale applied to B·A.
    pub fn lora_scale(&self) -> f64 {
        self.lora.alpha / self.lora.rank as f64
    }

    pub fn tokens_per_step_max(&self) -> usize {
        self.train.micro_batch * self.train.grad_accum * self.data.max_seq_len
    }
}

fn apply_override(root: &mut toml::Table, spec: &str) -> Result<()> {
    let (key, raw) = spec
        .split_once('=')
        .with_context(|| format!("override {spec:?}: expected section.key=value"))?;
    let key = key.trim();
    let raw = raw.trim();
    // Parse the value as TOML; bare words (paths, names) fall back to strings.
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        bail!("override {spec:?}: the key must be section.key (e.g. train.steps=10)");
    }
    let mut table = root;
    for p in &parts[..parts.len() - 1] {
        let entry = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .with_context(|| format!("override {spec:?}: {p} is not a table"))?;
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_validation() {
        let cfg = TrainConfig::load(
            None,
            &[
                "train.steps=7".into(),
                "lora.targets=[\"q_proj\"]".into(),
                "model.path=/x/y".into(),
                "optim.muon.lr=0.02".into(),
            ],
        )
        .unwrap();
        assert_eq!(cfg.train.steps, 7);
        assert_eq!(cfg.lora.targets, vec!["q_proj".to_string()]);
        assert_eq!(cfg.model.path.as_deref(), Some(Path::new("/x/y")));
        assert_eq!(cfg.optim.muon.lr, 0.02);
        assert!(TrainConfig::load(None, &["train.stepz=1".into()]).is_err());
        assert!(TrainConfig::load(None, &["lora.targets=[\"qq\"]".into()]).is_err());
        assert!(TrainConfig::load(None, &["lora.rank=0".into()]).is_err());
        // Round trip through TOML.
        let text = cfg.to_toml().unwrap();
        let back: TrainConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
    }
}
