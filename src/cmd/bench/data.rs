//! `osstune bench data`: conversion throughput on generated sessions.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use osstune_data::ConvertOptions;
use osstune_harmony::Tokenizer;

#[derive(clap::Args)]
pub struct Args {
    /// Number of generated sessions (half Claude Code JSONL, half opencode export).
    #[arg(long, default_value_t = 4000)]
    pub sessions: usize,
    /// Working directory (default: a fresh folder under the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long, default_value_t = 4096)]
    pub max_seq_len: usize,
}

pub fn run(args: Args) -> Result<()> {
    let dir = args.dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("osstune-bench-data-{}", std::process::id()))
    });
    let input = dir.join("sessions");
    let out = dir.join("out");
    let t0 = Instant::now();
    osstune_data::synth::write_sessions(&input, args.sessions, 7)?;
    println!(
        "generated {} sessions in {:.2}s",
        args.sessions,
        t0.elapsed().as_secs_f64()
    );
    let tok = Tokenizer::o200k_harmony()?;
    let opts = ConvertOptions {
        inputs: vec![input],
        out,
        max_seq_len: args.max_seq_len,
        ..ConvertOptions::default()
    };
    let t1 = Instant::now();
    let stats = osstune_data::convert(&tok, &opts)?;
    let secs = t1.elapsed().as_secs_f64();
    println!("{}", stats.summary());
    println!(
        "converted {} sessions → {} samples ({} tokens) in {:.2}s: {:.0} sessions/s, {:.0} samples/s, {:.0} tokens/s",
        stats.sessions,
        stats.samples_kept,
        stats.tokens.total,
        secs,
        stats.sessions as f64 / secs,
        stats.samples_kept as f64 / secs,
        stats.tokens.total as f64 / secs
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
