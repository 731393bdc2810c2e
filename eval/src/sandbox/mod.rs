//! Runs untrusted, model-written Python in a child process that cannot hurt the machine or
//! the results.
//!
//! Every run gets: a fresh temporary folder (removed afterwards) as its working directory and
//! `HOME`; an environment cleared to an allow-list; its own process group, killed whole at the
//! wall-clock timeout; resource limits (CPU seconds, address space, file size, processes, open
//! files, no core dumps); stdout/stderr captured up to a size cap (going over it kills the run);
//! and an intermediate parent process, so `kill -9` of "its parent" hits a throwaway process,
//! never the harness. On Linux, as root, it also runs as `nobody` (so the process limit binds —
//! the kernel does not apply RLIMIT_NPROC to root — and nothing root-owned is writable), in a new
//! network namespace (no network) and a new mount namespace where /tmp, /var/tmp and /dev/shm
//! are read-only, and in a pids cgroup of its own (a process cap that binds whatever the user,
//! and the list of every process of the run, so cleanup finds even one that called `setsid`).
//! Which of these hold is probed once ([`Sandbox::new`]) and reported in
//! [`Sandbox::guarantees`]; what is missing is said there, never silently assumed.
//!
//! What it does not promise (docs/eval.md): reads are not confined (the code can read any file
//! its user can, and as root with a root-only interpreter, any file); without a pids cgroup, a
//! process that leaves the process group (`setsid`) survives the group kill (it is still
//! bounded by the process and CPU limits, and the harness stops waiting for it).

#[cfg(target_os = "linux")]
mod cgroup;
#[cfg(target_os = "linux")]
mod linux;
mod supervise;

use supervise::supervise;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// Resource limits of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub timeout_s: f64,
    /// CPU seconds per process (RLIMIT_CPU); a busy loop ends here even if the clock stalls.
    pub cpu_s: u64,
    /// Address space per process (RLIMIT_AS), MiB.
    pub memory_mb: u64,
    /// Largest file a process may write (RLIMIT_FSIZE), MiB.
    pub file_mb: u64,
    /// Processes of the sandbox user (RLIMIT_NPROC; see the module note on root).
    pub processes: u64,
    pub open_files: u64,
    /// stdout and stderr are each kept up to this many bytes; more kills the run.
    pub output_bytes: usize,
}

impl Limits {
    pub fn with_timeout(timeout_s: f64, memory_mb: u64) -> Self {
        Self {
            timeout_s,
            cpu_s: timeout_s.ceil() as u64 + 1,
            memory_mb,
            file_mb: 64,
            processes: 32,
            open_files: 256,
            output_bytes: 1 << 20,
        }
    }
}

/// Files written into the run's folder, then `python <entry>`.
#[derive(Debug, Clone)]
pub struct Program {
    pub files: Vec<(String, String)>,
    pub entry: String,
}

impl Program {
    pub fn single(code: &str) -> Self {
        Self {
            files: vec![("main.py".into(), code.into())],
            entry: "main.py".into(),
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Execution {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// stdout or stderr went over the cap (the run was killed).
    pub output_limit: bool,
    /// Some process left the process group and still held the output pipes after the kill.
    pub escaped: bool,
    pub stdout: String,
    pub stderr: String,
    pub seconds: f64,
}

impl Execution {
    /// Why the run did not end normally, if it did not.
    pub fn abnormal(&self) -> Option<String> {
        if self.timed_out {
            return Some(format!("timed out after {:.0} s", self.seconds));
        }
        if self.output_limit {
            return Some("output over the size cap (killed)".to_string());
        }
        if self.escaped {
            return Some("a process left the process group".to_string());
        }
        self.signal.map(|s| {
            let name = match s {
                9 => " (SIGKILL)",
                24 => " (SIGXCPU: CPU limit)",
                25 => " (SIGXFSZ: file size limit)",
                11 => " (SIGSEGV)",
                6 => " (SIGABRT)",
                _ => "",
            };
            format!("killed by signal {s}{name}")
        })
    }
}

/// Which protections the probe found to work on this machine.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Isolation {
    /// (uid, gid) the code runs as (root only: `nobody`).
    pub run_as: Option<(u32, u32)>,
    /// Keeps CAP_DAC_READ_SEARCH (read any file) so an interpreter under a root-only folder
    /// (pyenv in /root) can start; nothing more.
    pub read_any_file: bool,
    pub network_namespace: bool,
    /// /tmp, /var/tmp, /dev/shm read-only.
    pub private_mounts: bool,
    /// A pids cgroup per run: caps processes for any user (root included) and finds every
    /// process of the run at the end, even one that left the process group.
    pub process_cgroup: bool,
}

pub struct Sandbox {
    python: PathBuf,
    isolation: Isolation,
    /// Why stronger isolation was not used.
    notes: Vec<String>,
    modules: std::sync::Mutex<std::collections::HashMap<String, bool>>,
}

const NOBODY: (u32, u32) = (65534, 65534);

impl Sandbox {
    /// Resolves the interpreter (`python` or `python3` on PATH) and probes the strongest
    /// isolation that works. A missing interpreter is an error here, before anything else.
    pub fn new(python: Option<&Path>) -> Result<Self> {
        let python = resolve_python(python)?;
        let mut notes = Vec::new();
        for iso in candidates(&python) {
            let sb = Self {
                python: python.clone(),
                isolation: iso.clone(),
                notes: Vec::new(),
                modules: Default::default(),
            };
            match sb.run(
                &Program::single("import sys\nprint('ok')\n"),
                &Limits::with_timeout(20.0, 1024),
            ) {
                Ok(e) if e.exit_code == Some(0) && e.stdout.trim() == "ok" => {
                    return Ok(Self { notes, ..sb });
                }
                Ok(e) => notes.push(format!(
                    "isolation {iso:?} failed: exit {:?}, {}",
                    e.exit_code,
                    e.stderr.trim()
                )),
                Err(e) => notes.push(format!("isolation {iso:?} failed: {e:#}")),
            }
        }
        bail!(
            "cannot run {} in the sandbox at all: {}",
            python.display(),
            notes.join("; ")
        )
    }

    pub fn python(&self) -> &Path {
        &self.python
    }

    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// One line per protection: what holds and what does not (for the report).
    pub fn guarantees(&self) -> Vec<String> {
        let i = &self.isolation;
        let mut g = vec![
            "own temporary folder, removed afterwards".to_string(),
            "environment cleared to an allow-list".to_string(),
            "own process group, killed at the timeout".to_string(),
            "limits: CPU time, address space, file size, processes, open files, output size"
                .to_string(),
            "throwaway parent process (kill of its parent cannot reach the harness)".to_string(),
        ];
        g.push(match i.run_as {
            Some((u, _)) => format!("runs as uid {u} (process limit binds; root files read-only)"),
            None if is_root() => {
                "runs as root: the process limit does NOT bind (the kernel exempts root)".into()
            }
            None => "runs as the invoking user".into(),
        });
        if i.read_any_file {
            g.push("keeps CAP_DAC_READ_SEARCH (can read any file) for the interpreter".into());
        }
        g.push(if i.network_namespace {
            "no network (new network namespace)".into()
        } else {
            "network NOT isolated (no permission for a network namespace)".into()
        });
        g.push(if i.private_mounts {
            "/tmp, /var/tmp, /dev/shm read-only (new mount namespace)".into()
        } else {
            "/tmp NOT protected (no mount namespace)".into()
        });
        g.push(if i.process_cgroup {
            "pids cgroup: every process of the run is killed at the end, setsid or not".into()
        } else {
            "no pids cgroup: a process that calls setsid can outlive the run".into()
        });
        g
    }

    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Whether `module` imports inside the sandbox (cached).
    pub fn has_module(&self, module: &str) -> Result<bool> {
        if let Some(&b) = self.modules.lock().expect("module cache").get(module) {
            return Ok(b);
        }
        if !module
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            bail!("{module:?} is not a Python module name");
        }
        let e = self.run(
            &Program::single(&format!("import {module}\n")),
            &Limits::with_timeout(60.0, 4096),
        )?;
        let ok = e.exit_code == Some(0);
        self.modules
            .lock()
            .expect("module cache")
            .insert(module.to_string(), ok);
        Ok(ok)
    }

    /// Runs `program` under `limits`. Errors only when the sandbox itself fails (cannot make
    /// the folder or start the process); whatever the program does is in the [`Execution`].
    pub fn run(&self, program: &Program, limits: &Limits) -> Result<Execution> {
        let base = make_base_dir()?;
        let result = self.run_in(&base, program, limits);
        // Best effort: a process that escaped may still be writing; the folder goes anyway.
        let _ = std::fs::remove_dir_all(&base);
        result
    }

    fn run_in(&self, base: &Path, program: &Program, limits: &Limits) -> Result<Execution> {
        let work = base.join("work");
        std::fs::create_dir(&work).with_context(|| format!("creating {}", work.display()))?;
        for (name, text) in &program.files {
            if name.contains('/') || name.starts_with('.') {
                bail!("sandbox file name {name:?} must be a plain name");
            }
            std::fs::write(work.join(name), text)
                .with_context(|| format!("writing {}", work.join(name).display()))?;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700))?;
            if let Some((uid, gid)) = self.isolation.run_as {
                std::os::unix::fs::chown(&work, Some(uid), Some(gid))?;
                for (name, _) in &program.files {
                    std::os::unix::fs::chown(work.join(name), Some(uid), Some(gid))?;
                }
            }
        }
        let mut cmd = Command::new(&self.python);
        cmd.arg(&program.entry)
            .current_dir(&work)
            .env_clear()
            .envs(allowed_env(&work))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        #[cfg(target_os = "linux")]
        {
            let cgroup = match self.isolation.process_cgroup {
                true => Some(cgroup::PidsCgroup::create(limits.processes)?),
                false => None,
            };
            let procs = cgroup.as_ref().map(|c| c.procs_file()).transpose()?;
            linux::confine(&mut cmd, &self.isolation, &work, limits, procs)?;
            let escapees = || cgroup.as_ref().map_or(Ok(0), |c| c.kill_all());
            supervise(cmd, limits, &escapees)
        }
        #[cfg(not(target_os = "linux"))]
        supervise(cmd, limits, &|| Ok(0))
    }
}

/// The environment the code sees: nothing of the caller's but the locale-free basics.
fn allowed_env(work: &Path) -> Vec<(&'static str, String)> {
    let w = work.display().to_string();
    vec![
        ("PATH", "/usr/local/bin:/usr/bin:/bin".into()),
        ("HOME", w.clone()),
        ("TMPDIR", w),
        ("LANG", "C.UTF-8".into()),
        ("PYTHONDONTWRITEBYTECODE", "1".into()),
        ("PYTHONHASHSEED", "0".into()),
        ("PYTHONIOENCODING", "utf-8".into()),
        // BLAS thread pools reserve address space per thread; one thread keeps numpy inside
        // the address-space limit.
        ("OMP_NUM_THREADS", "1".into()),
        ("OPENBLAS_NUM_THREADS", "1".into()),
        ("MKL_NUM_THREADS", "1".into()),
    ]
}

fn is_root() -> bool {
    #[cfg(unix)]
    // SAFETY: geteuid has no preconditions.
    return unsafe { libc::geteuid() } == 0;
    #[cfg(not(unix))]
    false
}

/// Strongest first. As root: drop to nobody (keeping read access when the interpreter sits in
/// a root-only folder), with network and mount namespaces; then without the namespaces; each
/// first with a pids cgroup, then without.
fn candidates(python: &Path) -> Vec<Isolation> {
    let mut out = Vec::new();
    if is_root() && cfg!(target_os = "linux") {
        let read_any_file = !world_reachable(python);
        let base = Isolation {
            run_as: Some(NOBODY),
            read_any_file,
            network_namespace: true,
            private_mounts: true,
            process_cgroup: false,
        };
        for iso in [
            base.clone(),
            Isolation {
                private_mounts: false,
                ..base.clone()
            },
            Isolation {
                network_namespace: false,
                private_mounts: false,
                ..base
            },
        ] {
            out.push(Isolation {
                process_cgroup: true,
                ..iso.clone()
            });
            out.push(iso);
        }
    } else if cfg!(target_os = "linux") {
        out.push(Isolation {
            network_namespace: true,
            ..Isolation::default()
        });
    }
    out.push(Isolation::default());
    out
}

/// Whether other users can reach and run `path` (every folder above it searchable).
fn world_reachable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode());
        if !mode(path).is_ok_and(|m| m & 0o005 == 0o005) {
            return false;
        }
        path.ancestors()
            .skip(1)
            .all(|d| mode(d).is_ok_and(|m| m & 0o001 != 0))
    }
    #[cfg(not(unix))]
    true
}

fn resolve_python(python: Option<&Path>) -> Result<PathBuf> {
    let name = python.map_or_else(|| PathBuf::from("python3"), Path::to_path_buf);
    // The interpreter is the user's (trusted); asking it where it lives also resolves shims
    // (pyenv) that would need the caller's environment.
    let out = Command::new(&name)
        .args([
            "-c",
            "import sys; print(sys.executable); print(sys.version_info[0])",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "Python interpreter {:?} not found ({e}): install Python 3 or pass --python PATH",
                name.display().to_string()
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (Some(exe), Some(major)) = (lines.next(), lines.next()) else {
        bail!(
            "{} did not run as a Python interpreter: {}",
            name.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    };
    if !out.status.success() || major.trim() != "3" {
        bail!("{} is not Python 3", name.display());
    }
    std::fs::canonicalize(exe).with_context(|| format!("resolving {exe}"))
}

/// A fresh folder for one run: `<tmp>/osstune-eval-<pid>-<n>`, searchable but not listable
/// or writable by others (the code's own `work/` inside is the only writable place).
fn make_base_dir() -> Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir().join(format!(
        "osstune-eval-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir(&base).with_context(|| format!("creating {}", base.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o711))?;
    }
    Ok(base)
}
