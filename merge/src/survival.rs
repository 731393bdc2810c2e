//! How much of each LoRA delta survives being stored. Writing `W + Δ` in bf16 or MXFP4 rounds
//! it; when Δ is small next to W's quantization step the stored weight is just W again (the
//! fused-model-behaves-like-base problem of mlx-lm #1172). Per tensor group we accumulate
//! `stored − W` against the intended Δ.

use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, Default)]
pub struct Acc {
    /// Σ (stored − W − Δ)²
    pub err2: f64,
    /// Σ Δ²
    pub delta2: f64,
    /// Σ (stored − W)·Δ
    pub dot: f64,
    pub n: usize,
}

impl Acc {
    /// ‖(stored − W) − Δ‖ / ‖Δ‖: 0 = delta kept exactly, ≥ 1 = nothing useful kept.
    pub fn rel_err(&self) -> f64 {
        if self.delta2 == 0.0 {
            0.0
        } else {
            (self.err2 / self.delta2).sqrt()
        }
    }
    /// Fraction of Δ's direction present in the stored change (projection): 1 = all kept.
    pub fn kept(&self) -> f64 {
        if self.delta2 == 0.0 {
            1.0
        } else {
            self.dot / self.delta2
        }
    }
}

#[derive(Debug, Default)]
pub struct Survival {
    pub groups: BTreeMap<String, Acc>,
}

/// Above this relative error the delta is "mostly lost".
pub const LOST: f64 = 0.5;

impl Survival {
    pub fn add(&mut self, group: &str, base: &[f32], delta: &[f32], stored: &[f32]) {
        let acc = self.groups.entry(group.to_string()).or_default();
        for ((&w, &d), &s) in base.iter().zip(delta).zip(stored) {
            let change = (s - w) as f64;
            let d = d as f64;
            acc.err2 += (change - d) * (change - d);
            acc.delta2 += d * d;
            acc.dot += change * d;
        }
        acc.n += base.len();
    }

    /// Adds another accumulation (one expert's, folded on another thread).
    pub fn merge(&mut self, other: Survival) {
        for (g, a) in other.groups {
            let acc = self.groups.entry(g).or_default();
            acc.err2 += a.err2;
            acc.delta2 += a.delta2;
            acc.dot += a.dot;
            acc.n += a.n;
        }
    }

    /// One line per group, plus warnings for groups whose delta was mostly lost.
    pub fn report(&self) -> String {
        let mut s = String::from("delta survival (stored change vs intended LoRA delta):\n");
        for (g, a) in &self.groups {
            s += &format!(
                "  {g:<12} rel err {:>8.4}  kept {:>6.1}%  (‖Δ‖ {:.3e})\n",
                a.rel_err(),
                100.0 * a.kept(),
                a.delta2.sqrt()
            );
        }
        for (g, a) in &self.groups {
            if a.rel_err() > LOST {
                s += &format!(
                    "warning: {g}: most of the adapter's delta was lost when storing \
                     (rel err {:.2}); the merged model will behave close to the base. \
                     Use --format hf (bf16) or --dtype f32, or keep the adapter separate.\n",
                    a.rel_err()
                );
            }
        }
        s
    }

    pub fn lost_groups(&self) -> Vec<String> {
        self.groups
            .iter()
            .filter(|(_, a)| a.rel_err() > LOST)
            .map(|(g, _)| g.clone())
            .collect()
    }
}
