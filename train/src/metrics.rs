//! `metrics.jsonl` (one JSON object a line: every step, every validation) and the loss
//! curve `loss.svg` written at the end (plain SVG, no plotting dependency).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Train {
        step: usize,
        loss: f64,
        lr_muon: f64,
        lr_adamw: f64,
        grad_norm: f64,
        trained_tokens: usize,
        tokens: usize,
        tokens_per_s: f64,
        elapsed_s: f64,
    },
    Valid {
        step: usize,
        loss: f64,
        trained_tokens: usize,
    },
    /// A `--resume` at `step` that changed these config values (`key: old -> new`).
    Resume { step: usize, changes: Vec<String> },
}

pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// Opens `metrics.jsonl` in `dir`. On resume, lines after `keep_until_step` (written by
    /// the interrupted run after its last checkpoint) are dropped so the log matches the
    /// resumed run exactly.
    pub fn open(dir: &Path, keep_until_step: Option<usize>) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        match keep_until_step {
            None => {
                std::fs::write(&path, "").with_context(|| format!("creating {}", path.display()))?
            }
            Some(k) => {
                let kept: Vec<String> = read_records(&path)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|r| record_step(r) <= k)
                    .filter_map(|r| serde_json::to_string(&r).ok())
                    .collect();
                let mut text = kept.join("\n");
                if !text.is_empty() {
                    text.push('\n');
                }
                std::fs::write(&path, text)
                    .with_context(|| format!("rewriting {}", path.display()))?;
            }
        }
        Ok(Self { path })
    }

    pub fn push(&self, r: &Record) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        let line = serde_json::to_string(r)?;
        writeln!(f, "{line}").with_context(|| format!("writing {}", self.path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn record_step(r: &Record) -> usize {
    match r {
        Record::Train { step, .. } | Record::Valid { step, .. } | Record::Resume { step, .. } => {
            *step
        }
    }
}

pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// Writes the train and validation loss curves as an SVG (atomically).
pub fn write_loss_svg(records: &[Record], path: &Path) -> Result<()> {
    let train: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Train { step, loss, .. } => Some((*step as f64, *loss)),
            _ => None,
        })
        .collect();
    let valid: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Valid { step, loss, .. } => Some((*step as f64, *loss)),
            _ => None,
        })
        .collect();
    let all = train.iter().chain(valid.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-9 {
        y1 = y0 + 1.0;
    }
    let (w, h, m) = (720.0, 420.0, 60.0);
    let sx = |x: f64| m + (x - x0) / (x1 - x0) * (w - 2.0 * m);
    let sy = |y: f64| h - m - (y - y0) / (y1 - y0) * (h - 2.0 * m);
    let poly = |pts: &[(f64, f64)]| -> String {
        pts.iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = String::new();
    s.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    ));
    s.push_str(&format!(
        "<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - m, w - m, h - m, h - m
    ));
    for i in 0..=4 {
        let fy = y0 + (y1 - y0) * i as f64 / 4.0;
        let fx = x0 + (x1 - x0) * i as f64 / 4.0;
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{fy:.3}</text>\n<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{fx:.0}</text>\n",
            m - 6.0,
            sy(fy) + 4.0,
            sx(fx),
            h - m + 18.0
        ));
    }
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>\n<text x=\"{m}\" y=\"30\">loss (blue: train, orange: validation)</text>\n",
        w / 2.0,
        h - 15.0
    ));
    if !train.is_empty() {
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            poly(&train)
        ));
    }
    if !valid.is_empty() {
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"#ff7f0e\" stroke-width=\"2\" points=\"{}\"/>\n",
            poly(&valid)
        ));
        for &(x, y) in &valid {
            s.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#ff7f0e\"/>\n",
                sx(x),
                sy(y)
            ));
        }
    }
    s.push_str("</svg>\n");
    crate::checkpoint::write_atomic(path, s.as_bytes())
}
