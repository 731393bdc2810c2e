//! The card's table (terminal), `results.json` (everything) and `report.md`, and the
//! side-by-side comparison of two runs.

use crate::grade::TaskResult;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub passed: usize,
    pub total: usize,
    /// Mean keyword coverage over tasks, %.
    pub avg_keyword_pct: f64,
    pub total_seconds: f64,
    pub tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub suite: String,
    /// What answered (model + adapter, or the replay file) and the settings, free-form.
    pub setup: serde_json::Value,
    pub sandbox: serde_json::Value,
    pub summary: Summary,
    pub tasks: Vec<TaskResult>,
}

pub fn summarize(tasks: &[TaskResult]) -> Summary {
    let n = tasks.len().max(1) as f64;
    Summary {
        passed: tasks.iter().filter(|t| t.pass).count(),
        total: tasks.len(),
        avg_keyword_pct: tasks.iter().map(|t| t.keyword_coverage).sum::<f64>() * 100.0 / n,
        total_seconds: tasks.iter().map(|t| t.seconds).sum(),
        tokens: tasks.iter().map(|t| t.tokens).sum(),
    }
}

/// The model card's table, one row per task, and its summary line.
pub fn table(tasks: &[TaskResult]) -> String {
    let w = tasks.iter().map(|t| t.id.len()).max().unwrap_or(4).max(4);
    let cw = tasks
        .iter()
        .map(|t| t.category.chars().count())
        .max()
        .unwrap_or(8)
        .max(8);
    let mut s = format!(
        "{:>2}  {:<w$}  {:<cw$}  {:<7} {:>5} {:>8} {:>7} {:>7} {:>7}\n",
        "#", "task", "category", "verdict", "KW%", "time s", "tok/s", "tokens", "retries"
    );
    for (i, t) in tasks.iter().enumerate() {
        let _ = writeln!(
            s,
            "{:>2}  {:<w$}  {:<cw$}  {:<7} {:>5.0} {:>8.1} {:>7.1} {:>7} {:>7}",
            i + 1,
            t.id,
            t.category,
            if t.pass { "PASS" } else { "FAIL" },
            t.keyword_coverage * 100.0,
            t.seconds,
            t.tokens_per_s,
            t.tokens,
            t.retries
        );
    }
    let sm = summarize(tasks);
    let _ = writeln!(
        s,
        "{}/{} PASS, avg KW {:.0}%, total {:.0} s",
        sm.passed, sm.total, sm.avg_keyword_pct, sm.total_seconds
    );
    for t in tasks.iter().filter(|t| !t.pass) {
        let _ = writeln!(s, "  FAIL {}: {}", t.id, t.reason);
    }
    s
}

pub fn markdown(run: &Run) -> String {
    let mut s = format!("# Evaluation: {}\n\n", run.suite);
    let sm = &run.summary;
    let _ = writeln!(
        s,
        "**{}/{} PASS**, avg KW {:.0}%, total {:.0} s, {} tokens\n",
        sm.passed, sm.total, sm.avg_keyword_pct, sm.total_seconds, sm.tokens
    );
    s.push_str(
        "| # | task | category | verdict | KW% | time s | tok/s | tokens | retries | reason |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for (i, t) in run.tasks.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {} | {} | {} |",
            i + 1,
            t.id,
            t.category,
            if t.pass { "PASS" } else { "FAIL" },
            t.keyword_coverage * 100.0,
            t.seconds,
            t.tokens_per_s,
            t.tokens,
            t.retries,
            t.reason.replace('|', "\\|")
        );
    }
    s.push_str("\n## Setup\n\n```json\n");
    s.push_str(&serde_json::to_string_pretty(&run.setup).unwrap_or_default());
    s.push_str("\n```\n\n## Sandbox\n\n```json\n");
    s.push_str(&serde_json::to_string_pretty(&run.sandbox).unwrap_or_default());
    s.push_str("\n```\n");
    s
}

/// Writes `results.json` and `report.md` into `dir` (each to a temporary name, then renamed).
pub fn write_run(dir: &Path, run: &Run) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&dir.join("results.json"), &serde_json::to_vec_pretty(run)?)?;
    write_atomic(&dir.join("report.md"), markdown(run).as_bytes())
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// The fields of a stored run that a comparison needs.
#[derive(Debug, Deserialize)]
struct StoredRun {
    suite: String,
    tasks: Vec<StoredTask>,
}

#[derive(Debug, Deserialize)]
struct StoredTask {
    id: String,
    pass: bool,
    keyword_coverage: f64,
    seconds: f64,
    tokens_per_s: f64,
}

fn results_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join("results.json")
    } else {
        p.to_path_buf()
    }
}

fn load_stored(p: &Path) -> Result<StoredRun> {
    let path = results_path(p);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not an `osstune eval tasks` results.json",
            path.display()
        )
    })
}

/// Two runs side by side, by task id (tasks of either run; `-` where one lacks it).
pub fn compare(a: &Path, b: &Path) -> Result<String> {
    let (ra, rb) = (load_stored(a)?, load_stored(b)?);
    if ra.suite != rb.suite {
        bail!(
            "{} is suite {:?} but {} is suite {:?}",
            a.display(),
            ra.suite,
            b.display(),
            rb.suite
        );
    }
    let mut ids: Vec<&str> = ra.tasks.iter().map(|t| t.id.as_str()).collect();
    for t in &rb.tasks {
        if !ids.contains(&t.id.as_str()) {
            ids.push(&t.id);
        }
    }
    let w = ids.iter().map(|i| i.len()).max().unwrap_or(4).max(4);
    // One run's columns: verdict, KW%, time, tok/s (CELL characters wide).
    const CELL: usize = 29;
    let cell = |r: &StoredRun, id: &str| match r.tasks.iter().find(|t| t.id == id) {
        Some(t) => format!(
            "{:<7} {:>4.0}% {:>7.1}s {:>6.1}",
            if t.pass { "PASS" } else { "FAIL" },
            t.keyword_coverage * 100.0,
            t.seconds,
            t.tokens_per_s
        ),
        None => format!("{:<CELL$}", "-"),
    };
    let head = format!("{:<7} {:>5} {:>8} {:>6}", "verdict", "KW%", "time", "tok/s");
    let mut s = format!(
        "{:<w$}  {:<CELL$}  {:<CELL$}\n{:<w$}  {head}  {head}\n",
        "",
        clip(&a.display().to_string(), CELL),
        clip(&b.display().to_string(), CELL),
        "task",
    );
    for id in &ids {
        let _ = writeln!(s, "{id:<w$}  {}  {}", cell(&ra, id), cell(&rb, id));
    }
    let total = |r: &StoredRun| {
        let n = r.tasks.len().max(1) as f64;
        format!(
            "{}/{} PASS, KW {:.0}%",
            r.tasks.iter().filter(|t| t.pass).count(),
            r.tasks.len(),
            r.tasks.iter().map(|t| t.keyword_coverage).sum::<f64>() * 100.0 / n
        )
    };
    let _ = writeln!(s, "{:<w$}  {:<CELL$}  {}", "total", total(&ra), total(&rb));
    Ok(s.lines().map(|l| format!("{}\n", l.trim_end())).collect())
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let tail: String = s
            .chars()
            .rev()
            .take(n - 1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}
