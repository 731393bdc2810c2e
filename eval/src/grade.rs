//! Grading as the recipe's model card describes it: PASS needs the execution check (when the
//! task has one) and enough keyword coverage; KW% is always reported. After an execution
//! *error* — no code to run, or a crash that is not a failed assertion — the answer is
//! re-generated, up to the task's retry limit. A wrong answer (wrong output, failed assertion),
//! a timeout or a resource kill is final.

use crate::extract::{keywords_found, select_code};
use crate::sandbox::{Execution, Limits, Program, Sandbox};
use crate::suite::{Check, HarnessMode, KeywordMode, Task};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// One answer to a task.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Response {
    /// The `final` channel (None when the model wrote none).
    pub final_text: Option<String>,
    pub analysis: Option<String>,
    /// Everything generated, as text (special tokens spelled out).
    pub text: String,
    pub tokens: usize,
    /// Generation time.
    pub seconds: f64,
    /// Why generation stopped (`<|return|>`, `max_tokens`, …).
    pub stop: String,
}

impl Response {
    /// What is graded: the final channel, or all the text when there is none.
    pub fn graded_text(&self) -> &str {
        self.final_text.as_deref().unwrap_or(&self.text)
    }
}

/// Answers come from a model or a file.
pub trait Responder {
    /// The answer for `task`'s attempt `attempt` (0-based); None when no more answers exist
    /// (a replay file with fewer attempts than the grader asks for).
    fn respond(&mut self, task: &Task, attempt: u32) -> Result<Option<Response>>;
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", content = "reason", rename_all = "snake_case")]
pub enum CheckOutcome {
    Passed,
    /// Ran, but the answer is wrong: final.
    Wrong(String),
    /// Could not run to completion: worth re-generating.
    Error(String),
    /// Killed by the sandbox (timeout, limits): final.
    Killed(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub response: Response,
    pub code: Option<String>,
    pub execution: Option<Execution>,
    pub outcome: Option<CheckOutcome>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub id: String,
    pub category: String,
    pub pass: bool,
    /// Why it failed ("" on PASS).
    pub reason: String,
    /// Matched / total keywords of the last attempt (1.0 without keywords).
    pub keyword_coverage: f64,
    pub keywords_missing: Vec<String>,
    pub retries: u32,
    /// Generation + execution, all attempts.
    pub seconds: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub attempts: Vec<Attempt>,
}

/// Grades `task`, asking `responder` for answers. Errors only when the responder or the
/// sandbox itself fails.
pub fn grade_task(
    task: &Task,
    responder: &mut dyn Responder,
    sandbox: Option<&Sandbox>,
) -> Result<TaskResult> {
    let start = Instant::now();
    let mut attempts: Vec<Attempt> = Vec::new();
    let max_retries = task.check.as_ref().map_or(0, Check::retries);
    let mut exhausted = false;
    loop {
        let n = attempts.len() as u32;
        let Some(response) = responder.respond(task, n)? else {
            exhausted = true;
            break;
        };
        let mut attempt = Attempt {
            response,
            code: None,
            execution: None,
            outcome: None,
        };
        if let Some(check) = &task.check {
            let sandbox = sandbox.ok_or_else(|| {
                anyhow::anyhow!("task {}: has an execution check but no sandbox", task.id)
            })?;
            let (code, execution, outcome) =
                run_check(check, attempt.response.graded_text(), sandbox)?;
            attempt.code = code;
            attempt.execution = execution;
            attempt.outcome = Some(outcome);
        }
        let retry = matches!(attempt.outcome, Some(CheckOutcome::Error(_))) && n < max_retries;
        attempts.push(attempt);
        if !retry {
            break;
        }
    }
    let Some(last) = attempts.last() else {
        anyhow::bail!("task {}: no answer at all", task.id);
    };
    let found = keywords_found(last.response.graded_text(), &task.keywords);
    let hits = found.iter().filter(|&&f| f).count();
    let coverage = if task.keywords.is_empty() {
        1.0
    } else {
        hits as f64 / task.keywords.len() as f64
    };
    let keywords_ok = match task.keyword_mode {
        _ if task.keywords.is_empty() => true,
        KeywordMode::All => coverage + 1e-9 >= task.keyword_threshold(),
        KeywordMode::Any => hits > 0,
    };
    let mut reasons = Vec::new();
    match &last.outcome {
        None | Some(CheckOutcome::Passed) => {}
        Some(CheckOutcome::Wrong(r) | CheckOutcome::Killed(r)) => reasons.push(r.clone()),
        Some(CheckOutcome::Error(r)) => {
            let why = if exhausted {
                "no more answers to retry with"
            } else {
                "retries used up"
            };
            reasons.push(format!("{r} ({why})"));
        }
    }
    if !keywords_ok {
        reasons.push(format!(
            "keywords {hits}/{} ({:.0}%) below the threshold",
            task.keywords.len(),
            coverage * 100.0
        ));
    }
    let tokens: usize = attempts.iter().map(|a| a.response.tokens).sum();
    let gen_secs: f64 = attempts.iter().map(|a| a.response.seconds).sum();
    Ok(TaskResult {
        id: task.id.clone(),
        category: task.category.clone(),
        pass: reasons.is_empty(),
        reason: reasons.join("; "),
        keyword_coverage: coverage,
        keywords_missing: task
            .keywords
            .iter()
            .zip(&found)
            .filter(|(_, &f)| !f)
            .map(|(k, _)| k.clone())
            .collect(),
        retries: attempts.len().saturating_sub(1) as u32,
        seconds: start.elapsed().as_secs_f64().max(gen_secs),
        tokens,
        tokens_per_s: if gen_secs > 0.0 {
            tokens as f64 / gen_secs
        } else {
            0.0
        },
        attempts,
    })
}

/// Extracts, runs and judges one answer's code.
pub fn run_check(
    check: &Check,
    answer: &str,
    sandbox: &Sandbox,
) -> Result<(Option<String>, Option<Execution>, CheckOutcome)> {
    let code = match select_code(answer, &check.language, check.block) {
        Ok(c) => c,
        Err(why) => return Ok((None, None, CheckOutcome::Error(why))),
    };
    let program = match (&check.harness, check.harness_mode) {
        (None, _) => Program::single(&code),
        (Some(h), HarnessMode::Append) => Program::single(&format!("{code}\n\n{h}")),
        (Some(h), HarnessMode::Beside) => Program {
            files: vec![
                ("solution.py".into(), code.clone()),
                ("main.py".into(), h.clone()),
            ],
            entry: "main.py".into(),
        },
    };
    let limits = Limits::with_timeout(check.timeout_s(), check.memory_mb());
    let e = sandbox.run(&program, &limits)?;
    let outcome = judge(check, &e);
    Ok((Some(code), Some(e), outcome))
}

fn judge(check: &Check, e: &Execution) -> CheckOutcome {
    if let Some(why) = e.abnormal() {
        return CheckOutcome::Killed(why);
    }
    let code = e.exit_code.unwrap_or(-1);
    if code != check.expect_exit {
        let last = last_error_line(&e.stderr);
        let why = format!("exit {code} (expected {}): {last}", check.expect_exit);
        return if last.starts_with("AssertionError") {
            CheckOutcome::Wrong(why)
        } else {
            CheckOutcome::Error(why)
        };
    }
    if let Some(want) = &check.stdout_equals {
        if e.stdout.trim() != want.trim() {
            return CheckOutcome::Wrong(format!(
                "stdout {:?} is not {:?}",
                clip(e.stdout.trim(), 80),
                clip(want.trim(), 80)
            ));
        }
    }
    if let Some(r) = &check.stdout_regex {
        // Validated when the suite was loaded.
        let re = regex::Regex::new(r).expect("suite regexes are validated on load");
        if !re.is_match(&e.stdout) {
            return CheckOutcome::Wrong(format!(
                "stdout does not match /{r}/ (stdout ends {:?})",
                clip_tail(e.stdout.trim(), 80)
            ));
        }
    }
    CheckOutcome::Passed
}

/// The last non-empty stderr line (Python puts the exception there).
fn last_error_line(stderr: &str) -> String {
    let line = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no stderr)");
    clip(line.trim(), 160).to_string()
}

fn clip(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn clip_tail(s: &str, n: usize) -> &str {
    let count = s.chars().count();
    match s.char_indices().nth(count.saturating_sub(n)) {
        Some((i, _)) => &s[i..],
        None => s,
    }
}
