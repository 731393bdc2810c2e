//! `osstune bench kernels`: the frozen-weight products alone, at gpt-oss shapes, in the
//! storage they run from (bf16 bytes and MXFP4 blocks as a checkpoint's memory map holds
//! them), against the machine's read bandwidth and f32 GEMM rate.
//!
//! Why beside `bench forward`: decode and prefill time are mostly these products (q/k/v/o and
//! the lm_head in bf16, the routed experts in MXFP4), and a whole-model run mixes them with
//! everything else. Here each runs alone over more weight bytes than the last-level cache
//! holds, so GB/s of weights read is comparable with the bandwidth probe: a decode kernel at
//! ~90% of it is done; one far below it is bound by its arithmetic.
//!
//! Cases (all through the public ops the model calls, `kernels::linear` and
//! `kernels::moe::moe_experts`):
//! - `bf16 x·Wᵀ`: a `[rows, hidden]` bf16 matrix (the lm_head's layout, `--bf16-rows` of
//!   its rows), m activation rows;
//! - `mxfp4 experts`: `--experts` experts of gpt-oss's gate_up `[2I, H]` (HF interleaved) and
//!   down `[H, I]`, each hit by m tokens (m = 1: every routed expert's decode product).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use osstune_model::kernels::{self, moe};
use osstune_model::quant::bytes::Bytes;
use osstune_model::quant::experts::{ExpertMat, Packed, PackedPart};
use osstune_model::quant::matrix::{Matrix, Stored};
use osstune_train::rng::SplitMix64;

use super::machine;

#[derive(clap::Args)]
pub struct Args {
    /// Hidden size (gpt-oss-20b / -120b: 2880).
    #[arg(long, default_value_t = 2880)]
    hidden: usize,
    /// Expert intermediate size (gpt-oss: 2880).
    #[arg(long, default_value_t = 2880)]
    intermediate: usize,
    /// Rows of the bf16 matrix (≈ 189 MB at 32768 × 2880, beyond any last-level cache).
    #[arg(long, default_value_t = 32768)]
    bf16_rows: usize,
    /// MXFP4 experts (16 of the 20b shapes: 211 MB).
    #[arg(long, default_value_t = 16)]
    experts: usize,
    /// Activation rows per product: decode is 1; prefill tiles are larger.
    #[arg(long, value_delimiter = ',', default_value = "1,4,64")]
    m: Vec<usize>,
    /// Timed repetitions per case (the best is reported, after one untimed run).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// CPU threads (default: all cores). Sets RAYON_NUM_THREADS for candle's thread pool.
    #[arg(long)]
    threads: Option<usize>,
    /// Keep the weights in files in this folder, memory-mapped (as a checkpoint's are: page
    /// cache, not heap), instead of on the heap. The files are removed afterwards.
    #[arg(long)]
    mapped: Option<std::path::PathBuf>,
    /// Only these cases: bf16, mxfp4 (default both).
    #[arg(long, value_delimiter = ',', default_value = "bf16,mxfp4")]
    cases: Vec<String>,
}

/// `n` pseudo-random bytes.
fn random_bytes(rng: &mut SplitMix64, n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Finite bf16 values of magnitude 2^-7..2^-5 (random sign and mantissa).
fn random_bf16(rng: &mut SplitMix64, n: usize) -> Vec<u8> {
    let mut v = random_bytes(rng, 2 * n);
    for c in v.chunks_exact_mut(2) {
        // Exponent field 120 or 121 (its low bit kept random): 2^-7..2^-5.
        let hi = (c[1] & 0x80) | 0x3c | (c[1] & 0x01);
        c[1] = hi;
    }
    v
}

/// MXFP4 `[rows_total, inp]`: random nibbles, scales 2^-8..2^-5.
fn random_mxfp4(rng: &mut SplitMix64, rows: usize, inp: usize) -> (Vec<u8>, Vec<u8>) {
    let groups = rows * inp / 32;
    let blocks = random_bytes(rng, groups * 16);
    let scales = random_bytes(rng, groups)
        .into_iter()
        .map(|b| 119 + b % 4)
        .collect();
    (blocks, scales)
}

/// `bytes` on the heap, or written to `dir/name` and mapped from there.
fn store(bytes: Vec<u8>, dir: Option<&Path>, name: &str) -> Result<Bytes> {
    let Some(dir) = dir else {
        return Ok(Bytes::from_vec(bytes));
    };
    let path = dir.join(name);
    std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the file is this process's own scratch, removed (not modified) afterwards.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("mapping {}", path.display()))?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    let len = map.len();
    Ok(Bytes::mapped(Arc::new(map), 0..len))
}

/// Best of `iters` timed runs of `f` (after one untimed), in seconds.
fn best_secs(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn print_row(case: &str, m: usize, secs: f64, bytes: usize, flops: f64, bw: f64) {
    let gbs = bytes as f64 / secs / 1e9;
    println!(
        "{case:<16} m={m:<4} {:>9.3} ms  {gbs:>7.2} GB/s of weights ({:>5.1}% of read bandwidth)  {:>7.2} GFLOP/s",
        secs * 1e3,
        100.0 * gbs * 1e9 / bw,
        flops / secs / 1e9
    );
}

pub fn run(args: Args) -> Result<()> {
    if let Some(n) = args.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if args.iters == 0 || args.m.contains(&0) || args.experts == 0 || args.bf16_rows == 0 {
        bail!("--iters, --m, --experts and --bf16-rows must be at least 1");
    }
    if !args.hidden.is_multiple_of(32) || !args.intermediate.is_multiple_of(32) {
        bail!("--hidden and --intermediate must be multiples of 32 (MXFP4 groups)");
    }
    let threads = candle_core::utils::get_num_threads();
    let bw = machine::read_bandwidth(1 << 30, threads, 4);
    let (h, i) = (args.hidden, args.intermediate);
    println!(
        "threads {threads} | read bandwidth {:.2} GB/s (1 GiB, best of 4) | hidden {h}, intermediate {i}",
        bw / 1e9
    );
    let dir = args.mapped.as_deref();
    let dev = Device::Cpu;
    let mut rng = SplitMix64::new(7);
    for case in &args.cases {
        match case.as_str() {
            "bf16" => {
                let rows = args.bf16_rows;
                let w = Matrix::mapped(
                    store(random_bf16(&mut rng, rows * h), dir, "bf16.bin")?,
                    Stored::Bf16,
                    (rows, h),
                )?;
                for &m in &args.m {
                    let x = Tensor::randn(0f32, 1.0, (m, h), &dev)?;
                    let secs = best_secs(args.iters, || {
                        kernels::linear(&x, &w, None)?;
                        Ok(())
                    })
                    .context("bf16 linear")?;
                    let flops = 2.0 * (m * rows * h) as f64;
                    print_row("bf16 x·Wᵀ", m, secs, rows * h * 2, flops, bw);
                }
            }
            "mxfp4" => {
                let e = args.experts;
                let (gb, gs) = random_mxfp4(&mut rng, e * 2 * i, h);
                let (db, ds) = random_mxfp4(&mut rng, e * h, i);
                let part = |b: Vec<u8>, s: Vec<u8>, rows, name: &str| -> Result<PackedPart> {
                    Ok(PackedPart {
                        blocks: store(b, dir, &format!("{name}.blocks"))?,
                        scales: store(s, dir, &format!("{name}.scales"))?,
                        rows,
                    })
                };
                let gate_up = ExpertMat::Packed(Packed::new(
                    vec![part(gb, gs, 2 * i, "gate_up")?],
                    e,
                    h,
                    true,
                )?);
                let down =
                    ExpertMat::Packed(Packed::new(vec![part(db, ds, h, "down")?], e, i, false)?);
                let gate_up_bias = Tensor::zeros((e, 2 * i), candle_core::DType::F32, &dev)?;
                let down_bias = Tensor::zeros((e, h), candle_core::DType::F32, &dev)?;
                let ex = moe::Experts {
                    gate_up: &gate_up,
                    gate_up_bias: &gate_up_bias,
                    down: &down,
                    down_bias: &down_bias,
                    gate_lora: None,
                    up_lora: None,
                    down_lora: None,
                    top_k: 1,
                    limit: 7.0,
                    alpha: 1.702,
                };
                let stored = e * (2 * i * h + h * i) / 32 * 17;
                for &m in &args.m {
                    // m tokens per expert, each routed to one expert (top-1): expert j gets
                    // tokens j·m..(j+1)·m.
                    let n = e * m;
                    let x = Tensor::randn(0f32, 1.0, (n, h), &dev)?;
                    let weights = Tensor::ones(n, candle_core::DType::F32, &dev)?;
                    let per_expert: Vec<Vec<u32>> = (0..e)
                        .map(|j| ((j * m) as u32..((j + 1) * m) as u32).collect())
                        .collect();
                    let secs = best_secs(args.iters, || {
                        moe::moe_experts(&x, &weights, &per_expert, &ex)?;
                        Ok(())
                    })
                    .context("mxfp4 experts")?;
                    let flops = 2.0 * (n * 3 * i * h) as f64;
                    print_row("mxfp4 experts", m, secs, stored, flops, bw);
                }
            }
            other => bail!("--cases: unknown case {other:?} (bf16, mxfp4)"),
        }
    }
    Ok(())
}
