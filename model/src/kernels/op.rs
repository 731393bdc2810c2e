//! The boilerplate every CPU CustomOp shares, written once: the result type, borrowing a
//! tensor's f32 storage in place, candle's thread count, and the state a forward leaves for
//! its backward.

use candle_core::{CpuStorage, Layout, Storage};
use std::sync::Mutex;

/// candle's result type, which `CustomOp*` methods return.
pub type CResult<T> = candle_core::Result<T>;

/// The contiguous f32 values of a CPU storage (what `cpu_fwd` receives).
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> CResult<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{what}: expected f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// The f32 values of a tensor's storage (from `Tensor::storage_and_layout`), borrowed in place:
/// the backward passes read their inputs this way instead of copying them to the host.
pub(crate) fn storage_f32<'a>(s: &'a Storage, l: &Layout, what: &str) -> CResult<&'a [f32]> {
    match s {
        Storage::Cpu(c) => contiguous_f32(c, l, what),
        _ => candle_core::bail!("{what}: expected a CPU tensor"),
    }
}

/// candle's thread count, read once: `get_num_threads` parses the environment (and, without
/// `RAYON_NUM_THREADS`, /proc/cpuinfo) on every call, which showed up at ~3% of a step.
pub(crate) fn num_threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(candle_core::utils::get_num_threads)
}

/// What an op's forward keeps for its backward (candle hands `bwd` only the inputs and the
/// result). `CustomOp`s are shared immutably, hence the lock; it is taken once per pass.
#[derive(Debug, Default)]
pub(crate) struct Saved<T>(Mutex<T>);

impl<T: Default + Clone> Saved<T> {
    /// Stores the forward's state, replacing any earlier one.
    pub fn put(&self, value: T) -> CResult<()> {
        *self.lock()? = value;
        Ok(())
    }

    /// Moves the state out (a backward that runs once).
    pub fn take(&self) -> CResult<T> {
        Ok(std::mem::take(&mut *self.lock()?))
    }

    /// A copy of the state (the op may be differentiated again).
    pub fn get(&self) -> CResult<T> {
        Ok(self.lock()?.clone())
    }

    fn lock(&self) -> CResult<std::sync::MutexGuard<'_, T>> {
        self.0
            .lock()
            .map_err(|_| candle_core::Error::Msg("saved forward state: lock poisoned".into()))
    }
}
