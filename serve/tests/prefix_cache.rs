//! Prefix-cache restores against recomputation, around the sliding window (the tiny model's
//! window is 32 keys; its even layers slide).

mod common;

use candle_core::Tensor;
use common::model;
use osstune_model::generate::sampling::last_row;
use osstune_model::Cache;
use osstune_serve::prefix_cache::{Checkpoint, PrefixCache};

fn seq(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 7919 + 13 + salt) % 199_000)
        .collect()
}

/// Feeds `ids` at the cache's position; returns the last logits row. With `every`, records a
/// checkpoint whenever the position is a multiple of it.
fn feed(
    cache: &mut Cache,
    start: usize,
    ids: &[u32],
    every: Option<(usize, &PrefixCache, &mut Vec<Checkpoint>)>,
) -> Vec<f32> {
    let m = model();
    match every {
        None => {
            let x = Tensor::new(ids, &m.device).unwrap().unsqueeze(0).unwrap();
            last_row(&m.forward(&x, start, cache).unwrap()).unwrap()
        }
        Some((k, pc, cps)) => {
            let mut last = Vec::new();
            for (i, &t) in ids.iter().enumerate() {
                let x = Tensor::new(&[t], &m.device).unwrap().unsqueeze(0).unwrap();
                last = last_row(&m.forward(&x, start + i, cache).unwrap()).unwrap();
                let pos = start + i + 1;
                if pos.is_multiple_of(k) {
                    cps.push(pc.checkpoint(cache, pos));
                }
            }
            last
        }
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn windows() -> Vec<Option<usize>> {
    model().layers.iter().map(|b| b.attn.window).collect()
}

/// Restores `prompt` from `pc`, feeds the rest, and checks the logits against a cold run.
fn check(pc: &mut PrefixCache, prompt: &[u32]) -> usize {
    let cfg = model().config();
    let r = pc
        .restore(prompt)
        .unwrap()
        .expect("a prefix should be reused");
    let mut warm = r.cache;
    let w = feed(&mut warm, r.reused, &prompt[r.reused..], None);
    let mut cold = Cache::new(cfg);
    let c = feed(&mut cold, 0, prompt, None);
    assert!(
        max_diff(&w, &c) < 1e-4,
        "restored at {} differs by {}",
        r.reused,
        max_diff(&w, &c)
    );
    for (l, (a, b)) in warm.layers.iter().zip(&cold.layers).enumerate() {
        assert_eq!(
            a.len(),
            b.len(),
            "layer {l} holds a different number of keys"
        );
    }
    r.reused
}

#[test]
fn restores_are_exact_and_respect_the_sliding_window() {
    let window = model().config().window();
    assert!(windows().iter().any(Option::is_some) && windows().iter().any(Option::is_none));
    let cfg = model().config();

    // Short history (n <= W): any common prefix is usable, checkpoints or not.
    let mut pc = PrefixCache::new(windows(), 64 << 20);
    let short = seq(window - 4, 0);
    let mut c = Cache::new(cfg);
    feed(&mut c, 0, &short, None);
    pc.insert(short.clone(), c, Vec::new());
    let mut prompt = short[..20].to_vec();
    prompt.extend(seq(10, 5));
    assert_eq!(check(&mut pc, &prompt), 20);

    // Long history (n > W): a divergence point inside it can only restore from a checkpoint
    // at or below it; the exact end is always usable.
    let mut pc = PrefixCache::new(windows(), 64 << 20);
    let long = seq(3 * window + 5, 1);
    let mut c = Cache::new(cfg);
    let mut cps = Vec::new();
    let probe = PrefixCache::new(windows(), 1);
    feed(&mut c, 0, &long, Some((window, &probe, &mut cps)));
    assert_eq!(cps.len(), 3);
    pc.insert(long.clone(), c, cps);
    let diverge = 2 * window + 7;
    let mut prompt = long[..diverge].to_vec();
    prompt.extend(seq(9, 7));
    assert_eq!(check(&mut pc, &prompt), 2 * window);
    let mut prompt = long.clone();
    prompt.extend(seq(6, 3));
    assert_eq!(check(&mut pc, &prompt), long.len());
    // Before the first checkpoint nothing is reusable.
    let mut prompt = long[..window - 1].to_vec();
    prompt.extend(seq(4, 9));
    assert!(pc.restore(&prompt).unwrap().is_none());
}

#[test]
fn budget_evicts_the_least_recently_used_and_prefixes_are_replaced() {
    let cfg = model().config();
    let entry = |n: usize, salt: u32| {
        let ids = seq(n, salt);
        let mut c = Cache::new(cfg);
        feed(&mut c, 0, &ids, None);
        (ids, c)
    };
    let (a, ca) = entry(20, 1);
    let per_token = {
        let mut probe = PrefixCache::new(windows(), usize::MAX);
        probe.insert(a.clone(), ca.clone(), Vec::new());
        probe.used_bytes() / a.len()
    };
    // Room for about two entries of 20 tokens.
    let mut pc = PrefixCache::new(windows(), per_token * 45);
    pc.insert(a.clone(), ca, Vec::new());
    let (b, cb) = entry(20, 2);
    pc.insert(b.clone(), cb, Vec::new());
    assert_eq!(pc.len(), 2);
    // Touch `a`, then a third entry evicts `b`, the least recently used.
    let mut pa = a.clone();
    pa.push(5);
    assert!(pc.restore(&pa).unwrap().is_some());
    let (c3, cc) = entry(20, 3);
    pc.insert(c3, cc, Vec::new());
    assert_eq!(pc.len(), 2);
    let mut pb = b.clone();
    pb.push(5);
    assert!(
        pc.restore(&pb).unwrap().is_none(),
        "b should have been evicted"
    );
    assert!(pc.restore(&pa).unwrap().is_some());
    assert!(pc.used_bytes() <= per_token * 45);
    // An entry extending `a` replaces it.
    let mut longer = a.clone();
    longer.extend(seq(4, 8));
    let mut c = Cache::new(cfg);
    feed(&mut c, 0, &longer, None);
    pc.insert(longer.clone(), c, Vec::new());
    assert_eq!(pc.len(), 2);
}
