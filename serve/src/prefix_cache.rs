//! KV caches of recent conversations, reused by the longest common token prefix.
//!
//! Agents resend the whole conversation every turn, so turn k+1's prompt starts with turn k's
//! prompt and (mostly) its answer. An [`Entry`] keeps the tokens fed for a finished request
//! and the model's KV cache after them; a new prompt restores the cache at its longest
//! usable common prefix and feeds only the rest.
//!
//! Restoring a shorter prefix than an entry holds is exact for full-attention layers (keep the
//! first `q` keys) but not for sliding-window layers, which hold only the last `W` keys: after
//! `n > W` tokens, the keys of positions `q - W .. n - W` are gone. So a prefix `q` is usable
//! when `q == n`, or when `n <= W` (nothing was dropped yet), or when a [`Checkpoint`] holds
//! the sliding layers exactly as they were after `q` tokens. The engine takes checkpoints at
//! the end of each prompt and every `W` generated tokens: they are small (`W` keys per
//! sliding layer) and cover the usual divergence points (the prompt end, when a client does
//! not send the reasoning back, or a re-tokenised answer).
//!
//! Memory is counted per entry from the tensors' sizes (a tensor shared by two entries counts
//! twice, so the count errs high) and kept under the budget by evicting the least recently
//! used entries.

use candle_core::Tensor;
use osstune_model::arch::attention::LayerCache;
use osstune_model::Cache;

/// Sliding layers' caches after exactly `pos` tokens (`None` for full-attention layers).
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub pos: usize,
    pub layers: Vec<Option<LayerCache>>,
}

#[derive(Debug)]
pub struct Entry {
    pub tokens: Vec<u32>,
    pub cache: Cache,
    pub checkpoints: Vec<Checkpoint>,
    bytes: usize,
    last_used: u64,
}

/// A cache restored for a prompt: feed `prompt[reused..]` on top of it.
pub struct Restored {
    pub cache: Cache,
    pub reused: usize,
    /// The entry's checkpoints up to `reused`, still valid for the new sequence.
    pub checkpoints: Vec<Checkpoint>,
}

pub struct PrefixCache {
    entries: Vec<Entry>,
    /// Per layer: its sliding window, `None` for full attention.
    windows: Vec<Option<usize>>,
    budget: usize,
    used: usize,
    clock: u64,
}

fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

fn layer_bytes(c: &LayerCache) -> usize {
    c.kv.as_ref()
        .map_or(0, |(k, v)| tensor_bytes(k) + tensor_bytes(v))
}

/// The first `q` keys of a layer that holds keys from position 0.
fn keep_first(c: &LayerCache, q: usize) -> candle_core::Result<LayerCache> {
    let kv = match &c.kv {
        Some((k, v)) if q > 0 => Some((k.narrow(2, 0, q)?, v.narrow(2, 0, q)?)),
        _ => None,
    };
    Ok(LayerCache { kv })
}

impl PrefixCache {
    pub fn new(windows: Vec<Option<usize>>, budget_bytes: usize) -> Self {
        Self {
            entries: Vec::new(),
            windows,
            budget: budget_bytes,
            used: 0,
            clock: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn used_bytes(&self) -> usize {
        self.used
    }

    /// Sliding layers' caches, to checkpoint the current position.
    pub fn checkpoint(&self, cache: &Cache, pos: usize) -> Checkpoint {
        let layers = cache
            .layers
            .iter()
            .zip(&self.windows)
            .map(|(c, w)| w.map(|_| c.clone()))
            .collect();
        Checkpoint { pos, layers }
    }

    /// The smallest sliding window, `None` without sliding layers.
    pub fn min_window(&self) -> Option<usize> {
        self.windows.iter().flatten().copied().min()
    }

    pub fn has_sliding_layers(&self) -> bool {
        self.windows.iter().any(Option::is_some)
    }

    /// Can `e` be restored at exactly `q` tokens?
    fn usable(&self, e: &Entry, q: usize) -> bool {
        let n = e.tokens.len();
        q == n
            || self.min_window().is_none_or(|w| n <= w)
            || e.checkpoints.iter().any(|c| c.pos == q)
    }

    /// The best cache for `prompt`: the longest usable common prefix over all entries,
    /// leaving at least one prompt token to feed (its logits start the answer).
    pub fn restore(&mut self, prompt: &[u32]) -> candle_core::Result<Option<Restored>> {
        if !self.enabled() || prompt.len() < 2 {
            return Ok(None);
        }
        let limit = prompt.len() - 1;
        let mut best: Option<(usize, usize)> = None; // (q, entry index)
        for (i, e) in self.entries.iter().enumerate() {
            let common = e
                .tokens
                .iter()
                .zip(prompt)
                .take_while(|(a, b)| a == b)
                .count()
                .min(limit);
            let q = if self.usable(e, common) {
                common
            } else {
                e.checkpoints
                    .iter()
                    .map(|c| c.pos)
                    .filter(|&p| p <= common)
                    .max()
                    .unwrap_or(0)
            };
            if q > 0 && best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, i));
            }
        }
        let Some((q, i)) = best else {
            return Ok(None);
        };
        self.clock += 1;
        let e = &mut self.entries[i];
        e.last_used = self.clock;
        let n = e.tokens.len();
        let cp = e.checkpoints.iter().find(|c| c.pos == q);
        let mut layers = Vec::with_capacity(e.cache.layers.len());
        for (l, c) in e.cache.layers.iter().enumerate() {
            let sliding = self.windows[l];
            layers.push(match (sliding, cp) {
                _ if q == n => c.clone(),
                (None, _) => keep_first(c, q)?,
                (Some(w), _) if n <= w => keep_first(c, q)?,
                (Some(_), Some(cp)) => cp.layers[l].clone().unwrap_or_default(),
                (Some(_), None) => unreachable!("restore chose an unusable prefix"),
            });
        }
        Ok(Some(Restored {
            cache: Cache { layers },
            reused: q,
            checkpoints: e
                .checkpoints
                .iter()
                .filter(|c| c.pos <= q)
                .cloned()
                .collect(),
        }))
    }

    /// Keeps the cache of a finished request (`tokens` fed, in order). Entries whose tokens
    /// are a prefix of these are replaced: the new one serves the same prompts.
    pub fn insert(&mut self, tokens: Vec<u32>, cache: Cache, checkpoints: Vec<Checkpoint>) {
        if !self.enabled() || tokens.is_empty() {
            return;
        }
        let mut bytes: usize = cache.layers.iter().map(layer_bytes).sum();
        for c in &checkpoints {
            bytes += c.layers.iter().flatten().map(layer_bytes).sum::<usize>();
        }
        if bytes > self.budget {
            return;
        }
        let mut i = 0;
        while i < self.entries.len() {
            if tokens.starts_with(&self.entries[i].tokens) {
                self.used -= self.entries.swap_remove(i).bytes;
            } else {
                i += 1;
            }
        }
        while self.used + bytes > self.budget {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i);
            match oldest {
                Some(i) => self.used -= self.entries.swap_remove(i).bytes,
                None => break,
            }
        }
        self.clock += 1;
        self.used += bytes;
        self.entries.push(Entry {
            tokens,
            cache,
            checkpoints,
            bytes,
            last_used: self.clock,
        });
    }
}
