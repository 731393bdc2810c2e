//! What a forward pass or a training step has to do, counted from the config alone: weight
//! bytes read per decoded token and floating-point operations (FLOP = 2 × multiply-adds).
//! Pure functions, so the bench's "fraction of the machine's bound" lines rest on counts that
//! the unit tests check by hand.

use anyhow::{Context, Result};
use osstune_model::{Config, LoraTarget};
use std::path::Path;

/// How a checkpoint stores its weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightFormat {
    /// Bytes per element of every non-expert tensor (bf16 2, f32 4).
    pub dense_bytes: u64,
    /// Experts packed as MXFP4 (`*_blocks` + `*_scales`: 17 bytes per 32 weights); else dense
    /// at `dense_bytes`.
    pub mxfp4_experts: bool,
}

impl WeightFormat {
    pub fn describe(&self) -> String {
        let d = match self.dense_bytes {
            2 => "bf16".to_string(),
            4 => "f32".to_string(),
            n => format!("{n}-byte"),
        };
        let e = if self.mxfp4_experts { "mxfp4" } else { &d };
        format!("{d} weights, {e} experts")
    }
}

/// Bytes of one `[rows, cols]` matrix of experts' weights in format `f`.
fn expert_matrix_bytes(rows: u64, cols: u64, f: WeightFormat) -> u64 {
    if f.mxfp4_experts {
        // 32 weights: 16 bytes of 4-bit codes + 1 scale byte.
        rows * (cols / 32) * 17
    } else {
        rows * cols * f.dense_bytes
    }
}

/// Weight bytes a decode step reads for one token: per layer the two norm vectors, the
/// attention q/k/v/o weights and biases, the sinks, the router (weight + bias) and the top_k
/// routed experts' gate_up and down weights (MXFP4 blocks + scales, or dense) and biases;
/// then the final norm, ONE embedding row and the whole lm_head. KV-cache reads are not
/// counted (small next to the weights at short contexts).
pub fn decode_bytes_per_token(c: &Config, f: WeightFormat) -> u64 {
    let w = f.dense_bytes;
    let (h, i, v) = (
        c.hidden_size as u64,
        c.intermediate_size as u64,
        c.vocab_size as u64,
    );
    let (heads, d) = (c.num_attention_heads as u64, c.head_dim as u64);
    let (q, kv) = (heads * d, c.num_key_value_heads as u64 * d);
    let (e, k) = (c.num_local_experts as u64, c.num_experts_per_tok as u64);
    let bias = |n: u64| if c.attention_bias { n } else { 0 };
    let attn = (h * q + bias(q)) + 2 * (h * kv + bias(kv)) + (q * h + bias(h));
    let norms = 2 * h;
    let sinks = heads;
    let router = e * h + e;
    let dense_elems = attn + norms + sinks + router + k * (2 * i + h); // + expert biases
    let experts = k * (expert_matrix_bytes(2 * i, h, f) + expert_matrix_bytes(h, i, f));
    let layer = dense_elems * w + experts;
    c.num_hidden_layers as u64 * layer + (h + h + v * h) * w
}

/// Multiply-adds of the frozen linear maps of one decoder layer for one token: q/k/v/o, the
/// router and the top_k routed experts' gate_up and down.
fn layer_linear_macs(c: &Config) -> u64 {
    let (h, i) = (c.hidden_size as u64, c.intermediate_size as u64);
    let d = c.head_dim as u64;
    let (q, kv) = (
        c.num_attention_heads as u64 * d,
        c.num_key_value_heads as u64 * d,
    );
    let (e, k) = (c.num_local_experts as u64, c.num_experts_per_tok as u64);
    h * q + 2 * h * kv + q * h + h * e + k * (h * 2 * i + i * h)
}

/// Multiply-adds of the attention core (scores Q·Kᵀ and values P·V) of one sequence of `n`
/// tokens over all layers: the query at position t sees t+1 keys, or min(t+1, window) on
/// sliding layers; each key costs head_dim MACs per query head for the score and as many for
/// the value.
fn attention_core_macs(c: &Config, n: u64) -> u64 {
    let per_key = 2 * c.num_attention_heads as u64 * c.head_dim as u64;
    let full = n * (n + 1) / 2;
    let w = c.window() as u64;
    let sliding = if n <= w {
        full
    } else {
        w * (w + 1) / 2 + (n - w) * w
    };
    (0..c.num_hidden_layers)
        .map(|l| per_key * if c.is_sliding(l) { sliding } else { full })
        .sum()
}

/// FLOP of a prefill of `n` prompt tokens: 2 × (n × layers × the linear maps of a layer + the
/// attention core for the prompt + the lm_head for the last position only).
pub fn prefill_flops(c: &Config, n: usize) -> u64 {
    let n = n as u64;
    let lm_head = c.hidden_size as u64 * c.vocab_size as u64;
    2 * (n * c.num_hidden_layers as u64 * layer_linear_macs(c)
        + attention_core_macs(c, n)
        + lm_head)
}

/// LoRA multiply-adds per token of adapters `targets` at rank `r`: x·A then ·B is r·(in + out)
/// per matrix; an expert target costs that for each of the top_k experts a token is routed to.
pub fn lora_macs_per_token(c: &Config, targets: &[LoraTarget], r: usize) -> u64 {
    targets
        .iter()
        .map(|t| {
            let per = (r * (t.in_dim + t.out_dim)) as u64;
            if t.experts.is_some() {
                c.num_experts_per_tok as u64 * per
            } else {
                per
            }
        })
        .sum()
}

/// FLOP of one LoRA training step (forward with the loss + backward) on `batch` rows of `seq`
/// trained positions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainFlops {
    pub forward: u64,
    pub backward: u64,
    /// The extra decoder forward of activation checkpointing (0 without it).
    pub recompute: u64,
}

impl TrainFlops {
    pub fn total(&self) -> u64 {
        self.forward + self.backward + self.recompute
    }
}

/// FLOP per training step, with F = 2 × MACs:
///
/// - forward = F_frozen + F_attn + F_lora, where F_frozen is every position through the
///   frozen linear maps of every layer (q/k/v/o, router, top_k experts) plus the lm_head on
///   every position (training computes all logits), F_attn the attention core of each row
///   (causal, windowed on sliding layers) and F_lora the adapters;
/// - backward = F_frozen (the input gradients dX = dY·Wᵀ through the frozen weights: one
///   matmul of the forward's size each; no weight gradient is formed for a frozen weight),
///   plus 2·F_attn (dQ, dK, dP, dV: twice the core's two products), plus 2·F_lora (input
///   gradients and the A/B parameter gradients);
/// - so total = 2·F_frozen + 3·F_attn + 3·F_lora, plus with activation checkpointing one
///   more decoder forward (F_frozen without the lm_head, + F_attn + F_lora).
///
/// (The usual "backward ≈ 2× forward" counts a weight gradient for every matrix; with frozen
/// base weights only the input gradients and the small LoRA gradients are computed.)
/// Elementwise work (norms, softmax, SwiGLU, rope, the loss) is not counted.
pub fn train_flops(
    c: &Config,
    batch: usize,
    seq: usize,
    lora_macs: u64,
    activation_checkpointing: bool,
) -> TrainFlops {
    let tokens = (batch * seq) as u64;
    let layers_linear = tokens * c.num_hidden_layers as u64 * layer_linear_macs(c);
    let lm_head = tokens * c.hidden_size as u64 * c.vocab_size as u64;
    let f_frozen = 2 * (layers_linear + lm_head);
    let f_attn = 2 * batch as u64 * attention_core_macs(c, seq as u64);
    let f_lora = 2 * tokens * lora_macs;
    TrainFlops {
        forward: f_frozen + f_attn + f_lora,
        backward: f_frozen + 2 * f_attn + 2 * f_lora,
        recompute: if activation_checkpointing {
            2 * layers_linear + f_attn + f_lora
        } else {
            0
        },
    }
}

/// The storage format of a checkpoint directory, read from its safetensors headers (the dtype
/// of layer 0's q_proj weight, and whether its experts are MXFP4 `*_blocks`). `None` for
/// layouts it does not recognise (e.g. MLX-quantized attention).
pub fn weight_format(dir: &Path) -> Result<Option<WeightFormat>> {
    let files: Vec<std::path::PathBuf> = {
        let index = dir.join("model.safetensors.index.json");
        if index.exists() {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&index)?)?;
            let mut names: Vec<String> = v["weight_map"]
                .as_object()
                .context("index without weight_map")?
                .values()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        }
    };
    let (mut q_dtype, mut blocks) = (None, false);
    for f in files {
        let h = safetensors_header(&f)?;
        if let Some(t) = h.get("model.layers.0.self_attn.q_proj.weight") {
            q_dtype = t["dtype"].as_str().map(str::to_string);
        }
        blocks |= h
            .as_object()
            .is_some_and(|o| o.contains_key("model.layers.0.mlp.experts.gate_up_proj_blocks"));
    }
    let dense_bytes = match q_dtype.as_deref() {
        Some("BF16") | Some("F16") => 2,
        Some("F32") => 4,
        _ => return Ok(None),
    };
    Ok(Some(WeightFormat {
        dense_bytes,
        mxfp4_experts: blocks,
    }))
}

/// The JSON header of a safetensors file (8-byte little-endian length, then the JSON).
fn safetensors_header(path: &Path) -> Result<serde_json::Value> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)?;
    let n = u64::from_le_bytes(n);
    anyhow::ensure!(n < 1 << 30, "{}: implausible header size", path.display());
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf)?;
    serde_json::from_slice(&buf).with_context(|| format!("{}: bad header", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use osstune_model::io::tiny::{config_for, ModelShape};
    use osstune_model::Target;

    /// hidden 64, 2 layers (sliding, full), 4 heads / 2 kv × head_dim 16, 8 experts top-2,
    /// intermediate 32, vocab 100, window 4.
    fn tiny() -> Config {
        let s = ModelShape {
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            experts: 8,
            top_k: 2,
            inter: 32,
            vocab: 100,
            window: 4,
            dtype: DType::BF16,
        };
        Config::from_json(&config_for(&s, true).to_string()).unwrap()
    }

    #[test]
    fn decode_bytes_by_hand() {
        let c = tiny();
        // Per layer, elements at 2 bytes:
        //   q 64·64 + 64 = 4160; k, v 64·32 + 32 = 2080 each; o 64·64 + 64 = 4160 → 12480
        //   norms 128, sinks 4, router 8·64 + 8 = 520
        //   expert biases of 2 experts: 2·(64 + 64) = 256
        //   → 13388 elements = 26776 bytes
        // MXFP4 experts, 2 of them: gate_up 64 rows × 2 blocks × 17 = 2176,
        //   down 64 rows × 1 block × 17 = 1088 → 2·3264 = 6528 bytes
        // Layer: 33304 bytes; 2 layers 66608.
        // Final norm 64 + embedding row 64 + lm_head 6400 = 6528 elements = 13056 bytes.
        let f = WeightFormat {
            dense_bytes: 2,
            mxfp4_experts: true,
        };
        assert_eq!(decode_bytes_per_token(&c, f), 66608 + 13056);
        // Dense f32: per layer 13388·4 = 53552 + experts 2·(64·64 + 64·32)·4 = 49152
        // → 102704; ×2 = 205408; + 6528·4 = 26112.
        let f = WeightFormat {
            dense_bytes: 4,
            mxfp4_experts: false,
        };
        assert_eq!(decode_bytes_per_token(&c, f), 205408 + 26112);
    }

    #[test]
    fn prefill_flops_by_hand() {
        let c = tiny();
        assert!(c.is_sliding(0) && !c.is_sliding(1));
        // Linear MACs per token per layer: q 4096 + k,v 2·2048 + o 4096 + router 512
        //   + 2 experts·(64·64 + 32·64) = 12288 → 25088.
        // 6 tokens, 2 layers: 301056.
        // Attention core, 128 MACs per key (2·4 heads·16): full layer 1+…+6 = 21 keys,
        //   sliding (window 4) 1+2+3+4+4+4 = 18 → 39·128 = 4992.
        // lm_head for the last position: 6400.
        assert_eq!(prefill_flops(&c, 6), 2 * (301056 + 4992 + 6400));
    }

    #[test]
    fn train_flops_by_hand() {
        let c = tiny();
        let targets: Vec<LoraTarget> = [Target::Q, Target::Gate]
            .into_iter()
            .map(|t| LoraTarget::new(t, 0, &c))
            .collect();
        // rank 2: q 2·(64 + 64) = 256; gate 2 experts · 2·(64 + 32) = 384.
        let lora = lora_macs_per_token(&c, &targets, 2);
        assert_eq!(lora, 640);
        // batch 2 × seq 6 = 12 tokens: linear 12·2·25088 = 602112, lm_head 12·6400 = 76800,
        // attention 2 rows · 4992 = 9984, LoRA 12·640 = 7680 (MACs).
        let t = train_flops(&c, 2, 6, lora, false);
        let (fr, at, lo) = (2 * (602112 + 76800), 2 * 9984, 2 * 7680);
        assert_eq!(t.forward, fr + at + lo);
        assert_eq!(t.backward, fr + 2 * at + 2 * lo);
        assert_eq!(t.recompute, 0);
        let t = train_flops(&c, 2, 6, lora, true);
        assert_eq!(t.recompute, 2 * 602112 + at + lo);
    }
}
