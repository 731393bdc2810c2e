//! `osstune train --plan`: predicted peak memory of a run, without training.
//!
//! Terms (bytes):
//! - weights (from the safetensors headers): where the kernels read weights in place (CPU,
//!   f32 compute) the checkpoint's bytes as stored — its memory map, every page of which the
//!   load-time value scan reads — plus f32 heap copies of the small tensors (norms, biases,
//!   sinks); otherwise every float tensor at the compute dtype and packed MXFP4 / affine
//!   expert bytes as stored;
//! - LoRA: f32 factors; gradients: the step's accumulator plus one micro-batch's (2×);
//!   optimizer: one Muon momentum buffer per factor (every LoRA factor is ≥ 2-D);
//! - activations of one micro-batch (B × T tokens) kept for backward, per layer: the
//!   projections, the attention state (on CPU f32 the fused attention keeps one
//!   log-sum-exp per query row and head; elsewhere the composed path keeps [Hq, T, T] scores
//!   and probabilities for every layer, sliding ones included), the MoE intermediates of the k routed
//!   experts, and the LoRA intermediates; plus, with quantized experts, the dequantized
//!   expert matrices the autograd graph holds until backward, and on CPU f32 the packed copy
//!   of each layer's expert adapters the fused MoE op takes;
//! - backward workspace: candle's matmul backward also forms the gradient of every frozen
//!   matrix it multiplied by (it has no "requires_grad=False"); the model's `kernels::linear`
//!   avoids that on CPU f32, but its fallback (bf16, GPU) still does, so a dense copy of the
//!   used weights exists at the end of backward there — counted for those cases;
//! - the loss: on CPU f32 one block of ≤ 512 rows (≤ 8 M logits) per thread; elsewhere
//!   B × loss_chunk trained rows × V logits (tensor, host copy, gradient and its tensor: 4
//!   copies).
//!
//! The kernel-dependent terms (attention state, MoE rows, packed adapters, frozen-weight
//! gradients, the loss workspace) come from `osstune_model::kernels::memory`, asked for the
//! backend the kernels pick for the configured device and dtype.
//!
//! With `activation_checkpointing` only one layer's activations (and dequantized experts, and
//! frozen-weight gradients) exist at a time, plus the L layer inputs.
//!
//! The constants were fitted once against measured peak RSS (`osstune bench train` prints
//! both; tests/train.rs checks the prediction on the tiny configs); treat the total as ±30%.

use crate::config::TrainConfig;
use anyhow::{Context, Result};
use candle_core::DeviceLocation;
use osstune_model::device::resolve_dtype;
use osstune_model::io::tensor_bounds;
use osstune_model::kernels::{self, memory};
use osstune_model::{Config, LoraTarget, Target};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Plan {
    pub weights: u64,
    pub lora: u64,
    pub grads: u64,
    pub optimizer: u64,
    pub activations: u64,
    pub backward: u64,
    pub loss_chunk: u64,
    pub runtime: u64,
    pub trainable_params: u64,
    pub checkpointing: bool,
}

impl Plan {
    pub fn total(&self) -> u64 {
        self.weights
            + self.lora
            + self.grads
            + self.optimizer
            + self.activations
            + self.backward
            + self.loss_chunk
            + self.runtime
    }

    pub fn render(&self) -> String {
        let g = |b: u64| format!("{:>10.1} MiB", b as f64 / (1u64 << 20) as f64);
        let mut s = String::new();
        s.push_str(&format!("weights                {}\n", g(self.weights)));
        s.push_str(&format!(
            "LoRA ({} params)  {}\n",
            self.trainable_params,
            g(self.lora)
        ));
        s.push_str(&format!("gradients              {}\n", g(self.grads)));
        s.push_str(&format!("optimizer state        {}\n", g(self.optimizer)));
        s.push_str(&format!(
            "activations{}  {}\n",
            if self.checkpointing {
                " (ckpt)    "
            } else {
                "           "
            },
            g(self.activations)
        ));
        s.push_str(&format!("backward workspace     {}\n", g(self.backward)));
        s.push_str(&format!("loss chunk             {}\n", g(self.loss_chunk)));
        s.push_str(&format!("runtime                {}\n", g(self.runtime)));
        s.push_str(&format!("predicted peak         {}\n", g(self.total())));
        s
    }
}

/// Resident bytes of the checkpoint's tensors once loaded, and how many of them are packed
/// (integer-typed) expert bytes. `mapped`: float matrices stay as stored in the memory map and
/// only the other float tensors (norms, biases, sinks) get f32 heap copies; otherwise every
/// float tensor is held at `elem` bytes per element.
fn weight_bytes(dir: &Path, elem: u64, mapped: bool) -> Result<(u64, u64)> {
    let mut total = 0u64;
    let mut packed = 0u64;
    let rd = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in rd {
        let p = e?.path();
        if p.extension().and_then(|x| x.to_str()) != Some("safetensors") {
            continue;
        }
        for t in tensor_bounds::read_header(&p)? {
            let numel: u64 = t.shape.iter().product();
            let stored = t.end - t.start;
            match t.dtype.as_str() {
                "U8" | "U32" | "I8" => {
                    total += stored;
                    packed += stored;
                }
                _ if mapped && t.name.ends_with(".weight") && t.shape.len() == 2 => total += stored,
                _ if mapped => total += stored + 4 * numel,
                _ => total += numel * elem,
            }
        }
    }
    Ok((total, packed))
}

/// Checkpoint bytes computed from the architecture alone: experts packed as MXFP4 (4-bit values
/// plus one scale byte per 32) when `mxfp4`, everything else at the compute dtype.
fn weights_from_config(mc: &Config, elem: u64, mxfp4: bool) -> u64 {
    let (h, i, e) = (
        mc.hidden_size as u64,
        mc.intermediate_size as u64,
        mc.num_local_experts as u64,
    );
    let (hq, hkv, d) = (
        mc.num_attention_heads as u64,
        mc.num_key_value_heads as u64,
        mc.head_dim as u64,
    );
    let expert_matrices = e * 3 * i * h;
    let experts = if mxfp4 {
        expert_matrices * 17 / 32
    } else {
        expert_matrices * elem
    };
    let expert_biases = e * (2 * i + h) * elem;
    let attention = (2 * hq * d * h + 2 * hkv * d * h + (hq + 2 * hkv) * d + h + hq) * elem;
    let router_norms = (h * e + e + 2 * h) * elem;
    let per_layer = experts + expert_biases + attention + router_norms;
    let embeddings = (2 * mc.vocab_size as u64 * h + h) * elem;
    per_layer * mc.num_hidden_layers as u64 + embeddings
}

/// Where tensors on `model.device` would live, for the kernels' backend rule (planning opens
/// no device, so a GPU run can be planned on a machine without one).
fn device_location(name: &str) -> Result<DeviceLocation> {
    Ok(match name {
        "cpu" => DeviceLocation::Cpu,
        "cuda" => DeviceLocation::Cuda { gpu_id: 0 },
        "metal" => DeviceLocation::Metal { gpu_id: 0 },
        _ => anyhow::bail!("model.device: unknown device {name:?} (cpu, cuda, metal)"),
    })
}

/// Predicts the peak memory of training `cfg` on the model in `model_dir`.
pub fn plan(cfg: &TrainConfig, model_dir: &Path) -> Result<Plan> {
    let mc = Config::from_model_dir(model_dir)?;
    let dtype = resolve_dtype(&cfg.model.dtype, &cfg.model.device)?;
    let elem = dtype.size_in_bytes() as u64;
    // What the kernels keep depends on the backend they pick for these tensors.
    let backend = kernels::backend_at(device_location(&cfg.model.device)?, dtype);
    let mapped = memory::weights_stay_mapped(backend);
    let (mut weights, packed) = weight_bytes(model_dir, elem, mapped)?;
    let mut quantized = packed > 0;
    if weights == 0 {
        // A folder with only config.json (planning before downloading): count from shapes.
        let mxfp4 = mc
            .quantization_config
            .as_ref()
            .and_then(|q| q.get("quant_method"))
            .and_then(|m| m.as_str())
            == Some("mxfp4");
        // Mapped weights stay as released: bf16 (the small f32 heap copies are negligible).
        weights = weights_from_config(&mc, if mapped { 2 } else { elem }, mxfp4);
        quantized = mxfp4;
    }
    let (h, i, e, k) = (
        mc.hidden_size as u64,
        mc.intermediate_size as u64,
        mc.num_local_experts as u64,
        mc.num_experts_per_tok as u64,
    );
    let (hq, hkv, d) = (
        mc.num_attention_heads as u64,
        mc.num_key_value_heads as u64,
        mc.head_dim as u64,
    );
    let v = mc.vocab_size as u64;
    let n_layers = mc.num_hidden_layers as u64;
    let r = cfg.lora.rank as u64;
    let adapted = if cfg.lora.layers == 0 {
        n_layers
    } else {
        (cfg.lora.layers as u64).min(n_layers)
    };
    // LoRA parameters from the target registry: per-layer targets in every adapted layer,
    // model-level ones (lm_head) once.
    let chosen = cfg
        .lora
        .targets
        .iter()
        .map(|t| Target::parse(t).map(|t| LoraTarget::new(t, 0, &mc)))
        .collect::<Result<Vec<_>>>()?;
    let params = |per_layer: bool, experts: bool| -> u64 {
        chosen
            .iter()
            .filter(|s| s.target.per_layer() == per_layer && s.target.is_expert() == experts)
            .map(|s| s.params(cfg.lora.rank) as u64)
            .sum()
    };
    let expert_lora = params(true, true);
    let per_layer_lora = params(true, false) + expert_lora;
    let model_lora = params(false, false) + params(false, true);
    let trainable = per_layer_lora * adapted + model_lora;
    let lora = trainable * 4;
    let grads = 2 * lora;
    let optimizer = lora;

    let b = cfg.train.micro_batch as u64;
    let t = cfg.data.max_seq_len as u64;
    let tokens = b * t;
    let n_targets = chosen.iter().filter(|s| s.target.per_layer()).count() as u64;
    let attn_per_head = memory::attention_floats_per_row(backend, t);
    let moe_per_row = memory::moe_floats_per_routed_row(backend, h, i);
    // Floats kept per token per layer (see the module docs for what they are).
    let per_token = 8 * h
        + 4 * (hq + 2 * hkv) * d
        + hq * attn_per_head
        + k * moe_per_row
        + 3 * e
        + 4 * r * n_targets;
    let layer_act = tokens * per_token * elem;
    // Experts a micro-batch touches: at most E per layer (all of them once B·T·k ≥ E).
    let used = e.min(tokens * k);
    let dense_expert_layer = used * 3 * i * h * elem;
    // Packed experts left in the map are dequantized a tile at a time inside the kernels.
    let deq_layer = if quantized && !mapped {
        dense_expert_layer
    } else {
        0
    };
    let attn_w = (2 * hq * d * h + 2 * hkv * d * h + e * h) * elem;
    let frozen_grad_layer = if memory::linear_forms_weight_grad(backend) {
        dense_expert_layer + attn_w
    } else {
        0
    };
    let packed_layer = memory::moe_packed_adapter_bytes(backend, expert_lora);
    let checkpointing = cfg.train.activation_checkpointing;
    let (activations, backward) = if checkpointing {
        (
            n_layers * tokens * h * elem + layer_act + deq_layer + packed_layer,
            frozen_grad_layer,
        )
    } else {
        (
            n_layers * (layer_act + deq_layer) + adapted * packed_layer,
            n_layers * frozen_grad_layer,
        )
    };
    let loss_chunk = memory::linear_cross_entropy_bytes(
        backend,
        memory::LossShape {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()) as u64,
            vocab: v,
            hidden: h,
            rows: tokens,
            chunk_rows: b * (cfg.train.loss_chunk as u64).min(t),
        },
    );
    Ok(Plan {
        weights,
        lora,
        grads,
        optimizer,
        activations,
        backward,
        loss_chunk,
        runtime: 48 << 20,
        trainable_params: trainable,
        checkpointing,
    })
}

/// Peak resident set size of this process so far (Linux `VmHWM`), in bytes.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
