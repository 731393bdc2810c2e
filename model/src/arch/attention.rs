//! gpt-oss attention (docs/gpt-oss.md §1.4): biased q/k/v/o, GQA, half-split YaRN RoPE,
//! learned sinks, causal mask with an optional sliding window of W keys including the query itself.

use crate::arch::linear::Linear;
use crate::kernels::{self, AttentionShape, CausalMask};
use anyhow::Result;
use candle_core::Tensor;

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// `[Hq]` f32
    pub sinks: Tensor,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// `Some(W)` on sliding layers.
    pub window: Option<usize>,
}

/// Keys and values seen so far by one layer, `[B, Hkv, Tk, D]`. Sliding layers keep at most
/// the window.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    pub kv: Option<(Tensor, Tensor)>,
}

impl LayerCache {
    pub fn len(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Attention {
    /// `x [B, T, H]` at absolute positions `offset..offset+T`; `cos`/`sin` `[T, D/2]` f32.
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        offset: usize,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let t = x.dims()[1];
        let shape = AttentionShape {
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        };
        let (q, k, v) = (
            self.q_proj.forward(x)?,
            self.k_proj.forward(x)?,
            self.v_proj.forward(x)?,
        );
        let Some(c) = cache else {
            let mask = CausalMask {
                q0: offset,
                k0: offset,
                window: self.window,
            };
            let o = kernels::attention(&q, &k, &v, (cos, sin, &self.sinks), shape, mask)?;
            return self.o_proj.forward(&o);
        };
        // Cached decoding: the new keys join the cache, then the composition over all of them.
        let (q, k, v) = kernels::split_heads(&q, &k, &v, (cos, sin), shape)?;
        let (k, v) = match &c.kv {
            Some((pk, pv)) => (
                Tensor::cat(&[pk, &k], 2)?.contiguous()?,
                Tensor::cat(&[pv, &v], 2)?.contiguous()?,
            ),
            None => (k, v),
        };
        let tk = k.dims()[2];
        let keep = match self.window {
            Some(w) if tk > w => (k.narrow(2, tk - w, w)?, v.narrow(2, tk - w, w)?),
            _ => (k.clone(), v.clone()),
        };
        c.kv = Some(keep);
        let mask = CausalMask {
            q0: offset,
            k0: offset + t - tk,
            window: self.window,
        };
        let out = kernels::attention_heads(&q, &k, &v, &self.sinks, shape, mask)?;
        self.o_proj.forward(&out)
    }
}
