//! `osstune bench data`: conversion throughput on generated inputs: session logs (Claude Code
//! JSONL + opencode exports), a captured opencode event stream, and a Hugging Face style Parquet
//! chat dataset.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use osstune_data::ConvertOptions;
use osstune_harmony::Tokenizer;

#[derive(clap::Args)]
pub struct Args {
    /// Number of generated sessions (half Claude Code JSONL, half opencode export); 0 skips.
    #[arg(long, default_value_t = 4000)]
    pub sessions: usize,
    /// Sessions in the generated opencode event capture (SSE, parts re-emitted); 0 skips.
    #[arg(long, default_value_t = 4000)]
    pub event_sessions: usize,
    /// Rows of the generated Parquet chat dataset; 0 skips.
    #[arg(long, default_value_t = 100_000)]
    pub parquet_rows: usize,
    /// Working directory (default: a fresh folder under the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long, default_value_t = 4096)]
    pub max_seq_len: usize,
}

/// Convert `input` and print the throughput line for `label`.
fn measure(
    tok: &Tokenizer,
    label: &str,
    input: PathBuf,
    out: &Path,
    max_seq_len: usize,
) -> Result<()> {
    let opts = ConvertOptions {
        inputs: vec![input],
        out: out.to_path_buf(),
        max_seq_len,
        ..ConvertOptions::default()
    };
    let t1 = Instant::now();
    let stats = osstune_data::convert(tok, &opts)?;
    let secs = t1.elapsed().as_secs_f64();
    println!("{}", stats.summary());
    println!(
        "{label}: converted {} sessions → {} samples ({} tokens) in {:.2}s: {:.0} sessions/s, {:.0} samples/s, {:.0} tokens/s",
        stats.sessions,
        stats.samples_kept,
        stats.tokens.total,
        secs,
        stats.sessions as f64 / secs,
        stats.samples_kept as f64 / secs,
        stats.tokens.total as f64 / secs
    );
    std::fs::remove_dir_all(out).ok();
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let dir = args.dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("osstune-bench-data-{}", std::process::id()))
    });
    let tok = Tokenizer::o200k_harmony()?;
    let out = dir.join("out");
    if args.sessions > 0 {
        let input = dir.join("sessions");
        let t0 = Instant::now();
        osstune_data::synth::write_sessions(&input, args.sessions, 7)?;
        println!(
            "generated {} sessions in {:.2}s",
            args.sessions,
            t0.elapsed().as_secs_f64()
        );
        measure(&tok, "session logs", input, &out, args.max_seq_len)?;
    }
    if args.event_sessions > 0 {
        let input = dir.join("events/capture.sse");
        let t0 = Instant::now();
        osstune_data::synth::write_event_capture(&input, args.event_sessions, 7)?;
        let mb = std::fs::metadata(&input)?.len() as f64 / 1e6;
        println!(
            "generated an event capture of {} sessions ({mb:.0} MB) in {:.2}s",
            args.event_sessions,
            t0.elapsed().as_secs_f64()
        );
        measure(
            &tok,
            "opencode event capture",
            input,
            &out,
            args.max_seq_len,
        )?;
    }
    if args.parquet_rows > 0 {
        let input = dir.join("parquet/chat.parquet");
        let t0 = Instant::now();
        osstune_data::synth::write_chat_parquet(&input, args.parquet_rows, 7)?;
        let mb = std::fs::metadata(&input)?.len() as f64 / 1e6;
        println!(
            "generated a Parquet dataset of {} rows ({mb:.0} MB) in {:.2}s",
            args.parquet_rows,
            t0.elapsed().as_secs_f64()
        );
        measure(&tok, "parquet rows", input, &out, args.max_seq_len)?;
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
