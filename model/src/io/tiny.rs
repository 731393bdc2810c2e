//! Seeded random gpt-oss-shaped checkpoints in the Hugging Face layout (`osstune init-tiny`).
//!
//! Presets: `tiny` (real o200k_harmony vocabulary size, hidden 64, 4 layers, 8 experts top-2,
//! sliding window 32, bf16 like the released checkpoints) and `bench` (the shapes of the
//! transformers + PEFT anchor benchmark's "bench" model: hidden 512, 4 layers, 8/2 heads,
//! head_dim 64, 16 experts top-4, intermediate 512, vocab 8192, window 128, f32). Weights are N(0, 0.02)
//! like transformers' `_init_weights`, but biases and sinks are drawn too (small), so every
//! code path carries signal. Experts are written MXFP4-packed (`*_blocks`/`*_scales`) or
//! dense (`gate_up_proj [E, H, 2I]` interleaved, `down_proj [E, I, H]`).

use crate::quant::mxfp4;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    Tiny,
    Bench,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertFormat {
    Mxfp4,
    Dense,
}

/// The dimensions a random checkpoint is written with (the `config.json` fields of
/// docs/gpt-oss.md §1.1 that vary).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub experts: usize,
    pub top_k: usize,
    pub inter: usize,
    pub vocab: usize,
    pub window: usize,
    pub dtype: DType,
}

impl Preset {
    pub fn shape(self) -> ModelShape {
        shape(self)
    }
}

fn shape(p: Preset) -> ModelShape {
    match p {
        Preset::Tiny => ModelShape {
            hidden: 64,
            layers: 4,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            experts: 8,
            top_k: 2,
            inter: 64,
            vocab: 201088,
            window: 32,
            dtype: DType::BF16,
        },
        Preset::Bench => ModelShape {
            hidden: 512,
            layers: 4,
            heads: 8,
            kv_heads: 2,
            head_dim: 64,
            experts: 16,
            top_k: 4,
            inter: 512,
            vocab: 8192,
            window: 128,
            dtype: DType::F32,
        },
    }
}

struct Gen {
    rng: StdRng,
}

impl Gen {
    /// `n` samples of N(0, std²) (Box–Muller).
    fn normal(&mut self, n: usize, std: f32) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1: f32 = self.rng.random::<f32>().max(1e-12);
            let u2: f32 = self.rng.random::<f32>();
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let th = 2.0 * std::f32::consts::PI * u2;
            out.push(r * th.cos());
            out.push(r * th.sin());
        }
        out.truncate(n);
        out
    }
}

struct Writer {
    tensors: HashMap<String, Tensor>,
    n_params: usize,
}

impl Writer {
    fn put(&mut self, name: String, data: Vec<f32>, shape: Vec<usize>, dtype: DType) -> Result<()> {
        self.n_params += data.len();
        let t = Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(dtype)?;
        self.tensors.insert(name, t);
        Ok(())
    }
}

/// The config.json written for a preset (hub spelling plus `layer_types`).
pub fn config_json(p: Preset, experts: ExpertFormat) -> serde_json::Value {
    config_for(&shape(p), experts == ExpertFormat::Mxfp4)
}

/// The config.json of a checkpoint of shape `s` (with the MXFP4 `quantization_config` when
/// its experts are packed).
pub fn config_for(s: &ModelShape, mxfp4: bool) -> serde_json::Value {
    let layer_types: Vec<&str> = (0..s.layers)
        .map(|l| {
            if l % 2 == 0 {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    let mut cfg = serde_json::json!({
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "hidden_size": s.hidden,
        "intermediate_size": s.inter,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "head_dim": s.head_dim,
        "num_local_experts": s.experts,
        "num_experts_per_tok": s.top_k,
        "experts_per_token": s.top_k,
        "vocab_size": s.vocab,
        "rms_norm_eps": 1e-5,
        "rope_theta": 150000.0,
        "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                         "beta_slow": 1.0, "original_max_position_embeddings": 4096,
                         "truncate": false},
        "max_position_embeddings": 131072,
        "initial_context_length": 4096,
        "sliding_window": s.window,
        "layer_types": layer_types,
        "attention_bias": true,
        "attention_dropout": 0.0,
        "swiglu_limit": 7.0,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "eos_token_id": (200002usize).min(s.vocab - 2),
        "pad_token_id": (199999usize).min(s.vocab - 1),
        "initializer_range": 0.02,
        "router_aux_loss_coef": 0.9,
        "output_router_logits": false,
        "torch_dtype": if s.dtype == DType::BF16 { "bfloat16" } else { "float32" },
    });
    if mxfp4 {
        cfg["quantization_config"] = serde_json::json!({
            "quant_method": "mxfp4",
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                       "model.embed_tokens", "lm_head"],
        });
    }
    cfg
}

/// Writes `config.json` and `model.safetensors` into `out` (created if needed). Returns the
/// number of parameters (dense-equivalent).
pub fn write_tiny(out: &Path, p: Preset, seed: u64, experts: ExpertFormat) -> Result<usize> {
    let s = shape(p);
    if !s.hidden.is_multiple_of(32) || !s.inter.is_multiple_of(32) {
        bail!("MXFP4 needs hidden and intermediate sizes divisible by 32");
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
    };
    let dev = Device::Cpu;
    let mut wr = Writer {
        tensors: HashMap::new(),
        n_params: 0,
    };
    let (h, d, v) = (s.hidden, s.head_dim, s.vocab);
    let (q, kv, e, i) = (s.heads * d, s.kv_heads * d, s.experts, s.inter);
    let w = 0.02f32;
    wr.put(
        "model.embed_tokens.weight".into(),
        g.normal(v * h, w),
        vec![v, h],
        s.dtype,
    )?;
    for l in 0..s.layers {
        let p = format!("model.layers.{l}");
        wr.put(
            format!("{p}.input_layernorm.weight"),
            vec![1.0; h],
            vec![h],
            s.dtype,
        )?;
        wr.put(
            format!("{p}.post_attention_layernorm.weight"),
            vec![1.0; h],
            vec![h],
            s.dtype,
        )?;
        for (n, out_d, in_d) in [
            ("q_proj", q, h),
            ("k_proj", kv, h),
            ("v_proj", kv, h),
            ("o_proj", h, q),
        ] {
            wr.put(
                format!("{p}.self_attn.{n}.weight"),
                g.normal(out_d * in_d, w),
                vec![out_d, in_d],
                s.dtype,
            )?;
            wr.put(
                format!("{p}.self_attn.{n}.bias"),
                g.normal(out_d, w),
                vec![out_d],
                s.dtype,
            )?;
        }
        wr.put(
            format!("{p}.self_attn.sinks"),
            g.normal(s.heads, 1.0),
            vec![s.heads],
            s.dtype,
        )?;
        wr.put(
            format!("{p}.mlp.router.weight"),
            g.normal(e * h, w),
            vec![e, h],
            s.dtype,
        )?;
        wr.put(
            format!("{p}.mlp.router.bias"),
            g.normal(e, w),
            vec![e],
            s.dtype,
        )?;
        // nn.Linear orientation: W1 [E, 2I, H] with gate/up rows interleaved, W2 [E, H, I].
        let w1 = g.normal(e * 2 * i * h, w);
        let w2 = g.normal(e * h * i, w);
        wr.put(
            format!("{p}.mlp.experts.gate_up_proj_bias"),
            g.normal(e * 2 * i, w),
            vec![e, 2 * i],
            s.dtype,
        )?;
        wr.put(
            format!("{p}.mlp.experts.down_proj_bias"),
            g.normal(e * h, w),
            vec![e, h],
            s.dtype,
        )?;
        match experts {
            ExpertFormat::Mxfp4 => {
                for (n, m, rows, cols) in
                    [("gate_up_proj", &w1, 2 * i, h), ("down_proj", &w2, h, i)]
                {
                    let (blocks, scales) = mxfp4::quantize(m, cols)?;
                    let bt = Tensor::from_vec(blocks, (e, rows, cols / 32, 16), &dev)?;
                    let st = Tensor::from_vec(scales, (e, rows, cols / 32), &dev)?;
                    wr.n_params += e * rows * cols;
                    wr.tensors.insert(format!("{p}.mlp.experts.{n}_blocks"), bt);
                    wr.tensors.insert(format!("{p}.mlp.experts.{n}_scales"), st);
                }
            }
            ExpertFormat::Dense => {
                let gu = Tensor::from_vec(w1, (e, 2 * i, h), &dev)?
                    .transpose(1, 2)?
                    .contiguous()?;
                let dn = Tensor::from_vec(w2, (e, h, i), &dev)?
                    .transpose(1, 2)?
                    .contiguous()?;
                wr.n_params += gu.elem_count() + dn.elem_count();
                wr.tensors.insert(
                    format!("{p}.mlp.experts.gate_up_proj"),
                    gu.to_dtype(s.dtype)?,
                );
                wr.tensors
                    .insert(format!("{p}.mlp.experts.down_proj"), dn.to_dtype(s.dtype)?);
            }
        }
    }
    wr.put("model.norm.weight".into(), vec![1.0; h], vec![h], s.dtype)?;
    wr.put(
        "lm_head.weight".into(),
        g.normal(v * h, w),
        vec![v, h],
        s.dtype,
    )?;

    let st_path = out.join("model.safetensors");
    let tmp = out.join("model.safetensors.tmp");
    candle_core::safetensors::save(&wr.tensors, &tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &st_path)?;
    // A stale index from an earlier sharded checkpoint would shadow the new single file.
    let _ = std::fs::remove_file(out.join("model.safetensors.index.json"));
    let cfg_path = out.join("config.json");
    let tmp = out.join("config.json.tmp");
    let text = serde_json::to_string_pretty(&config_json(p, experts))?;
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &cfg_path)?;
    Ok(wr.n_params)
}
