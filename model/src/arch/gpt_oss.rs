//! The gpt-oss decoder (spec §1.2): embed → L × (x + Attn(RMSNorm(x)); x + MoE(RMSNorm(x)))
//! → RMSNorm → untied lm_head. Loading lives in `load.rs`.

use crate::arch::attention::{Attention, LayerCache};
use crate::arch::moe::Moe;
use crate::arch::rope::RopeTable;
use crate::config::Config;
use crate::kernels::cpu::ops;
use crate::lora::adapter::{check_linear, check_switch, LoraAdapter, LoraTarget};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

#[derive(Debug, Clone)]
pub struct Block {
    /// `[H]` f32
    pub input_norm: Tensor,
    pub attn: Attention,
    /// `[H]` f32
    pub post_norm: Tensor,
    pub moe: Moe,
}

#[derive(Debug, Clone)]
pub struct GptOss {
    pub cfg: Config,
    /// `[V, H]`
    pub embed: Tensor,
    pub layers: Vec<Block>,
    /// `[H]` f32
    pub norm: Tensor,
    /// `[V, H]`
    pub lm_head: Tensor,
    pub rope: RopeTable,
    pub device: Device,
    pub dtype: DType,
}

/// Per-layer KV cache for incremental decoding.
#[derive(Debug, Clone)]
pub struct Cache {
    pub layers: Vec<LayerCache>,
}

impl Cache {
    pub fn new(cfg: &Config) -> Self {
        Self {
            layers: vec![LayerCache::default(); cfg.num_hidden_layers],
        }
    }

    /// Keys held by layer `l` (sliding layers hold at most the window).
    pub fn layer_len(&self, l: usize) -> usize {
        self.layers.get(l).map_or(0, |c| c.len())
    }

    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|c| c.kv = None);
    }
}

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        offset: usize,
        eps: f64,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let h = ops::rms_norm(x, &self.input_norm, eps)?;
        let x = (x + self.attn.forward(&h, cos, sin, offset, cache)?)?;
        let (b, t, hd) = x.dims3()?;
        let h = ops::rms_norm(&x, &self.post_norm, eps)?.reshape((b * t, hd))?;
        let y = self.moe.forward(&h)?.reshape((b, t, hd))?;
        Ok((x + y)?)
    }
}

impl GptOss {
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn run(&self, ids: &Tensor, offset: usize, mut cache: Option<&mut Cache>) -> Result<Tensor> {
        let (b, t) = ids.dims2().context("input ids must be [B, T]")?;
        if t == 0 {
            bail!("empty input");
        }
        let v = self.cfg.vocab_size;
        let ids = ids.to_dtype(DType::U32)?;
        let max_id = ids.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
        if max_id >= v {
            bail!("token id {max_id} is outside the vocabulary (size {v})");
        }
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((
            b,
            t,
            self.cfg.hidden_size,
        ))?;
        let (cos, sin) = self.rope.cos_sin(offset, t, &self.device)?;
        let eps = self.cfg.rms_norm_eps;
        for (l, block) in self.layers.iter().enumerate() {
            let c = match cache.as_deref_mut() {
                Some(c) => Some(
                    c.layers
                        .get_mut(l)
                        .context("cache has fewer layers than the model")?,
                ),
                None => None,
            };
            x = block
                .forward(&x, &cos, &sin, offset, eps, c)
                .with_context(|| format!("layer {l}"))?;
        }
        Ok(ops::rms_norm(&x, &self.norm, eps)?)
    }

    /// Inference: `ids [B, T]` at positions `offset..offset+T` → logits `[B, T, V]`,
    /// extending `cache`.
    pub fn forward(&self, ids: &Tensor, offset: usize, cache: &mut Cache) -> Result<Tensor> {
        let h = self.run(ids, offset, Some(cache))?;
        self.logits(&h)
    }

    /// Training: final-normed hidden states `[B, T, H]` for positions `0..T` (no cache).
    /// Right padding needs no mask: attention is causal.
    pub fn forward_hidden(&self, ids: &Tensor) -> Result<Tensor> {
        self.run(ids, 0, None)
    }

    /// `hidden [..., H]` (from `forward_hidden`) → logits `[..., V]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let hd = self.cfg.hidden_size;
        let mut shape = hidden.dims().to_vec();
        let y = ops::linear(&hidden.reshape(((), hd))?, &self.lm_head, None)?;
        let last = shape.len() - 1;
        shape[last] = self.cfg.vocab_size;
        Ok(y.reshape(shape)?)
    }

    /// Every adaptable projection, in layer order (names per docs/design.md §2).
    pub fn lora_targets(&self) -> Vec<LoraTarget> {
        let c = &self.cfg;
        let (h, d) = (c.hidden_size, c.head_dim);
        let (q, kv) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        let (e, i) = (c.num_local_experts, c.intermediate_size);
        let mut out = Vec::new();
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let dense = |name: String, in_dim, out_dim| LoraTarget {
                name,
                in_dim,
                out_dim,
                experts: None,
            };
            out.push(dense(format!("{p}.self_attn.q_proj"), h, q));
            out.push(dense(format!("{p}.self_attn.k_proj"), h, kv));
            out.push(dense(format!("{p}.self_attn.v_proj"), h, kv));
            out.push(dense(format!("{p}.self_attn.o_proj"), q, h));
            out.push(dense(format!("{p}.mlp.router"), h, e));
            for (n, i_d, o_d) in [("gate_proj", h, i), ("up_proj", h, i), ("down_proj", i, h)] {
                out.push(LoraTarget {
                    name: format!("{p}.mlp.experts.{n}"),
                    in_dim: i_d,
                    out_dim: o_d,
                    experts: Some(e),
                });
            }
        }
        out
    }

    /// Attaches (or replaces) the adapter of projection `name` (a `lora_targets()` name).
    pub fn attach_lora(&mut self, name: &str, adapter: impl Into<LoraAdapter>) -> Result<()> {
        let target = self
            .lora_targets()
            .into_iter()
            .find(|t| t.name == name)
            .with_context(|| format!("unknown LoRA target {name}"))?;
        let layer = target.layer().context("target without a layer index")?;
        let block = &mut self.layers[layer];
        match adapter.into() {
            LoraAdapter::Linear(l) => {
                check_linear(&target, &l)?;
                let slot = match target.kind() {
                    "q_proj" => &mut block.attn.q_proj.lora,
                    "k_proj" => &mut block.attn.k_proj.lora,
                    "v_proj" => &mut block.attn.v_proj.lora,
                    "o_proj" => &mut block.attn.o_proj.lora,
                    "router" => &mut block.moe.router.lora,
                    other => bail!("{name}: no dense slot {other}"),
                };
                *slot = Some(l);
            }
            LoraAdapter::Switch(l) => {
                check_switch(&target, &l)?;
                let slot = match target.kind() {
                    "gate_proj" => &mut block.moe.gate_lora,
                    "up_proj" => &mut block.moe.up_lora,
                    "down_proj" => &mut block.moe.down_lora,
                    other => bail!("{name}: no expert slot {other}"),
                };
                *slot = Some(l);
            }
        }
        Ok(())
    }

    /// Removes every adapter (the forward is the base model again).
    pub fn clear_lora(&mut self) {
        for b in &mut self.layers {
            b.attn.q_proj.lora = None;
            b.attn.k_proj.lora = None;
            b.attn.v_proj.lora = None;
            b.attn.o_proj.lora = None;
            b.moe.router.lora = None;
            b.moe.gate_lora = None;
            b.moe.up_lora = None;
            b.moe.down_lora = None;
        }
    }
}
