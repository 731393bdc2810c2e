//! Seeded random inputs for tests and `osstune bench merge`: an osstune adapter (design §2,
//! with NONZERO B so the merge has something to fold) for any base, and a small gpt-oss base
//! checkpoint in any of the four expert layouts.

use crate::adapter::Target;
use crate::base::Base;
use crate::plan::Format;
use crate::st::{from_f32, Dtype};
use crate::writer::{write_json, write_single, Naming, ShardedWriter, Spec};
use anyhow::{bail, Context, Result};
use osstune_model::config::Config;
use osstune_model::quant::mxfp4::quantize_rows;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;

pub struct AdapterSpec<'a> {
    pub rank: usize,
    pub alpha: f64,
    pub seed: u64,
    /// Layers to adapt (None = all).
    pub layers: Option<Vec<usize>>,
    pub targets: &'a [Target],
    /// B ~ U(±b_range); A ~ U(±1/√in) as at initialisation.
    pub b_range: f32,
    /// Recorded base fingerprint; None = the base's own (`Config::fingerprint()`).
    pub fingerprint: Option<String>,
}

fn uniform(rng: &mut StdRng, n: usize, r: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-r..=r)).collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `adapters.safetensors` + `adapter_config.json` into `out` for the base at `model`.
pub fn write_random_adapter(model: &Path, out: &Path, spec: &AdapterSpec) -> Result<()> {
    let base = Base::open(model)?;
    let fingerprint = match &spec.fingerprint {
        Some(f) => f.clone(),
        None => Config::from_model_dir(model)?.fingerprint(),
    };
    let layers: Vec<usize> = spec
        .layers
        .clone()
        .unwrap_or_else(|| (0..base.layers).collect());
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let r = spec.rank;
    let mut tensors = Vec::new();
    for &l in &layers {
        if l >= base.layers {
            bail!("layer {l} out of range (base has {})", base.layers);
        }
    }
    // Per-layer targets in every listed layer, then the model-level ones (lm_head) once.
    let sites = layers
        .iter()
        .flat_map(|&l| {
            spec.targets
                .iter()
                .filter(|t| t.per_layer())
                .map(move |&t| (l, t))
        })
        .chain(
            spec.targets
                .iter()
                .filter(|t| !t.per_layer())
                .map(|&t| (0, t)),
        );
    {
        for (l, t) in sites {
            let s = base.target_shape(l, t)?;
            let e = s.experts.unwrap_or(1);
            let a = uniform(&mut rng, e * r * s.inp, 1.0 / (s.inp as f32).sqrt());
            let b = uniform(&mut rng, e * s.out * r, spec.b_range);
            let (sa, sb) = match s.experts {
                Some(e) => (vec![e, r, s.inp], vec![e, s.out, r]),
                None => (vec![r, s.inp], vec![s.out, r]),
            };
            let m = t.path(l);
            tensors.push((
                Spec::new(format!("{m}.lora_a"), Dtype::F32, &sa),
                f32_bytes(&a),
            ));
            tensors.push((
                Spec::new(format!("{m}.lora_b"), Dtype::F32, &sb),
                f32_bytes(&b),
            ));
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_single(&out.join("adapters.safetensors"), &tensors, "pt")?;
    let names: Vec<&str> = spec.targets.iter().map(|t| t.name()).collect();
    let cfg = serde_json::json!({
        "format": "osstune-lora", "version": 1, "rank": r, "alpha": spec.alpha, "dropout": 0.0,
        "targets": names, "layers": layers,
        "base_model": {
            "model_type": base.config.get("model_type"),
            "fingerprint": fingerprint,
            "num_hidden_layers": base.layers, "hidden_size": base.hidden,
            "num_local_experts": base.experts,
        },
    });
    write_json(&out.join("adapter_config.json"), &cfg)
}

/// Dimensions of a synthetic base.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub layers: usize,
    pub experts: usize,
    pub hidden: usize,
    pub inter: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
}

/// gpt-oss config.json for `d` (the real model's constants for everything else).
pub fn config_json(d: &Dims) -> serde_json::Value {
    let types: Vec<&str> = (0..d.layers)
        .map(|l| {
            if l % 2 == 0 {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    // Harmony's ids when the vocabulary has them; transformers rejects a pad id past the table.
    let (eos, pad) = if d.vocab > 200_012 {
        (200_002, 199_999)
    } else {
        (d.vocab - 2, d.vocab - 1)
    };
    serde_json::json!({
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
        "num_hidden_layers": d.layers, "num_local_experts": d.experts,
        "num_experts_per_tok": 2.min(d.experts),
        "hidden_size": d.hidden, "intermediate_size": d.inter, "head_dim": d.head_dim,
        "num_attention_heads": d.heads, "num_key_value_heads": d.kv_heads,
        "vocab_size": d.vocab, "rms_norm_eps": 1e-5, "rope_theta": 150000.0,
        "rope_scaling": { "rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                          "original_max_position_embeddings": 4096, "truncate": false },
        "max_position_embeddings": 131072, "initial_context_length": 4096, "sliding_window": 128,
        "layer_types": types, "attention_bias": true, "attention_dropout": 0.0,
        "swiglu_limit": 7.0, "hidden_act": "silu", "tie_word_embeddings": false,
        "eos_token_id": eos, "pad_token_id": pad, "router_aux_loss_coef": 0.9,
        "output_router_logits": false, "initializer_range": 0.02,
    })
}

/// Writes a random gpt-oss base with experts stored as `store` (the HF-dense base is what
/// `Format::Hf` emits, etc.), in bf16. Weights are N(0, 0.02)-ish uniform, norms 1.
pub fn write_random_base(out: &Path, d: &Dims, store: Format, seed: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (h, q, kv) = (d.hidden, d.heads * d.head_dim, d.kv_heads * d.head_dim);
    let mut tensors: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![d.vocab, h])];
    for l in 0..d.layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        for (n, s) in [
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.q_proj.bias", vec![q]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.k_proj.bias", vec![kv]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.bias", vec![kv]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("self_attn.o_proj.bias", vec![h]),
            ("self_attn.sinks", vec![d.heads]),
            ("mlp.router.weight", vec![d.experts, h]),
            ("mlp.router.bias", vec![d.experts]),
        ] {
            tensors.push((p(n), s));
        }
    }
    tensors.push(("model.norm.weight".into(), vec![h]));
    tensors.push(("lm_head.weight".into(), vec![d.vocab, h]));

    let tmp = out.with_extension("synth.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let mut specs: Vec<Spec> = tensors
        .iter()
        .map(|(n, s)| Spec::new(n.as_str(), Dtype::BF16, s))
        .collect();
    // Expert tensors, per layer, in the requested layout (written after the rest: merge
    // reads by name, so the order of a base does not matter).
    let mut expert_specs = Vec::new();
    for l in 0..d.layers {
        expert_specs.extend(expert_layout(l, d, store));
    }
    specs.extend(expert_specs.iter().map(|(s, _)| s.clone()));
    let naming = if store.is_mlx() {
        Naming::Mlx
    } else {
        Naming::HfZeroBased
    };
    let mut w = ShardedWriter::new(
        &tmp,
        specs,
        1 << 26,
        naming,
        if store.is_mlx() { "mlx" } else { "pt" },
    )?;
    let mut buf = Vec::new();
    for (n, s) in &tensors {
        let count: usize = s.iter().product();
        let v: Vec<f32> = if n.ends_with("norm.weight") {
            (0..count)
                .map(|_| 1.0 + rng.random_range(-0.1..0.1))
                .collect()
        } else {
            uniform(&mut rng, count, 0.035)
        };
        from_f32(&v, Dtype::BF16, &mut buf)?;
        w.write(n, &buf)?;
    }
    for (spec, kind) in &expert_specs {
        let count: usize = spec.shape.iter().product();
        match kind {
            Kind::Float => {
                from_f32(&uniform(&mut rng, count, 0.035), Dtype::BF16, &mut buf)?;
                w.write(&spec.name, &buf)?;
            }
            Kind::Packed(inp) => {
                // Quantize random values so the scales are realistic; write blocks, keep scales.
                let rows = spec.shape[0] * spec.shape[1];
                let v = uniform(&mut rng, rows * inp, 0.035);
                let mut b = vec![0u8; rows * inp / 2];
                let mut s = vec![0u8; rows * inp / 32];
                quantize_rows(&v, &mut b, &mut s)?;
                w.write(&spec.name, &b)?;
                buf = s;
            }
            Kind::Scales => w.write(&spec.name, &buf)?,
        }
    }
    w.finish()?;
    write_json(&tmp.join("config.json"), &{
        let mut c = config_json(d);
        if store.is_mxfp4() {
            let o = c.as_object_mut().context("config")?;
            if store.is_mlx() {
                let q = serde_json::json!({ "group_size": 32, "bits": 4, "mode": "mxfp4" });
                o.insert("quantization".into(), q.clone());
                o.insert("quantization_config".into(), q);
            } else {
                o.insert("quantization_config".into(), serde_json::json!({ "quant_method": "mxfp4",
                    "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                               "model.embed_tokens", "lm_head"] }));
            }
        }
        c
    })?;
    write_json(
        &tmp.join("generation_config.json"),
        &serde_json::json!({
        "bos_token_id": 199998, "eos_token_id": [200002, 199999, 200012], "pad_token_id": 199999 }),
    )?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

enum Kind {
    Float,
    Packed(usize),
    Scales,
}

fn expert_layout(l: usize, d: &Dims, store: Format) -> Vec<(Spec, Kind)> {
    let (e, h, i) = (d.experts, d.hidden, d.inter);
    let p = |leaf: &str| format!("model.layers.{l}.mlp.experts.{leaf}");
    let f = |n: String, s: &[usize]| (Spec::new(n, Dtype::BF16, s), Kind::Float);
    match store {
        Format::Hf => vec![
            f(p("gate_up_proj"), &[e, h, 2 * i]),
            f(p("gate_up_proj_bias"), &[e, 2 * i]),
            f(p("down_proj"), &[e, i, h]),
            f(p("down_proj_bias"), &[e, h]),
        ],
        Format::HfMxfp4 => {
            let mut v = Vec::new();
            for (leaf, rows, inp) in [("gate_up_proj", 2 * i, h), ("down_proj", h, i)] {
                v.push((
                    Spec::new(
                        p(&format!("{leaf}_blocks")),
                        Dtype::U8,
                        &[e, rows, inp / 32, 16],
                    ),
                    Kind::Packed(inp),
                ));
                v.push((
                    Spec::new(
                        p(&format!("{leaf}_scales")),
                        Dtype::U8,
                        &[e, rows, inp / 32],
                    ),
                    Kind::Scales,
                ));
                v.push(f(p(&format!("{leaf}_bias")), &[e, rows]));
            }
            v
        }
        Format::Mlx | Format::MlxMxfp4 => {
            let mut v = Vec::new();
            for (leaf, rows, inp) in [("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)] {
                if store == Format::Mlx {
                    v.push(f(p(&format!("{leaf}.weight")), &[e, rows, inp]));
                } else {
                    v.push((
                        Spec::new(
                            p(&format!("{leaf}.weight")),
                            Dtype::U32,
                            &[e, rows, inp / 8],
                        ),
                        Kind::Packed(inp),
                    ));
                    v.push((
                        Spec::new(
                            p(&format!("{leaf}.scales")),
                            Dtype::U8,
                            &[e, rows, inp / 32],
                        ),
                        Kind::Scales,
                    ));
                }
                v.push(f(p(&format!("{leaf}.bias")), &[e, rows]));
            }
            v
        }
    }
}
