//! `osstune eval`: the task benchmark (`tasks`), agent-trace metrics on held-out sessions
//! (`sessions`), and two runs side by side (`compare`). Grading, the sandbox, the suite format
//! and the trace metrics live in `osstune-eval`; this file only drives the model.

use super::generate::{DeviceArg, DtypeArg, ModelArgs, ReasoningArg, Session};
use anyhow::{bail, Context, Result};
use osstune_eval::grade::{grade_task, Responder, Response};
use osstune_eval::replay::{Replay, ReplayLine};
use osstune_eval::report::{self, Run};
use osstune_eval::sandbox::Sandbox;
use osstune_eval::suite::{Suite, Task};
use osstune_harmony::SystemContent;
use osstune_harmony::{DeveloperContent, Message, ReasoningEffort, RenderOptions, Renderer};
use serde_json::json;
use std::path::{Path, PathBuf};

mod generation;
mod sessions;

pub use sessions::compare_sessions;

#[derive(clap::Subcommand)]
pub enum EvalCommand {
    /// Grade a task suite: keywords + sandboxed execution of the answer's code.
    Tasks(TasksArgs),
    /// Agent-trace metrics on held-out samples: teacher-forced loss, and generated turns.
    Sessions(sessions::SessionsArgs),
    /// Two runs side by side (folders or their results.json / sessions.json).
    Compare { run_a: PathBuf, run_b: PathBuf },
}

/// Model and sampling options (the recipe's sampling by default, seeded).
#[derive(clap::Args, Debug, Clone)]
pub struct EvalModelArgs {
    /// Model directory (not needed with --replay).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// LoRA adapter directory, applied unmerged.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[arg(long, default_value_t = 0.95)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// Base seed; each task and attempt derives its own from it.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most new tokens per answer (a task's `max_tokens` overrides it).
    #[arg(long, default_value_t = 2048)]
    pub max_tokens: usize,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    #[arg(long, value_enum, default_value = "high")]
    pub reasoning: ReasoningArg,
}

impl EvalModelArgs {
    /// `generate`'s options for loading (printing off: eval shows a progress bar instead).
    fn model_args(&self) -> Result<ModelArgs> {
        let Some(model) = self.model.clone() else {
            bail!("give --model DIR (or --replay FILE to grade recorded answers)");
        };
        Ok(ModelArgs {
            model,
            adapter: self.adapter.clone(),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: None,
            seed: Some(self.seed),
            max_tokens: self.max_tokens,
            device: self.device,
            dtype: self.dtype,
            reasoning: self.reasoning,
            hide_analysis: false,
            json: true,
            no_kv_cache: false,
            max_context: None,
        })
    }
}

#[derive(clap::Args)]
pub struct TasksArgs {
    #[command(flatten)]
    pub model: EvalModelArgs,
    /// Task suite (TOML; see docs/eval.md), e.g. evals/fable13.toml.
    #[arg(long)]
    pub suite: PathBuf,
    /// Grade answers from this file instead of a model (one JSON object a line).
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// Only these task ids (comma-separated), in suite order.
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Python interpreter for the checks (default: python3 on PATH).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Output folder: results.json, report.md, responses.jsonl.
    #[arg(long, default_value = "runs/eval")]
    pub out: PathBuf,
}

pub fn run(c: EvalCommand) -> Result<()> {
    match c {
        EvalCommand::Tasks(a) => run_tasks(a),
        EvalCommand::Sessions(a) => sessions::run(a),
        EvalCommand::Compare { run_a, run_b } => {
            let text = if sessions::is_sessions_run(&run_a) {
                compare_sessions(&run_a, &run_b)?
            } else {
                report::compare(&run_a, &run_b)?
            };
            print!("{text}");
            Ok(())
        }
    }
}

fn run_tasks(a: TasksArgs) -> Result<()> {
    let mut suite = Suite::load(&a.suite)?;
    suite.select(&a.tasks)?;
    // Everything that can fail fast does, before any (slow) model load or generation.
    let needs_sandbox = suite.tasks.iter().any(|t| t.check.is_some());
    let sandbox = if needs_sandbox {
        Some(Sandbox::new(a.python.as_deref())?)
    } else {
        None
    };
    if let Some(sb) = &sandbox {
        for m in suite.required_modules() {
            if !sb.has_module(&m)? {
                let users: Vec<&str> = suite
                    .tasks
                    .iter()
                    .filter(|t| t.check.as_ref().is_some_and(|c| c.requires.contains(&m)))
                    .map(|t| t.id.as_str())
                    .collect();
                bail!(
                    "tasks {users:?} need the Python module {m:?}, which {} cannot import \
                     (install it, e.g. `{} -m pip install {m}`, or leave the tasks out with --tasks)",
                    sb.python().display(),
                    sb.python().display()
                );
            }
        }
        eprintln!(
            "sandbox: {} ({})",
            sb.python().display(),
            sb.guarantees().join("; ")
        );
    }
    let (mut responder, setup): (Box<dyn Responder>, serde_json::Value) = match &a.replay {
        Some(path) => {
            let r = Replay::load(path)?;
            r.check_covers(&suite, &path.display().to_string())?;
            (Box::new(r), json!({"replay": path}))
        }
        None => {
            let margs = a.model.model_args()?;
            let session = Session::open(&margs)?;
            let setup = json!({
                "model": margs.model, "adapter": margs.adapter,
                "temperature": margs.temperature, "top_p": margs.top_p, "seed": a.model.seed,
                "max_tokens": margs.max_tokens, "reasoning": format!("{:?}", margs.reasoning).to_lowercase(),
            });
            (Box::new(ModelResponder { session }), setup)
        }
    };
    let mut results = Vec::new();
    let mut answers = Vec::new();
    for (i, task) in suite.tasks.iter().enumerate() {
        eprintln!(
            "[{}/{}] {} ({})",
            i + 1,
            suite.tasks.len(),
            task.id,
            task.category
        );
        let r = grade_task(task, responder.as_mut(), sandbox.as_ref())
            .with_context(|| format!("task {}", task.id))?;
        eprintln!(
            "      {} KW {:.0}% {:.1} s{}",
            if r.pass { "PASS" } else { "FAIL" },
            r.keyword_coverage * 100.0,
            r.seconds,
            if r.pass {
                String::new()
            } else {
                format!(" — {}", r.reason)
            }
        );
        for att in &r.attempts {
            answers.push(serde_json::to_string(&ReplayLine::from_response(
                &task.id,
                &att.response,
            ))?);
        }
        results.push(r);
    }
    print!("\n{}", report::table(&results));
    let run = Run {
        suite: suite.suite.name.clone(),
        setup,
        sandbox: match &sandbox {
            Some(sb) => json!({
                "python": sb.python(), "isolation": sb.isolation(),
                "guarantees": sb.guarantees(), "notes": sb.notes(),
            }),
            None => json!(null),
        },
        summary: report::summarize(&results),
        tasks: results,
    };
    report::write_run(&a.out, &run)?;
    report::write_atomic(
        &a.out.join("responses.jsonl"),
        (answers.join("\n") + "\n").as_bytes(),
    )?;
    println!(
        "wrote results.json, report.md and responses.jsonl in {}",
        a.out.display()
    );
    Ok(())
}

/// Answers from the loaded model.
struct ModelResponder {
    session: Session,
}

impl Responder for ModelResponder {
    fn respond(&mut self, task: &Task, attempt: u32) -> Result<Option<Response>> {
        let s = &self.session;
        let prompt = task_prompt(s, task)?;
        let max_tokens = task.max_tokens.unwrap_or(s.args.max_tokens);
        // Each (task, attempt) draws from its own stream: a retry is a fresh sample, and a
        // run is reproducible whatever tasks it includes.
        let seed = derive_seed(s.seed, &task.id, attempt);
        let out = generation::generate_turn(s, &prompt, max_tokens, seed, &task.id)?;
        Ok(Some(out.response))
    }
}

/// System (reasoning effort; `system` replaces the identity line), developer instructions,
/// user prompt, rendered for the assistant to answer.
fn task_prompt(s: &Session, task: &Task) -> Result<Vec<u32>> {
    let effort = match s.args.reasoning {
        ReasoningArg::Low => ReasoningEffort::Low,
        ReasoningArg::Medium => ReasoningEffort::Medium,
        ReasoningArg::High => ReasoningEffort::High,
    };
    let mut sys = SystemContent::default().with_reasoning_effort(effort);
    if let Some(identity) = &task.system {
        sys.model_identity = Some(identity.clone());
    }
    let mut messages = vec![Message::system(sys)];
    if let Some(dev) = &task.developer {
        messages.push(Message::developer(DeveloperContent {
            instructions: Some(dev.clone()),
            tools: Vec::new(),
        }));
    }
    messages.push(Message::user(task.prompt.as_str()));
    Renderer::new(&s.tok).render_for_completion(&messages, RenderOptions::default())
}

/// FNV-1a over the task id and attempt, mixed into the base seed.
fn derive_seed(base: u64, id: &str, attempt: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ base;
    for b in id.bytes().chain(attempt.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `dir/name` when `p` is a folder, else `p`.
fn file_in(p: &Path, name: &str) -> PathBuf {
    if p.is_dir() {
        p.join(name)
    } else {
        p.to_path_buf()
    }
}
