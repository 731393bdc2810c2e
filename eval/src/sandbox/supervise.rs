//! The parent's side of a run: start the child, enforce the wall clock and the output cap,
//! kill its process group (and, through the pids cgroup, anything that left it), collect
//! exit status and output.

use super::{Execution, Limits};
use anyhow::{Context, Result};
use std::io::Read;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Reads a pipe up to `cap` bytes (the rest is drained and dropped, `over` set).
fn capture(
    mut r: impl Read + Send + 'static,
    cap: usize,
    over: Arc<AtomicBool>,
) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 64 << 10];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = cap.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                    if n > room {
                        over.store(true, Ordering::SeqCst);
                    }
                }
            }
        }
        let _ = tx.send(kept);
    });
    rx
}

fn kill_group(pgid: u32) {
    #[cfg(unix)]
    // SAFETY: kill with a negative pid signals that process group only; a stale group is ESRCH.
    unsafe {
        libc::kill(-(pgid as i32), libc::SIGKILL);
    }
    #[cfg(not(unix))]
    let _ = pgid;
}

fn group_alive(pgid: u32) -> bool {
    #[cfg(unix)]
    // SAFETY: signal 0 only checks whether the group has members.
    return unsafe { libc::kill(-(pgid as i32), 0) } == 0;
    #[cfg(not(unix))]
    false
}

/// Starts `cmd`, enforces the wall clock and output cap, and collects the result.
/// `kill_escapees` kills what is left outside the process group and says how many there were.
pub(super) fn supervise(
    mut cmd: Command,
    limits: &Limits,
    kill_escapees: &dyn Fn() -> Result<usize>,
) -> Result<Execution> {
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting the sandboxed process")?;
    let pgid = child.id();
    let over = Arc::new(AtomicBool::new(false));
    let out_rx = capture(
        child.stdout.take().context("stdout pipe")?,
        limits.output_bytes,
        over.clone(),
    );
    let err_rx = capture(
        child.stderr.take().context("stderr pipe")?,
        limits.output_bytes,
        over.clone(),
    );
    let deadline = Duration::from_secs_f64(limits.timeout_s);
    let (mut timed_out, mut output_limit) = (false, false);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > deadline {
            timed_out = true;
            kill_group(pgid);
        } else if over.load(Ordering::SeqCst) && !output_limit {
            output_limit = true;
            kill_group(pgid);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let seconds = start.elapsed().as_secs_f64();
    // Background processes left in the group go too; wait until they are gone (reaped), as
    // they count against the sandbox user's process limit for the next run.
    let gone_by = Instant::now() + Duration::from_secs(5);
    while group_alive(pgid) && Instant::now() < gone_by {
        kill_group(pgid);
        std::thread::sleep(Duration::from_millis(10));
    }
    output_limit |= over.load(Ordering::SeqCst);
    let escapees = kill_escapees()?;
    // Readers end when every writer is gone; one that escaped the group (and no cgroup found
    // it) keeps a pipe open.
    let grace = Duration::from_secs(2);
    let (stdout, stderr) = (out_rx.recv_timeout(grace), err_rx.recv_timeout(grace));
    let escaped = escapees > 0 || stdout.is_err() || stderr.is_err();
    let text = |r: Result<Vec<u8>, _>| String::from_utf8_lossy(&r.unwrap_or_default()).into_owned();
    #[cfg(unix)]
    let signal = std::os::unix::process::ExitStatusExt::signal(&status);
    #[cfg(not(unix))]
    let signal = None;
    Ok(Execution {
        exit_code: status.code(),
        signal,
        timed_out,
        output_limit,
        escaped,
        stdout: text(stdout),
        stderr: text(stderr),
        seconds,
    })
}
