//! Containers run by a real containerd (Debian's 1.6) through a runtime v2 shim, as
//! Kubernetes or `ctr` would run them: each test starts its own containerd
//! (tests/common/containerd.rs) with a busybox image built on this machine.
//!
//! `runc::` proves the harness with runc's shim (`io.containerd.runc.v2`); the same
//! tests against `containerd-shim-spry-v2` belong beside it in a `spry::` module.
//! Needs root and containerd; skipped otherwise, with the reason.

mod common;

mod runc {
    use std::time::{Duration, Instant};

    use crate::common::containerd::{Containerd, RUNC};
    use crate::common::{in_nested_host, skip};

    /// Long enough for a container to start here and in the nested test host.
    const SETTLE: Duration = Duration::from_secs(300);

    fn stdout(out: &std::process::Output) -> String {
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn explain(out: &std::process::Output) -> String {
        format!(
            "status {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    #[test]
    fn test_echo_prints_hello_and_exits_0() {
        let Some(ctrd) = Containerd::start_or_skip("runc::test_echo_prints_hello_and_exits_0")
        else {
            return;
        };
        let t = Instant::now();

        let out = ctrd.run(RUNC, "echo", &["echo", "hello"]);

        eprintln!(
            "containerd started in {:?} ({} snapshotter), image imported in {:?}, `ctr run echo hello` took {:?}",
            ctrd.started_in,
            ctrd.snapshotter(),
            ctrd.imported_in,
            t.elapsed()
        );
        assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
        assert_eq!(stdout(&out), "hello\n");
    }

    #[test]
    fn test_exit_code_reaches_ctr() {
        let Some(ctrd) = Containerd::start_or_skip("runc::test_exit_code_reaches_ctr") else {
            return;
        };

        let out = ctrd.run(RUNC, "exit7", &["sh", "-c", "exit 7"]);

        assert_eq!(out.status.code(), Some(7), "{}", explain(&out));
    }

    /// SIGTERM from `ctr task kill` ends a task that handles it (the shell's trap
    /// exits 143, as a SIGTERM death would); a bare `sleep` as the container's PID 1
    /// would ignore it, since the kernel drops signals a PID namespace's init has
    /// no handler for (see the next test).
    #[test]
    fn test_sigterm_ends_task_with_143() {
        let Some(ctrd) = Containerd::start_or_skip("runc::test_sigterm_ends_task_with_143") else {
            return;
        };
        let mut run = ctrd.spawn_run(
            RUNC,
            "term",
            &["sh", "-c", "trap 'exit 143' TERM; sleep 1000 & wait"],
        );
        assert!(
            ctrd.wait_status("term", "RUNNING", SETTLE),
            "{}",
            ctrd.log()
        );

        let kill = ctrd.ctr(&["task", "kill", "term"]);
        let status = run.wait().expect("wait for ctr run");

        assert!(kill.status.success(), "{}", explain(&kill));
        assert_eq!(status.code(), Some(143));
    }

    /// A detached `sleep 1000` outlives SIGTERM (PID 1 of its namespace, no
    /// handler), and SIGKILL ends it with 137 (128 + 9).
    #[test]
    fn test_detached_sleep_ignores_sigterm_and_dies_of_sigkill() {
        let Some(ctrd) = Containerd::start_or_skip(
            "runc::test_detached_sleep_ignores_sigterm_and_dies_of_sigkill",
        ) else {
            return;
        };
        let started = ctrd.run_detached(RUNC, "sleeper", &["sleep", "1000"]);
        assert!(started.status.success(), "{}", explain(&started));
        assert!(ctrd.wait_status("sleeper", "RUNNING", SETTLE));

        let term = ctrd.ctr(&["task", "kill", "sleeper"]);
        // A second: far more than a signal's delivery takes.
        std::thread::sleep(Duration::from_secs(1));
        let after_term = ctrd.task_status("sleeper");
        let kill = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", "sleeper"]);
        let stopped = ctrd.wait_status("sleeper", "STOPPED", SETTLE);
        let code = ctrd.delete_task("sleeper");

        assert!(term.status.success(), "{}", explain(&term));
        assert_eq!(after_term.as_deref(), Some("RUNNING"));
        assert!(kill.status.success(), "{}", explain(&kill));
        assert!(stopped);
        assert_eq!(code, Ok(137));
    }

    #[test]
    fn test_exec_runs_in_running_task() {
        const TEST: &str = "runc::test_exec_runs_in_running_task";
        if in_nested_host() {
            // L1's /init runs commands in `chroot /host`, so the root mount of every
            // mount namespace there is L1's initramfs, with the virtiofs root mounted
            // at /host, not on /. A process joining a container's mount namespace
            // (setns, as `runc exec` does) gets that namespace's root mount as its
            // root, and runc's pivot_root put the container's root at /host: the
            // exec'd process ran in L1's initramfs (its /proc/1 was L1's /init).
            // A host, whose root is mounted on /, does not do this.
            skip(
                TEST,
                "runc exec lands in L1's initramfs root (L1 runs commands chrooted, not switch_root'ed)",
            );
            return;
        }
        let Some(ctrd) = Containerd::start_or_skip(TEST) else {
            return;
        };
        let started = ctrd.run_detached(RUNC, "host", &["sleep", "1000"]);
        assert!(started.status.success(), "{}", explain(&started));
        assert!(ctrd.wait_status("host", "RUNNING", SETTLE));

        // The exec'd shell sees the task's PID 1: it shares its PID namespace.
        let out = ctrd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "host",
            "sh",
            "-c",
            "cat /proc/1/cmdline; exit 3",
        ]);

        assert_eq!(out.status.code(), Some(3), "{}", explain(&out));
        assert_eq!(stdout(&out), "sleep\x001000\0");
    }

    #[test]
    fn test_stdin_reaches_container() {
        let Some(ctrd) = Containerd::start_or_skip("runc::test_stdin_reaches_container") else {
            return;
        };

        let out = ctrd.run_with_stdin(RUNC, "cat", &["cat"], b"abc\n");

        assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
        assert_eq!(stdout(&out), "abc\n");
    }

    #[test]
    fn test_five_tasks_in_parallel() {
        let Some(ctrd) = Containerd::start_or_skip("runc::test_five_tasks_in_parallel") else {
            return;
        };

        let outs: Vec<_> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..5i32)
                .map(|i| {
                    let ctrd = &ctrd;
                    s.spawn(move || {
                        let id = format!("par{i}");
                        let script = format!("echo task {i}; exit {i}");
                        ctrd.run(RUNC, &id, &["sh", "-c", &script])
                    })
                })
                .collect();
            runs.into_iter()
                .map(|r| r.join().expect("parallel run"))
                .collect()
        });
        let results: Vec<_> = outs.iter().map(|o| (o.status.code(), stdout(o))).collect();

        let expected: Vec<_> = (0..5).map(|i| (Some(i), format!("task {i}\n"))).collect();
        assert_eq!(
            results,
            expected,
            "{:#?}",
            outs.iter().map(explain).collect::<Vec<_>>()
        );
    }

    /// A restarted containerd finds the task its predecessor started (through the
    /// shim, which kept running) and still runs, kills and deletes it.
    #[test]
    fn test_restarted_containerd_still_manages_task() {
        let Some(mut ctrd) =
            Containerd::start_or_skip("runc::test_restarted_containerd_still_manages_task")
        else {
            return;
        };
        let started = ctrd.run_detached(RUNC, "survivor", &["sleep", "1000"]);
        assert!(started.status.success(), "{}", explain(&started));
        assert!(ctrd.wait_status("survivor", "RUNNING", SETTLE));

        ctrd.restart().expect("restart containerd");
        let after_restart = ctrd.task_status("survivor");
        let exec = ctrd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "survivor",
            "echo",
            "alive",
        ]);
        let kill = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", "survivor"]);
        let stopped = ctrd.wait_status("survivor", "STOPPED", SETTLE);
        let code = ctrd.delete_task("survivor");
        let removed = ctrd.ctr(&["container", "delete", "survivor"]);
        let containers = ctrd.ctr(&["container", "ls", "-q"]);

        assert_eq!(after_restart.as_deref(), Some("RUNNING"), "{}", ctrd.log());
        assert_eq!(stdout(&exec), "alive\n", "{}", explain(&exec));
        assert!(kill.status.success(), "{}", explain(&kill));
        assert!(stopped);
        assert_eq!(code, Ok(137));
        assert!(removed.status.success(), "{}", explain(&removed));
        assert_eq!(stdout(&containers), "");
    }
}
