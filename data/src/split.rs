//! Seeded, platform-independent train/valid split.
//!
//! Algorithm (documented in docs/data.md): every unit (a sample, or a session with
//! `--split-by session`) gets the key `sha256(seed as 8 little-endian bytes ‖ unit id)`; units
//! are ordered by key (ties by id) and taken into validation in that order until it holds
//! `max(1, floor(fraction · n_samples))` samples (0 when the fraction is 0 or there is
//! only one sample). Whole sessions go to one side with `session`. No RNG stream is involved,
//! so the split is the same on every platform and Rust version.

use sha2::{Digest, Sha256};

use crate::sample::Sample;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitBy {
    Sample,
    Session,
}

fn key(seed: u64, id: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(id.as_bytes());
    h.finalize().into()
}

/// Target number of validation samples.
pub fn valid_count(n: usize, fraction: f64) -> usize {
    if fraction <= 0.0 || n < 2 {
        return 0;
    }
    ((fraction * n as f64).floor() as usize).clamp(1, n - 1)
}

/// Returns (train, valid), each in input order.
pub fn split(
    samples: &[Sample],
    fraction: f64,
    seed: u64,
    by: SplitBy,
) -> (Vec<&Sample>, Vec<&Sample>) {
    let want = valid_count(samples.len(), fraction);
    let unit_of = |s: &Sample| match by {
        SplitBy::Sample => s.id.clone(),
        SplitBy::Session => format!("{}\u{0}{}", s.source.file, s.source.session),
    };
    let mut units: Vec<([u8; 32], String, usize)> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for s in samples {
        let u = unit_of(s);
        match index.get(&u) {
            Some(&i) => units[i].2 += 1,
            None => {
                index.insert(u.clone(), units.len());
                units.push((key(seed, &u), u, 1));
            }
        }
    }
    units.sort();
    let mut valid_units = std::collections::HashSet::new();
    let mut taken = 0;
    for (_, u, n) in &units {
        if taken >= want {
            break;
        }
        // Never move everything to validation.
        if taken + n >= samples.len() {
            continue;
        }
        valid_units.insert(u.clone());
        taken += n;
    }
    samples
        .iter()
        .partition(|s| !valid_units.contains(&unit_of(s)))
}
