//! The causal / sliding-window attention mask as key ranges, shared by every attention op and
//! its reference composition.

use crate::kernels::op::CResult;
use candle_core::{DType, Device, Tensor};

/// Which keys query row `i` sees: queries are absolute positions `q0..q0+T`, keys
/// `k0..k0+Tk`; key `kj` is visible from `qi` iff `kj ≤ qi` and, with a window `W`,
/// `kj + W > qi` (W keys including the query itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CausalMask {
    pub q0: usize,
    pub k0: usize,
    pub window: Option<usize>,
}

impl CausalMask {
    /// Visible key columns `lo..hi` of query row `i` among `tk` keys (empty when lo ≥ hi).
    pub fn range(&self, i: usize, tk: usize) -> (usize, usize) {
        let qi = self.q0 + i;
        let hi = (qi + 1).saturating_sub(self.k0).min(tk);
        let lo = match self.window {
            Some(w) => (qi + 1).saturating_sub(w + self.k0).min(hi),
            None => 0,
        };
        (lo, hi)
    }

    /// The `[T, Tk]` additive mask (0 visible, −inf hidden), or `None` if nothing is hidden.
    pub fn additive(
        &self,
        t: usize,
        tk: usize,
        dtype: DType,
        dev: &Device,
    ) -> CResult<Option<Tensor>> {
        let mut any = false;
        let mut m = vec![0f32; t * tk];
        for i in 0..t {
            let (lo, hi) = self.range(i, tk);
            for (j, v) in m[i * tk..(i + 1) * tk].iter_mut().enumerate() {
                if j < lo || j >= hi {
                    *v = f32::NEG_INFINITY;
                    any = true;
                }
            }
        }
        if !any {
            return Ok(None);
        }
        Tensor::from_vec(m, (t, tk), dev)?.to_dtype(dtype).map(Some)
    }
}
