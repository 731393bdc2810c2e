//! `--replay responses.jsonl`: answers from a file instead of a model, so grading is
//! deterministic and another system's outputs can be graded the same way.
//!
//! One JSON object a line: `{"task": ID, "final": TEXT, "analysis"?: TEXT, "text"?: TEXT,
//! "tokens"?: N, "seconds"?: S}` (`final` or `text` required). Several lines for one task are
//! its successive attempts (what a retry gets). `osstune eval tasks` writes the model's answers
//! in this format (`responses.jsonl` in its output folder).

use crate::grade::{Responder, Response};
use crate::suite::{Suite, Task};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayLine {
    pub task: String,
    #[serde(default, rename = "final")]
    pub final_text: Option<String>,
    #[serde(default)]
    pub analysis: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub tokens: Option<usize>,
    #[serde(default)]
    pub seconds: Option<f64>,
}

impl ReplayLine {
    pub fn from_response(task: &str, r: &Response) -> Self {
        Self {
            task: task.to_string(),
            final_text: r.final_text.clone(),
            analysis: r.analysis.clone(),
            text: Some(r.text.clone()),
            tokens: Some(r.tokens),
            seconds: Some(r.seconds),
        }
    }
}

pub struct Replay {
    answers: HashMap<String, Vec<Response>>,
}

impl Replay {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read replay file {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let mut answers: HashMap<String, Vec<Response>> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = format!("{origin}:{}", i + 1);
            let l: ReplayLine =
                serde_json::from_str(line).with_context(|| format!("{at}: not a replay line"))?;
            if l.final_text.is_none() && l.text.is_none() {
                bail!("{at}: needs \"final\" or \"text\"");
            }
            let text = l
                .text
                .clone()
                .or_else(|| l.final_text.clone())
                .unwrap_or_default();
            answers.entry(l.task.clone()).or_default().push(Response {
                final_text: l.final_text,
                analysis: l.analysis,
                tokens: l.tokens.unwrap_or(0),
                seconds: l.seconds.unwrap_or(0.0),
                stop: "replay".into(),
                text,
            });
        }
        Ok(Self { answers })
    }

    /// Every task of `suite` must have an answer (answers for other tasks are ignored, so one
    /// file serves any `--tasks` subset).
    pub fn check_covers(&self, suite: &Suite, origin: &str) -> Result<()> {
        for t in &suite.tasks {
            if !self.answers.contains_key(&t.id) {
                bail!("{origin}: no answer for task {:?}", t.id);
            }
        }
        Ok(())
    }
}

impl Responder for Replay {
    fn respond(&mut self, task: &Task, attempt: u32) -> Result<Option<Response>> {
        Ok(self
            .answers
            .get(&task.id)
            .and_then(|v| v.get(attempt as usize))
            .cloned())
    }
}
