//! Cheap checks before the expensive ones: everything `train` can learn from `config.json`,
//! the data files and the recipe is checked before the base model is mapped and loaded (a
//! 12.8 GB load should not come before "no trainable sample").
//!
//! - the data: both files parsed against the model's vocabulary; an empty training set names
//!   the file; samples longer than `data.max_seq_len` are refused (see `refuse_cut_samples`);
//! - the LoRA shape: `lora.layers` within the model, `lora.rank` bounded by the projections;
//! - memory: `--plan`'s prediction against the memory available now (CPU runs).

use crate::batches::{read_samples, ReadStats, Sample};
use crate::config::TrainConfig;
use anyhow::{bail, Context, Result};
use osstune_model::Config;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The run's data, read and checked.
pub struct TrainData {
    pub train: Vec<Sample>,
    pub train_stats: ReadStats,
    /// Validation samples (empty when there is no valid.jsonl or `train.val_samples = 0`).
    pub valid: Vec<Sample>,
    /// sha256 over the names, sizes and bytes of train.jsonl and valid.jsonl, stored in every
    /// checkpoint so `--resume` can tell a different data set.
    pub fingerprint: String,
}

/// Reads `train.jsonl` (and `valid.jsonl` when present) from `data_dir`.
pub fn load_data(cfg: &TrainConfig, data_dir: &Path, vocab: usize) -> Result<TrainData> {
    let max_len = cfg.data.max_seq_len;
    let train_path = data_dir.join("train.jsonl");
    let (train, train_stats) = read_samples(&train_path, max_len, vocab)?;
    refuse_cut_samples(&train_path, &train_stats, max_len, data_dir)?;
    if train.is_empty() {
        bail!(
            "{}: no trainable sample ({} without trained tokens); nothing to train on",
            train_path.display(),
            train_stats.dropped_untrained
        );
    }
    if train_stats.dropped_untrained > 0 {
        eprintln!(
            "{}: {} samples, {} without trained tokens skipped",
            train_path.display(),
            train_stats.kept,
            train_stats.dropped_untrained
        );
    }
    let valid_path = data_dir.join("valid.jsonl");
    let mut valid = Vec::new();
    match cfg.train.val_samples {
        Some(0) => eprintln!("train.val_samples = 0: no validation"),
        _ if !valid_path.exists() => {
            eprintln!("{}: not found, no validation", valid_path.display())
        }
        limit => {
            let (v, st) = read_samples(&valid_path, max_len, vocab)?;
            refuse_cut_samples(&valid_path, &st, max_len, data_dir)?;
            valid = v;
            if let Some(n) = limit {
                valid.truncate(n);
            }
        }
    }
    Ok(TrainData {
        train,
        train_stats,
        valid,
        fingerprint: data_fingerprint(data_dir)?,
    })
}

/// Samples longer than `data.max_seq_len` mean the folder was converted for a longer
/// context. Cutting them here could only drop their end — the trained turn — so the folder is
/// refused with the command that fits them properly (the converter keeps the target turn,
/// shortens tool outputs, then drops the oldest context).
fn refuse_cut_samples(file: &Path, st: &ReadStats, max_len: usize, data_dir: &Path) -> Result<()> {
    if st.truncated == 0 {
        return Ok(());
    }
    bail!(
        "{}: {} samples are longer than data.max_seq_len = {max_len} (longest: {} tokens); \
         cutting them would drop their trained final turn. Re-convert the sessions for this \
         length: `osstune data convert SESSIONS… --max-seq-len {max_len} --out {}`, or raise \
         data.max_seq_len to {}",
        file.display(),
        st.truncated,
        st.longest,
        data_dir.display(),
        st.longest
    )
}

/// sha256 over (name, size, bytes) of train.jsonl and valid.jsonl (a missing file counts as
/// absent, which differs from empty).
pub fn data_fingerprint(data_dir: &Path) -> Result<String> {
    let mut h = Sha256::new();
    for name in ["train.jsonl", "valid.jsonl"] {
        let p = data_dir.join(name);
        h.update(name.as_bytes());
        match std::fs::read(&p) {
            Ok(bytes) => {
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => h.update(b"absent"),
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// (target, d_in, d_out) of every projection LoRA can adapt, from the architecture alone.
pub fn target_dims(mc: &Config) -> Vec<(&'static str, usize, usize)> {
    let (h, i, e) = (mc.hidden_size, mc.intermediate_size, mc.num_local_experts);
    let (q, kv) = (
        mc.num_attention_heads * mc.head_dim,
        mc.num_key_value_heads * mc.head_dim,
    );
    vec![
        ("q_proj", h, q),
        ("k_proj", h, kv),
        ("v_proj", h, kv),
        ("o_proj", q, h),
        ("router", h, e),
        ("gate_proj", h, i),
        ("up_proj", h, i),
        ("down_proj", i, h),
    ]
}

/// `lora.layers` must lie within the model and `lora.rank` must be useful somewhere: a rank
/// above min(in, out) of every selected projection only adds parameters (B·A is full rank at
/// min(in, out)), so it is refused with the bound. A rank above min(in, out) of *some*
/// targets (the router of a model with few experts) is legitimate and noted.
pub fn check_lora_shape(cfg: &TrainConfig, mc: &Config) -> Result<()> {
    let l = &cfg.lora;
    if l.layers > mc.num_hidden_layers {
        bail!(
            "lora.layers = {} but the model has {} decoder layers (0 = all, N = the last N)",
            l.layers,
            mc.num_hidden_layers
        );
    }
    let selected: Vec<(&str, usize)> = target_dims(mc)
        .into_iter()
        .filter(|(t, ..)| l.targets.iter().any(|x| x == t))
        .map(|(t, i, o)| (t, i.min(o)))
        .collect();
    let bound = selected.iter().map(|&(_, m)| m).max().unwrap_or(0);
    if l.rank > bound {
        bail!(
            "lora.rank = {} exceeds min(in, out) of every selected projection (largest: {bound}; \
             {}); use lora.rank ≤ {bound}",
            l.rank,
            selected
                .iter()
                .map(|(t, m)| format!("{t} {m}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let full: Vec<&str> = selected
        .iter()
        .filter(|&&(_, m)| l.rank > m)
        .map(|&(t, _)| t)
        .collect();
    if !full.is_empty() {
        eprintln!(
            "note: lora.rank {} is above min(in, out) of {} (those adapters are full rank)",
            l.rank,
            full.join(", ")
        );
    }
    Ok(())
}

/// `MemAvailable` of /proc/meminfo in bytes (Linux), None elsewhere.
pub fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses a CPU run whose predicted peak (`--plan`) exceeds the memory available now.
pub fn check_memory(cfg: &TrainConfig, model_dir: &Path) -> Result<()> {
    if cfg.model.device != "cpu" {
        return Ok(()); // device memory is not /proc/meminfo's to tell
    }
    let Some(avail) = mem_available() else {
        return Ok(());
    };
    let plan = crate::plan::plan(cfg, model_dir)?;
    let need = plan.total();
    if need > avail {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        bail!(
            "predicted peak memory {:.2} GiB exceeds the {:.2} GiB available \
             (/proc/meminfo MemAvailable); see `osstune train --plan` for the breakdown. \
             Lower data.max_seq_len, train.micro_batch or lora.rank, enable \
             --activation-checkpointing, or pass --skip-memory-check to try anyway\n{}",
            gib(need),
            gib(avail),
            plan.render()
        );
    }
    Ok(())
}
