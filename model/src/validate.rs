//! Field-by-field checks of `config.json` values, each naming its key: nonsense values
//! (`sliding_window: 0`, `rms_norm_eps: -1`, a YaRN `factor: 0`, `vocab_size: 0`, 10⁹
//! layers) are refused when the config is read, instead of surfacing later as a router NaN or
//! an absurd `--plan`. Also the model's context length, which generation and probes are
//! bounded by.

use crate::config::Config;
use anyhow::{bail, Result};

/// Largest accepted value of the size fields: far above any released model (gpt-oss-120b:
/// 36 layers, 128 experts, hidden 2880, vocabulary 201088), low enough that products of them
/// cannot overflow a u64 byte count.
const MAX_LAYERS: usize = 4096;
const MAX_DIM: usize = 1 << 20;
const MAX_VOCAB: usize = 1 << 24;
const MAX_EXPERTS: usize = 1 << 16;

fn positive(key: &str, v: usize, max: usize) -> Result<()> {
    if v == 0 || v > max {
        bail!("{key} = {v} must be in 1..={max}");
    }
    Ok(())
}

fn finite_positive(key: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{key} = {v} must be a finite number > 0");
    }
    Ok(())
}

/// Checks every numeric field of `cfg` (the structural checks live in `Config::validate`).
pub(crate) fn check_fields(cfg: &Config) -> Result<()> {
    positive("vocab_size", cfg.vocab_size, MAX_VOCAB)?;
    positive("hidden_size", cfg.hidden_size, MAX_DIM)?;
    positive("intermediate_size", cfg.intermediate_size, MAX_DIM)?;
    positive("num_hidden_layers", cfg.num_hidden_layers, MAX_LAYERS)?;
    positive("num_attention_heads", cfg.num_attention_heads, MAX_DIM)?;
    positive("num_key_value_heads", cfg.num_key_value_heads, MAX_DIM)?;
    positive("head_dim", cfg.head_dim, MAX_DIM)?;
    positive("num_local_experts", cfg.num_local_experts, MAX_EXPERTS)?;
    finite_positive("rms_norm_eps", cfg.rms_norm_eps)?;
    finite_positive("swiglu_limit", cfg.swiglu_limit)?;
    finite_positive("swiglu_alpha", cfg.swiglu_alpha)?;
    if let Some(w) = cfg.sliding_window {
        positive("sliding_window", w, usize::MAX)?;
    }
    if let Some(t) = cfg.rope_theta {
        finite_positive("rope_theta", t)?;
    }
    if let Some(n) = cfg.max_position_embeddings {
        positive("max_position_embeddings", n, usize::MAX)?;
    }
    for (key, r) in [
        ("rope_scaling", &cfg.rope_scaling),
        ("rope_parameters", &cfg.rope_parameters),
    ] {
        let Some(r) = r else { continue };
        finite_positive(&format!("{key}.factor"), r.factor)?;
        if !r.beta_fast.is_finite() || !r.beta_slow.is_finite() || r.beta_fast <= r.beta_slow {
            bail!(
                "{key}: beta_fast {} must be a finite number above beta_slow {}",
                r.beta_fast,
                r.beta_slow
            );
        }
        positive(
            &format!("{key}.original_max_position_embeddings"),
            r.original_max_position_embeddings,
            usize::MAX,
        )?;
        if let Some(t) = r.rope_theta {
            finite_positive(&format!("{key}.rope_theta"), t)?;
        }
    }
    Ok(())
}

impl Config {
    /// Tokens the model attends over: `max_position_embeddings`, else the YaRN-extended
    /// original context (original × factor).
    pub fn context_len(&self) -> usize {
        self.max_position_embeddings.unwrap_or_else(|| {
            let r = self.rope();
            (r.original_max_position_embeddings as f64 * r.factor.max(1.0)) as usize
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn with(key: &str, v: serde_json::Value) -> String {
        let mut j = serde_json::json!({
            "model_type": "gpt_oss", "vocab_size": 384, "hidden_size": 64,
            "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "num_local_experts": 4,
            "num_experts_per_tok": 2, "sliding_window": 32,
            "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                             "beta_slow": 1.0, "original_max_position_embeddings": 4096}
        });
        match key.split_once('.') {
            Some((a, b)) => j[a][b] = v,
            None => j[key] = v,
        }
        j.to_string()
    }

    #[test]
    fn nonsense_values_name_their_key() {
        Config::from_json(&with("vocab_size", 384.into())).unwrap();
        for (key, v) in [
            ("sliding_window", serde_json::json!(0)),
            ("rms_norm_eps", serde_json::json!(-1.0)),
            ("rope_scaling.factor", serde_json::json!(0.0)),
            ("vocab_size", serde_json::json!(0)),
            ("hidden_size", serde_json::json!(0)),
            ("num_hidden_layers", serde_json::json!(1_000_000_000u64)),
        ] {
            let e = format!("{:#}", Config::from_json(&with(key, v)).unwrap_err());
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
