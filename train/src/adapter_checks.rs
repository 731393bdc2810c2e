//! Checks of a saved adapter against its own config and the base, each naming the culprit:
//! layers outside the base (`layers: [0, 1, 2, 3, 7]` on 4 layers), a factor whose rank is
//! not the config's rank (the config and tensors disagree — not "another model"), and
//! non-finite values.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use std::path::Path;

/// Every layer in adapter_config.json's `layers` must exist in the base.
pub fn check_layers(layers: &[usize], n_layers: usize, config: &Path) -> Result<()> {
    if let Some(&bad) = layers.iter().find(|&&l| l >= n_layers) {
        bail!(
            "{}: layers lists layer {bad}, but the base has {n_layers} layers (0..{n_layers})",
            config.display()
        );
    }
    Ok(())
}

/// A factor tensor must have the expected shape and only finite values.
pub fn check_factor(
    file: &Path,
    name: &str,
    t: &Tensor,
    want: &[usize],
    rank: usize,
) -> Result<()> {
    let got = t.dims();
    if got != want {
        // A is [(E,) r, in], B is [(E,) out, r]: when only the rank axis differs, the config
        // and the tensors disagree; otherwise the adapter belongs to another shape of model.
        let differing: Vec<usize> = (0..got.len().min(want.len()))
            .filter(|&i| got[i] != want[i])
            .collect();
        if got.len() == want.len() && differing.len() == 1 && want[differing[0]] == rank {
            bail!(
                "{}: tensor {name} has rank {} but adapter_config.json says rank {rank}",
                file.display(),
                got[differing[0]]
            );
        }
        bail!(
            "{}: tensor {name} has shape {got:?}, expected {want:?} (rank {rank}) for this base",
            file.display()
        );
    }
    let bad = t
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .position(|v| !v.is_finite());
    if let Some(i) = bad {
        bail!(
            "{}: tensor {name} holds a non-finite value (element {i})",
            file.display()
        );
    }
    Ok(())
}
