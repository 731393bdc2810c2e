//! The training loop, kept plain (nanoGPT style): draw `grad_accum` micro-batches, forward +
//! backward each (gradients summed, see `loss.rs` for the normalisation), optional global
//! grad-norm clipping, one Muon/AdamW step at the scheduled learning rate; validation at the
//! start, every `val_every` steps and at the end; checkpoints every `save_every` steps and at
//! the end; `metrics.jsonl` every step; `loss.svg` at the end.
//!
//! LoRA dropout (`lora.dropout` > 0) is switched on for each training micro-step only, with
//! a seed that is a pure function of (run seed, step, micro-batch index) — see
//! [`dropout_seed`] and `osstune_model::lora::dropout` — so resumed runs and activation
//! checkpointing's recompute draw the same masks, and validation never sees dropout.

use crate::adapters::{select_targets, Adapters, BaseModelInfo, TargetShape};
use crate::batches::{sequential_batches, Batcher, MicroBatch};
use crate::checkpoint::{self, TrainState};
use crate::config::TrainConfig;
use crate::loss::{self, BatchTensors};
use crate::metrics::{read_records, write_loss_svg, MetricsLog, Record};
use crate::preflight::{self, TrainData};
use crate::recompute;
use crate::resume;
use crate::rng::{SplitMix64, PURPOSE_DROPOUT};
use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use osstune_model::error::NonFinite;
use osstune_model::{GptOss, Lora, LoraDropout};
use osstune_optim::{Optimizer, Schedule};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use osstune_model::device::{parse_device, parse_dtype, resolve_dtype};

pub fn base_info(model: &GptOss) -> BaseModelInfo {
    BaseModelInfo::of(model)
}

/// Every adaptable projection of `model` as a [`TargetShape`].
pub fn target_shapes(model: &GptOss) -> Vec<TargetShape> {
    model.lora_targets()
}

/// Attaches every adapter of `ad` to `model` (the model reads the same `Var`s the optimizer
/// updates, so nothing needs re-attaching after a step).
pub fn attach(model: &mut GptOss, ad: &Adapters) -> Result<()> {
    let scale = ad.scale();
    for p in &ad.pairs {
        let l = Lora::new(p.a.clone(), p.b.clone(), scale)?;
        model.attach_lora(&p.shape.name, l)?;
    }
    Ok(())
}

/// Ctrl-C sets `stop` (the loop then checkpoints and returns); a second Ctrl-C exits at once.
pub fn install_ctrlc(stop: Arc<AtomicBool>) -> Result<()> {
    ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond Ctrl-C: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: saving a checkpoint after this step (Ctrl-C again to abort)");
    })
    .context("installing the Ctrl-C handler")
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished,
    /// Stopped by the stop flag (Ctrl-C) after saving a checkpoint at this step.
    Interrupted {
        step: usize,
    },
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub outcome: Outcome,
    pub steps_done: usize,
    pub first_valid_loss: Option<f64>,
    pub last_valid_loss: Option<f64>,
    pub last_train_loss: Option<f64>,
    pub out: PathBuf,
    pub trainable_params: usize,
}

pub struct RunOptions {
    pub resume: bool,
    pub progress: bool,
    /// Set (e.g. by a Ctrl-C handler) to checkpoint and stop after the current step.
    pub stop: Arc<AtomicBool>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            resume: false,
            progress: false,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Gradients of one optimizer step, summed over its micro-batches.
struct Accum {
    grads: Vec<Option<Tensor>>,
}

impl Accum {
    fn new(n: usize) -> Self {
        Self {
            grads: vec![None; n],
        }
    }

    fn add(&mut self, vars: &[Var], mut gs: GradStore) -> Result<()> {
        for (slot, v) in self.grads.iter_mut().zip(vars) {
            if let Some(g) = gs.remove(v.as_tensor()) {
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
        }
        Ok(())
    }

    fn norm(&self) -> Result<f64> {
        let mut s = 0f64;
        for g in self.grads.iter().flatten() {
            s += g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
        Ok(s.sqrt())
    }

    fn into_store(self, vars: &[Var], clip: Option<f64>) -> Result<GradStore> {
        let mut store = GradStore::default();
        for (g, v) in self.grads.into_iter().zip(vars) {
            if let Some(g) = g {
                let g = match clip {
                    Some(c) => (g * c)?,
                    None => g,
                };
                store.insert(v.as_tensor(), g);
            }
        }
        Ok(store)
    }
}

/// Everything a run holds.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub model: GptOss,
    pub adapters: Adapters,
    pub vars: Vec<Var>,
    pub opt: Optimizer,
    pub schedule: Schedule,
    pub batcher: Batcher,
    pub valid: Vec<MicroBatch>,
    pub out: PathBuf,
    pub state: TrainState,
    /// Config changes made on `--resume` (see `resume.rs`), recorded in metrics.jsonl.
    pub resume_changes: Vec<String>,
}

/// How `Trainer::start` treats the run folder's past and the machine.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    pub resume: bool,
    /// Resume even though train.jsonl / valid.jsonl changed since the checkpoint.
    pub allow_data_change: bool,
    /// Start even when `--plan` predicts more memory than is available.
    pub skip_memory_check: bool,
}

impl Trainer {
    /// Loads the model and data, creates (or, with `resume`, restores) adapters and optimizer.
    pub fn new(cfg: TrainConfig, resume: bool) -> Result<Self> {
        Self::start(
            cfg,
            &StartOptions {
                resume,
                ..Default::default()
            },
        )
    }

    /// As `new`: the cheap checks (config.json, data, LoRA shape, memory; see `preflight`)
    /// come before the base model is loaded.
    pub fn start(cfg: TrainConfig, opts: &StartOptions) -> Result<Self> {
        let model_dir = cfg
            .model
            .path
            .clone()
            .context("no base model: set model.path in the config or pass --model")?;
        let data_dir = cfg
            .data
            .path
            .clone()
            .context("no data: set data.path in the config or pass --data")?;
        let out = cfg
            .train
            .out
            .clone()
            .context("no output folder: set train.out in the config or pass --out")?;
        cfg.validate()?;
        let mc = osstune_model::Config::from_model_dir(&model_dir)?;
        let data = preflight::load_data(&cfg, &data_dir, mc.vocab_size)?;
        preflight::check_lora_shape(&cfg, &mc)?;
        if !opts.skip_memory_check {
            preflight::check_memory(&cfg, &model_dir)?;
        }
        let device = parse_device(&cfg.model.device)?;
        let dtype = resolve_dtype(&cfg.model.dtype, &cfg.model.device)?;
        let model = GptOss::load(&model_dir, &device, dtype)
            .with_context(|| format!("loading base model {}", model_dir.display()))?;
        Self::from_parts(cfg, model, data, &out, opts)
    }

    /// As `new`, with an already loaded base model.
    pub fn from_model(
        cfg: TrainConfig,
        model: GptOss,
        data_dir: &Path,
        out: &Path,
        resume: bool,
    ) -> Result<Self> {
        cfg.validate()?;
        let data = preflight::load_data(&cfg, data_dir, model.cfg.vocab_size)?;
        preflight::check_lora_shape(&cfg, &model.cfg)?;
        let opts = StartOptions {
            resume,
            ..Default::default()
        };
        Self::from_parts(cfg, model, data, out, &opts)
    }

    fn from_parts(
        cfg: TrainConfig,
        mut model: GptOss,
        data: TrainData,
        out: &Path,
        opts: &StartOptions,
    ) -> Result<Self> {
        let valid = sequential_batches(&data.valid, cfg.train.micro_batch);
        let batcher = Batcher::new(data.train, cfg.train.seed, cfg.train.micro_batch)?;

        let all = target_shapes(&model);
        let shapes = select_targets(
            &all,
            &cfg.lora.targets,
            cfg.lora.layers,
            model.cfg.num_hidden_layers,
        )?;
        let adapters = Adapters::init(shapes, &cfg, base_info(&model), &model.device)?;
        attach(&mut model, &adapters)?;
        let named: Vec<(String, Var)> = adapters.named_vars();
        let vars: Vec<Var> = named.iter().map(|(_, v)| v.clone()).collect();
        let mut opt = Optimizer::new(named, &cfg.optim)?;
        let schedule = Schedule::new(&cfg.optim.schedule, cfg.train.steps as u64)?;
        let config_toml = cfg.to_toml()?;
        let mut state = TrainState {
            step: 0,
            cursor: Default::default(),
            // Dropout masks are stateless (see `dropout_seed`); the field keeps the checkpoint
            // format and records the run's dropout stream.
            rng_state: SplitMix64::derive(cfg.train.seed, PURPOSE_DROPOUT, 0).state,
            tokens_seen: 0,
            trained_tokens_seen: 0,
            elapsed_s: 0.0,
            config_toml,
            last_loss: None,
            data_fingerprint: Some(data.fingerprint.clone()),
        };
        let mut batcher = batcher;
        let mut resume_changes = Vec::new();
        if opts.resume {
            let dir = checkpoint::latest(out)?.with_context(|| {
                format!(
                    "--resume: no checkpoint in {}",
                    checkpoint::checkpoints_dir(out).display()
                )
            })?;
            let saved = checkpoint::load_state(&dir)?;
            resume_changes = resume::allowed_changes(&saved.config_toml, &state.config_toml, &dir)?;
            resume::check_data(
                saved.data_fingerprint.as_deref(),
                &data.fingerprint,
                &dir,
                opts.allow_data_change,
            )?;
            let loaded = Adapters::load(&dir, &all, &adapters.config.base_model, &model.device)?;
            adapters.assign_from(&loaded)?;
            opt.load(dir.join("optimizer"))
                .with_context(|| format!("restoring the optimizer from {}", dir.display()))?;
            batcher.cursor = saved.cursor;
            eprintln!("resuming from {} (step {})", dir.display(), saved.step);
            for c in &resume_changes {
                eprintln!("  changed on resume: {c}");
            }
            state = TrainState {
                config_toml: state.config_toml,
                data_fingerprint: state.data_fingerprint,
                ..saved
            };
        }
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        Ok(Self {
            cfg,
            model,
            adapters,
            vars,
            opt,
            schedule,
            batcher,
            valid,
            out: out.to_path_buf(),
            state,
            resume_changes,
        })
    }

    /// Forward + backward of micro-batch `micro` of the current step. LoRA dropout, when
    /// configured, is on for exactly this call.
    fn micro_step(
        &mut self,
        micro: usize,
        mb: &MicroBatch,
        scale: f64,
    ) -> Result<(f64, GradStore)> {
        let p = self.cfg.lora.dropout;
        if p == 0.0 {
            return self.forward_backward(mb, scale);
        }
        let seed = dropout_seed(&self.cfg, self.state.step, micro);
        self.model
            .set_lora_dropout(Some(LoraDropout { p: p as f32, seed }));
        let r = self.forward_backward(mb, scale);
        self.model.set_lora_dropout(None);
        r
    }

    fn forward_backward(&self, mb: &MicroBatch, scale: f64) -> Result<(f64, GradStore)> {
        let bt = BatchTensors::new(mb, &self.model.device)?;
        let chunk = self.cfg.train.loss_chunk;
        if self.cfg.train.activation_checkpointing {
            recompute::micro_step(&self.model, &self.vars, &bt, chunk, scale)
        } else {
            let (l, gs) = loss::micro_step(&self.model, &bt, chunk, scale)?;
            Ok((l, recompute::keep_vars(gs, &self.vars)))
        }
    }

    /// Mean validation loss over trained tokens (None without validation data).
    pub fn validate(&self) -> Result<Option<(f64, usize)>> {
        if self.valid.is_empty() {
            return Ok(None);
        }
        let mut sum = 0.0;
        let mut n = 0;
        for mb in &self.valid {
            let bt = BatchTensors::new(mb, &self.model.device)?;
            sum += loss::eval_loss(&self.model, &bt, self.cfg.train.loss_chunk)?;
            n += mb.n_trained();
        }
        Ok(Some((sum / n.max(1) as f64, n)))
    }

    /// One optimizer step; returns (loss, grad norm, trained tokens, tokens).
    pub fn train_step(&mut self) -> Result<(f64, f64, usize, usize)> {
        let mbs: Vec<MicroBatch> = (0..self.cfg.train.grad_accum)
            .map(|_| self.batcher.next_micro_batch())
            .collect();
        let n_trained: usize = mbs.iter().map(|m| m.n_trained()).sum();
        let n_tokens: usize = mbs.iter().map(|m| m.n_tokens).sum();
        let scale = 1.0 / n_trained.max(1) as f64;
        let mut acc = Accum::new(self.vars.len());
        let mut loss_sum = 0.0;
        for (i, mb) in mbs.iter().enumerate() {
            // A diverged run can fail inside the forward (the router refuses NaN logits):
            // report it like a non-finite loss.
            let (l, gs) = self.micro_step(i, mb, scale).map_err(|e| {
                let nan = NonFinite::in_chain(&e);
                e.context(format!(
                    "step {}: {}the adapters were not updated; the last good checkpoint is \
                     kept in {}",
                    self.state.step + 1,
                    if nan { "training diverged (NaN); " } else { "" },
                    checkpoint::checkpoints_dir(&self.out).display()
                ))
            })?;
            loss_sum += l;
            acc.add(&self.vars, gs)?;
        }
        let loss = loss_sum / n_trained.max(1) as f64;
        let norm = acc.norm()?;
        if !loss.is_finite() || !norm.is_finite() {
            bail!(
                "step {}: the loss is {loss} and the gradient norm {norm}: training diverged. \
                 The adapters were not updated; the last good checkpoint is kept in {} \
                 (lower the learning rate or enable train.grad_clip, then --resume)",
                self.state.step + 1,
                checkpoint::checkpoints_dir(&self.out).display()
            );
        }
        let clip = self.cfg.train.grad_clip;
        let factor = (clip > 0.0 && norm > clip).then(|| clip / norm);
        let store = acc.into_store(&self.vars, factor)?;
        let mult = self.schedule.multiplier(self.state.step as u64);
        self.opt.step(&store, mult)?;
        self.state.step += 1;
        self.state.cursor = self.batcher.cursor;
        self.state.tokens_seen += n_tokens as u64;
        self.state.trained_tokens_seen += n_trained as u64;
        self.state.last_loss = Some(loss);
        Ok((loss, norm, n_trained, n_tokens))
    }

    /// Writes a checkpoint of the current state (atomic; see `checkpoint.rs`).
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        checkpoint::save(
            &self.out,
            self.state.step,
            |dir| {
                self.adapters.save(dir)?;
                self.opt
                    .save(dir.join("optimizer"))
                    .with_context(|| format!("saving optimizer state into {}", dir.display()))
            },
            &self.state,
        )
    }

    /// Runs to `train.steps`.
    pub fn run(&mut self, opts: &RunOptions) -> Result<Summary> {
        let total = self.cfg.train.steps;
        let resumed_at = opts.resume.then_some(self.state.step);
        let log = MetricsLog::open(&self.out, resumed_at)?;
        if resumed_at.is_some() && !self.resume_changes.is_empty() {
            log.push(&Record::Resume {
                step: self.state.step,
                changes: self.resume_changes.clone(),
            })?;
        }
        let mut first_valid = None;
        let mut last_valid = None;
        if self.state.step == 0 {
            if let Some((v, n)) = self.validate()? {
                log.push(&Record::Valid {
                    step: 0,
                    loss: v,
                    trained_tokens: n,
                })?;
                first_valid = Some(v);
                last_valid = Some(v);
            }
        }
        let pb = if opts.progress {
            let pb = ProgressBar::new(total as u64);
            pb.set_style(
                ProgressStyle::with_template(
                    "{bar:30} step {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
                )
                .context("progress template")?,
            );
            pb.set_position(self.state.step as u64);
            pb
        } else {
            ProgressBar::hidden()
        };
        let t0 = Instant::now();
        let elapsed0 = self.state.elapsed_s;
        while self.state.step < total {
            let ts = Instant::now();
            let lr_muon = self
                .schedule
                .lr_at(self.state.step as u64, self.cfg.optim.muon.lr);
            let lr_adamw = self
                .schedule
                .lr_at(self.state.step as u64, self.cfg.optim.adamw.lr);
            let (loss, norm, n_trained, n_tokens) = self.train_step()?;
            let dt = ts.elapsed().as_secs_f64();
            self.state.elapsed_s = elapsed0 + t0.elapsed().as_secs_f64();
            let tps = n_tokens as f64 / dt.max(1e-9);
            let step = self.state.step;
            log.push(&Record::Train {
                step,
                loss,
                lr_muon,
                lr_adamw,
                grad_norm: norm,
                trained_tokens: n_trained,
                tokens: n_tokens,
                tokens_per_s: tps,
                elapsed_s: self.state.elapsed_s,
            })?;
            pb.set_position(step as u64);
            pb.set_message(format!("loss {loss:.4} lr {lr_muon:.2e} {tps:.0} tok/s"));
            let every = |n: usize| n > 0 && step.is_multiple_of(n) && step < total;
            if every(self.cfg.train.val_every) {
                if let Some((v, n)) = self.validate()? {
                    log.push(&Record::Valid {
                        step,
                        loss: v,
                        trained_tokens: n,
                    })?;
                    last_valid = Some(v);
                    pb.println(format!("step {step}: validation loss {v:.4}"));
                }
            }
            if every(self.cfg.train.save_every) {
                self.save_checkpoint()?;
            }
            if opts.stop.load(Ordering::SeqCst) && step < total {
                let dir = self.save_checkpoint()?;
                pb.abandon_with_message(format!("interrupted; checkpoint {}", dir.display()));
                return Ok(self.summary(Outcome::Interrupted { step }, first_valid, last_valid));
            }
        }
        pb.finish();
        if let Some((v, n)) = self.validate()? {
            log.push(&Record::Valid {
                step: total,
                loss: v,
                trained_tokens: n,
            })?;
            last_valid = Some(v);
        }
        self.save_checkpoint()?;
        self.adapters.save(&self.out)?;
        let records = read_records(log.path())?;
        write_loss_svg(&records, &self.out.join("loss.svg"))?;
        if first_valid.is_none() {
            first_valid = records.iter().find_map(|r| match r {
                Record::Valid { loss, .. } => Some(*loss),
                _ => None,
            });
        }
        Ok(self.summary(Outcome::Finished, first_valid, last_valid))
    }

    fn summary(&self, outcome: Outcome, first: Option<f64>, last: Option<f64>) -> Summary {
        Summary {
            outcome,
            steps_done: self.state.step,
            first_valid_loss: first,
            last_valid_loss: last,
            last_train_loss: self.state.last_loss,
            out: self.out.clone(),
            trainable_params: self.adapters.num_params(),
        }
    }
}

/// The LoRA-dropout seed of micro-batch `micro` of optimizer step `step` (0-based): a
/// SplitMix64 stream derived from (run seed, dropout purpose, step · grad_accum + micro), so
/// each micro-step draws fresh masks and any re-run of it (resume, recompute) the same ones.
pub fn dropout_seed(cfg: &TrainConfig, step: usize, micro: usize) -> u64 {
    let index = step as u64 * cfg.train.grad_accum as u64 + micro as u64;
    SplitMix64::derive(cfg.train.seed, PURPOSE_DROPOUT, index).next_u64()
}
