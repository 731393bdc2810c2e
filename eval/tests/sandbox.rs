//! Every abuse the issue lists, graded through the real grader and sandbox: each is FAIL with
//! its reason, the harness goes on, and the machine is untouched.

use osstune_eval::grade::{grade_task, CheckOutcome, TaskResult};
use osstune_eval::replay::Replay;
use osstune_eval::sandbox::{Limits, Program, Sandbox};
use osstune_eval::suite::Suite;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The process limit counts every process of the sandbox user: runs in parallel would share
/// it (the fork bomb would starve the others), so the tests take turns, as the grader does.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn sandbox() -> &'static Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| {
        let s = Sandbox::new(None).expect("python3 on PATH");
        eprintln!("sandbox: {:?}\n  notes: {:?}", s.isolation(), s.notes());
        s
    })
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Grades `code` as the answer of a one-task suite whose check expects stdout "done".
fn grade(code: &str, timeout_s: f64) -> TaskResult {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    grade_in_turn(code, timeout_s)
}

/// [`grade`] for a caller that already holds [`TURN`].
fn grade_in_turn(code: &str, timeout_s: f64) -> TaskResult {
    let suite = format!(
        "[[task]]\nid = \"t\"\ncategory = \"abuse\"\nprompt = \"p\"\n\
         [task.check]\nstdout_equals = \"done\"\ntimeout_s = {timeout_s}\nretries = 0\n"
    );
    let suite = Suite::parse(&suite, "abuse.toml").unwrap();
    let line = serde_json::json!({"task": "t", "final": format!("```python\n{code}\n```")});
    let mut replay = Replay::parse(&line.to_string(), "r.jsonl").unwrap();
    grade_task(&suite.tasks[0], &mut replay, Some(sandbox())).unwrap()
}

fn outcome(r: &TaskResult) -> &CheckOutcome {
    r.attempts[0].outcome.as_ref().unwrap()
}

/// Processes of `uid` now (to see that nothing the sandbox started outlives it).
fn processes_of(uid: u32) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(s) = std::fs::read_to_string(e.path().join("status")) {
            let field = |k: &str| {
                s.lines()
                    .find(|l| l.starts_with(k))
                    .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
            };
            // Zombies hold no resources; they wait for init to reap them.
            if field("Uid:") == Some(uid.to_string()) && field("State:").as_deref() != Some("Z") {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn ordinary_code_passes_and_its_folder_is_removed() {
    let r = grade(
        "import os\nprint(os.getcwd(), file=__import__('sys').stderr)\nprint('done')",
        20.0,
    );
    assert!(r.pass, "{}", r.reason);
    let cwd = r.attempts[0]
        .execution
        .as_ref()
        .unwrap()
        .stderr
        .trim()
        .to_string();
    assert!(cwd.contains("osstune-eval-"), "{cwd}");
    assert!(!PathBuf::from(&cwd).exists(), "{cwd} was not removed");
}

#[test]
fn as_root_the_full_isolation_holds() {
    if !is_root() {
        eprintln!("SKIP as_root_the_full_isolation_holds: not running as root");
        return;
    }
    let i = sandbox().isolation();
    assert_eq!(i.run_as, Some((65534, 65534)), "{:?}", sandbox().notes());
    assert!(
        i.network_namespace && i.private_mounts,
        "{:?}",
        sandbox().notes()
    );
}

#[test]
fn an_infinite_loop_is_killed_at_the_timeout() {
    let r = grade("while True:\n    pass", 2.0);
    assert!(!r.pass);
    assert!(
        matches!(outcome(&r), CheckOutcome::Killed(w) if w.contains("timed out")),
        "{r:?}"
    );
    assert!(r.seconds < 10.0);
}

#[test]
fn a_fork_bomb_is_contained() {
    let iso = sandbox().isolation();
    if is_root() && iso.run_as.is_none() && !iso.process_cgroup {
        // As root the kernel ignores RLIMIT_NPROC: without a user switch or a pids cgroup a
        // fork bomb would be real. Say so loudly.
        panic!("running as root without a user switch or pids cgroup: refusing a fork bomb");
    }
    let uid = sandbox()
        .isolation()
        .run_as
        .map_or_else(|| unsafe { libc::geteuid() }, |u| u.0);
    // Holding the turn for the whole test: no other test's sandboxed process is counted.
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let before = processes_of(uid);
    let code =
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass";
    let r = grade_in_turn(code, 3.0);
    assert!(!r.pass);
    assert!(matches!(outcome(&r), CheckOutcome::Killed(_)), "{r:?}");
    // The group was killed: within a moment nothing of the bomb is left.
    let t = std::time::Instant::now();
    while processes_of(uid) > before && t.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(processes_of(uid) <= before, "fork bomb processes survived");
    // And the harness goes on.
    assert!(grade_in_turn("print('done')", 20.0).pass);
}

#[test]
fn a_process_that_leaves_the_group_does_not_outlive_the_run() {
    if !sandbox().isolation().process_cgroup {
        eprintln!("SKIP: no pids cgroup here; a setsid process can outlive the run (documented)");
        return;
    }
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let uid = sandbox()
        .isolation()
        .run_as
        .map_or_else(|| unsafe { libc::geteuid() }, |u| u.0);
    let before = processes_of(uid);
    let code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\n    os._exit(0)\nprint('done')";
    let r = grade_in_turn(code, 10.0);
    assert!(!r.pass);
    assert!(
        matches!(outcome(&r), CheckOutcome::Killed(w) if w.contains("left the process group")),
        "{r:?}"
    );
    assert!(
        r.seconds < 8.0,
        "the harness waited for the escaped process"
    );
    assert!(processes_of(uid) <= before, "the escaped process survived");
}

#[test]
fn a_10_gb_allocation_fails_cleanly() {
    let r = grade("x = bytearray(10 * 1024**3)\nprint('done')", 20.0);
    assert!(!r.pass);
    assert!(r.reason.contains("MemoryError"), "{}", r.reason);
}

#[test]
fn a_1_gb_print_is_cut_off() {
    let code = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)\nprint('done')";
    let r = grade(code, 30.0);
    assert!(!r.pass);
    assert!(
        matches!(outcome(&r), CheckOutcome::Killed(w) if w.contains("output")),
        "{r:?}"
    );
    let e = r.attempts[0].execution.as_ref().unwrap();
    assert!(e.stdout.len() <= 1 << 20);
}

#[test]
fn writes_outside_its_folder_fail() {
    // A root-owned folder (as root, the code runs as nobody), the folder above its own, /tmp.
    let target =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("escape-{}", std::process::id()));
    let tmp = PathBuf::from(format!("/tmp/osstune-escape-{}", std::process::id()));
    let iso = sandbox().isolation();
    let mut places = Vec::new();
    if iso.run_as.is_some() {
        std::fs::create_dir_all(&target).unwrap();
        places.push(format!("{}/x", target.display()));
        places.push("../escape".to_string());
    }
    if iso.private_mounts {
        places.push(tmp.display().to_string());
    }
    if places.is_empty() {
        eprintln!("SKIP: not root, so no user switch or mount namespace: writes are not confined");
    }
    for p in &places {
        let code = format!("open({p:?}, 'w').write('pwned')\nprint('done')");
        let r = grade(&code, 20.0);
        assert!(!r.pass, "writing {p} succeeded");
        assert!(r.reason.contains("Error"), "{p}: {}", r.reason);
    }
    assert!(!target.join("x").exists());
    assert!(!tmp.exists());
}

#[test]
fn killing_its_parent_or_the_harness_does_not_reach_the_harness() {
    let r = grade(
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('done')",
        20.0,
    );
    assert!(!r.pass);
    assert!(
        matches!(outcome(&r), CheckOutcome::Killed(w) if w.contains("signal 9")),
        "{r:?}"
    );
    if sandbox().isolation().run_as.is_some() {
        // The harness's own pid: as another user, the kill is refused.
        let code = format!(
            "import os\nos.kill({}, 9)\nprint('done')",
            std::process::id()
        );
        let r = grade(&code, 20.0);
        assert!(r.reason.contains("PermissionError"), "{}", r.reason);
    }
    // Still here.
    assert!(grade("print('done')", 20.0).pass);
}

#[test]
fn no_network_and_no_inherited_environment() {
    std::env::set_var("OSSTUNE_TEST_SECRET", "hunter2");
    let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let e = sandbox()
        .run(
            &Program::single("import os\nprint(sorted(os.environ))\nprint(os.environ.get('OSSTUNE_TEST_SECRET'))"),
            &Limits::with_timeout(20.0, 512),
        )
        .unwrap();
    drop(turn);
    assert!(
        e.stdout.contains("None") && !e.stdout.contains("hunter2"),
        "{}",
        e.stdout
    );
    if sandbox().isolation().network_namespace {
        let code =
            "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=3)\nprint('done')";
        let r = grade(code, 20.0);
        assert!(!r.pass);
        assert!(r.reason.contains("unreachable"), "{}", r.reason);
    } else {
        eprintln!("network namespace unavailable: network isolation not tested");
    }
}

#[test]
fn a_missing_interpreter_is_a_clear_error() {
    let e = Sandbox::new(Some(std::path::Path::new("/nonexistent/python9")))
        .err()
        .unwrap();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("/nonexistent/python9") && msg.contains("--python"),
        "{msg}"
    );
}
