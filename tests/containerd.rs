//! Containers run by a real containerd (Debian's 1.6) through a runtime v2 shim, as
//! Kubernetes or `ctr` would run them: each test starts its own containerd
//! (tests/common/containerd.rs) with a busybox image built on this machine.
//!
//! `cases` holds what every runtime must do alike; `runc::` runs it with runc's
//! shim (`io.containerd.runc.v2`, which also proves the harness) and `spry::`
//! with `containerd-shim-spry-v2` (`io.containerd.spry.v2`: each container in a
//! Linux microVM, so only where Linux guests run: hardware virtualization, or
//! the nested test host, where `tools/devtool test` runs them), plus what only a
//! VM runtime has to show: many VMs at once, a VM that cannot boot, the
//! container's network namespace, the jail.
//! Needs root and containerd; skipped otherwise, with the reason.

mod common;

/// The same checks for every runtime.
mod cases {
    use std::time::{Duration, Instant};

    use crate::common::containerd::Containerd;
    use crate::common::in_nested_host;

    /// Long enough for a container to start here and in the nested test host.
    pub const SETTLE: Duration = Duration::from_secs(600);

    pub fn stdout(out: &std::process::Output) -> String {
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn explain(out: &std::process::Output) -> String {
        format!(
            "status {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    pub fn echo_prints_hello_and_exits_0(ctrd: &Containerd, runtime: &str) {
        let t = Instant::now();

        let out = ctrd.run(runtime, "echo", &["echo", "hello"]);

        eprintln!(
            "{runtime}: containerd started in {:?} ({} snapshotter), image imported in {:?}, \
             `ctr run echo hello` took {:?}",
            ctrd.started_in,
            ctrd.snapshotter(),
            ctrd.imported_in,
            t.elapsed()
        );
        assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
        assert_eq!(stdout(&out), "hello\n");
    }

    pub fn exit_code_reaches_ctr(ctrd: &Containerd, runtime: &str) {
        let out = ctrd.run(runtime, "exit7", &["sh", "-c", "exit 7"]);

        assert_eq!(out.status.code(), Some(7), "{}", explain(&out));
    }

    /// SIGTERM from `ctr task kill` ends a task that handles it (the shell's trap
    /// exits 143, as a SIGTERM death would); a bare `sleep` as the container's PID 1
    /// would ignore it, since the kernel drops signals a PID namespace's init has
    /// no handler for (see the next case).
    pub fn sigterm_ends_task_with_143(ctrd: &Containerd, runtime: &str) {
        let mut run = ctrd.spawn_run(
            runtime,
            "term",
            &["sh", "-c", "trap 'exit 143' TERM; sleep 1000 & wait"],
        );
        assert!(
            ctrd.wait_status("term", "RUNNING", SETTLE),
            "{}",
            ctrd.log()
        );
        // The shell sets its trap a moment after the task counts as running.
        std::thread::sleep(Duration::from_secs(1));

        let kill = ctrd.ctr(&["task", "kill", "term"]);
        let status = run.wait().expect("wait for ctr run");

        assert!(kill.status.success(), "{}", explain(&kill));
        assert_eq!(status.code(), Some(143));
    }

    /// A detached `sleep 1000` outlives SIGTERM (PID 1 of its namespace, no
    /// handler), and SIGKILL ends it with 137 (128 + 9).
    pub fn detached_sleep_ignores_sigterm_and_dies_of_sigkill(ctrd: &Containerd, runtime: &str) {
        let started = ctrd.run_detached(runtime, "sleeper", &["sleep", "1000"]);
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

    pub fn exec_runs_in_running_task(ctrd: &Containerd, runtime: &str) {
        let started = ctrd.run_detached(runtime, "host", &["sleep", "1000"]);
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

    pub fn stdin_reaches_container(ctrd: &Containerd, runtime: &str) {
        let out = ctrd.run_with_stdin(runtime, "cat", &["cat"], b"abc\n");

        assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
        assert_eq!(stdout(&out), "abc\n");
    }

    pub fn tasks_in_parallel(ctrd: &Containerd, runtime: &str, n: i32) {
        let t = Instant::now();
        let mut outs: Vec<_> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..n)
                .map(|i| {
                    s.spawn(move || {
                        let id = format!("par{i}");
                        let script = format!("echo task {i}; exit {i}");
                        ctrd.run(runtime, &id, &["sh", "-c", &script])
                    })
                })
                .collect();
            runs.into_iter()
                .map(|r| r.join().expect("parallel run"))
                .collect()
        });
        eprintln!("{runtime}: {n} tasks at once took {:?}", t.elapsed());
        // In the nested host, and only there, a guest that triple-faulted under
        // QEMU's TCG (a fault of the emulator that the Linux tests rerun too)
        // runs again, at most twice, loudly.
        for (i, out) in (0..n).zip(outs.iter_mut()) {
            for attempt in 1..=2 {
                let faulted = String::from_utf8_lossy(&out.stderr).contains("triple-faulted");
                if !(in_nested_host() && faulted) {
                    break;
                }
                eprintln!(
                    "RETRYING par{i} (emulator fault, attempt {attempt}): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                let script = format!("echo task {i}; exit {i}");
                *out = ctrd.run(
                    runtime,
                    &format!("par{i}-again{attempt}"),
                    &["sh", "-c", &script],
                );
            }
        }
        let results: Vec<_> = outs.iter().map(|o| (o.status.code(), stdout(o))).collect();

        let expected: Vec<_> = (0..n).map(|i| (Some(i), format!("task {i}\n"))).collect();
        assert_eq!(
            results,
            expected,
            "{:#?}",
            outs.iter().map(explain).collect::<Vec<_>>()
        );
    }

    /// A restarted containerd finds the task its predecessor started (through the
    /// shim, which kept running) and still runs, kills and deletes it.
    pub fn restarted_containerd_still_manages_task(ctrd: &mut Containerd, runtime: &str) {
        let started = ctrd.run_detached(runtime, "survivor", &["sleep", "1000"]);
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

mod runc {
    use crate::cases;
    use crate::common::containerd::{Containerd, RUNC};
    use crate::common::{in_nested_host, skip};

    #[test]
    fn test_echo_prints_hello_and_exits_0() {
        if let Some(ctrd) = Containerd::start_or_skip("runc::test_echo_prints_hello_and_exits_0") {
            cases::echo_prints_hello_and_exits_0(&ctrd, RUNC);
        }
    }

    #[test]
    fn test_exit_code_reaches_ctr() {
        if let Some(ctrd) = Containerd::start_or_skip("runc::test_exit_code_reaches_ctr") {
            cases::exit_code_reaches_ctr(&ctrd, RUNC);
        }
    }

    #[test]
    fn test_sigterm_ends_task_with_143() {
        if let Some(ctrd) = Containerd::start_or_skip("runc::test_sigterm_ends_task_with_143") {
            cases::sigterm_ends_task_with_143(&ctrd, RUNC);
        }
    }

    #[test]
    fn test_detached_sleep_ignores_sigterm_and_dies_of_sigkill() {
        if let Some(ctrd) = Containerd::start_or_skip(
            "runc::test_detached_sleep_ignores_sigterm_and_dies_of_sigkill",
        ) {
            cases::detached_sleep_ignores_sigterm_and_dies_of_sigkill(&ctrd, RUNC);
        }
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
        if let Some(ctrd) = Containerd::start_or_skip(TEST) {
            cases::exec_runs_in_running_task(&ctrd, RUNC);
        }
    }

    #[test]
    fn test_stdin_reaches_container() {
        if let Some(ctrd) = Containerd::start_or_skip("runc::test_stdin_reaches_container") {
            cases::stdin_reaches_container(&ctrd, RUNC);
        }
    }

    #[test]
    fn test_five_tasks_in_parallel() {
        if let Some(ctrd) = Containerd::start_or_skip("runc::test_five_tasks_in_parallel") {
            cases::tasks_in_parallel(&ctrd, RUNC, 5);
        }
    }

    #[test]
    fn test_restarted_containerd_still_manages_task() {
        if let Some(mut ctrd) =
            Containerd::start_or_skip("runc::test_restarted_containerd_still_manages_task")
        {
            cases::restarted_containerd_still_manages_task(&mut ctrd, RUNC);
        }
    }
}

mod spry {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use crate::cases::{self, explain, stdout, SETTLE};
    use crate::common::containerd::{containerd_unavailable, Containerd};
    use crate::common::{in_nested_host, linux_artifact, linux_unavailable, skip, Scratch};

    /// containerd's name for spry's shim.
    const SPRY: &str = "io.containerd.spry.v2";

    /// A containerd whose `io.containerd.spry.v2` is this build's shim, booting
    /// this build's spry and Linux guest with `settings` on top of the defaults.
    struct SpryContainerd {
        ctrd: Containerd,
        scratch: Scratch,
    }

    fn shim_settings(scratch: &Scratch, settings: serde_json::Value) -> PathBuf {
        let mut all = serde_json::json!({
            "spry": env!("CARGO_BIN_EXE_spry"),
            "kernel": linux_artifact("vmlinux"),
            "initramfs": linux_artifact("initramfs.cpio"),
            // Small guests: 20 of them boot at once in the nested host.
            "mem_mib": 128,
            // A Linux boot is seconds in the nested host, and slower when many
            // share its two emulated CPUs.
            "boot_timeout_s": if in_nested_host() { 900 } else { 60 },
            "image_cache": scratch.path("images"),
            // Jailed, as by default, in a jail directory of the test's own
            // (on TMPDIR: in the nested host L1's tmpfs, where device nodes
            // can be made).
            "jailer": { "chroot_base": scratch.path("jails") },
        });
        for (k, v) in settings.as_object().expect("settings are an object") {
            all[k] = v.clone();
        }
        scratch.write("shim.json", all.to_string().as_bytes())
    }

    fn start(scratch: Scratch, settings_path: &Path) -> SpryContainerd {
        let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-spry-v2"));
        let env = vec![
            (
                "SPRY_SHIM_CONFIG".to_string(),
                settings_path.display().to_string(),
            ),
            (
                "SPRY_SHIM_DIR".to_string(),
                shim.parent().expect("a directory").display().to_string(),
            ),
        ];
        let ctrd = Containerd::start_with_env(env).expect("start containerd");
        SpryContainerd { ctrd, scratch }
    }

    /// The containerd for `test`, or `None` (the test skipped, with the reason)
    /// where containerd or Linux guests cannot run.
    fn containerd(test: &str, settings: serde_json::Value) -> Option<SpryContainerd> {
        if let Some(reason) = containerd_unavailable().or_else(linux_unavailable) {
            skip(test, &reason);
            return None;
        }
        let scratch = Scratch::new();
        let path = shim_settings(&scratch, settings);
        Some(start(scratch, &path))
    }

    #[test]
    fn test_echo_prints_hello_and_exits_0() {
        if let Some(s) = containerd(
            "spry::test_echo_prints_hello_and_exits_0",
            serde_json::json!({}),
        ) {
            cases::echo_prints_hello_and_exits_0(&s.ctrd, SPRY);
        }
    }

    /// Without the image cache: the container's tree copied into a disk of its
    /// own.
    #[test]
    fn test_exit_code_reaches_ctr() {
        if let Some(s) = containerd(
            "spry::test_exit_code_reaches_ctr",
            serde_json::json!({ "image_cache": null }),
        ) {
            cases::exit_code_reaches_ctr(&s.ctrd, SPRY);
        }
    }

    /// Containers of one image share one cached disk image, each writing to an
    /// overlay of its own: what one writes, the next does not see.
    #[test]
    fn test_containers_of_one_image_share_one_cached_disk_and_not_their_writes() {
        let Some(s) = containerd(
            "spry::test_containers_of_one_image_share_one_cached_disk_and_not_their_writes",
            serde_json::json!({}),
        ) else {
            return;
        };
        let script =
            "cat /etc/mark 2>/dev/null || echo none; echo written > /etc/mark; cat /etc/mark";

        let first = s.ctrd.run(SPRY, "one", &["sh", "-c", script]);
        let second = s.ctrd.run(SPRY, "two", &["sh", "-c", script]);

        assert_eq!(stdout(&first), "none\nwritten\n", "{}", explain(&first));
        assert_eq!(stdout(&second), "none\nwritten\n", "{}", explain(&second));
        let images: Vec<_> = std::fs::read_dir(s.scratch.path("images"))
            .expect("the image cache")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(images.len(), 1, "{images:?}");
        assert!(images[0].ends_with(".ext4"), "{images:?}");
    }

    #[test]
    fn test_sigterm_ends_task_with_143() {
        if let Some(s) = containerd(
            "spry::test_sigterm_ends_task_with_143",
            serde_json::json!({}),
        ) {
            cases::sigterm_ends_task_with_143(&s.ctrd, SPRY);
        }
    }

    #[test]
    fn test_detached_sleep_ignores_sigterm_and_dies_of_sigkill() {
        if let Some(s) = containerd(
            "spry::test_detached_sleep_ignores_sigterm_and_dies_of_sigkill",
            serde_json::json!({}),
        ) {
            cases::detached_sleep_ignores_sigterm_and_dies_of_sigkill(&s.ctrd, SPRY);
        }
    }

    /// runc's exec cannot be checked in the nested host (see runc::), spry's can:
    /// the exec runs in the guest, which joins the init's namespaces there.
    #[test]
    fn test_exec_runs_in_running_task() {
        if let Some(s) = containerd(
            "spry::test_exec_runs_in_running_task",
            serde_json::json!({}),
        ) {
            cases::exec_runs_in_running_task(&s.ctrd, SPRY);
        }
    }

    #[test]
    fn test_stdin_reaches_container() {
        if let Some(s) = containerd("spry::test_stdin_reaches_container", serde_json::json!({})) {
            cases::stdin_reaches_container(&s.ctrd, SPRY);
        }
    }

    /// `ctr run -t`: the process runs on a terminal in the guest, and its
    /// output comes back through the one FIFO a terminal has. `script` gives
    /// ctr the terminal it insists on.
    #[test]
    fn test_a_terminal_task_runs_on_a_terminal_in_the_guest() {
        let Some(s) = containerd(
            "spry::test_a_terminal_task_runs_on_a_terminal_in_the_guest",
            serde_json::json!({}),
        ) else {
            return;
        };
        let ctr = s.ctrd.ctr_command();
        let mut line: Vec<String> = std::iter::once(ctr.get_program())
            .chain(ctr.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        line.extend(
            [
                "run",
                "--rm",
                "-t",
                "--runtime",
                SPRY,
                crate::common::containerd::IMAGE,
                "tty",
                "sh",
                "-c",
                "tty; exit 5",
            ]
            .map(str::to_owned),
        );
        let envs: Vec<_> = ctr
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
            .collect();

        let out = Command::new("script")
            .args(["-qec", &line.join(" "), "/dev/null"])
            .envs(envs)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run script");

        let text = stdout(&out);
        assert!(text.contains("/dev/pts/"), "{}", explain(&out));
        assert_eq!(out.status.code(), Some(5), "{}", explain(&out));
    }

    /// Twenty VMs boot, run and go at once; one vCPU each, as the nested host's
    /// emulator faults with many vCPUs in flight.
    #[test]
    fn test_twenty_tasks_in_parallel() {
        if let Some(s) = containerd("spry::test_twenty_tasks_in_parallel", serde_json::json!({})) {
            cases::tasks_in_parallel(&s.ctrd, SPRY, 20);
            assert!(vms_of(&s.ctrd).is_empty(), "VMs left running");
            assert_eq!(jails_of(&s.scratch), Vec::<PathBuf>::new(), "jails left");
        }
    }

    #[test]
    fn test_restarted_containerd_still_manages_task() {
        if let Some(mut s) = containerd(
            "spry::test_restarted_containerd_still_manages_task",
            serde_json::json!({}),
        ) {
            cases::restarted_containerd_still_manages_task(&mut s.ctrd, SPRY);
        }
    }

    /// The pids of the processes (spry VMs and shims) this containerd's tasks
    /// left: anything whose command line names its directory.
    fn vms_of(ctrd: &Containerd) -> Vec<String> {
        let dir = ctrd.dir().display().to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let program = cmdline.split(|&b| b == 0).next().unwrap_or_default();
            let program = String::from_utf8_lossy(program);
            let ours = ["spry", "spry-jailer", "containerd-shim-spry-v2"]
                .iter()
                .any(|name| program.rsplit('/').next() == Some(name));
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if ours && cmdline.contains(&dir) {
                found.push(format!(
                    "{}: {cmdline}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
        found
    }

    /// The jails left in the test's jail directory (a jailed VM's command
    /// line names only paths inside its jail).
    fn jails_of(scratch: &Scratch) -> Vec<PathBuf> {
        std::fs::read_dir(scratch.path("jails").join("spry"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    fn mounts_under(dir: &Path) -> Vec<String> {
        let dir = dir.display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .filter(|l| l.contains(&dir))
            .map(str::to_owned)
            .collect()
    }

    /// A VM that cannot boot fails `ctr run` with spry's reason, and the task
    /// leaves nothing: no container, no shim or VM, no mount, no files. Runs on
    /// every host with containerd: on a PVM host the real guest kernel is what
    /// cannot boot; elsewhere a kernel file that is not one.
    #[test]
    fn test_a_vm_that_cannot_boot_fails_the_task_and_leaves_nothing() {
        const TEST: &str = "spry::test_a_vm_that_cannot_boot_fails_the_task_and_leaves_nothing";
        if let Some(reason) = containerd_unavailable() {
            skip(TEST, &reason);
            return;
        }
        let scratch = Scratch::new();
        let bogus = scratch.write("not-a-kernel", b"this is not a kernel\n");
        let settings = match linux_unavailable() {
            Some(_) => serde_json::json!({}),
            None => serde_json::json!({ "kernel": bogus }),
        };
        let path = shim_settings(&scratch, settings);
        let s = start(scratch, &path);
        let ctrd = &s.ctrd;

        let out = ctrd.run(SPRY, "doomed", &["echo", "never"]);

        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{}", explain(&out));
        assert!(
            err.contains("spry: cannot create container doomed: the VM ended"),
            "{}",
            explain(&out)
        );
        // spry's own line from the VM's console says why (a kernel that is
        // not one; on PVM, Linux failing in KVM's emulator).
        assert!(err.contains("\nspry: "), "{}", explain(&out));
        assert_eq!(stdout(&ctrd.ctr(&["container", "ls", "-q"])), "");
        assert_eq!(stdout(&ctrd.ctr(&["task", "ls", "-q"])), "");
        assert_eq!(vms_of(ctrd), Vec::<String>::new());
        assert_eq!(jails_of(&s.scratch), Vec::<PathBuf>::new());
        assert_eq!(mounts_under(ctrd.dir()), Vec::<String>::new());
        let tasks = ctrd
            .dir()
            .join("state/io.containerd.runtime.v2.task")
            .join(ctrd.namespace());
        let left: Vec<_> = std::fs::read_dir(&tasks)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert_eq!(
            left,
            Vec::<PathBuf>::new(),
            "bundles left in {}",
            tasks.display()
        );
    }

    fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(out.status.success(), "ip {args:?}: {}", explain(&out));
    }

    /// A network namespace as CNI's bridge plugin leaves one: a veth whose
    /// other end is on this host, an address and a default route.
    struct Netns {
        name: String,
        host_if: String,
    }

    impl Netns {
        fn new(n: u8) -> Netns {
            let name = format!("spry-cni-{}", std::process::id());
            let host_if = format!("sprycni{n}h");
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
            ip(&["netns", "add", &name]);
            ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &name,
            ]);
            ip(&["addr", "add", &format!("10.201.{n}.1/24"), "dev", &host_if]);
            ip(&["link", "set", &host_if, "up"]);
            ip(&[
                "-n",
                &name,
                "addr",
                "add",
                &format!("10.201.{n}.2/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &name, "link", "set", "eth0", "up"]);
            ip(&["-n", &name, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &name,
                "route",
                "add",
                "default",
                "via",
                &format!("10.201.{n}.1"),
            ]);
            Netns { name, host_if }
        }

        fn path(&self) -> String {
            format!("/run/netns/{}", self.name)
        }

        fn show(&self) -> String {
            // IPv4 only: IPv6 link-local addresses change state (tentative)
            // on their own.
            let out = Command::new("ip")
                .args(["-n", &self.name, "-4", "-o", "addr", "show"])
                .output()
                .expect("ip addr");
            let routes = Command::new("ip")
                .args(["-n", &self.name, "route", "show"])
                .output()
                .expect("ip route");
            format!("{}{}", stdout(&out), stdout(&routes))
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["link", "del", &self.host_if])
                .status();
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    /// The container joins the network namespace CNI prepared: the guest takes
    /// its interface's address and route and reaches the other end of its veth;
    /// afterwards the namespace is as CNI left it.
    #[test]
    fn test_container_uses_the_address_cni_gave_its_network_namespace() {
        let Some(s) = containerd(
            "spry::test_container_uses_the_address_cni_gave_its_network_namespace",
            serde_json::json!({}),
        ) else {
            return;
        };
        let netns = Netns::new(7);
        let before = netns.show();
        let with_ns = format!("network:{}", netns.path());

        let out = s.ctrd.ctr(&[
            "run",
            "--rm",
            "--runtime",
            SPRY,
            "--with-ns",
            &with_ns,
            crate::common::containerd::IMAGE,
            "net",
            "sh",
            "-c",
            "ip -4 -o addr show dev eth0 | grep -o '10[.0-9/]*'; ip route | grep default; \
             ping -c 2 -W 10 10.201.7.1 >/dev/null && echo reached",
        ]);

        assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
        let text = stdout(&out);
        assert!(text.starts_with("10.201.7.2/24\n"), "{}", explain(&out));
        assert!(text.contains("default via 10.201.7.1"), "{}", explain(&out));
        assert!(text.ends_with("reached\n"), "{}", explain(&out));
        assert_eq!(netns.show(), before, "the namespace changed");
    }

    /// A Kubernetes pod's sandbox (pause) container gets no VM: its task runs
    /// until killed, as pause does, and costs no guest. Needs no Linux guest, so
    /// it runs wherever containerd does.
    #[test]
    fn test_pod_sandbox_container_is_a_placeholder_without_a_vm() {
        const TEST: &str = "spry::test_pod_sandbox_container_is_a_placeholder_without_a_vm";
        if let Some(reason) = containerd_unavailable() {
            skip(TEST, &reason);
            return;
        }
        let scratch = Scratch::new();
        let path = shim_settings(&scratch, serde_json::json!({}));
        let s = start(scratch, &path);
        let ctrd = &s.ctrd;

        let started = ctrd.ctr(&[
            "run",
            "-d",
            "--runtime",
            SPRY,
            "--annotation",
            "io.kubernetes.cri.container-type=sandbox",
            crate::common::containerd::IMAGE,
            "pause",
            "sleep",
            "1000",
        ]);
        assert!(started.status.success(), "{}", explain(&started));
        assert!(ctrd.wait_status("pause", "RUNNING", SETTLE));
        let vms = vms_of(ctrd);
        let exec = ctrd.ctr(&["task", "exec", "--exec-id", "e1", "pause", "true"]);
        let kill = ctrd.ctr(&["task", "kill", "pause"]);
        let stopped = ctrd.wait_status("pause", "STOPPED", SETTLE);
        let code = ctrd.delete_task("pause");

        // Only the shim: no spry VM.
        assert!(
            vms.iter().all(|p| p.contains("containerd-shim-spry-v2")),
            "{vms:?}"
        );
        assert!(!exec.status.success(), "{}", explain(&exec));
        assert!(
            String::from_utf8_lossy(&exec.stderr).contains("pod sandbox"),
            "{}",
            explain(&exec)
        );
        assert!(kill.status.success(), "{}", explain(&kill));
        assert!(stopped);
        assert_eq!(code, Ok(143));
    }

    /// spry runs a VM per container, so a pod's network namespace can feed one
    /// of them: a second container asking for it gets a clear refusal, and the
    /// first keeps its network.
    #[test]
    fn test_a_second_container_in_a_taken_network_namespace_is_refused() {
        let Some(s) = containerd(
            "spry::test_a_second_container_in_a_taken_network_namespace_is_refused",
            serde_json::json!({}),
        ) else {
            return;
        };
        let ctrd = &s.ctrd;
        let netns = Netns::new(8);
        let with_ns = format!("network:{}", netns.path());
        let run_in_ns = |id: &str, args: &[&str]| {
            let mut v = vec!["run", "-d", "--runtime", SPRY, "--with-ns", &with_ns];
            v.push(crate::common::containerd::IMAGE);
            v.push(id);
            v.extend_from_slice(args);
            ctrd.ctr(&v)
        };
        let first = run_in_ns("first", &["sleep", "1000"]);
        assert!(first.status.success(), "{}", explain(&first));
        assert!(ctrd.wait_status("first", "RUNNING", SETTLE));

        let second = run_in_ns("second", &["true"]);
        let ping = ctrd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "p",
            "first",
            "ping",
            "-c",
            "1",
            "-W",
            "10",
            "10.201.8.1",
        ]);
        let _ = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", "first"]);
        assert!(ctrd.wait_status("first", "STOPPED", SETTLE));
        let _ = ctrd.delete_task("first");

        assert!(!second.status.success(), "{}", explain(&second));
        assert!(
            String::from_utf8_lossy(&second.stderr).contains("another container of the pod"),
            "{}",
            explain(&second)
        );
        assert!(ping.status.success(), "{}", explain(&ping));
    }

    /// `jailer` in the settings: each VM runs under spry-jailer as an
    /// unprivileged user with no capabilities, seccomp on, in a cgroup of its
    /// own with the configured limits; the jail and cgroup go with the task.
    #[test]
    fn test_jailed_vm_runs_unprivileged_confined_and_is_cleaned_up() {
        const TEST: &str = "spry::test_jailed_vm_runs_unprivileged_confined_and_is_cleaned_up";
        if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            skip(TEST, "needs the cgroup v2 hierarchy at /sys/fs/cgroup");
            return;
        }
        let jails = std::env::temp_dir().join(format!("spry-shim-jails-{}", std::process::id()));
        let Some(s) = containerd(
            TEST,
            serde_json::json!({ "jailer": {
                "binary": env!("CARGO_BIN_EXE_spry-jailer"),
                "uid": 1234,
                "gid": 1234,
                "chroot_base": jails,
                "cgroups": ["memory.max=402653184", "pids.max=64"],
                "parent_cgroup": "spry-shim-test",
            }}),
        ) else {
            return;
        };
        let ctrd = &s.ctrd;
        let started = ctrd.run_detached(SPRY, "jailed", &["sleep", "1000"]);
        assert!(started.status.success(), "{}", explain(&started));
        assert!(ctrd.wait_status("jailed", "RUNNING", SETTLE));
        let listing = stdout(&ctrd.ctr(&["task", "ls"]));
        let pid: u32 = listing
            .lines()
            .find(|l| l.starts_with("jailed "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .expect("the task's pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
                .unwrap_or_default()
        };
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
        let cgroup_dir =
            PathBuf::from("/sys/fs/cgroup").join(cgroup.trim().trim_start_matches("0::/"));
        let memory_max = std::fs::read_to_string(cgroup_dir.join("memory.max")).unwrap_or_default();
        let exec = ctrd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "e1",
            "jailed",
            "echo",
            "inside",
        ]);
        let kill = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", "jailed"]);
        let stopped = ctrd.wait_status("jailed", "STOPPED", SETTLE);
        let code = ctrd.delete_task("jailed");
        let jails_left: Vec<_> = std::fs::read_dir(jails.join("spry"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let _ = std::fs::remove_dir_all(&jails);

        assert_eq!(field("Uid:"), "1234", "{status}");
        assert_eq!(field("Gid:"), "1234", "{status}");
        assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
        assert_eq!(field("NoNewPrivs:"), "1", "{status}");
        assert_eq!(field("Seccomp:"), "2", "{status}");
        assert!(cgroup.contains("spry-shim-test/"), "{cgroup}");
        assert_eq!(memory_max.trim(), "402653184");
        assert_eq!(stdout(&exec), "inside\n", "{}", explain(&exec));
        assert!(kill.status.success(), "{}", explain(&kill));
        assert!(stopped);
        assert_eq!(code, Ok(137));
        assert_eq!(jails_left, Vec::<PathBuf>::new(), "jails left behind");
        assert!(!cgroup_dir.exists(), "{} left behind", cgroup_dir.display());
        let _ = std::fs::remove_dir("/sys/fs/cgroup/spry-shim-test");
    }

    /// `ctr task metrics` reports what the VM costs the host, `ctr task ps` the
    /// VM's process.
    #[test]
    fn test_metrics_and_pids_describe_the_vm() {
        let Some(s) = containerd(
            "spry::test_metrics_and_pids_describe_the_vm",
            serde_json::json!({}),
        ) else {
            return;
        };
        let ctrd = &s.ctrd;
        let started = ctrd.run_detached(SPRY, "measured", &["sleep", "1000"]);
        assert!(started.status.success(), "{}", explain(&started));
        assert!(ctrd.wait_status("measured", "RUNNING", SETTLE));

        let metrics = stdout(&ctrd.ctr(&["task", "metrics", "measured"]));
        let ps = stdout(&ctrd.ctr(&["task", "ps", "measured"]));
        let _ = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", "measured"]);
        assert!(ctrd.wait_status("measured", "STOPPED", SETTLE));
        let _ = ctrd.delete_task("measured");

        let value = |name: &str| -> u64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        assert!(value("memory.usage_in_bytes") > 1 << 20, "{metrics}");
        assert!(value("pids.current") >= 2, "{metrics}");
        assert!(ps.lines().count() == 2, "{ps}");
    }
}
