//! A pids cgroup per run (Linux, root): caps the number of processes whatever their user, and
//! lists every process of the run, even one that left the process group with `setsid`, so the
//! cleanup kills them all. cgroup v1's `pids` hierarchy or a v2 root with the pids controller
//! (https://docs.kernel.org/admin-guide/cgroup-v1/pids.html,
//! https://docs.kernel.org/admin-guide/cgroup-v2.html#pid).

use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where a pids controller may be mounted: v1's own hierarchy, then a v2 (or hybrid) root.
const ROOTS: [&str; 3] = [
    "/sys/fs/cgroup/pids",
    "/sys/fs/cgroup/unified",
    "/sys/fs/cgroup",
];

pub(super) struct PidsCgroup {
    dir: PathBuf,
}

impl PidsCgroup {
    /// A fresh cgroup allowing at most `max` processes.
    pub fn create(max: u64) -> Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "osstune-eval-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut why = Vec::new();
        for root in ROOTS.iter().map(Path::new) {
            let dir = root.join(&name);
            if std::fs::create_dir(&dir).is_err() {
                why.push(format!("{}: cannot create a cgroup", root.display()));
                continue;
            }
            let cg = Self { dir };
            // A folder without pids.max is not under the pids controller.
            match std::fs::write(cg.dir.join("pids.max"), max.to_string()) {
                Ok(()) => return Ok(cg),
                Err(e) => why.push(format!("{}: pids.max: {e}", root.display())),
            }
        }
        bail!("no writable pids cgroup ({})", why.join("; "))
    }

    /// The file the child writes "0" to (itself) to join, before it drops privileges.
    pub fn procs_file(&self) -> Result<CString> {
        Ok(CString::new(
            self.dir.join("cgroup.procs").as_os_str().as_bytes(),
        )?)
    }

    fn members(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Kills every member until none is left (or 5 s pass); returns how many were alive.
    pub fn kill_all(&self) -> Result<usize> {
        let first = self.members().len();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let m = self.members();
            if m.is_empty() {
                return Ok(first);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} processes of {} survive SIGKILL",
                    m.len(),
                    self.dir.display()
                );
            }
            for pid in m {
                // SAFETY: a pid listed by the run's own cgroup; SIGKILL of a gone one is ESRCH.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = self.kill_all();
        // An empty cgroup folder is removed with rmdir (its files are virtual).
        let _ = std::fs::remove_dir(&self.dir)
            .with_context(|| format!("removing {}", self.dir.display()));
    }
}
