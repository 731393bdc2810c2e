//! `osstune`: fine-tune gpt-oss with LoRA and Muon. One subcommand per pipeline stage;
//! each lives in `src/cmd/<name>.rs` and calls into the crate that does the work.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "osstune",
    version,
    about = "Fine-tune gpt-oss (MoE) with LoRA and Muon — no Python"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline on the embedded default (tiny model, bundled sessions).
    Demo(cmd::demo::Args),
    /// Write a seeded random gpt-oss-shaped checkpoint (Hugging Face layout).
    InitTiny(cmd::init_tiny::Args),
    /// Convert coding-agent session logs to Harmony training samples, or inspect them.
    #[command(subcommand)]
    Data(cmd::data::DataCommand),
    /// Train LoRA adapters (Muon + AdamW) on converted samples.
    Train(cmd::train::Args),
    /// Export or import adapters in PEFT / mlx-lm formats.
    #[command(subcommand)]
    Adapters(cmd::adapters::AdaptersCommand),
    /// Fold adapters into a full checkpoint.
    Merge(cmd::merge::Args),
    /// Generate text from a prompt.
    Generate(cmd::generate::Args),
    /// Interactive multi-turn chat.
    Chat(cmd::chat::Args),
    /// OpenAI-compatible chat-completions server (for coding agents such as opencode).
    Serve(cmd::serve::Args),
    /// Benchmarks (release builds): forward, train, optim, data, merge, serve.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Evaluate: task suite with sandboxed code execution, agent-trace metrics, comparisons.
    #[command(subcommand)]
    Eval(cmd::eval::EvalCommand),
}

fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo(a) => cmd::demo::run(a),
        Command::InitTiny(a) => cmd::init_tiny::run(a),
        Command::Data(c) => cmd::data::run(c),
        Command::Train(a) => cmd::train::run(a),
        Command::Adapters(c) => cmd::adapters::run(c),
        Command::Merge(a) => cmd::merge::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Eval(c) => cmd::eval::run(c),
    }
}

/// Runs one subcommand from its argument list, exactly as the command line would (the demo
/// drives the pipeline through this).
pub(crate) fn run_args(args: &[String]) -> anyhow::Result<()> {
    let cli =
        Cli::try_parse_from(std::iter::once("osstune".to_string()).chain(args.iter().cloned()))?;
    execute(cli.command)
}

/// Training allocates and frees many multi-MB activation buffers per step. glibc's dynamic
/// thresholds hand large ones back to the kernel (munmap / trim) and map them afresh, so the
/// kernel zeroes new pages every step. Pinning the mmap threshold at its maximum (32 MB) and
/// trimming only above 512 MB gave ~10–15% more training tokens/s on the bench preset
/// (`osstune bench train`, A/B runs).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator thresholds; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

fn main() {
    tune_allocator();
    let cli = Cli::parse();
    if let Err(e) = execute(cli.command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
