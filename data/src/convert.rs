//! `osstune data convert`: walk the inputs, read sessions, build samples, split, write.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use osstune_harmony::{ReasoningEffort, Tokenizer};
use serde::Serialize;
use serde_json::Value;

use crate::diag::Diag;
use crate::readers::Input;
use crate::sample::{self, DropReason, FitReport, RenderCache, Sample, SampleOptions};
use crate::session::{Session, Step};
use crate::split::{split, SplitBy};
use crate::tools;
use crate::walk::{collect_units, InputFormat, Unit};

#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub format: InputFormat,
    pub max_seq_len: usize,
    pub valid_fraction: f64,
    pub seed: u64,
    pub split_by: SplitBy,
    pub reasoning_effort: ReasoningEffort,
    pub strict: bool,
    pub include_subagents: bool,
    /// Declare every built-in tool of the harness, not only the ones the session used.
    pub declare_all_tools: bool,
    /// Largest input file read, in MiB (`--max-file-mb`); larger files are reported and skipped.
    pub max_file_mb: u64,
    /// Record field holding the conversation in chat datasets (`--column`).
    pub column: Option<String>,
    /// Keep only samples whose target turn calls no tool outside this list (empty: no filter).
    pub include_tools: Vec<String>,
    /// Drop samples whose target turn calls any of these tools.
    pub exclude_tools: Vec<String>,
    /// Drop samples with fewer trained tokens than this.
    pub min_turn_tokens: usize,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            inputs: Vec::new(),
            out: PathBuf::from("data-out"),
            format: InputFormat::Auto,
            max_seq_len: 4096,
            valid_fraction: 0.1,
            seed: 42,
            split_by: SplitBy::Sample,
            reasoning_effort: ReasoningEffort::High,
            strict: false,
            include_subagents: false,
            declare_all_tools: false,
            max_file_mb: 2048,
            column: None,
            include_tools: Vec::new(),
            exclude_tools: Vec::new(),
            min_turn_tokens: 0,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TokenStats {
    pub min: usize,
    pub median: usize,
    pub max: usize,
    pub total: usize,
    pub trained: usize,
}

/// Per input format (reader name) counts in `stats.json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FormatStats {
    pub files: usize,
    pub sessions: usize,
    pub samples_kept: usize,
    /// Samples dropped as duplicates of an earlier sample (of any format).
    pub duplicates: usize,
}

/// `OUT/stats.json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub files_read: usize,
    pub files_skipped: usize,
    pub bad_lines: usize,
    pub sessions: usize,
    pub subagent_sessions_skipped: usize,
    pub turns: usize,
    pub samples_kept: usize,
    pub samples_dropped: BTreeMap<String, usize>,
    pub train: usize,
    pub valid: usize,
    pub tokens: TokenStats,
    pub truncated_tool_outputs: usize,
    pub dropped_context_turns: usize,
    pub tools_seen: BTreeMap<String, usize>,
    /// Counts per input format (reader name: `opencode-storage`, `sharegpt`, `parquet`, …).
    pub formats: BTreeMap<String, FormatStats>,
    /// Duplicates whose first copy came from another input format (e.g. the same session read
    /// from a storage tree and from an event capture).
    pub duplicates_across_formats: usize,
    pub warnings: Vec<String>,
}

impl Stats {
    /// The human summary printed after a conversion.
    pub fn summary(&self) -> String {
        let dropped: usize = self.samples_dropped.values().sum();
        let reasons: Vec<String> = self
            .samples_dropped
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let tools: Vec<String> = self
            .tools_seen
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect();
        let mut s = format!(
            "files read {} (skipped {}, bad lines {}), sessions {} (sub-agent sessions skipped {}), turns {}\n\
             samples kept {} → train {} / valid {}; dropped {}{}\n\
             tokens per sample min {} / median {} / max {}, total {}, trained {}\n\
             tool outputs truncated {}, context turns dropped {}\n\
             tools seen: {}",
            self.files_read,
            self.files_skipped,
            self.bad_lines,
            self.sessions,
            self.subagent_sessions_skipped,
            self.turns,
            self.samples_kept,
            self.train,
            self.valid,
            dropped,
            if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) },
            self.tokens.min,
            self.tokens.median,
            self.tokens.max,
            self.tokens.total,
            self.tokens.trained,
            self.truncated_tool_outputs,
            self.dropped_context_turns,
            if tools.is_empty() { "none".to_string() } else { tools.join(", ") },
        );
        if self.formats.len() > 1 || self.duplicates_across_formats > 0 {
            let per: Vec<String> = self
                .formats
                .iter()
                .map(|(k, f)| {
                    format!(
                        "{k} {} files / {} sessions / {} samples",
                        f.files, f.sessions, f.samples_kept
                    )
                })
                .collect();
            s.push_str(&format!(
                "\nformats: {}; duplicates across formats {}",
                per.join(", "),
                self.duplicates_across_formats
            ));
        }
        if !self.warnings.is_empty() {
            s.push_str(&format!(
                "\n{} input problems (see stats.json):",
                self.warnings.len()
            ));
            for w in self.warnings.iter().take(10) {
                s.push_str(&format!("\n  {w}"));
            }
        }
        s
    }
}

/// Read every unit into sessions with its reader; per-file problems are warnings (errors with
/// `--strict`).
pub fn read_sessions(
    units: &[Unit],
    column: Option<&str>,
    diag: &mut Diag,
    stats: &mut Stats,
) -> Result<Vec<Session>> {
    let mut sessions = Vec::new();
    for u in units {
        let input = Input {
            path: &u.path,
            rel: &u.rel,
            column,
        };
        let fs = stats
            .formats
            .entry(u.reader.name().to_string())
            .or_default();
        match u.reader.read(&input, diag) {
            Ok(out) => {
                stats.files_read += out.files;
                stats.bad_lines += out.bad_records;
                fs.files += out.files;
                fs.sessions += out.sessions.len();
                for mut s in out.sessions {
                    s.reader = u.reader.name();
                    sessions.push(s);
                }
            }
            Err(e) if !diag.strict => {
                stats.files_read += 1;
                fs.files += 1;
                diag.warn(u.rel(), None, format!("{e:#}; skipped"))?;
                stats.files_skipped += 1;
            }
            Err(e) => return Err(e.context(format!("{} ({})", u.rel, u.reader.name()))),
        }
    }
    Ok(sessions)
}

/// Hash of what the agent was asked and did: equal turns (resumed sessions, forks, re-imports)
/// give equal keys.
fn turn_key(sess: &Session, turn: usize) -> String {
    let t = &sess.turns[turn];
    let mut parts = vec![t.prompt.clone()];
    for s in &t.steps {
        if let Step::Call { tool, args, .. } = s {
            parts.push(format!("{tool}:{args}"));
        }
    }
    parts.push(t.final_text().unwrap_or("").to_string());
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    sample::hex_id(&refs)
}

/// `--include-tools`, `--exclude-tools`, `--min-turn-tokens`.
fn filter(
    sess: &Session,
    turn: usize,
    smp: Sample,
    opts: &ConvertOptions,
) -> Result<Sample, DropReason> {
    let calls = sess.turns[turn].steps.iter().filter_map(|s| match s {
        Step::Call { tool, .. } => Some(tool.as_str()),
        _ => None,
    });
    let include = &opts.include_tools;
    let exclude = &opts.exclude_tools;
    for tool in calls {
        let listed = |l: &Vec<String>| l.iter().any(|t| t == tool);
        if listed(exclude) || (!include.is_empty() && !listed(include)) {
            return Err(DropReason::ToolFilter);
        }
    }
    if smp.n_trained < opts.min_turn_tokens {
        return Err(DropReason::TooShort);
    }
    Ok(smp)
}

/// One session's samples (with their dedup keys), tool counts and fitting report.
struct SessionOut {
    reader: &'static str,
    turns: usize,
    samples: Vec<(String, Result<Sample, DropReason>)>,
    tools: BTreeMap<String, usize>,
    fit: FitReport,
}

fn session_samples(
    tok: &Tokenizer,
    sess: &Session,
    opts: &ConvertOptions,
    sopts: &SampleOptions,
) -> Result<SessionOut> {
    // Tools: all the session used (stable within a session), plus all built-ins if asked.
    let mut used: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    let mut tools = BTreeMap::new();
    if opts.declare_all_tools {
        for n in tools::builtin_names(sess.format) {
            used.entry(n.to_string()).or_default();
        }
    }
    for t in &sess.turns {
        for s in &t.steps {
            if let Step::Call { tool, args, .. } = s {
                used.entry(tool.clone()).or_default().push(args);
                *tools.entry(tool.clone()).or_default() += 1;
            }
        }
    }
    // Schemas shipped with the data come first and win over built-in or inferred ones.
    used.retain(|name, _| {
        !sess
            .declared_tools
            .iter()
            .any(|d| d.name == tools::sanitize_name(name))
    });
    let mut decls = sess.declared_tools.clone();
    decls.extend(tools::declare(sess.format, &used));
    let mut fit = FitReport::default();
    let mut cache = RenderCache::default();
    let mut samples = Vec::with_capacity(sess.turns.len());
    for i in 0..sess.turns.len() {
        let res = sample::build(tok, sess, i, &decls, sopts, &mut fit, &mut cache)
            .with_context(|| format!("{}: session {} turn {i}", sess.file, sess.id))?
            .and_then(|smp| filter(sess, i, smp, opts));
        samples.push((turn_key(sess, i), res));
    }
    Ok(SessionOut {
        reader: sess.reader,
        turns: sess.turns.len(),
        samples,
        tools,
        fit,
    })
}

/// Sessions → samples in input order, plus stats.
pub fn build_samples(
    tok: &Tokenizer,
    sessions: &[Session],
    opts: &ConvertOptions,
    stats: &mut Stats,
) -> Result<Vec<Sample>> {
    let sopts = SampleOptions {
        max_seq_len: opts.max_seq_len,
        reasoning_effort: opts.reasoning_effort,
    };
    let kept: Vec<&Session> = sessions
        .iter()
        .filter(|s| opts.include_subagents || !s.subagent)
        .collect();
    stats.subagent_sessions_skipped += sessions.len() - kept.len();
    // Sessions are independent: build them on all cores, then merge in input order so that
    // deduplication and the output are the same whatever the thread count.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(kept.len().max(1));
    let chunk = kept.len().div_ceil(threads).max(1);
    let sopts = &sopts;
    let results: Vec<Result<SessionOut>> = std::thread::scope(|scope| {
        let handles: Vec<_> = kept
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|s| session_samples(tok, s, opts, sopts))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err(anyhow::anyhow!("a conversion thread panicked"))])
            })
            .collect()
    });
    // Dedup key → the format of its first copy.
    let mut seen: HashMap<String, &'static str> = HashMap::new();
    let mut out = Vec::new();
    let mut fit = FitReport::default();
    for r in results {
        let so = r?;
        stats.sessions += 1;
        stats.turns += so.turns;
        fit.truncated_outputs += so.fit.truncated_outputs;
        fit.dropped_context_turns += so.fit.dropped_context_turns;
        for (tool, n) in so.tools {
            *stats.tools_seen.entry(tool).or_default() += n;
        }
        let fs = stats.formats.entry(so.reader.to_string()).or_default();
        for (key, res) in so.samples {
            let res = res.and_then(|s| match seen.get(&key) {
                None => {
                    seen.insert(key, so.reader);
                    Ok(s)
                }
                Some(first) => {
                    fs.duplicates += 1;
                    if *first != so.reader {
                        stats.duplicates_across_formats += 1;
                    }
                    Err(DropReason::Duplicate)
                }
            });
            match res {
                Ok(s) => {
                    fs.samples_kept += 1;
                    out.push(s)
                }
                Err(r) => {
                    *stats
                        .samples_dropped
                        .entry(r.as_str().to_string())
                        .or_default() += 1
                }
            }
        }
    }
    stats.truncated_tool_outputs = fit.truncated_outputs;
    stats.dropped_context_turns = fit.dropped_context_turns;
    stats.samples_kept = out.len();
    let mut lens: Vec<usize> = out.iter().map(|s| s.n_tokens).collect();
    lens.sort_unstable();
    if !lens.is_empty() {
        stats.tokens = TokenStats {
            min: lens[0],
            median: lens[lens.len() / 2],
            max: lens[lens.len() - 1],
            total: lens.iter().sum(),
            trained: out.iter().map(|s| s.n_trained).sum(),
        };
    }
    Ok(out)
}

/// Write `path` atomically: `path.tmp`, then rename.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    {
        let f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = std::io::BufWriter::new(f);
        write(&mut w).with_context(|| format!("writing {}", tmp.display()))?;
        w.flush()
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn write_jsonl(path: &Path, samples: &[&Sample]) -> Result<()> {
    write_atomic(path, |w| {
        for s in samples {
            serde_json::to_writer(&mut *w, s)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// The whole conversion. Fails when nothing at all could be read.
pub fn convert(tok: &Tokenizer, opts: &ConvertOptions) -> Result<Stats> {
    if !(0.0..1.0).contains(&opts.valid_fraction) {
        bail!(
            "--valid-fraction must be in [0, 1), got {}",
            opts.valid_fraction
        );
    }
    if opts.max_seq_len < 64 {
        bail!(
            "--max-seq-len {} is too small (need at least 64)",
            opts.max_seq_len
        );
    }
    if opts.max_file_mb == 0 {
        bail!("--max-file-mb must be at least 1");
    }
    let mut diag = Diag::new(opts.strict);
    diag.max_file_bytes = opts.max_file_mb.saturating_mul(1024 * 1024);
    let mut stats = Stats::default();
    let column = opts.column.as_deref();
    let units = collect_units(
        &opts.inputs,
        &opts.format,
        column,
        &mut diag,
        &mut stats.files_skipped,
    )?;
    let sessions = read_sessions(&units, column, &mut diag, &mut stats)?;
    if sessions.is_empty() {
        let mut msg = format!(
            "no sessions could be read from {} ({} files read, {} skipped)",
            opts.inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            stats.files_read,
            stats.files_skipped
        );
        for w in diag.warnings.iter().take(5) {
            msg.push_str(&format!("\n  {w}"));
        }
        bail!(msg);
    }
    let samples = build_samples(tok, &sessions, opts, &mut stats)?;
    let (train, valid) = split(&samples, opts.valid_fraction, opts.seed, opts.split_by);
    stats.train = train.len();
    stats.valid = valid.len();
    stats.warnings = diag.warnings;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    write_jsonl(&opts.out.join("train.jsonl"), &train)?;
    write_jsonl(&opts.out.join("valid.jsonl"), &valid)?;
    write_atomic(&opts.out.join("stats.json"), |w| {
        serde_json::to_writer_pretty(&mut *w, &stats)?;
        w.write_all(b"\n")?;
        Ok(())
    })?;
    Ok(stats)
}
