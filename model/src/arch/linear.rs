//! A dense projection `y = x Wᵀ + b` with an optional LoRA delta.

use crate::kernels;
use crate::lora::adapter::Lora;
use crate::quant::matrix::Matrix;
use anyhow::Result;
use candle_core::Tensor;

#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`, frozen (in the checkpoint's mapping on the CPU).
    pub weight: Matrix,
    /// `[out]`
    pub bias: Option<Tensor>,
    /// The adapter slot (dense: factors without an experts axis).
    pub(crate) lora: Option<Lora>,
}

impl Linear {
    pub fn new(weight: impl Into<Matrix>, bias: Option<Tensor>) -> Self {
        Self {
            weight: weight.into(),
            bias,
            lora: None,
        }
    }

    pub fn out_in(&self) -> (usize, usize) {
        self.weight.out_in()
    }

    /// The attached adapter, if any.
    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    /// The adapter slot (attach with `Some`, detach with `None`); models attach through
    /// `GptOss::attach_lora`, which checks the shape against the target.
    pub fn lora_slot(&mut self) -> &mut Option<Lora> {
        &mut self.lora
    }

    /// `x [..., in]` → `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (out, inp) = self.out_in();
        let mut shape = x.dims().to_vec();
        let x2 = x.reshape(((), inp))?;
        let base = || kernels::linear(&x2, &self.weight, self.bias.as_ref());
        let y = match &self.lora {
            None => base()?,
            // LoRA dropout (training only): the base reads x, the LoRA path dropout(x), so
            // the fused op, which feeds one input to both, does not apply.
            Some(l) if l.dropout().is_some() => {
                (base()? + l.delta(&l.lora_input(&x2, None)?, None)?)?
            }
            Some(l) => kernels::lora_linear(
                &x2,
                (&self.weight, self.bias.as_ref()),
                (l.a().as_tensor(), l.b().as_tensor()),
                l.scale(),
            )?,
        };
        let last = shape.len() - 1;
        shape[last] = out;
        Ok(y.reshape(shape)?)
    }
}
