//! The harness-neutral session model every reader produces (docs/data.md, "What a sample is").

use osstune_harmony::ToolDescription;
use serde_json::Value;

/// The harness whose tool vocabulary a session uses: it picks the built-in tool schemas
/// ([`crate::tools::builtin`]). Chat datasets have no harness: their schemas come with the
/// data or are inferred from the calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    Opencode,
    ClaudeCode,
    Chat,
}

impl Format {
    /// The default `source.format` value of a sample.
    pub fn as_str(&self) -> &'static str {
        match self {
            Format::Opencode => "opencode",
            Format::ClaudeCode => "claude-code",
            Format::Chat => "chat",
        }
    }
}

/// One thing the agent did inside a turn, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Chain of thought → `analysis`.
    Reasoning(String),
    /// Visible text; the turn's last text (after its last tool call) is the final answer,
    /// earlier text is a `commentary` preamble.
    Text(String),
    /// A tool call; its result follows as a `Result` step with the same id.
    Call {
        id: String,
        tool: String,
        args: Value,
    },
    Result {
        id: String,
        tool: String,
        text: String,
        is_error: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    /// Interrupted by the user or by a crash.
    Aborted,
    /// The provider failed (API error) and the turn never finished.
    Error,
}

/// One genuine user prompt and everything the agent did until the next one.
#[derive(Clone, Debug)]
pub struct Turn {
    pub prompt: String,
    pub steps: Vec<Step>,
    pub outcome: Outcome,
    /// Summary of the conversation before a compaction that precedes this turn.
    pub summary: Option<String>,
    /// Index of the first turn the model could still see (turns before a compaction are hidden).
    pub context_start: usize,
}

impl Turn {
    pub fn new(prompt: String) -> Self {
        Self {
            prompt,
            steps: Vec::new(),
            outcome: Outcome::Complete,
            summary: None,
            context_start: 0,
        }
    }

    /// The final answer: the last text step, if nothing but reasoning follows it.
    pub fn final_index(&self) -> Option<usize> {
        for (i, s) in self.steps.iter().enumerate().rev() {
            match s {
                Step::Text(t) if !t.trim().is_empty() => return Some(i),
                Step::Reasoning(_) => continue,
                _ => return None,
            }
        }
        None
    }

    pub fn final_text(&self) -> Option<&str> {
        match self.final_index().map(|i| &self.steps[i]) {
            Some(Step::Text(t)) => Some(t),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Session {
    pub id: String,
    pub format: Format,
    /// Source path relative to the input root, with `/` separators (stable across platforms).
    pub file: String,
    pub cwd: Option<String>,
    /// `YYYY-MM-DD` of the session start, when known.
    pub date: Option<String>,
    /// Sub-agent transcript (opencode child session, Claude Code sidechain / agent file).
    pub subagent: bool,
    pub turns: Vec<Turn>,
    /// `source.format` of its samples (defaults to `format.as_str()`; chat datasets name their
    /// schema, e.g. `openai-messages`).
    pub source_format: &'static str,
    /// The reader that produced it (registry name; per-format counts in stats.json).
    pub reader: &'static str,
    /// Developer instructions written in the data (a dataset's system prompt); `None` gives the
    /// coding-agent default.
    pub instructions: Option<String>,
    /// Tool schemas shipped with the data (OpenAI `tools`); declared as given, before any
    /// built-in or inferred schema.
    pub declared_tools: Vec<ToolDescription>,
}

impl Session {
    pub fn new(id: String, format: Format, file: String) -> Self {
        Self {
            id,
            format,
            file,
            cwd: None,
            date: None,
            subagent: false,
            turns: Vec::new(),
            source_format: format.as_str(),
            reader: "",
            instructions: None,
            declared_tools: Vec::new(),
        }
    }
}

/// Days since 1970-01-01 → `YYYY-MM-DD` (civil calendar; avoids a date crate for one use).
pub fn date_from_unix_ms(ms: i64) -> Option<String> {
    if ms <= 0 {
        return None;
    }
    let days = ms.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    Some(format!("{y:04}-{m:02}-{d:02}"))
}

/// `2025-06-28T12:00:00.000Z` → `2025-06-28`.
pub fn date_from_iso(s: &str) -> Option<String> {
    let d = s.get(..10)?;
    let b = d.as_bytes();
    let ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && d.chars()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    ok.then(|| d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(
            date_from_unix_ms(1_751_112_000_000).as_deref(),
            Some("2025-06-28")
        );
        assert_eq!(
            date_from_unix_ms(951_782_400_000).as_deref(),
            Some("2000-02-29")
        );
        assert_eq!(
            date_from_iso("2026-01-05T10:00:00Z").as_deref(),
            Some("2026-01-05")
        );
        assert_eq!(date_from_iso("garbage"), None);
    }

    #[test]
    fn final_answer_is_last_text_after_calls() {
        let mut t = Turn::new("p".into());
        t.steps.push(Step::Text("pre".into()));
        t.steps.push(Step::Call {
            id: "1".into(),
            tool: "bash".into(),
            args: Value::Null,
        });
        assert_eq!(t.final_text(), None);
        t.steps.push(Step::Text("done".into()));
        t.steps.push(Step::Reasoning("after".into()));
        assert_eq!(t.final_text(), Some("done"));
    }
}
