//! YaRN rotary tables (docs/gpt-oss.md §1.5), matching transformers'
//! `_compute_yarn_parameters` with `truncate: false`: the correction range low/high is not floored/ceiled, and cos/sin carry
//! the attention factor 0.1·ln(factor) + 1.

use crate::config::Config;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};

#[derive(Debug, Clone)]
pub struct RopeTable {
    /// `[D/2]`, f32 like the reference.
    pub inv_freq: Vec<f32>,
    /// Multiplies cos and sin (YaRN "mscale").
    pub attention_factor: f32,
}

impl RopeTable {
    pub fn new(cfg: &Config) -> Self {
        let rope = cfg.rope();
        let base = cfg.rope_base();
        let dim = cfg.head_dim;
        let half = dim / 2;
        let pos_freqs: Vec<f64> = (0..half)
            .map(|k| (base.powf((2 * k) as f32 as f64 / dim as f64) as f32) as f64)
            .collect();
        if rope.rope_type != "yarn" {
            return Self {
                inv_freq: pos_freqs.iter().map(|p| (1.0 / p) as f32).collect(),
                attention_factor: 1.0,
            };
        }
        let factor = rope.factor;
        let l0 = rope.original_max_position_embeddings as f64;
        let corr = |rot: f64| {
            dim as f64 * (l0 / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
        };
        let (mut low, mut high) = (corr(rope.beta_fast), corr(rope.beta_slow));
        if rope.truncate {
            low = low.floor();
            high = high.ceil();
        }
        let low = low.max(0.0);
        let mut high = high.min(dim as f64 - 1.0);
        if low == high {
            high += 0.001;
        }
        let inv_freq = (0..half)
            .map(|k| {
                let ramp = ((k as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0);
                let extrap = 1.0 - ramp;
                let p = pos_freqs[k] as f32;
                let interp_f = 1.0 / (factor as f32 * p);
                let extrap_f = 1.0 / p;
                interp_f * (1.0 - extrap) + extrap_f * extrap
            })
            .collect();
        let attention_factor = if factor <= 1.0 {
            1.0
        } else {
            (0.1 * factor.ln() + 1.0) as f32
        };
        Self {
            inv_freq,
            attention_factor,
        }
    }

    /// `(cos, sin)` of shape `[T, D/2]` for positions `offset..offset+T`, f32.
    pub fn cos_sin(&self, offset: usize, t: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
        let h = self.inv_freq.len();
        let mut cos = Vec::with_capacity(t * h);
        let mut sin = Vec::with_capacity(t * h);
        for p in offset..offset + t {
            for &f in &self.inv_freq {
                // The reference multiplies in f32, then takes cos/sin of that f32 angle.
                let ang = (p as f32 * f) as f64;
                cos.push((ang.cos() as f32) * self.attention_factor);
                sin.push((ang.sin() as f32) * self.attention_factor);
            }
        }
        let cos = Tensor::from_vec(cos, (t, h), dev)?.to_dtype(DType::F32)?;
        let sin = Tensor::from_vec(sin, (t, h), dev)?.to_dtype(DType::F32)?;
        Ok((cos, sin))
    }
}
