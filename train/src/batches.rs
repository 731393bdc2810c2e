//! Samples JSONL (design.md §1) → shuffled, right-padded micro-batches.
//!
//! A sample of n tokens becomes n−1 (input, target) pairs: position t reads `input_ids[t]` and
//! predicts `input_ids[t+1]`, which counts in the loss iff `loss_mask[t+1] == 1`. Micro-batches
//! are right-padded to their longest sample (the model is causal, so padding after the real
//! tokens cannot change them); padded positions have weight 0.
//!
//! Order: each epoch is a seeded permutation of the training samples (stream derived from
//! (seed, epoch), independent of earlier epochs); micro-batches take consecutive samples of
//! that order and run over epoch boundaries. The whole position is the [`Cursor`]
//! (epoch, index), which checkpoints store so a resumed run sees exactly the same batches.

use crate::rng::{SplitMix64, PURPOSE_SHUFFLE};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub input_ids: Vec<u32>,
    pub loss_mask: Vec<u8>,
}

impl Sample {
    pub fn n_trained(&self) -> usize {
        self.loss_mask.iter().skip(1).filter(|&&m| m == 1).count()
    }
}

#[derive(Deserialize)]
struct SampleLine {
    input_ids: Vec<u32>,
    loss_mask: Vec<u8>,
}

/// What `read_samples` kept and dropped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadStats {
    pub kept: usize,
    pub truncated: usize,
    /// Samples without any trained token (after truncation): they would only cost time.
    pub dropped_untrained: usize,
    /// Tokens of the longest sample before truncation.
    pub longest: usize,
}

/// Reads a samples JSONL file. Samples longer than `max_seq_len` keep their first
/// `max_seq_len` tokens. Token ids ≥ `vocab_size` are an error naming the line.
pub fn read_samples(
    path: &Path,
    max_seq_len: usize,
    vocab_size: usize,
) -> Result<(Vec<Sample>, ReadStats)> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    let mut stats = ReadStats::default();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let lineno = i + 1;
        let line = line.with_context(|| format!("{}:{lineno}: reading", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let s: SampleLine = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}:{lineno}: not a sample (need input_ids and loss_mask)",
                path.display()
            )
        })?;
        if s.input_ids.len() != s.loss_mask.len() {
            bail!(
                "{}:{lineno}: input_ids has {} tokens but loss_mask has {}",
                path.display(),
                s.input_ids.len(),
                s.loss_mask.len()
            );
        }
        if let Some(&bad) = s.input_ids.iter().find(|&&t| t as usize >= vocab_size) {
            bail!(
                "{}:{lineno}: token id {bad} is outside the model's vocabulary ({vocab_size})",
                path.display()
            );
        }
        if let Some(&bad) = s.loss_mask.iter().find(|&&m| m > 1) {
            bail!(
                "{}:{lineno}: loss_mask value {bad} (must be 0 or 1)",
                path.display()
            );
        }
        let mut sample = Sample {
            input_ids: s.input_ids,
            loss_mask: s.loss_mask,
        };
        stats.longest = stats.longest.max(sample.input_ids.len());
        if sample.input_ids.len() > max_seq_len {
            sample.input_ids.truncate(max_seq_len);
            sample.loss_mask.truncate(max_seq_len);
            stats.truncated += 1;
        }
        if sample.n_trained() == 0 {
            stats.dropped_untrained += 1;
            continue;
        }
        out.push(sample);
    }
    stats.kept = out.len();
    Ok((out, stats))
}

/// A right-padded micro-batch, row-major [batch, len].
#[derive(Debug, Clone, PartialEq)]
pub struct MicroBatch {
    pub batch: usize,
    pub len: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    /// 1.0 where the target is trained, 0.0 elsewhere (untrained and padding).
    pub weights: Vec<f32>,
    /// Non-padding positions (for tokens/s).
    pub n_tokens: usize,
}

impl MicroBatch {
    pub fn from_samples(samples: &[&Sample]) -> Self {
        let batch = samples.len();
        let len = samples
            .iter()
            .map(|s| s.input_ids.len().saturating_sub(1))
            .max()
            .unwrap_or(0)
            .max(1);
        let mut inputs = vec![0u32; batch * len];
        let mut targets = vec![0u32; batch * len];
        let mut weights = vec![0f32; batch * len];
        let mut n_tokens = 0;
        for (b, s) in samples.iter().enumerate() {
            let n = s.input_ids.len().saturating_sub(1);
            n_tokens += n;
            for t in 0..n {
                inputs[b * len + t] = s.input_ids[t];
                targets[b * len + t] = s.input_ids[t + 1];
                weights[b * len + t] = s.loss_mask[t + 1] as f32;
            }
        }
        Self {
            batch,
            len,
            inputs,
            targets,
            weights,
            n_tokens,
        }
    }

    pub fn n_trained(&self) -> usize {
        self.weights.iter().filter(|&&w| w > 0.0).count()
    }
}

/// Position in the training stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Cursor {
    pub epoch: u64,
    pub index: usize,
}

/// The training stream: seeded per-epoch permutations over the samples.
pub struct Batcher {
    samples: Vec<Sample>,
    seed: u64,
    micro_batch: usize,
    order: Vec<usize>,
    order_epoch: Option<u64>,
    pub cursor: Cursor,
}

impl Batcher {
    pub fn new(samples: Vec<Sample>, seed: u64, micro_batch: usize) -> Result<Self> {
        if samples.is_empty() {
            bail!("no training samples with trained tokens");
        }
        Ok(Self {
            samples,
            seed,
            micro_batch,
            order: Vec::new(),
            order_epoch: None,
            cursor: Cursor::default(),
        })
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    fn ensure_order(&mut self) {
        if self.order_epoch != Some(self.cursor.epoch) {
            self.order = (0..self.samples.len()).collect();
            SplitMix64::derive(self.seed, PURPOSE_SHUFFLE, self.cursor.epoch)
                .shuffle(&mut self.order);
            self.order_epoch = Some(self.cursor.epoch);
        }
    }

    /// The next micro-batch; advances the cursor.
    pub fn next_micro_batch(&mut self) -> MicroBatch {
        let mut picked = Vec::with_capacity(self.micro_batch);
        while picked.len() < self.micro_batch {
            self.ensure_order();
            picked.push(self.order[self.cursor.index]);
            self.cursor.index += 1;
            if self.cursor.index == self.samples.len() {
                self.cursor.epoch += 1;
                self.cursor.index = 0;
            }
        }
        let refs: Vec<&Sample> = picked.iter().map(|&i| &self.samples[i]).collect();
        MicroBatch::from_samples(&refs)
    }
}

/// Fixed micro-batches over a sample list in file order (validation).
pub fn sequential_batches(samples: &[Sample], micro_batch: usize) -> Vec<MicroBatch> {
    samples
        .chunks(micro_batch.max(1))
        .map(|c| MicroBatch::from_samples(&c.iter().collect::<Vec<_>>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ids: &[u32], mask: &[u8]) -> Sample {
        Sample {
            input_ids: ids.to_vec(),
            loss_mask: mask.to_vec(),
        }
    }

    #[test]
    fn padding_and_mask_shift() {
        let a = s(&[1, 2, 3, 4], &[0, 0, 1, 1]);
        let b = s(&[5, 6], &[0, 1]);
        let mb = MicroBatch::from_samples(&[&a, &b]);
        assert_eq!((mb.batch, mb.len), (2, 3));
        assert_eq!(mb.inputs, vec![1, 2, 3, 5, 0, 0]);
        assert_eq!(mb.targets, vec![2, 3, 4, 6, 0, 0]);
        assert_eq!(mb.weights, vec![0., 1., 1., 1., 0., 0.]);
        assert_eq!(mb.n_trained(), 3);
        assert_eq!(mb.n_tokens, 4);
    }

    #[test]
    fn cursor_resume_reproduces_stream() {
        let samples: Vec<Sample> = (0..5u32).map(|i| s(&[i, i + 1], &[0, 1])).collect();
        let mut full = Batcher::new(samples.clone(), 3, 2).unwrap();
        let all: Vec<MicroBatch> = (0..7).map(|_| full.next_micro_batch()).collect();
        let mut first = Batcher::new(samples.clone(), 3, 2).unwrap();
        for _ in 0..3 {
            first.next_micro_batch();
        }
        let mut resumed = Batcher::new(samples, 3, 2).unwrap();
        resumed.cursor = first.cursor;
        let rest: Vec<MicroBatch> = (0..4).map(|_| resumed.next_micro_batch()).collect();
        assert_eq!(&all[3..], &rest[..]);
        // Each epoch visits every sample once.
        let mut seen: Vec<u32> = all[..2].iter().flat_map(|m| m.inputs.clone()).collect();
        seen.push(all[2].inputs[0]);
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn read_errors_name_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        std::fs::write(
            &p,
            "{\"input_ids\":[1,2,3],\"loss_mask\":[0,1,1]}\n{\"input_ids\":[1,2],\"loss_mask\":[0]}\n",
        )
        .unwrap();
        let e = read_samples(&p, 10, 100).unwrap_err();
        assert!(format!("{e:#}").contains("t.jsonl:2"), "{e:#}");
        std::fs::write(&p, "{\"input_ids\":[1,200],\"loss_mask\":[0,1]}\n").unwrap();
        let e = read_samples(&p, 10, 100).unwrap_err();
        assert!(format!("{e:#}").contains("vocabulary"), "{e:#}");
        std::fs::write(
            &p,
            "{\"input_ids\":[1,2,3,4],\"loss_mask\":[0,0,0,1]}\n{\"input_ids\":[1,2],\"loss_mask\":[0,0]}\n",
        )
        .unwrap();
        let (v, st) = read_samples(&p, 3, 100).unwrap();
        assert_eq!(v.len(), 0);
        assert_eq!(st.truncated, 1);
        assert_eq!(st.dropped_untrained, 2);
    }
}
