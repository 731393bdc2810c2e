//! Where the CPU kernels' loops get their threads: decode-sized loops run on a small pool
//! of spinning workers (`for_each`), small row-wise ops on the calling thread (`rows`), and
//! everything larger on rayon.
//!
//! Why a pool beside rayon: one decoded token runs ~5 parallel loops per layer (q, k, v, o,
//! the routed experts' two projections) and the lm_head, each 0.05–1 ms of streaming
//! weights, separated by short serial steps (norms, RoPE, the attention core, routing).
//! Rayon's idle workers yield a few dozen times and then sleep, and a rayon call from a
//! thread outside its pool hands the work over and sleeps too. So most decode loops started
//! on one thread while the other was being woken (tens of µs in a VM), and the hand-offs
//! (`sched_yield`, futex) took ~5% of a decode profile. Here the caller runs tasks itself
//! and the `num_threads() − 1` workers busy-wait between loops (ggml's thread pool spins
//! between a graph's ops for the same reason): per decoded token of gpt-oss-20b on 2
//! threads, 1.15–1.2× faster (docs/real-size.md §5). Workers that find no loop yield after
//! `YIELD_AFTER` and sleep after `SPIN`, so an idle pool costs nothing, and the pool takes
//! only decode-sized loops (`SHORT_ROWS`): prefill and training stay on rayon, whose busy
//! workers a spinning one would compete with for cores.
//!
//! A loop is `n` independent tasks claimed one at a time (whichever thread is free takes
//! the next), so a task's result cannot depend on the thread that runs it. A call from
//! inside a task (of this pool or rayon's), or while another thread's loop runs, runs its
//! tasks inline on the calling thread.

use crate::kernels::op::{num_threads, CResult};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Rows of x up to which a product counts as decode-sized and runs on the pool.
pub(crate) const SHORT_ROWS: usize = 4;

/// An idle worker busy-waits this long (longer than the serial steps between one token's
/// loops), then yields its core to other threads on each check until `SPIN`, then sleeps.
const YIELD_AFTER: Duration = Duration::from_micros(200);
const SPIN: Duration = Duration::from_millis(2);

/// Values up to which a row-wise op (`rows`) runs on the calling thread: a decode-sized
/// norm, RoPE or SwiGLU takes less time than handing it to rayon's workers.
const SERIAL_VALUES: usize = 1 << 16;

/// The loop being run: the caller's closure with its lifetime erased. `f` is called only
/// for a claimed task, and `for_each` returns only once all `n` tasks have completed, so
/// `f` outlives every call through it.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) -> CResult<()> + Sync),
    n: usize,
}

// SAFETY: `f` is `Sync` and is only called while `for_each` keeps it alive (see `Job`).
unsafe impl Send for Job {}

struct Shared {
    /// `(loop number << 32) | next task`. A task is claimed by advancing the low half while
    /// the high half still names the loop, so a worker late for a loop can never claim a
    /// task of the next one.
    claim: AtomicU64,
    /// The current loop's number and job.
    job: Mutex<(u64, Option<Job>)>,
    /// Tasks of the current loop that have returned.
    completed: AtomicUsize,
    failed: Mutex<Option<candle_core::Error>>,
    sleeping: Mutex<usize>,
    wake: Condvar,
    /// A loop is running (a second caller runs its tasks inline).
    busy: AtomicBool,
}

struct Pool {
    shared: &'static Shared,
    workers: usize,
}

thread_local! {
    /// This thread is running a task (a pool worker, or a caller inside its own loop).
    static IN_TASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a thread panicked while holding it; the data is a plain
    // value that stays consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            claim: AtomicU64::new(0),
            job: Mutex::new((0, None)),
            completed: AtomicUsize::new(0),
            failed: Mutex::new(None),
            sleeping: Mutex::new(0),
            wake: Condvar::new(),
            busy: AtomicBool::new(false),
        }));
        let mut workers = 0;
        for i in 0..num_threads().saturating_sub(1) {
            let spawned = std::thread::Builder::new()
                .name(format!("osstune-pool-{i}"))
                .spawn(move || worker(shared));
            // Fewer workers only means fewer threads: the caller claims whatever is left.
            if spawned.is_err() {
                break;
            }
            workers += 1;
        }
        Pool { shared, workers }
    })
}

/// `f(i)`, a panic turned into an error.
fn call(f: &(dyn Fn(usize) -> CResult<()> + Sync), i: usize, n: usize) -> CResult<()> {
    catch_unwind(AssertUnwindSafe(|| f(i))).unwrap_or_else(|_| {
        Err(candle_core::Error::Msg(format!(
            "parallel task {i} of {n} panicked"
        )))
    })
}

/// Claims and runs tasks of loop `epoch` until none is left. A panicking task becomes the
/// loop's error (and still counts as completed, so the caller is never left waiting).
fn run_tasks(s: &Shared, epoch: u64, job: Job) {
    let mut v = s.claim.load(Ordering::Acquire);
    loop {
        let i = (v & 0xffff_ffff) as usize;
        if v >> 32 != epoch || i >= job.n {
            return;
        }
        if let Err(now) =
            s.claim
                .compare_exchange_weak(v, v + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            v = now;
            continue;
        }
        // SAFETY: task `i` is claimed, so `for_each` is still waiting for it (see `Job`).
        if let Err(e) = call(unsafe { &*job.f }, i, job.n) {
            lock(&s.failed).get_or_insert(e);
        }
        s.completed.fetch_add(1, Ordering::AcqRel);
        v = s.claim.load(Ordering::Acquire);
    }
}

fn worker(s: &'static Shared) {
    IN_TASK.with(|t| t.set(true));
    let mut seen = 0u64;
    loop {
        let idle = Instant::now();
        let mut checks = 0u32;
        while s.claim.load(Ordering::Acquire) >> 32 == seen {
            std::hint::spin_loop();
            checks = checks.wrapping_add(1);
            if !checks.is_multiple_of(256) {
                continue;
            }
            let waited = idle.elapsed();
            if waited > SPIN {
                let mut sleeping = lock(&s.sleeping);
                *sleeping += 1;
                // The loop number is checked under the lock that `for_each` takes before
                // it notifies, so a wake-up cannot fall between the check and the wait.
                while s.claim.load(Ordering::Acquire) >> 32 == seen {
                    sleeping = s.wake.wait(sleeping).unwrap_or_else(|e| e.into_inner());
                }
                *sleeping -= 1;
            } else if waited > YIELD_AFTER {
                std::thread::yield_now();
            }
        }
        let (epoch, job) = *lock(&s.job);
        seen = epoch;
        if let Some(job) = job {
            run_tasks(s, epoch, job);
        }
    }
}

/// Whether the calling thread is inside a parallel task (of this pool or of rayon's).
pub(crate) fn in_task() -> bool {
    IN_TASK.with(|t| t.get()) || rayon::current_thread_index().is_some()
}

/// Runs `f(0)`, …, `f(n − 1)` across the pool's workers and the calling thread, each at
/// most once; returns the first error (a panicking task is an error too), after which the
/// remaining tasks may or may not run.
pub(crate) fn for_each(n: usize, f: impl Fn(usize) -> CResult<()> + Sync) -> CResult<()> {
    let inline = || (0..n).try_for_each(|i| call(&f, i, n));
    if n <= 1 || in_task() {
        return inline();
    }
    let p = pool();
    let s = p.shared;
    if p.workers == 0 || n >= 1 << 32 || s.busy.swap(true, Ordering::Acquire) {
        return inline();
    }
    let dynf: &(dyn Fn(usize) -> CResult<()> + Sync) = &f;
    // SAFETY: only the lifetime is erased; see `Job` for why `f` outlives every use.
    let f_ptr: *const (dyn Fn(usize) -> CResult<()> + Sync) =
        unsafe { std::mem::transmute(dynf as *const (dyn Fn(usize) -> CResult<()> + Sync + '_)) };
    let job = Job { f: f_ptr, n };
    let epoch = {
        let mut current = lock(&s.job);
        let epoch = (current.0 + 1) & 0xffff_ffff;
        *current = (epoch, Some(job));
        s.completed.store(0, Ordering::Release);
        s.claim.store(epoch << 32, Ordering::Release);
        epoch
    };
    if *lock(&s.sleeping) > 0 {
        s.wake.notify_all();
    }
    IN_TASK.with(|t| t.set(true));
    run_tasks(s, epoch, job);
    IN_TASK.with(|t| t.set(false));
    while s.completed.load(Ordering::Acquire) < n {
        std::hint::spin_loop();
    }
    lock(&s.job).1 = None;
    let err = lock(&s.failed).take();
    s.busy.store(false, Ordering::Release);
    err.map_or(Ok(()), Err)
}

/// Runs `f(0)`, …, `f(n − 1)` in parallel for a product of `rows` rows of x: on this pool
/// when it is decode-sized (`SHORT_ROWS`), else on rayon's workers. Either way each thread
/// claims the next task in order as it frees up, so tasks listed largest first are
/// scheduled longest-first. Returns the first error.
pub(crate) fn run(rows: usize, n: usize, f: impl Fn(usize) -> CResult<()> + Sync) -> CResult<()> {
    use rayon::prelude::*;
    if rows <= SHORT_ROWS {
        return for_each(n, f);
    }
    let next = AtomicUsize::new(0);
    (0..num_threads().min(n))
        .into_par_iter()
        .try_for_each(|_| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                return Ok(());
            }
            f(i)?;
        })
}

/// `f(i, row)` for each `width`-long row of `dst`: on the calling thread for small outputs
/// (a decoded token's), else split across rayon's workers. Each row is written by one call,
/// so the result does not depend on the split.
pub(crate) fn rows<F: Fn(usize, &mut [f32]) + Sync + Send>(dst: &mut [f32], width: usize, f: F) {
    use rayon::prelude::*;
    let width = width.max(1);
    if dst.len() <= SERIAL_VALUES {
        dst.chunks_mut(width).enumerate().for_each(|(i, r)| f(i, r));
    } else {
        dst.par_chunks_mut(width)
            .enumerate()
            .for_each(|(i, r)| f(i, r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_once_loop_after_loop() {
        for n in [2, 3, 7, 64, 1000] {
            let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            for _ in 0..50 {
                for_each(n, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                    Ok(())
                })
                .unwrap();
            }
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 50),
                "n = {n}"
            );
        }
    }

    #[test]
    fn an_error_or_a_panic_comes_back_as_the_loops_error() {
        let done = AtomicUsize::new(0);
        let err = for_each(16, |i| {
            done.fetch_add(1, Ordering::Relaxed);
            if i == 5 {
                candle_core::bail!("task five failed")
            }
            Ok(())
        })
        .unwrap_err();
        assert!(err.to_string().contains("task five failed"), "{err}");
        assert!(done.load(Ordering::Relaxed) >= 6);
        let err = for_each(8, |i| {
            assert!(i != 3, "boom");
            Ok(())
        })
        .unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        // The pool is usable afterwards.
        let sum = AtomicUsize::new(0);
        for_each(10, |i| {
            sum.fetch_add(i, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }

    #[test]
    fn nested_and_concurrent_loops_complete() {
        let total = AtomicUsize::new(0);
        // A loop inside a task runs inline; two threads' loops at once both complete.
        std::thread::scope(|sc| {
            for _ in 0..2 {
                sc.spawn(|| {
                    for _ in 0..20 {
                        for_each(4, |_| {
                            for_each(3, |_| {
                                total.fetch_add(1, Ordering::Relaxed);
                                Ok(())
                            })
                        })
                        .unwrap();
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 2 * 20 * 4 * 3);
    }

    #[test]
    fn rows_visits_each_row_with_its_index_small_and_large() {
        for (n, width) in [(3, 5), (2000, 64)] {
            let mut dst = vec![0f32; n * width];
            rows(&mut dst, width, |i, r| {
                r.iter_mut().for_each(|v| *v = i as f32)
            });
            for (i, r) in dst.chunks(width).enumerate() {
                assert!(r.iter().all(|&v| v == i as f32));
            }
        }
    }
}
