//! `osstune data`: convert session logs to Harmony samples, or inspect a converted sample.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use osstune_data::{ConvertOptions, InputFormat, SplitBy};
use osstune_harmony::{ReasoningEffort, Tokenizer};

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum SplitArg {
    Sample,
    Session,
}

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// Session files and/or directories (walked recursively), recognised by content: opencode
    /// storage trees, opencode.db, `opencode export` JSON, opencode event streams, Claude Code
    /// JSONL, OpenAI-messages / ShareGPT datasets (JSON lines, JSON, Parquet).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output directory for train.jsonl, valid.jsonl and stats.json.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Input format: auto (detected per file), a family (opencode, claude-code, chat) or one
    /// reader (opencode-storage, opencode-db, opencode-export, opencode-events,
    /// openai-messages, sharegpt, parquet).
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Record field holding the conversation in datasets (default: messages or conversations).
    #[arg(long)]
    pub column: Option<String>,
    /// Keep only samples whose trained turn calls no tool outside this list (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub include_tools: Vec<String>,
    /// Drop samples whose trained turn calls any of these tools (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub exclude_tools: Vec<String>,
    /// Drop samples with fewer trained tokens than this.
    #[arg(long, default_value_t = 0)]
    pub min_turn_tokens: usize,
    /// Largest input file read, in MiB; larger files (and FIFOs, devices) are reported and skipped.
    #[arg(long, default_value_t = 2048)]
    pub max_file_mb: u64,
    /// Longest sample in tokens; longer ones are fitted (tool outputs cut, old context dropped).
    #[arg(long, default_value_t = 4096)]
    pub max_seq_len: usize,
    #[arg(long, default_value_t = 0.1)]
    pub valid_fraction: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// `session` keeps all turns of a session on one side (no context leaks into validation).
    #[arg(long, value_enum, default_value = "sample")]
    pub split_by: SplitArg,
    /// `Reasoning:` level written in the system message (low, medium, high).
    #[arg(long, default_value = "high")]
    pub reasoning_effort: String,
    /// Fail on the first bad file or line instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Also turn sub-agent transcripts (opencode child sessions, Claude sidechains) into samples.
    #[arg(long)]
    pub include_subagents: bool,
    /// Declare all built-in tools of the harness, not only those the session used.
    #[arg(long)]
    pub declare_all_tools: bool,
    /// Model directory whose tokenizer.json to use (default: built-in o200k_harmony).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// A train.jsonl / valid.jsonl written by `osstune data convert`.
    pub file: PathBuf,
    /// Which sample (0-based).
    #[arg(long, default_value_t = 0)]
    pub index: usize,
    /// Select the sample by id instead.
    #[arg(long)]
    pub id: Option<String>,
    /// Also print the sample's messages as JSON.
    #[arg(long)]
    pub messages: bool,
}

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Convert coding-agent session logs into train/valid Harmony samples.
    Convert(ConvertArgs),
    /// Show one converted sample with the trained tokens highlighted.
    Inspect(InspectArgs),
}

fn tokenizer(model: Option<&PathBuf>) -> Result<Tokenizer> {
    match model {
        Some(dir) => Tokenizer::from_model_dir(dir),
        None => Tokenizer::o200k_harmony(),
    }
}

pub fn run(c: DataCommand) -> Result<()> {
    match c {
        DataCommand::Convert(a) => convert(a),
        DataCommand::Inspect(a) => inspect(a),
    }
}

fn convert(a: ConvertArgs) -> Result<()> {
    let reasoning_effort = ReasoningEffort::parse(&a.reasoning_effort).with_context(|| {
        format!(
            "--reasoning-effort must be low, medium or high, got {:?}",
            a.reasoning_effort
        )
    })?;
    let opts = ConvertOptions {
        inputs: a.inputs,
        out: a.out,
        format: InputFormat::parse(&a.format)?,
        max_seq_len: a.max_seq_len,
        valid_fraction: a.valid_fraction,
        seed: a.seed,
        split_by: match a.split_by {
            SplitArg::Sample => SplitBy::Sample,
            SplitArg::Session => SplitBy::Session,
        },
        reasoning_effort,
        strict: a.strict,
        include_subagents: a.include_subagents,
        declare_all_tools: a.declare_all_tools,
        max_file_mb: a.max_file_mb,
        column: a.column,
        include_tools: a.include_tools,
        exclude_tools: a.exclude_tools,
        min_turn_tokens: a.min_turn_tokens,
    };
    let tok = tokenizer(a.model.as_ref())?;
    let t0 = std::time::Instant::now();
    let stats = osstune_data::convert(&tok, &opts)?;
    println!("{}", stats.summary());
    println!(
        "wrote {} in {:.2}s",
        opts.out.display(),
        t0.elapsed().as_secs_f64()
    );
    if stats.samples_kept == 0 {
        anyhow::bail!("no samples were produced (see the drop reasons above)");
    }
    Ok(())
}

fn inspect(a: InspectArgs) -> Result<()> {
    let tok = Tokenizer::o200k_harmony()?;
    let (s, index) = osstune_data::inspect::load_sample_checked(
        &a.file,
        a.index,
        a.id.as_deref(),
        tok.vocab_size(),
    )?;
    let color = std::io::stdout().is_terminal();
    println!("{}", osstune_data::inspect::describe(&s, index));
    if color {
        println!("(trained tokens in green)\n");
    } else {
        println!("(trained tokens in [[ ]])\n");
    }
    println!("{}", osstune_data::inspect::highlight(&tok, &s, color)?);
    if a.messages {
        println!("\n{}", serde_json::to_string_pretty(&s.messages)?);
    }
    Ok(())
}
