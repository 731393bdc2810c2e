//! `osstune eval sessions`: does the fine-tune act like the agent in the held-out logs?
//!
//! Teacher-forced: loss and perplexity on the trained tokens, computed exactly as training's
//! validation does (`osstune_train`'s `read_samples` → `sequential_batches` → `eval_loss`,
//! summed over micro-batches, divided by the trained tokens). Generative: per sample, the
//! context up to the target turn is fed and the model continues; `osstune_eval::trace` scores
//! the continuation. Everything per sample goes to `sessions.json`.

use super::super::generate::{DeviceArg, DtypeArg, ModelArgs, ReasoningArg, Session};
use super::file_in;
use super::generation::generate_turn;
use anyhow::{bail, Context, Result};
use osstune_eval::report::write_atomic;
use osstune_eval::trace::{self, Rates, SampleMetrics};
use osstune_harmony::Message;
use osstune_train::batches::{read_samples, sequential_batches};
use osstune_train::loss::{eval_loss, BatchTensors};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io::BufRead;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct SessionsArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// LoRA adapter directory, applied unmerged.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Held-out samples (`osstune data convert`'s valid.jsonl).
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder for sessions.json.
    #[arg(long, default_value = "runs/eval-sessions")]
    pub out: PathBuf,
    /// Use the first N samples (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Token budget of each generated turn.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 = greedy (the default: the metrics are then deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Samples are cut to this many tokens for the loss, as training does (its data.max_seq_len).
    #[arg(long, default_value_t = 4096)]
    pub max_seq_len: usize,
    /// Samples per forward for the loss.
    #[arg(long, default_value_t = 2)]
    pub micro_batch: usize,
    /// Positions per lm_head chunk for the loss (bounds logits memory).
    #[arg(long, default_value_t = 256)]
    pub loss_chunk: usize,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TeacherForced {
    pub loss: f64,
    pub perplexity: f64,
    pub trained_tokens: usize,
    pub samples: usize,
}

/// The subset of a `sessions.json` that comparisons read.
#[derive(Debug, Deserialize)]
struct StoredSessions {
    teacher_forced: TeacherForced,
    rates: serde_json::Value,
}

/// One valid.jsonl line, as far as the generative metrics need it.
#[derive(Deserialize)]
struct SampleLine {
    #[serde(default)]
    id: String,
    messages: Vec<Message>,
    input_ids: Vec<u32>,
    loss_mask: Vec<u8>,
}

pub fn run(a: SessionsArgs) -> Result<()> {
    if a.micro_batch == 0 || a.loss_chunk == 0 || a.max_seq_len < 2 {
        bail!("--micro-batch and --loss-chunk must be > 0, --max-seq-len ≥ 2");
    }
    let lines = read_lines(&a.data, a.limit)?;
    let session = Session::open(&ModelArgs {
        model: a.model.clone(),
        adapter: a.adapter.clone(),
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: None,
        seed: Some(a.seed),
        max_tokens: a.max_tokens,
        device: a.device,
        dtype: a.dtype,
        reasoning: ReasoningArg::High,
        hide_analysis: false,
        json: true,
        no_kv_cache: false,
        max_context: None,
    })?;
    let tf = teacher_forced(&session, &a)?;
    println!(
        "teacher-forced: loss {:.4}, perplexity {:.1} over {} trained tokens ({} samples)",
        tf.loss, tf.perplexity, tf.trained_tokens, tf.samples
    );
    let mut samples: Vec<SampleMetrics> = Vec::new();
    let mut generated: Vec<String> = Vec::new();
    let mut without_target = Vec::new();
    for (i, (lineno, s)) in lines.iter().enumerate() {
        let Some(ctx) = trace::context_len(&s.loss_mask) else {
            without_target.push(format!("{}:{lineno}", a.data.display()));
            continue;
        };
        let label = format!("sample {}/{}", i + 1, lines.len());
        let out = generate_turn(
            &session,
            &s.input_ids[..ctx],
            a.max_tokens,
            a.seed.wrapping_add(i as u64),
            &label,
        )
        .with_context(|| format!("{}:{lineno}: generating", a.data.display()))?;
        samples.push(trace::score(
            &s.id,
            &s.messages,
            &out.messages,
            out.harmony_error,
            &out.response.stop,
            out.ends_cleanly,
            out.response.tokens,
        ));
        generated.push(out.response.text);
    }
    if !without_target.is_empty() {
        eprintln!(
            "{} sample(s) without a trained target turn, not generated: {}",
            without_target.len(),
            without_target.join(", ")
        );
    }
    let rates = trace::rates(&samples);
    print!("{}", rates_text(&rates));
    // Each sample's metrics with what the model wrote (special tokens spelled out).
    let per_sample: Vec<serde_json::Value> = samples
        .iter()
        .zip(&generated)
        .map(|(m, text)| {
            let mut v = serde_json::to_value(m).expect("metrics serialize");
            v["generated"] = json!(text);
            v
        })
        .collect();
    let report = json!({
        "data": a.data, "model": a.model, "adapter": a.adapter,
        "max_tokens": a.max_tokens, "temperature": a.temperature, "seed": a.seed,
        "teacher_forced": tf, "rates": rates,
        "without_target": without_target, "samples": per_sample,
    });
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let path = a.out.join("sessions.json");
    write_atomic(&path, &serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn read_lines(path: &Path, limit: usize) -> Result<Vec<(usize, SampleLine)>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: reading", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let s: SampleLine = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}:{}: not a sample (need messages, input_ids, loss_mask; docs/data.md)",
                path.display(),
                i + 1
            )
        })?;
        if s.input_ids.len() != s.loss_mask.len() {
            bail!(
                "{}:{}: input_ids and loss_mask lengths differ",
                path.display(),
                i + 1
            );
        }
        out.push((i + 1, s));
        if limit > 0 && out.len() == limit {
            break;
        }
    }
    if out.is_empty() {
        bail!("{}: no samples", path.display());
    }
    Ok(out)
}

/// Training's validation loss on the same samples (the trainer's own functions).
fn teacher_forced(s: &Session, a: &SessionsArgs) -> Result<TeacherForced> {
    let vocab = s.model.config().vocab_size;
    let (mut samples, _) = read_samples(&a.data, a.max_seq_len, vocab)?;
    if a.limit > 0 {
        samples.truncate(a.limit);
    }
    let (mut sum, mut n) = (0.0, 0);
    for mb in sequential_batches(&samples, a.micro_batch) {
        let bt = BatchTensors::new(&mb, &s.model.device)?;
        sum += eval_loss(&s.model, &bt, a.loss_chunk)?;
        n += mb.n_trained();
    }
    if n == 0 {
        bail!(
            "{}: no trained tokens to compute a loss on",
            a.data.display()
        );
    }
    let loss = sum / n as f64;
    Ok(TeacherForced {
        loss,
        perplexity: loss.exp(),
        trained_tokens: n,
        samples: samples.len(),
    })
}

fn rate_rows(r: &Rates) -> [(&'static str, String); 6] {
    [
        ("parses as Harmony", r.harmony_ok.to_string()),
        ("tool calls: declared tool", r.tool_declared.to_string()),
        ("tool calls: JSON args", r.tool_json_ok.to_string()),
        ("tool calls: schema-valid", r.tool_schema_ok.to_string()),
        ("first action = reference", r.first_action_match.to_string()),
        ("ends <|return|>/<|call|>", r.ends_cleanly.to_string()),
    ]
}

fn rates_text(r: &Rates) -> String {
    rate_rows(r)
        .iter()
        .map(|(k, v)| format!("  {k:<27} {v}\n"))
        .collect()
}

/// A folder holding `sessions.json`, or that file itself.
pub fn is_sessions_run(p: &Path) -> bool {
    if p.is_dir() {
        p.join("sessions.json").is_file()
    } else {
        p.file_name().is_some_and(|n| n == "sessions.json")
    }
}

/// Two `eval sessions` runs side by side (e.g. base vs adapted).
pub fn compare_sessions(a: &Path, b: &Path) -> Result<String> {
    let load = |p: &Path| -> Result<(StoredSessions, Rates)> {
        let path = file_in(p, "sessions.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let s: StoredSessions = serde_json::from_str(&text).with_context(|| {
            format!("{}: not an `osstune eval sessions` output", path.display())
        })?;
        let rates: Rates = serde_json::from_value(s.rates.clone())
            .with_context(|| format!("{}: rates", path.display()))?;
        Ok((s, rates))
    };
    let ((sa, ra), (sb, rb)) = (load(a)?, load(b)?);
    let name = |p: &Path| {
        p.file_name().map_or_else(
            || p.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    };
    let mut s = format!("  {:<27} {:<18} {:<18}\n", "", name(a), name(b));
    let tf = |t: &TeacherForced| (format!("{:.4}", t.loss), format!("{:.1}", t.perplexity));
    let ((la, pa), (lb, pb)) = (tf(&sa.teacher_forced), tf(&sb.teacher_forced));
    s += &format!(
        "  {:<27} {la:<18} {lb:<18}\n",
        "valid loss (teacher-forced)"
    );
    s += &format!("  {:<27} {pa:<18} {pb:<18}\n", "perplexity");
    for ((k, va), (_, vb)) in rate_rows(&ra).iter().zip(rate_rows(&rb).iter()) {
        s += &format!("  {k:<27} {va:<18} {vb:<18}\n");
    }
    Ok(s.lines().map(|l| format!("{}\n", l.trim_end())).collect())
}
