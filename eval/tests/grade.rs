//! Grading with `--replay` answers: PASS, keyword-only FAIL, execution FAIL, an execution
//! error retried into a PASS, a timeout, and the extraction edge cases seen through the grader.

use osstune_eval::grade::{grade_task, CheckOutcome, TaskResult};
use osstune_eval::replay::Replay;
use osstune_eval::sandbox::Sandbox;
use osstune_eval::suite::Suite;
use serde_json::json;
use std::sync::OnceLock;

fn sandbox() -> &'static Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| Sandbox::new(None).expect("python3 on PATH"))
}

const SUITE: &str = r#"
[[task]]
id = "add"
category = "math"
prompt = "Write add(a, b)."
keywords = ["add", "sum"]
[task.check]
harness = "assert add(2, 3) == 5\nprint('OK', add(40, 2))"
stdout_regex = "OK 42"
timeout_s = 2
retries = 2
"#;

fn answer(code: &str, words: &str) -> serde_json::Value {
    json!({"task": "add", "final": format!("{words}\n```python\n{code}\n```\n")})
}

const GOOD: &str = "def add(a, b):\n    return a + b";
const WORDS: &str = "We add the numbers to get their sum.";

fn grade_lines(lines: &[serde_json::Value]) -> TaskResult {
    grade_suite(SUITE, lines)
}

fn grade_suite(suite: &str, lines: &[serde_json::Value]) -> TaskResult {
    let suite = Suite::parse(suite, "t.toml").unwrap();
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let mut replay = Replay::parse(&text.join("\n"), "r.jsonl").unwrap();
    grade_task(&suite.tasks[0], &mut replay, Some(sandbox())).unwrap()
}

fn outcome(r: &TaskResult, i: usize) -> &CheckOutcome {
    r.attempts[i].outcome.as_ref().unwrap()
}

#[test]
fn a_correct_answer_passes() {
    let r = grade_lines(&[answer(GOOD, WORDS)]);
    assert!(r.pass, "{}", r.reason);
    assert_eq!(r.keyword_coverage, 1.0);
    assert_eq!(r.retries, 0);
    assert_eq!(
        r.attempts[0].execution.as_ref().unwrap().stdout.trim(),
        "OK 42"
    );
}

#[test]
fn missing_keywords_fail_a_working_answer() {
    let r = grade_lines(&[answer(GOOD, "Here you go.")]);
    assert!(!r.pass);
    assert_eq!(outcome(&r, 0), &CheckOutcome::Passed);
    // "add" is in the code itself; "sum" is nowhere.
    assert_eq!(r.keyword_coverage, 0.5);
    assert_eq!(r.keywords_missing, ["sum"]);
    assert!(r.reason.contains("keywords 1/2"), "{}", r.reason);
}

#[test]
fn a_wrong_answer_fails_without_retry() {
    // The assertion fails: a wrong answer, not an execution error.
    let r = grade_lines(&[
        answer("def add(a, b):\n    return a - b", WORDS),
        answer(GOOD, WORDS),
    ]);
    assert!(!r.pass);
    assert_eq!(r.retries, 0);
    assert!(matches!(outcome(&r, 0), CheckOutcome::Wrong(w) if w.contains("AssertionError")));
    // Wrong stdout is a wrong answer too.
    let r = grade_lines(&[answer(
        "def add(a, b):\n    return 5 if a == 2 else 0",
        WORDS,
    )]);
    assert!(
        matches!(outcome(&r, 0), CheckOutcome::Wrong(w) if w.contains("does not match")),
        "{r:?}"
    );
}

#[test]
fn an_execution_error_is_retried_until_a_pass() {
    let crash = answer("def add(a, b):\n    return a + undefined_name", WORDS);
    let r = grade_lines(&[
        crash.clone(),
        answer("syntax error here(", WORDS),
        answer(GOOD, WORDS),
    ]);
    assert!(r.pass, "{}", r.reason);
    assert_eq!(r.retries, 2);
    assert!(matches!(outcome(&r, 0), CheckOutcome::Error(e) if e.contains("NameError")));
    assert!(matches!(outcome(&r, 1), CheckOutcome::Error(e) if e.contains("SyntaxError")));
    // Three errors use up the two retries; a fourth answer is never asked for.
    let r = grade_lines(&[
        crash.clone(),
        crash.clone(),
        crash.clone(),
        answer(GOOD, WORDS),
    ]);
    assert!(!r.pass && r.retries == 2 && r.attempts.len() == 3);
    assert!(r.reason.contains("retries used up"), "{}", r.reason);
    // A replay with fewer answers than retries says so.
    let r = grade_lines(&[crash]);
    assert!(r.reason.contains("no more answers"), "{}", r.reason);
}

#[test]
fn a_timeout_fails_and_is_not_retried() {
    let r = grade_lines(&[
        answer("import time\ntime.sleep(30)", WORDS),
        answer(GOOD, WORDS),
    ]);
    assert!(!r.pass);
    assert_eq!(r.attempts.len(), 1);
    assert!(matches!(outcome(&r, 0), CheckOutcome::Killed(w) if w.contains("timed out")));
    assert!(r.seconds < 10.0);
}

#[test]
fn code_only_in_the_analysis_channel_is_not_an_answer() {
    let line = json!({
        "task": "add",
        "analysis": format!("```python\n{GOOD}\n```"),
        "final": "We add to get the sum (code omitted).",
    });
    let r = grade_lines(&[line.clone(), line.clone(), line]);
    assert!(!r.pass);
    assert!(
        matches!(outcome(&r, 0), CheckOutcome::Error(e) if e == "no code block in the final answer")
    );
    assert_eq!(r.retries, 2);
}

#[test]
fn the_last_of_several_blocks_runs_and_an_unterminated_one_counts() {
    let words = format!("{WORDS}\n```python\ndef add(a, b):\n    return 0\n```\nFixed:\n");
    let r = grade_lines(&[json!({"task": "add", "final": format!("{words}```python\n{GOOD}\n")})]);
    assert!(r.pass, "{}", r.reason);
}

#[test]
fn keyword_only_tasks_and_any_mode() {
    let suite = r#"
[[task]]
id = "add"
category = "logic"
prompt = "Name a prime."
keywords = ["two", "three", "five"]
keyword_mode = "any"
"#;
    let r = grade_suite(suite, &[json!({"task": "add", "final": "Five is prime."})]);
    assert!(r.pass, "{}", r.reason);
    assert!((r.keyword_coverage - 1.0 / 3.0).abs() < 1e-9);
    let r = grade_suite(suite, &[json!({"task": "add", "final": "Seven."})]);
    assert!(!r.pass);
    // No sandbox is needed without a check.
    let s = Suite::parse(suite, "t.toml").unwrap();
    let mut replay = Replay::parse(r#"{"task":"add","final":"two"}"#, "r").unwrap();
    assert!(grade_task(&s.tasks[0], &mut replay, None).unwrap().pass);
}

#[test]
fn bad_replay_lines_name_the_file_and_line() {
    let e = Replay::parse(
        "{\"task\":\"a\",\"final\":\"x\"}\n{\"task\":\"a\"}",
        "r.jsonl",
    )
    .err()
    .unwrap();
    assert!(format!("{e:#}").contains("r.jsonl:2"), "{e:#}");
    let e = Replay::parse("{\"task\":\"a\",\"fnal\":\"x\"}", "r.jsonl")
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("fnal"), "{e:#}");
}
