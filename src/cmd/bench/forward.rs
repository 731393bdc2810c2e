//! `osstune bench forward`: prefill and decode tokens/s of the generation loop.
//!
//! Without `--model` it writes the `bench` preset (hidden 512, 4 layers, 8/2 heads, head_dim
//! 64, 16 experts top-4, intermediate 512, vocab 8192) into a temporary directory and loads it
//! back, so the numbers include the real loading path (MXFP4 experts by default). The prompt
//! is seeded random token ids; decoding is greedy with no stop tokens, so every run does the
//! same work. One short warm-up run comes first (allocations, thread pools).
//!
//! `--preset gpt-oss-20b|gpt-oss-120b [--layers N]` measures the real release shapes instead
//! (bf16, MXFP4 experts; written once into `--model-cache DIR` and reused, or into a temporary
//! folder). Beside tokens/s it prints what bounds them: the weight bytes a decoded token
//! reads (from the config and the stored format) against the machine's measured read
//! bandwidth, and the prefill's FLOP/s.

use super::super::generate::{device, DeviceArg, DtypeArg};
use super::preset::{self, ReleasePreset};
use super::{cost, machine};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use osstune_model::generate::generation::{generate, GenerateOptions};
use osstune_model::generate::sampling::{Sampler, SamplingParams, SplitMix64};
use osstune_model::io::tiny::{write_tiny, ExpertFormat, Preset};
use osstune_model::GptOss;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ExpertsArg {
    Mxfp4,
    Dense,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model directory to measure (default: a fresh bench-preset checkpoint).
    #[arg(long, conflicts_with_all = ["experts", "preset"])]
    pub model: Option<PathBuf>,
    /// A release-shaped random checkpoint instead (bf16, MXFP4 experts).
    #[arg(long, value_enum, conflicts_with = "experts")]
    pub preset: Option<ReleasePreset>,
    /// With --preset: the first N layers only (a real-width slice).
    #[arg(long, requires = "preset")]
    pub layers: Option<usize>,
    /// With --preset: keep the checkpoint in DIR and reuse it when it holds the same preset,
    /// layers and seed (default: a temporary folder, removed afterwards).
    #[arg(long, requires = "preset")]
    pub model_cache: Option<PathBuf>,
    /// Expert storage of the generated bench checkpoint.
    #[arg(long, value_enum)]
    pub experts: Option<ExpertsArg>,
    /// Prompt tokens (prefill).
    #[arg(long, default_value_t = 512)]
    pub prompt_len: usize,
    /// Tokens to decode after the prompt.
    #[arg(long, default_value_t = 64)]
    pub gen: usize,
    /// CPU threads (default: all cores). Sets RAYON_NUM_THREADS for candle's thread pool.
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    /// Compute dtype (default: f32 on cpu, bf16 on cuda/metal).
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// Seed of the bench checkpoint and of the prompt ids.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Removes the generated checkpoint however the benchmark ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: Args) -> Result<()> {
    if let Some(n) = args.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        // Read by rayon's global pool and candle's matmul when they first start, which is
        // after this point: nothing has touched them yet.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if args.prompt_len == 0 {
        bail!("--prompt-len must be at least 1");
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; benchmark numbers are meaningless");
    }
    let dev = device(args.device)?;
    let dtype = match (args.dtype, args.device) {
        (Some(DtypeArg::F32), _) | (None, DeviceArg::Cpu) => DType::F32,
        (Some(DtypeArg::Bf16), _) | (None, _) => DType::BF16,
    };
    let mut _tmp = None;
    let mut _ck = None;
    let (dir, what) = match (&args.model, args.preset) {
        (Some(d), _) => (d.clone(), d.display().to_string()),
        (None, Some(p)) => {
            let ck = preset::prepare(
                p,
                args.layers,
                args.model_cache.as_deref(),
                args.seed,
                "forward",
            )?;
            let r = (ck.dir.clone(), ck.what.clone());
            _ck = Some(ck);
            r
        }
        (None, None) => {
            let d =
                std::env::temp_dir().join(format!("osstune-bench-forward-{}", std::process::id()));
            let experts = match args.experts {
                Some(ExpertsArg::Dense) => ExpertFormat::Dense,
                _ => ExpertFormat::Mxfp4,
            };
            write_tiny(&d, Preset::Bench, args.seed, experts)
                .with_context(|| format!("writing the bench checkpoint to {}", d.display()))?;
            _tmp = Some(TempDir(d.clone()));
            let name = if experts == ExpertFormat::Dense {
                "dense"
            } else {
                "mxfp4"
            };
            (d, format!("bench preset ({name} experts)"))
        }
    };
    let t0 = Instant::now();
    let model =
        GptOss::load(&dir, &dev, dtype).with_context(|| format!("loading {}", dir.display()))?;
    let load_secs = t0.elapsed().as_secs_f64();
    let vocab = model.config().vocab_size;
    let mut rng = SplitMix64::new(args.seed);
    let prompt: Vec<u32> = (0..args.prompt_len)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect();

    let opts = |max_tokens| GenerateOptions {
        max_tokens,
        stop_tokens: Vec::new(),
        ..GenerateOptions::default()
    };
    let mut greedy = Sampler::new(SamplingParams::greedy())?;
    let warm = &prompt[..prompt.len().min(16)];
    generate(&model, warm, &mut greedy, &opts(4), |_| Ok(())).context("warm-up run")?;
    let g = generate(
        &model,
        &prompt,
        &mut greedy,
        &opts(args.gen + 1),
        |_| Ok(()),
    )?;

    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    // Before the probes, whose buffer would otherwise set the peak.
    let peak_rss_mb = peak_rss_kb().map(|kb| kb as f64 / 1024.0);
    let cfg = model.config().clone();
    drop(model);
    let format = cost::weight_format(&dir)?;
    let bytes_per_token = format.map(|f| cost::decode_bytes_per_token(&cfg, f));
    let prefill_flops = cost::prefill_flops(&cfg, g.prompt_tokens);
    let prefill_flop_s = prefill_flops as f64 / g.prefill_secs;
    let bandwidth = machine::read_bandwidth(1 << 30, threads, 4);
    let bound = bytes_per_token.map(|b| bandwidth / b as f64);
    let achieved = bound.map(|b| g.decode_tokens_per_sec() / b);
    if args.json {
        let v = serde_json::json!({
            "model": what,
            "device": format!("{:?}", args.device).to_lowercase(),
            "dtype": format!("{dtype:?}").to_lowercase(),
            "threads": threads,
            "prompt_len": g.prompt_tokens,
            "gen": g.decode_tokens,
            "load_s": load_secs,
            "prefill_s": g.prefill_secs,
            "prefill_tokens_per_s": g.prefill_tokens_per_sec(),
            "decode_s": g.decode_secs,
            "decode_tokens_per_s": g.decode_tokens_per_sec(),
            "peak_rss_mb": peak_rss_mb,
            "weights_format": format.map(|f| f.describe()),
            "decode_bytes_per_token": bytes_per_token,
            "read_bandwidth_gb_s": bandwidth / 1e9,
            "decode_bound_tokens_per_s": bound,
            "decode_fraction_of_bound": achieved,
            "prefill_flops": prefill_flops,
            "prefill_flop_per_s": prefill_flop_s,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "model: {what} | device {:?} {dtype:?} | {threads} threads | load {load_secs:.2} s",
        args.device
    );
    println!(
        "prefill: {} tokens in {:.3} s = {:.1} tokens/s",
        g.prompt_tokens,
        g.prefill_secs,
        g.prefill_tokens_per_sec()
    );
    println!(
        "decode:  {} tokens in {:.3} s = {:.1} tokens/s",
        g.decode_tokens,
        g.decode_secs,
        g.decode_tokens_per_sec()
    );
    if let Some(mb) = peak_rss_mb {
        println!("peak RSS: {mb:.0} MiB");
    }
    println!(
        "prefill compute: {:.3} GFLOP ({} tokens, lm_head on the last) = {:.2} GFLOP/s",
        prefill_flops as f64 / 1e9,
        g.prompt_tokens,
        prefill_flop_s / 1e9
    );
    println!(
        "read bandwidth (measured, {threads} threads, 1 GiB): {:.2} GB/s",
        bandwidth / 1e9
    );
    match (format, bytes_per_token, bound, achieved) {
        (Some(f), Some(b), Some(bound), Some(frac)) => println!(
            "decode weights read: {:.1} MB/token ({}) -> bound {:.2} tokens/s; achieved {:.1}% of it",
            b as f64 / 1e6,
            f.describe(),
            bound,
            100.0 * frac
        ),
        _ => println!("decode weights read: n/a (unrecognised storage format)"),
    }
    Ok(())
}

/// Peak resident memory of this process (Linux `VmHWM`); `None` elsewhere.
fn peak_rss_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
