//! The gpt-oss decoder (docs/gpt-oss.md §1.2):
//! embed → L × (x + Attn(RMSNorm(x)); x + MoE(RMSNorm(x))) → RMSNorm → untied lm_head. Loading lives in `load.rs`.

use crate::arch::attention::{Attention, LayerCache};
use crate::arch::moe::Moe;
use crate::arch::rope::RopeTable;
use crate::config::Config;
use crate::error::NonFinite;
use crate::kernels;
use crate::lora::adapter::Lora;
use crate::lora::targets::{self, LoraTarget, Target};
use crate::lora::LoraDropout;
use crate::quant::matrix::Matrix;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

#[derive(Debug, Clone)]
pub struct Block {
    /// `[H]` f32
    pub(crate) input_norm: Tensor,
    pub attn: Attention,
    /// `[H]` f32
    pub(crate) post_norm: Tensor,
    pub moe: Moe,
}

#[derive(Debug, Clone)]
pub struct GptOss {
    pub cfg: Config,
    /// `[V, H]`, frozen.
    pub(crate) embed: Matrix,
    pub layers: Vec<Block>,
    /// `[H]` f32
    pub norm: Tensor,
    /// `[V, H]`, frozen.
    pub lm_head: Matrix,
    /// The adapters of the model-level LoRA targets.
    pub(crate) lora: ModelLora,
    pub rope: RopeTable,
    pub device: Device,
    pub dtype: DType,
    /// `io::content_digest` of the checkpoint it was loaded from (None if unknown, or cleared
    /// to apply an adapter of another base on purpose).
    pub content_digest: Option<String>,
}

/// The adapter slots of the model-level LoRA targets (per-layer ones sit in their layer's
/// `Linear` / `Moe`). `Default` is none attached, so building a `GptOss` names no slot: a new
/// model-level target is a field here and its arm in [`GptOss::lora_slot`].
#[derive(Debug, Clone, Default)]
pub(crate) struct ModelLora {
    /// The lm_head's adapter (the `lm_head` target; off by default).
    pub(crate) lm_head: Option<Lora>,
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
    /// One decoder layer: `x + Attn(RMSNorm(x))`, then `+ MoE(RMSNorm(·))`. Also what the
    /// trainer's activation checkpointing recomputes.
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        offset: usize,
        eps: f64,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let h = kernels::rms_norm(x, &self.input_norm, eps)?;
        let x = (x + self.attn.forward(&h, cos, sin, offset, cache)?)?;
        let (b, t, hd) = x.dims3()?;
        let h = kernels::rms_norm(&x, &self.post_norm, eps)?.reshape((b * t, hd))?;
        let y = self.moe.forward(&h)?.reshape((b, t, hd))?;
        Ok((x + y)?)
    }
}

impl GptOss {
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn run(&self, ids: &Tensor, offset: usize, mut cache: Option<&mut Cache>) -> Result<Tensor> {
        let (_, t) = ids.dims2().context("input ids must be [B, T]")?;
        if t == 0 {
            bail!("empty input");
        }
        let v = self.cfg.vocab_size;
        let ids = ids.to_dtype(DType::U32)?;
        let max_id = ids.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
        if max_id >= v {
            bail!("token id {max_id} is outside the vocabulary (size {v})");
        }
        let mut x = self.embed_tokens(&ids)?;
        let (cos, sin) = self.rope.cos_sin(offset, t, &self.device)?;
        let eps = self.cfg.rms_norm_eps;
        // Inference checks each layer's output (one reduction a layer): a non-finite value is
        // named by the layer that produced it, not found layers later as a router NaN.
        let check = cache.is_some();
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
            if check {
                check_finite(&x, l)?;
            }
        }
        Ok(kernels::rms_norm(&x, &self.norm, eps)?)
    }

    /// `ids [B, T]` → embeddings `[B, T, H]`.
    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2().context("input ids must be [B, T]")?;
        let ids: Vec<u32> = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
        let x = self.embed.rows(&ids, self.dtype, &self.device)?;
        Ok(x.reshape((b, t, self.cfg.hidden_size))?)
    }

    /// Inference: `ids [B, T]` at positions `offset..offset+T` → logits `[B, T, V]`,
    /// extending `cache`.
    pub fn forward(&self, ids: &Tensor, offset: usize, cache: &mut Cache) -> Result<Tensor> {
        let h = self.run(ids, offset, Some(cache))?;
        self.logits(&h)
    }

    /// Inference for generation: like [`GptOss::forward`] but only the last position's
    /// logits `[B, V]`. A prompt of T tokens then costs one lm_head product instead of T
    /// (at gpt-oss sizes the lm_head is 201088 × 2880: as much work per position as ~20
    /// layers' routed experts).
    pub fn forward_last(&self, ids: &Tensor, offset: usize, cache: &mut Cache) -> Result<Tensor> {
        let h = self.run(ids, offset, Some(cache))?;
        let t = h.dim(1)?;
        self.logits(&h.narrow(1, t - 1, 1)?.squeeze(1)?)
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
        let h2 = hidden.reshape(((), hd))?;
        let mut y = kernels::linear(&h2, &self.lm_head, None)?;
        if let Some(l) = &self.lora.lm_head {
            y = (y + l.delta(&l.lora_input(&h2, None)?, None)?)?;
        }
        let last = shape.len() - 1;
        shape[last] = self.cfg.vocab_size;
        Ok(y.reshape(shape)?)
    }

    /// The lm_head's adapter, if attached (the trainer's loss forms the head's logits itself).
    pub fn lm_head_lora(&self) -> Option<&Lora> {
        self.lora.lm_head.as_ref()
    }

    /// Every adaptable projection (the registry's sites for this model's shape).
    pub fn lora_targets(&self) -> Vec<LoraTarget> {
        targets::all_sites(&self.cfg)
    }

    /// The adapter slot of `target` at `layer` (the one place that maps registry targets to
    /// the fields that hold their adapters).
    pub fn lora_slot(&mut self, target: Target, layer: usize) -> Result<&mut Option<Lora>> {
        if target == Target::LmHead {
            return Ok(&mut self.lora.lm_head);
        }
        let n = self.layers.len();
        let b = self
            .layers
            .get_mut(layer)
            .with_context(|| format!("{target} at layer {layer}: the model has {n} layers"))?;
        Ok(match target {
            Target::Q => &mut b.attn.q_proj.lora,
            Target::K => &mut b.attn.k_proj.lora,
            Target::V => &mut b.attn.v_proj.lora,
            Target::O => &mut b.attn.o_proj.lora,
            Target::Router => &mut b.moe.router.lora,
            Target::Gate => &mut b.moe.lora.gate,
            Target::Up => &mut b.moe.lora.up,
            Target::Down => &mut b.moe.lora.down,
            Target::LmHead => unreachable!("handled above"),
        })
    }

    /// Calls `f` with every adaptable site and its slot, in registry order.
    pub fn visit_lora(
        &mut self,
        mut f: impl FnMut(&LoraTarget, &mut Option<Lora>) -> Result<()>,
    ) -> Result<()> {
        for site in self.lora_targets() {
            let slot = self.lora_slot(site.target, site.layer)?;
            f(&site, slot)?;
        }
        Ok(())
    }

    /// Attaches (or replaces) the adapter of projection `name` (a `lora_targets()` name),
    /// after checking its factors fit that projection.
    pub fn attach_lora(&mut self, name: &str, adapter: Lora) -> Result<()> {
        let site = self
            .lora_targets()
            .into_iter()
            .find(|t| t.name == name)
            .with_context(|| format!("unknown LoRA target {name}"))?;
        adapter.check(&site)?;
        *self.lora_slot(site.target, site.layer)? = Some(adapter);
        Ok(())
    }

    /// Removes every adapter (the forward is the base model again).
    pub fn clear_lora(&mut self) {
        // Cannot fail: every registry site of this model has a slot.
        let _ = self.visit_lora(|_, slot| {
            *slot = None;
            Ok(())
        });
    }

    /// Turns LoRA dropout on for the forwards that follow (`Some`: p and this forward's seed)
    /// or off (`None`, or p = 0). Every attached adapter gets `d.for_target(its name)`;
    /// adapters attached later start without dropout. The trainer sets it around each training
    /// micro-step only (see `lora::dropout`).
    pub fn set_lora_dropout(&mut self, d: Option<LoraDropout>) {
        let d = d.filter(|d| d.p > 0.0);
        let _ = self.visit_lora(|site, slot| {
            if let Some(l) = slot {
                l.set_dropout(d.map(|d| d.for_target(&site.name)));
            }
            Ok(())
        });
    }
}

/// Errors with [`NonFinite`] naming layer `l` (and the weights it reads) when its output `x`
/// holds a NaN or ±inf: any such value makes the sum non-finite.
pub fn check_finite(x: &Tensor, l: usize) -> Result<()> {
    let sum = x.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    if sum.is_finite() {
        return Ok(());
    }
    Err(NonFinite {
        what: format!(
            "layer {l} produced a non-finite value (its weights: model.layers.{l}.*; the weights \
             were finite when loaded, so an activation overflowed)"
        ),
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_finite_names_the_layer() {
        let ok = Tensor::new(&[[1f32, -2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        assert!(check_finite(&ok, 0).is_ok());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let t = Tensor::new(&[[1f32, bad]], &Device::Cpu).unwrap();
            let e = check_finite(&t, 7).unwrap_err();
            assert!(NonFinite::in_chain(&e), "{e:#}");
            assert!(e.to_string().contains("layer 7"), "{e:#}");
        }
    }
}
