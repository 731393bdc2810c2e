//! Every bundled reference solution, graded as a model answer by the real grader and sandbox,
//! must PASS (this is how the suite's checks were verified). A task whose check needs a module
//! the interpreter lacks (numpy) is skipped with a printed reason, never counted as a pass.

use osstune_eval::grade::{grade_task, Responder, Response};
use osstune_eval::sandbox::Sandbox;
use osstune_eval::suite::{Suite, Task};
use std::path::PathBuf;

struct Reference {
    dir: PathBuf,
}

impl Responder for Reference {
    fn respond(&mut self, task: &Task, attempt: u32) -> anyhow::Result<Option<Response>> {
        if attempt > 0 {
            return Ok(None);
        }
        let path = self.dir.join(format!("{}.py", task.id));
        let code = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let text = format!("Reference solution.\n\n```python\n{code}```\n");
        Ok(Some(Response {
            final_text: Some(text.clone()),
            text,
            ..Response::default()
        }))
    }
}

#[test]
fn every_reference_solution_passes() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../evals");
    let suite = Suite::load(&root.join("fable13.toml")).unwrap();
    assert_eq!(suite.tasks.len(), 13);
    let refs = suite.dir.join(
        suite
            .suite
            .references
            .as_deref()
            .expect("references folder"),
    );
    let sandbox = Sandbox::new(None).unwrap();
    let mut responder = Reference { dir: refs };
    let (mut passed, mut skipped) = (0, Vec::new());
    for task in &suite.tasks {
        let check = task
            .check
            .as_ref()
            .expect("every fable13 task executes code");
        let missing: Vec<&String> = check
            .requires
            .iter()
            .filter(|m| !sandbox.has_module(m).unwrap())
            .collect();
        if !missing.is_empty() {
            eprintln!(
                "SKIP {}: needs {missing:?}, not importable by {} (python3 -m pip install numpy)",
                task.id,
                sandbox.python().display()
            );
            skipped.push(task.id.clone());
            continue;
        }
        let r = grade_task(task, &mut responder, Some(&sandbox)).unwrap();
        let stderr = r.attempts[0]
            .execution
            .as_ref()
            .map(|e| e.stderr.clone())
            .unwrap_or_default();
        assert!(r.pass, "{}: {}\n{stderr}", task.id, r.reason);
        assert_eq!(r.keyword_coverage, 1.0, "{}", task.id);
        passed += 1;
    }
    eprintln!(
        "{passed} reference solutions PASS, {} skipped {skipped:?}",
        skipped.len()
    );
    assert_eq!(passed + skipped.len(), 13);
}
