//! What the machine can do, measured: streaming read bandwidth and f32 GEMM throughput. The
//! benches divide by these to say how far the engine is from the hardware's bound.

use anyhow::Result;
use candle_core::{Device, Tensor};
use std::time::Instant;

/// Best read bandwidth (bytes/s) over `passes` passes of `threads` threads summing a
/// `bytes`-sized buffer (≫ the last-level cache: 1 GiB in the benches), each thread a
/// contiguous part. The sum runs on 8 independent u64 lanes, which the compiler vectorises,
/// so the loop is bound by memory, not by a dependency chain. The buffer is freed on return.
pub fn read_bandwidth(bytes: usize, threads: usize, passes: usize) -> f64 {
    let threads = threads.max(1);
    let n = (bytes / 8).next_multiple_of(8 * threads);
    let mut buf: Vec<u64> = vec![0; n];
    let part = n / threads;
    // Touch every page (from the threads that will read it) so no pass pays for page faults.
    std::thread::scope(|s| {
        for (t, c) in buf.chunks_mut(part).enumerate() {
            s.spawn(move || {
                for (j, x) in c.iter_mut().enumerate() {
                    *x = (t * part + j) as u64;
                }
            });
        }
    });
    let mut best = f64::INFINITY;
    for _ in 0..passes.max(1) {
        let t0 = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(part)
                .map(|c| s.spawn(move || sum_lanes(c)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("bandwidth thread"))
                .fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    (n * 8) as f64 / best
}

fn sum_lanes(c: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    for ch in c.chunks_exact(8) {
        for k in 0..8 {
            acc[k] = acc[k].wrapping_add(ch[k]);
        }
    }
    acc.iter().fold(0, |a, &b| a.wrapping_add(b))
}

/// Best f32 FLOP/s of an `[m, k] × [k, n]` matmul through candle on the CPU (its thread pool
/// follows RAYON_NUM_THREADS, like the model's), over `passes` timed runs after one warm-up.
pub fn gemm_flops(m: usize, k: usize, n: usize, passes: usize) -> Result<f64> {
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), &dev)?;
    a.matmul(&b)?;
    let mut best = f64::INFINITY;
    for _ in 0..passes.max(1) {
        let t0 = Instant::now();
        let c = a.matmul(&b)?;
        std::hint::black_box(&c);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best)
}

#[cfg(test)]
mod tests {
    #[test]
    fn probes_give_positive_rates() {
        assert!(super::read_bandwidth(1 << 20, 2, 2) > 0.0);
        assert!(super::gemm_flops(16, 32, 8, 1).unwrap() > 0.0);
        assert_eq!(super::sum_lanes(&(1..=16).collect::<Vec<u64>>()), 136);
    }
}
