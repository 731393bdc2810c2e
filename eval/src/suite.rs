//! The task suite: a TOML file of prompts, keywords and optional execution checks
//! (format in docs/eval.md). Unknown keys and missing fields are errors naming the file and
//! the key; every task is validated (ids unique, regexes compile) before anything runs.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The model card's defaults: 60 s per execution, at most 2 retries after an execution error.
pub const DEFAULT_TIMEOUT_S: f64 = 60.0;
pub const DEFAULT_RETRIES: u32 = 2;
pub const DEFAULT_MEMORY_MB: u64 = 2048;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    #[serde(default)]
    pub suite: SuiteInfo,
    #[serde(rename = "task")]
    pub tasks: Vec<Task>,
    /// Folder of the suite file: harness and reference paths are relative to it.
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Folder of reference solutions `<dir>/<task id>.<ext>`, relative to the suite file.
    #[serde(default)]
    pub references: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeywordMode {
    /// Coverage = matched / total must reach the threshold.
    #[default]
    All,
    /// At least one keyword must appear.
    Any,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub id: String,
    pub category: String,
    pub prompt: String,
    /// Replaces the system message's model identity line.
    #[serde(default)]
    pub system: Option<String>,
    /// Developer-message instructions.
    #[serde(default)]
    pub developer: Option<String>,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub keyword_mode: KeywordMode,
    /// Fraction of keywords needed in `all` mode (default 1.0).
    #[serde(default)]
    pub keyword_threshold: Option<f64>,
    /// Most new tokens for this task (default: the command's `--max-tokens`).
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub check: Option<Check>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockChoice {
    First,
    /// The last block is usually the model's finished version.
    #[default]
    Last,
    /// All blocks of the language, concatenated in order.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HarnessMode {
    /// The harness is appended to the model's code: one program.
    #[default]
    Append,
    /// The model's code is `solution.py`; the harness is `main.py` and imports it.
    Beside,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Fence language tag of the block to run (`python` also matches `py`, `python3`).
    #[serde(default = "default_language")]
    pub language: String,
    #[serde(default)]
    pub block: BlockChoice,
    /// Test code run with the model's code (see `harness_mode`).
    #[serde(default)]
    pub harness: Option<String>,
    #[serde(default)]
    pub harness_mode: HarnessMode,
    #[serde(default)]
    pub expect_exit: i32,
    /// The whole stdout must contain a match of this regex.
    #[serde(default)]
    pub stdout_regex: Option<String>,
    /// stdout, trimmed, must equal this (trimmed).
    #[serde(default)]
    pub stdout_equals: Option<String>,
    #[serde(default)]
    pub timeout_s: Option<f64>,
    #[serde(default)]
    pub retries: Option<u32>,
    /// Address-space limit of the process (MiB).
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// Python modules the check needs (a missing one is an error before any generation).
    #[serde(default)]
    pub requires: Vec<String>,
}

fn default_language() -> String {
    "python".to_string()
}

impl Check {
    pub fn timeout_s(&self) -> f64 {
        self.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S)
    }
    pub fn retries(&self) -> u32 {
        self.retries.unwrap_or(DEFAULT_RETRIES)
    }
    pub fn memory_mb(&self) -> u64 {
        self.memory_mb.unwrap_or(DEFAULT_MEMORY_MB)
    }
}

impl Task {
    pub fn keyword_threshold(&self) -> f64 {
        self.keyword_threshold.unwrap_or(1.0)
    }
}

impl Suite {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read suite {}", path.display()))?;
        let mut s = Self::parse(&text, &path.display().to_string())?;
        s.dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(s)
    }

    /// Parses and validates; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let s: Suite = toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        s.validate(origin)?;
        Ok(s)
    }

    fn validate(&self, origin: &str) -> Result<()> {
        if self.tasks.is_empty() {
            bail!("{origin}: no [[task]] entries");
        }
        let mut ids = BTreeSet::new();
        for (i, t) in self.tasks.iter().enumerate() {
            let at = format!("{origin}: task[{i}] (id {:?})", t.id);
            if t.id.is_empty()
                || !t
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                bail!("{at}: id: use letters, digits, '-' and '_' only");
            }
            if !ids.insert(t.id.as_str()) {
                bail!("{at}: id: duplicate task id");
            }
            if t.prompt.trim().is_empty() {
                bail!("{at}: prompt: empty");
            }
            if t.keywords.iter().any(|k| k.trim().is_empty()) {
                bail!("{at}: keywords: an empty keyword matches everything");
            }
            if let Some(th) = t.keyword_threshold {
                if !(0.0..=1.0).contains(&th) {
                    bail!("{at}: keyword_threshold: {th} is not in [0, 1]");
                }
            }
            if t.check.is_none() && t.keywords.is_empty() {
                bail!("{at}: neither keywords nor a check: nothing to grade");
            }
            if let Some(c) = &t.check {
                if let Some(r) = &c.stdout_regex {
                    regex::Regex::new(r)
                        .with_context(|| format!("{at}: check.stdout_regex: invalid regex"))?;
                }
                if c.language.trim().is_empty() {
                    bail!("{at}: check.language: empty");
                }
                if c.harness_mode == HarnessMode::Beside && c.harness.is_none() {
                    bail!("{at}: check.harness_mode = \"beside\" needs check.harness");
                }
                let timeout = c.timeout_s();
                if !(timeout > 0.0 && timeout <= 3600.0) {
                    bail!("{at}: check.timeout_s: {timeout} is not in (0, 3600]");
                }
                if c.memory_mb() < 64 {
                    bail!("{at}: check.memory_mb: at least 64");
                }
            }
        }
        Ok(())
    }

    /// Keeps the tasks named in `ids` (in suite order); an unknown id is an error.
    pub fn select(&mut self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        for id in ids {
            if !self.tasks.iter().any(|t| &t.id == id) {
                bail!("--tasks: no task {id:?} in the suite");
            }
        }
        self.tasks.retain(|t| ids.contains(&t.id));
        Ok(())
    }

    /// Modules any selected task's check needs.
    pub fn required_modules(&self) -> BTreeSet<String> {
        self.tasks
            .iter()
            .filter_map(|t| t.check.as_ref())
            .flat_map(|c| c.requires.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
[suite]
name = "t"
[[task]]
id = "a"
category = "math"
prompt = "2+2?"
keywords = ["four"]
[task.check]
stdout_equals = "4"
"#;

    fn err(text: &str) -> String {
        format!("{:#}", Suite::parse(text, "s.toml").unwrap_err())
    }

    #[test]
    fn a_valid_suite_parses_with_the_card_defaults() {
        let s = Suite::parse(OK, "s.toml").unwrap();
        let c = s.tasks[0].check.as_ref().unwrap();
        assert_eq!(c.timeout_s(), 60.0);
        assert_eq!(c.retries(), 2);
        assert_eq!(c.language, "python");
        assert_eq!(c.block, BlockChoice::Last);
    }

    #[test]
    fn bad_toml_names_the_file_and_line() {
        let e = err("[[task]\nid=");
        assert!(e.starts_with("s.toml: "), "{e}");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let e = err(&OK.replace("keywords =", "keywrods ="));
        assert!(e.contains("s.toml") && e.contains("keywrods"), "{e}");
        let e = err(&OK.replace("stdout_equals", "stdout_equal"));
        assert!(e.contains("stdout_equal"), "{e}");
    }

    #[test]
    fn missing_fields_are_errors_naming_the_field() {
        let e = err(&OK.replace("category = \"math\"\n", ""));
        assert!(e.contains("s.toml") && e.contains("category"), "{e}");
        let e = err("[suite]\nname = \"x\"\n");
        assert!(e.contains("task"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_task_and_key() {
        let two = format!("{OK}{}", OK.replace("[suite]\nname = \"t\"", ""));
        assert!(err(&two).contains("duplicate task id"));
        let e = err(&OK.replace("stdout_equals = \"4\"", "stdout_regex = \"(\""));
        assert!(e.contains("task[0] (id \"a\"): check.stdout_regex"), "{e}");
        let e = err(&OK.replace("keywords = [\"four\"]", "keyword_threshold = 2.0"));
        assert!(e.contains("keyword_threshold"), "{e}");
    }

    #[test]
    fn select_keeps_suite_order_and_rejects_unknown_ids() {
        let two = format!(
            "{OK}{}",
            OK.replace("[suite]\nname = \"t\"", "")
                .replace("\"a\"", "\"b\"")
        );
        let mut s = Suite::parse(&two, "s.toml").unwrap();
        assert!(s.clone().select(&["zz".into()]).is_err());
        s.select(&["b".into()]).unwrap();
        assert_eq!(s.tasks.len(), 1);
        assert_eq!(s.tasks[0].id, "b");
    }
}
