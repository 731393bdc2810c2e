//! gpt-oss attention (spec §1.4): biased q/k/v/o, GQA, half-split YaRN RoPE, learned sinks,
//! causal mask with an optional sliding window of W keys including the query itself.

use crate::arch::linear::Linear;
use crate::kernels::cpu::attention::try_fused_attention;
use crate::kernels::cpu::masked_softmax::{masked_sink_softmax, CausalMask};
use crate::kernels::cpu::ops;
use anyhow::Result;
use candle_core::{DType, Tensor};

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
        let (b, t, _) = x.dims3()?;
        let (hq, hkv, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let rep = hq / hkv;
        let dtype = x.dtype();
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?)
        };
        let (q, k, v) = (
            self.q_proj.forward(x)?,
            self.k_proj.forward(x)?,
            self.v_proj.forward(x)?,
        );
        if cache.is_none() {
            let mask = CausalMask {
                q0: offset,
                k0: offset,
                window: self.window,
            };
            let shape = (hq, hkv, d);
            if let Some(o) = try_fused_attention(&q, &k, &v, cos, sin, &self.sinks, shape, mask)? {
                return self.o_proj.forward(&o);
            }
        }
        let q = heads(q, hq)?;
        let k = heads(k, hkv)?;
        let v = heads(v, hkv)?;
        let (cos, sin) = if dtype == DType::F32 {
            (cos.clone(), sin.clone())
        } else {
            (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?)
        };
        let q = ops::rope(&q, &cos, &sin)?;
        let k = ops::rope(&k, &cos, &sin)?;

        let (k, v) = match cache {
            None => (k, v),
            Some(c) => {
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
                (k, v)
            }
        };
        let tk = k.dims()[2];
        let k0 = offset + t - tk;

        // GQA without repeating K/V: query heads kv·rep..kv·rep+rep share KV head kv, so
        // [B, Hq, T, D] is viewed as [B, Hkv, rep·T, D].
        let scale = 1.0 / (d as f64).sqrt();
        let qg = (q * scale)?.reshape((b, hkv, rep * t, d))?;
        let scores = qg.matmul(&k.t()?)?.reshape((b, hq, t, tk))?;
        let sinks = self.sinks.to_dtype(dtype)?;
        let mask = CausalMask {
            q0: offset,
            k0,
            window: self.window,
        };
        let probs = masked_sink_softmax(&scores, &sinks, mask)?;
        let out = probs
            .reshape((b, hkv, rep * t, tk))?
            .matmul(&v)?
            .reshape((b, hq, t, d))?
            .transpose(1, 2)?
            .reshape((b, t, hq * d))?;
        self.o_proj.forward(&out)
    }
}
