//! The model worker: one thread owns the model and runs every request on it.
//!
//! Scheduling is fair round-robin, token by token: each pass over the active requests gives
//! every one of them one step — a prefill chunk of at most [`PREFILL_CHUNK`] prompt tokens,
//! or one decode token — so a long prompt delays the others by one chunk per pass, not by
//! its whole prefill. Decode steps of different requests are NOT batched into one forward:
//! `GptOss::forward` takes a single offset and one cache for the whole batch, and requests
//! sit at different positions with different prefixes, so a batched step would need per-row
//! positions and masks in the model. What is shared instead is the prefix cache.
//!
//! At most `max_concurrent` requests are active; later ones wait in FIFO order. A request
//! whose client went away (its event channel is closed) is dropped at its next step.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Tensor;
use osstune_harmony::Tokenizer;
use osstune_model::generate::generation::ASSISTANT_STOP_TOKENS;
use osstune_model::generate::sampling::{last_row, Sampler, SamplingParams};
use osstune_model::{Cache, GptOss};
use tokio::sync::mpsc::UnboundedSender;

use crate::output::{settle, Answer, Delta, End, OutputParser};
use crate::prefix_cache::{Checkpoint, PrefixCache};

/// Prompt tokens per prefill forward, as `osstune generate` (so a cold request computes
/// exactly what it computes).
pub const PREFILL_CHUNK: usize = osstune_model::generate::generation::DEFAULT_PREFILL_CHUNK;

/// Counts a request against the server's limit until it is dropped.
pub struct Permit(Arc<AtomicUsize>);

impl Permit {
    /// Takes a slot if fewer than `limit` are taken.
    pub fn try_take(count: &Arc<AtomicUsize>, limit: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count.clone()))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Job {
    pub prompt: Vec<u32>,
    /// Tokens at the end of the prompt that open the answer (a forced call header).
    pub primed: usize,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub tools: Vec<String>,
    pub call_prefix: String,
    pub events: UnboundedSender<Event>,
    pub permit: Permit,
}

/// What the worker tells the request handler.
#[derive(Debug)]
pub enum Event {
    /// The request left the queue; `cached` prompt tokens came from the prefix cache.
    Started {
        cached: usize,
    },
    Delta(Delta),
    Done(Box<Done>),
    Failed(String),
}

#[derive(Debug)]
pub struct Done {
    /// With malformed calls moved to content (the non-streaming form).
    pub answer: Answer,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_ids: Vec<u32>,
}

/// Counters for `/health` and the tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub active: AtomicUsize,
    pub queued: AtomicUsize,
    pub completed: AtomicUsize,
    pub cancelled: AtomicUsize,
    pub failed: AtomicUsize,
    pub cached_tokens: AtomicUsize,
    pub cache_entries: AtomicUsize,
    pub cache_bytes: AtomicUsize,
}

#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Job>,
    pub stats: Arc<Stats>,
}

impl EngineHandle {
    pub fn submit(&self, job: Job) -> Result<()> {
        self.stats.queued.fetch_add(1, Ordering::SeqCst);
        self.tx.send(job).map_err(|_| {
            self.stats.queued.fetch_sub(1, Ordering::SeqCst);
            anyhow::anyhow!("the model worker has stopped")
        })
    }
}

/// Starts the worker thread.
pub fn start(
    model: GptOss,
    tok: Arc<Tokenizer>,
    max_concurrent: usize,
    cache_bytes: usize,
) -> Result<EngineHandle> {
    let (tx, rx) = mpsc::channel();
    let stats = Arc::new(Stats::default());
    let s = stats.clone();
    std::thread::Builder::new()
        .name("osstune-model".into())
        .spawn(move || worker(model, &tok, rx, max_concurrent.max(1), cache_bytes, &s))
        .context("starting the model worker thread")?;
    Ok(EngineHandle { tx, stats })
}

struct Active<'t> {
    job: Job,
    sampler: Sampler,
    out: OutputParser<'t>,
    answer: Answer,
    cache: Cache,
    /// Tokens fed to the model so far.
    fed: Vec<u32>,
    /// Prompt tokens not yet fed.
    pending: usize,
    /// Sampled, not yet fed.
    next: Option<u32>,
    generated: Vec<u32>,
    cached: usize,
    checkpoints: Vec<Checkpoint>,
}

enum Step {
    Running,
    Finished(End),
    Cancelled,
    /// The forward failed: the cache may be half-extended and is not kept.
    Failed,
}

fn worker(
    model: GptOss,
    tok: &Tokenizer,
    rx: Receiver<Job>,
    max_concurrent: usize,
    cache_bytes: usize,
    stats: &Stats,
) {
    let windows = model.layers.iter().map(|b| b.attn.window).collect();
    let mut prefix = PrefixCache::new(windows, cache_bytes);
    let mut active: Vec<Active> = Vec::new();
    loop {
        while active.len() < max_concurrent {
            let job = if active.is_empty() {
                match rx.recv() {
                    Ok(j) => j,
                    Err(_) => return, // the server is gone
                }
            } else {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(_) => break,
                }
            };
            stats.queued.fetch_sub(1, Ordering::SeqCst);
            if job.events.is_closed() {
                stats.cancelled.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            match admit(&model, job, tok, &mut prefix) {
                Ok(a) => {
                    stats.cached_tokens.fetch_add(a.cached, Ordering::SeqCst);
                    active.push(a);
                }
                Err((job, e)) => {
                    stats.failed.fetch_add(1, Ordering::SeqCst);
                    let _ = job.events.send(Event::Failed(format!("{e:#}")));
                }
            }
        }
        stats.active.store(active.len(), Ordering::SeqCst);
        let mut i = 0;
        while i < active.len() {
            let outcome = step(&model, &mut active[i], &prefix).unwrap_or_else(|e| {
                let _ = active[i].job.events.send(Event::Failed(format!("{e:#}")));
                Step::Failed
            });
            match outcome {
                Step::Running => i += 1,
                Step::Finished(end) => {
                    let a = active.swap_remove(i);
                    finish(a, end, &mut prefix);
                    stats.completed.fetch_add(1, Ordering::SeqCst);
                }
                Step::Cancelled => {
                    let a = active.swap_remove(i);
                    prefix.insert(a.fed, a.cache, a.checkpoints);
                    stats.cancelled.fetch_add(1, Ordering::SeqCst);
                }
                Step::Failed => {
                    active.swap_remove(i);
                    stats.failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        stats.active.store(active.len(), Ordering::SeqCst);
        stats.cache_entries.store(prefix.len(), Ordering::SeqCst);
        stats
            .cache_bytes
            .store(prefix.used_bytes(), Ordering::SeqCst);
    }
}

#[allow(clippy::result_large_err)]
fn admit<'t>(
    model: &GptOss,
    job: Job,
    tok: &'t Tokenizer,
    prefix: &mut PrefixCache,
) -> std::result::Result<Active<'t>, (Job, anyhow::Error)> {
    let sampler = match Sampler::new(job.sampling.clone()) {
        Ok(s) => s,
        Err(e) => return Err((job, e)),
    };
    let restored = match prefix.restore(&job.prompt) {
        Ok(r) => r,
        Err(e) => return Err((job, e.into())),
    };
    let (cache, cached, checkpoints) = match restored {
        Some(r) => (r.cache, r.reused, r.checkpoints),
        None => (Cache::new(model.config()), 0, Vec::new()),
    };
    let mut out = OutputParser::new(
        tok,
        job.tools.clone(),
        job.stop.clone(),
        job.call_prefix.clone(),
    );
    let mut answer = Answer::default();
    let _ = job.events.send(Event::Started { cached });
    for d in out.prime(&job.prompt[job.prompt.len() - job.primed..]) {
        answer.apply(&d);
        let _ = job.events.send(Event::Delta(d));
    }
    Ok(Active {
        pending: job.prompt.len() - cached,
        fed: job.prompt[..cached].to_vec(),
        job,
        sampler,
        out,
        answer,
        cache,
        next: None,
        generated: Vec::new(),
        cached,
        checkpoints,
    })
}

/// One prefill chunk or one decode token.
fn step(model: &GptOss, a: &mut Active, prefix: &PrefixCache) -> Result<Step> {
    if a.job.events.is_closed() {
        return Ok(Step::Cancelled);
    }
    let ids: Vec<u32> = if a.pending > 0 {
        let start = a.job.prompt.len() - a.pending;
        let n = a.pending.min(PREFILL_CHUNK);
        a.pending -= n;
        a.job.prompt[start..start + n].to_vec()
    } else {
        vec![a.next.take().context("no token to feed")?]
    };
    let offset = a.fed.len();
    let x = Tensor::new(ids.as_slice(), &model.device)?.unsqueeze(0)?;
    let logits = model
        .forward_last(&x, offset, &mut a.cache)
        .with_context(|| format!("forward of {} tokens at position {offset}", ids.len()))?;
    a.fed.extend_from_slice(&ids);
    if a.pending > 0 {
        return Ok(Step::Running);
    }
    let pos = a.fed.len();
    let prompt_end = pos == a.job.prompt.len();
    let on_grid = prefix.min_window().is_some_and(|w| pos.is_multiple_of(w));
    if prefix.enabled() && prefix.has_sliding_layers() && (prompt_end || on_grid) {
        a.checkpoints.push(prefix.checkpoint(&a.cache, pos));
    }
    let token = a.sampler.sample_row(&last_row(&logits)?)?;
    a.generated.push(token);
    for d in a.out.push(token) {
        a.answer.apply(&d);
        if a.job.events.send(Event::Delta(d)).is_err() {
            return Ok(Step::Cancelled);
        }
    }
    if ASSISTANT_STOP_TOKENS.contains(&token) {
        return Ok(Step::Finished(End::StopToken(token)));
    }
    if a.out.stopped() {
        return Ok(Step::Finished(End::StopString));
    }
    if a.generated.len() >= a.job.max_tokens {
        return Ok(Step::Finished(End::MaxTokens));
    }
    a.next = Some(token);
    Ok(Step::Running)
}

fn finish(mut a: Active, end: End, prefix: &mut PrefixCache) {
    let (tail, reason) = a.out.finish(end);
    for d in tail {
        a.answer.apply(&d);
        let _ = a.job.events.send(Event::Delta(d));
    }
    a.answer.finish_reason = reason;
    let done = Done {
        answer: settle(std::mem::take(&mut a.answer)),
        prompt_tokens: a.job.prompt.len(),
        cached_tokens: a.cached,
        completion_ids: std::mem::take(&mut a.generated),
    };
    let _ = a.job.events.send(Event::Done(Box::new(done)));
    prefix.insert(a.fed, a.cache, a.checkpoints);
}
