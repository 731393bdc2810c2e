//! `osstune bench merge`: time and peak memory of merging the bench-preset shapes at two
//! depths. Each depth runs in a child process so its peak is its own. Peak memory is the
//! largest anonymous RSS seen (sampled every 2 ms) — the memory merge allocates; the
//! memory-mapped base and the page cache of the written shards are reclaimable file pages,
//! reported separately as VmHWM.

use anyhow::{bail, Context, Result};
use osstune_merge::adapter::Target;
use osstune_merge::synth::{write_random_adapter, write_random_base, AdapterSpec, Dims};
use osstune_merge::{merge, Dtype, Format, MergeOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// Depths to merge (bench preset shapes otherwise: hidden 512, 16 experts, inter 512).
    #[arg(long, value_delimiter = ',', default_value = "4,8")]
    pub layers: Vec<usize>,
    /// Output format: hf, hf-mxfp4, mlx, mlx-mxfp4.
    #[arg(long, default_value = "hf")]
    pub format: String,
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// Float dtype of the merged output: bf16 or f32.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Expert storage of the generated base: mxfp4 (like the release) or dense.
    #[arg(long, default_value = "mxfp4")]
    pub base_experts: String,
    /// Work folder (default: a fresh folder under the system temp dir, removed afterwards).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Keep base-L/, adapter-L/ and merged-L/ in the work folder (for scripts/check_merge_hf.py).
    #[arg(long)]
    pub keep: bool,
    /// Internal: merge this base/adapter/out in this process and print a JSON line.
    #[arg(long, hide = true, num_args = 3)]
    pub child: Option<Vec<PathBuf>>,
}

fn dims(layers: usize) -> Dims {
    Dims {
        layers,
        experts: 16,
        hidden: 512,
        inter: 512,
        heads: 8,
        kv_heads: 2,
        head_dim: 64,
        vocab: 8192,
    }
}

fn status_kb(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of this process (Linux; clock ticks at the usual 100 Hz).
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn child(paths: &[PathBuf], format: Format, dtype: Dtype) -> Result<()> {
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(kb) = status_kb("RssAnon:") {
                    peak.fetch_max(kb, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    let before = status_kb("RssAnon:").unwrap_or(0);
    let cpu0 = cpu_seconds();
    let r = merge(&MergeOptions {
        model: paths[0].clone(),
        adapter: paths[1].clone(),
        out: paths[2].clone(),
        format,
        dtype,
        max_shard_bytes: 4_800_000_000,
        base_fingerprint: None,
        progress: false,
        verify: None,
    })?;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let j = serde_json::json!({
        "seconds": r.seconds, "bytes": r.bytes,
        "cpu_seconds": cpu_seconds().zip(cpu0).map(|(a, b)| a - b),
        "peak_anon_mb": peak.load(Ordering::Relaxed) as f64 / 1024.0,
        "anon_before_mb": before as f64 / 1024.0,
        "vmhwm_mb": status_kb("VmHWM:").map(|k| k as f64 / 1024.0),
    });
    println!("{j}");
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let format = Format::parse(&args.format)?;
    let dtype = match args.dtype.as_str() {
        "bf16" => Dtype::BF16,
        "f32" => Dtype::F32,
        d => bail!("--dtype {d}: expected bf16 or f32"),
    };
    let store = match args.base_experts.as_str() {
        "mxfp4" => Format::HfMxfp4,
        "dense" => Format::Hf,
        e => bail!("--base-experts {e}: expected mxfp4 or dense"),
    };
    if let Some(paths) = &args.child {
        return child(paths, format, dtype);
    }
    let own_work = args.work.is_none();
    let work = args.work.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("osstune-bench-merge-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let exe = std::env::current_exe()?;
    println!(
        "bench merge: bench-preset shapes (hidden 512, 16 experts, inter 512, vocab 8192), bf16 base \
         with {} experts, rank {}, all targets, --format {} --dtype {}",
        args.base_experts, args.rank, format.name(), args.dtype
    );
    println!(
        "{:>6} {:>10} {:>9} {:>9} {:>10} {:>14} {:>12}",
        "layers", "out MB", "seconds", "cpu s", "MB/s", "peak anon MB", "VmHWM MB"
    );
    for &l in &args.layers {
        let base = work.join(format!("base-{l}"));
        let ad = work.join(format!("adapter-{l}"));
        let out = work.join(format!("merged-{l}"));
        let _ = std::fs::remove_dir_all(&out);
        if !base.exists() {
            write_random_base(&base, &dims(l), store, 0)?;
        }
        if !ad.exists() {
            let spec = AdapterSpec {
                rank: args.rank,
                alpha: 2.0 * args.rank as f64,
                seed: 1,
                layers: None,
                targets: &Target::ALL,
                b_range: 0.01,
                fingerprint: None,
            };
            write_random_adapter(&base, &ad, &spec)?;
        }
        let o = std::process::Command::new(&exe)
            .args([
                "bench",
                "merge",
                "--format",
                format.name(),
                "--dtype",
                &args.dtype,
                "--child",
            ])
            .arg(&base)
            .arg(&ad)
            .arg(&out)
            .output()
            .context("running the merge child")?;
        if !o.status.success() {
            bail!("merge child failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).context("child output")?;
        let f = |k: &str| j.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        let mb = f("bytes") / 1e6;
        println!(
            "{l:>6} {mb:>10.1} {:>9.2} {:>9.2} {:>10.0} {:>14.1} {:>12.1}",
            f("seconds"),
            f("cpu_seconds"),
            mb / f("seconds"),
            f("peak_anon_mb"),
            f("vmhwm_mb")
        );
        if !args.keep {
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    if own_work && !args.keep {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}
