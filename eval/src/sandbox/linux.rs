//! The Linux confinement, applied in the child between fork and exec.
//!
//! Order matters: joining the run's pids cgroup, namespaces and mounts need root, so they come
//! first; then the limits; then
//! the switch to the unprivileged user (after which RLIMIT_NPROC binds: the kernel exempts
//! only root and holders of CAP_SYS_RESOURCE / CAP_SYS_ADMIN, see fork(2) EAGAIN and
//! https://man7.org/linux/man-pages/man2/setrlimit.2.html); last the split into a throwaway
//! parent that waits and a child that goes on to exec the interpreter.
//!
//! Code run between fork and exec must not allocate (the parent may have other threads
//! holding the allocator lock), so every path is a `CString` built before the fork and only
//! raw system calls run in the child.

use super::{Isolation, Limits};
use anyhow::Result;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Folders everyone may write to: read-only inside the sandbox's mount namespace.
const SHARED_WRITABLE: [&str; 3] = ["/tmp", "/var/tmp", "/dev/shm"];

const CAP_DAC_READ_SEARCH: u32 = 2;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cstr(p: &Path) -> Result<CString> {
    Ok(CString::new(p.as_os_str().as_bytes())?)
}

pub(super) fn confine(
    cmd: &mut Command,
    iso: &Isolation,
    work: &Path,
    limits: &Limits,
    cgroup_procs: Option<CString>,
) -> Result<()> {
    let work_c = cstr(work)?;
    let mut protect: Vec<CString> = Vec::new();
    let mut dirs: Vec<std::path::PathBuf> = SHARED_WRITABLE.iter().map(Into::into).collect();
    dirs.push(std::env::temp_dir());
    for d in dirs {
        if let Ok(real) = std::fs::canonicalize(&d) {
            if real.is_dir()
                && !protect
                    .iter()
                    .any(|p| p.as_bytes() == real.as_os_str().as_bytes())
            {
                protect.push(cstr(&real)?);
            }
        }
    }
    let mib = 1u64 << 20;
    // RLIMIT_NPROC counts every process of the real user. The `nobody` sandbox user owns none
    // but the run's; a non-root caller's own processes count too, so the cap goes on top.
    let processes = match iso.run_as {
        None if unsafe { libc::geteuid() } != 0 => {
            processes_of(unsafe { libc::getuid() }) as u64 + limits.processes
        }
        _ => limits.processes,
    };
    let rlimits: [(libc::__rlimit_resource_t, u64); 6] = [
        (libc::RLIMIT_CPU, limits.cpu_s),
        (libc::RLIMIT_AS, limits.memory_mb * mib),
        (libc::RLIMIT_FSIZE, limits.file_mb * mib),
        (libc::RLIMIT_NPROC, processes),
        (libc::RLIMIT_NOFILE, limits.open_files),
        (libc::RLIMIT_CORE, 0),
    ];
    let iso = iso.clone();
    let child = move || -> io::Result<()> {
        // SAFETY: only async-signal-safe system calls on data prepared before the fork.
        unsafe {
            let none = std::ptr::null::<libc::c_char>();
            if let Some(procs) = &cgroup_procs {
                // "0" is the writer itself; everything it starts inherits the cgroup.
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd == -1 {
                    return Err(io::Error::last_os_error());
                }
                let written = libc::write(fd, c"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            let mut flags = 0;
            if iso.network_namespace {
                flags |= libc::CLONE_NEWNET;
            }
            if iso.private_mounts {
                flags |= libc::CLONE_NEWNS;
            }
            if flags != 0 {
                check(libc::unshare(flags))?;
            }
            if iso.private_mounts {
                // Nothing mounted here propagates back to the machine.
                check(libc::mount(
                    none,
                    c"/".as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                // The work folder becomes its own (writable) mount, so the read-only bind of the
                // folder above it keeps a writable copy of it.
                check(libc::mount(
                    work_c.as_ptr(),
                    work_c.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                for d in &protect {
                    check(libc::mount(
                        d.as_ptr(),
                        d.as_ptr(),
                        none,
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ))?;
                    check(libc::mount(
                        none,
                        d.as_ptr(),
                        none,
                        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                        std::ptr::null(),
                    ))?;
                }
            }
            check(libc::chdir(work_c.as_ptr()))?;
            for (res, value) in rlimits {
                let lim = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                check(libc::setrlimit(res, &lim))?;
            }
            if let Some((uid, gid)) = iso.run_as {
                if iso.read_any_file {
                    check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
                }
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
                if iso.read_any_file {
                    keep_only_read_search()?;
                }
            }
            // No setuid binary (su, sudo) can give privileges back.
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            split_off_throwaway_parent()
        }
    };
    // SAFETY: the closure only makes system calls (see above).
    unsafe {
        cmd.pre_exec(child);
    }
    Ok(())
}

/// Processes (threads are not counted by RLIMIT_NPROC's check) whose real uid is `uid`.
fn processes_of(uid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .is_some_and(|u| u == uid.to_string())
        })
        .count()
}

/// After setuid with KEEPCAPS: permitted = effective = inheritable = ambient = {DAC_READ_SEARCH},
/// so the interpreter (exec'd as nobody) can read a root-only install and nothing else.
unsafe fn keep_only_read_search() -> io::Result<()> {
    let bit = 1u32 << CAP_DAC_READ_SEARCH;
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: bit,
            permitted: bit,
            inheritable: bit,
        },
        CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    if libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) == -1 {
        return Err(io::Error::last_os_error());
    }
    check(libc::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
        CAP_DAC_READ_SEARCH as libc::c_ulong,
        0,
        0,
    ))
}

/// Forks once more: the new child returns (and execs the interpreter); this process becomes
/// its parent, waits, and exits with its status. Killing "the parent" from the code kills
/// only this process; the harness sees the kill as the run's outcome.
unsafe fn split_off_throwaway_parent() -> io::Result<()> {
    let pid = libc::fork();
    if pid == -1 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // If the throwaway parent dies, so does the code.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        return Ok(());
    }
    // Close everything, the pipes included: the output belongs to the code, and the harness's
    // exec-status pipe must see its end when the code execs, not when this process exits.
    if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) == -1 {
        for fd in 0..4096 {
            libc::close(fd);
        }
    }
    let mut status = 0;
    loop {
        let r = libc::waitpid(pid, &mut status, 0);
        if r == pid {
            break;
        }
        if r == -1 && *libc::__errno_location() != libc::EINTR {
            libc::_exit(127);
        }
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
    }
    libc::_exit(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        127
    })
}
