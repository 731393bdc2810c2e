//! `osstune eval` end to end through the built binary: grading recorded answers (`--replay`),
//! the early errors, `compare`, and `eval sessions` on a tiny model, whose teacher-forced loss
//! must equal the trainer's own validation loss on the same samples.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn osstune() -> Command {
    Command::new(env!("CARGO_BIN_EXE_osstune"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?} failed:\n{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A replay file answering two fable13 tasks: one with its reference solution, one with a
/// solution that is wrong.
fn replay_file(dir: &Path) -> PathBuf {
    let reference =
        std::fs::read_to_string(root().join("evals/fable13/knights-and-knaves.py")).unwrap();
    let good =
        format!("Exhaustive search over knight/knave assignments.\n```python\n{reference}```");
    let wrong = "The Goldbach claim has a counterexample among the primes.\n```python\n\
                 def verify_claims():\n    return {'sum_of_cubes': (True, None), \
                 'goldbach': (False, 8), 'euler_polynomial': (True, None)}\n```";
    let lines = [
        serde_json::json!({"task": "knights-and-knaves", "final": good, "tokens": 100, "seconds": 2.0}),
        serde_json::json!({"task": "three-claims", "final": wrong}),
    ];
    let path = dir.join("responses.jsonl");
    let body: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&path, body.join("\n")).unwrap();
    path
}

fn grade_replay(dir: &Path, out: &str) -> String {
    let replay = replay_file(dir);
    run_ok(
        osstune()
            .args(["eval", "tasks", "--suite"])
            .arg(root().join("evals/fable13.toml"))
            .args(["--tasks", "knights-and-knaves,three-claims", "--replay"])
            .arg(&replay)
            .arg("--out")
            .arg(dir.join(out)),
    )
}

#[test]
fn replayed_answers_are_graded_and_reported() {
    let dir = scratch("replay");
    let stdout = grade_replay(&dir, "run");
    assert!(stdout.contains("1/2 PASS"), "{stdout}");
    assert!(stdout.contains("FAIL three-claims"), "{stdout}");
    let results = read_json(&dir.join("run/results.json"));
    let tasks = results["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0]["pass"], true);
    assert_eq!(tasks[0]["tokens_per_s"], 50.0);
    assert_eq!(tasks[1]["pass"], false);
    // Everything is kept: the raw answer and the execution's output.
    let exec = &tasks[1]["attempts"][0]["execution"];
    assert_eq!(exec["exit_code"], 1);
    assert!(exec["stderr"].as_str().unwrap().contains("AssertionError"));
    assert!(results["sandbox"]["guarantees"].is_array());
    let md = std::fs::read_to_string(dir.join("run/report.md")).unwrap();
    assert!(
        md.contains("| 1 | knights-and-knaves | logic | PASS |"),
        "{md}"
    );
    // The answers are written back in replay format: grading them again gives the same.
    let again = dir.join("again");
    run_ok(
        osstune()
            .args(["eval", "tasks", "--suite"])
            .arg(root().join("evals/fable13.toml"))
            .args(["--tasks", "knights-and-knaves,three-claims", "--replay"])
            .arg(dir.join("run/responses.jsonl"))
            .arg("--out")
            .arg(&again),
    );
    let cmp = run_ok(
        osstune()
            .args(["eval", "compare"])
            .arg(dir.join("run"))
            .arg(&again),
    );
    assert!(cmp.contains("knights-and-knaves  PASS"), "{cmp}");
    assert!(cmp.contains("1/2 PASS, KW"), "{cmp}");
}

#[test]
fn errors_come_before_any_model_is_loaded() {
    let dir = scratch("errors");
    let suite = root().join("evals/fable13.toml");
    // The interpreter is checked first: the model folder does not even exist.
    let o = osstune()
        .args(["eval", "tasks", "--model", "/nonexistent/model", "--suite"])
        .arg(&suite)
        .args(["--python", "/nonexistent/python3"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o);
    assert!(
        err.contains("error: Python interpreter") && err.contains("--python"),
        "{err}"
    );
    // A bad suite names its file and the key.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[task]]\nid = \"a\"\ncategory = \"c\"\nprompt = \"p\"\nkeywrds = [\"x\"]\n",
    )
    .unwrap();
    let o = osstune()
        .args(["eval", "tasks", "--suite"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("bad.toml") && err.contains("keywrds"), "{err}");
    // So is a module a check needs.
    let needs = dir.join("needs.toml");
    std::fs::write(
        &needs,
        "[[task]]\nid = \"a\"\ncategory = \"c\"\nprompt = \"p\"\n[task.check]\n\
         requires = [\"osstune_no_such_module\"]\n",
    )
    .unwrap();
    let o = osstune()
        .args(["eval", "tasks", "--model", "/nonexistent/model", "--suite"])
        .arg(&needs)
        .output()
        .unwrap();
    let err = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("\"osstune_no_such_module\"") && err.contains("pip install"),
        "{err}"
    );
    // A replay missing a task says which.
    let replay = dir.join("r.jsonl");
    std::fs::write(&replay, "{\"task\":\"three-claims\",\"final\":\"x\"}\n").unwrap();
    let o = osstune()
        .args(["eval", "tasks", "--suite"])
        .arg(&suite)
        .args(["--tasks", "knights-and-knaves,three-claims", "--replay"])
        .arg(&replay)
        .output()
        .unwrap();
    let err = text(&o);
    assert!(
        err.contains("no answer for task \"knights-and-knaves\""),
        "{err}"
    );
}

#[test]
fn session_loss_equals_training_validation_and_generation_is_scored() {
    let dir = scratch("sessions");
    let (model, data, adapters) = (dir.join("model"), dir.join("data"), dir.join("adapters"));
    run_ok(
        osstune()
            .args(["init-tiny", "--preset", "tiny", "--seed", "5", "--out"])
            .arg(&model),
    );
    run_ok(
        osstune()
            .args(["data", "convert"])
            .arg(root().join("examples/sessions"))
            .arg("--out")
            .arg(&data)
            // The tiny recipe's length (configs/tiny.toml), as the demo converts.
            .args([
                "--seed",
                "42",
                "--valid-fraction",
                "0.1",
                "--max-seq-len",
                "512",
            ]),
    );
    // One step of the tiny recipe: its validation at step 0 is the base model's loss.
    run_ok(
        osstune()
            .args(["train", "--config"])
            .arg(root().join("configs/tiny.toml"))
            .arg("--model")
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&adapters)
            .args(["--steps", "1"]),
    );
    let metrics = std::fs::read_to_string(adapters.join("metrics.jsonl")).unwrap();
    let valid: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "valid")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect();
    let eval = |adapter: Option<&Path>, out: &str| {
        let mut c = osstune();
        c.args(["eval", "sessions", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(data.join("valid.jsonl"))
            // tiny.toml: data.max_seq_len 512, train.val_samples 16.
            .args([
                "--max-seq-len",
                "512",
                "--limit",
                "16",
                "--max-tokens",
                "8",
                "--out",
            ])
            .arg(dir.join(out));
        if let Some(a) = adapter {
            c.arg("--adapter").arg(a);
        }
        run_ok(&mut c);
        read_json(&dir.join(out).join("sessions.json"))
    };
    let base = eval(None, "base");
    let adapted = eval(Some(&adapters), "adapted");
    let loss = |v: &Value| v["teacher_forced"]["loss"].as_f64().unwrap();
    assert!(
        (loss(&base) - valid[0]).abs() < 1e-9,
        "{} vs {}",
        loss(&base),
        valid[0]
    );
    assert!((loss(&adapted) - valid[valid.len() - 1]).abs() < 1e-9);
    // Every sample with a target turn was generated and scored.
    let samples = base["samples"].as_array().unwrap();
    let n_lines = std::fs::read_to_string(data.join("valid.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(samples.len(), n_lines.min(16));
    for s in samples {
        assert!(s["tokens"].as_u64().unwrap() <= 8);
        assert!(s["reference_action"]["kind"].is_string());
        assert!(s["generated"].is_string());
    }
    assert_eq!(base["rates"]["harmony_ok"]["of"], samples.len());
    let cmp = run_ok(
        osstune()
            .args(["eval", "compare"])
            .arg(dir.join("base"))
            .arg(dir.join("adapted")),
    );
    assert!(cmp.contains("valid loss (teacher-forced)"), "{cmp}");
    assert!(cmp.contains("first action = reference"), "{cmp}");
}
