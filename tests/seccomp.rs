//! spry's seccomp filters on a real spry: every thread runs confined, and a system
//! call a thread's filter forbids ends spry at once with exit code 148 and one line
//! naming the thread and the call. The forbidden calls are arranged from here, with
//! a `--seccomp-filter` file that is spry's own minus one call the thread is known
//! to make; nothing in the spry binary exists for these tests.

mod api_support;
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use api_support::SpryApi;
use common::{config, probe_args, probe_vmlinux, repo, Outcome, Scratch, Spry};
use serde_json::Value;

/// spry's exit code for a forbidden system call.
const EXIT_BAD_SYSCALL: i32 = 148;

/// spry's built-in filters, as the repository keeps them.
fn builtin_filters() -> Value {
    let text = std::fs::read_to_string(repo().join("resources/seccomp/x86_64.json"))
        .expect("read resources/seccomp/x86_64.json");
    serde_json::from_str(&text).expect("the built-in filters are JSON")
}

/// A filter file in `scratch`: spry's own, without the rules of `thread`'s filter
/// for which `drop` holds.
fn filter_file_without(scratch: &Scratch, thread: &str, drop: impl Fn(&Value) -> bool) -> PathBuf {
    let mut filters = builtin_filters();
    let rules = filters[thread]["filter"]
        .as_array_mut()
        .expect("a filter list");
    let before = rules.len();
    rules.retain(|rule| !drop(rule));
    assert!(rules.len() < before, "no rule of {thread} was dropped");
    scratch.write("filters.json", filters.to_string().as_bytes())
}

fn is_syscall(rule: &Value, name: &str) -> bool {
    rule["syscall"] == name
}

/// The rule allowing the ioctl whose request number is commented `name`.
fn is_ioctl(rule: &Value, name: &str) -> bool {
    is_syscall(rule, "ioctl") && rule["args"][0]["comment"] == name
}

/// A probe config that keeps the guest running (console mode waits for 'q'),
/// with `extra` top-level keys.
fn running_probe_config(extra: Value) -> String {
    let text = config(
        &probe_vmlinux(),
        &probe_args("probe.mode=console"),
        None,
        1,
        128,
    );
    let mut config: Value = serde_json::from_str(&text).expect("config JSON");
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    config.to_string()
}

fn run_with_filters(scratch: &Scratch, config: &str, filters: &Path) -> Outcome {
    Spry::with_config(scratch, config)
        .arg("--seccomp-filter")
        .arg(filters)
        .timeout(Duration::from_secs(20))
        .run()
}

fn assert_bad_syscall(out: &Outcome, line: &str) {
    assert_eq!(out.code(), Some(EXIT_BAD_SYSCALL), "{out}");
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("seccomp"))
        .collect();
    assert_eq!(lines, [line], "{out}");
}

/// `PF_USER_WORKER` in a task's kernel flags: a kernel worker in the process's thread
/// group (KVM's `kvm-nx-lpage-recovery`), which runs no code of spry's.
const PF_USER_WORKER: u64 = 0x4000;

/// Whether the task at `dir` is a kernel worker rather than a thread of spry's.
fn is_kernel_worker(dir: &Path) -> bool {
    let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
    // After "pid (comm)", flags is the seventh field: state ppid pgrp session tty_nr
    // tpgid flags.
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let flags: u64 = after_comm
        .split_whitespace()
        .nth(6)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    flags & PF_USER_WORKER != 0
}

/// The `Seccomp:` mode of every thread of process `pid` (2: a filter is on).
fn seccomp_modes(pid: u32) -> Vec<(String, u32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list the threads");
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| {
            let dir = task.path();
            if is_kernel_worker(&dir) {
                return None;
            }
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            let mode = status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))?
                .trim()
                .parse()
                .ok()?;
            Some((name.trim().to_owned(), mode))
        })
        .collect()
}

/// spry serving its API with a 2-vCPU probe booted through it.
fn booted_over_api(scratch: &Scratch, args: &[&str]) -> SpryApi {
    let socket = scratch.path("api.sock");
    let spry = SpryApi::start(&socket, args);
    let boot = serde_json::json!({
        "kernel_image_path": probe_vmlinux(),
        "boot_args": probe_args("probe.mode=console"),
    });
    spry.call("PUT", "/boot-source", &boot.to_string());
    spry.call(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 128}"#,
    );
    let start = spry.call("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(start.status, 204, "{}", spry.stderr());
    spry
}

#[test]
fn test_every_thread_of_a_running_vm_is_confined() {
    let scratch = Scratch::new();
    let spry = booted_over_api(&scratch, &[]);

    // The main thread takes its filter right after InstanceStart is answered.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut modes = seccomp_modes(spry.child.id());
    while modes.iter().any(|(_, mode)| *mode != 2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        modes = seccomp_modes(spry.child.id());
    }

    let mut names: Vec<&str> = modes.iter().map(|(name, _)| name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["spry", "spry-api", "spry-vcpu0", "spry-vcpu1"]);
    assert!(modes.iter().all(|(_, mode)| *mode == 2), "{modes:?}");
}

#[test]
fn test_no_seccomp_confines_no_thread() {
    let scratch = Scratch::new();
    let spry = booted_over_api(&scratch, &["--no-seccomp"]);
    spry.wait_for_line(Duration::from_secs(10), |l| l.starts_with("probe: "));

    let modes = seccomp_modes(spry.child.id());

    assert_eq!(modes.len(), 4, "{modes:?}");
    assert!(modes.iter().all(|(_, mode)| *mode == 0), "{modes:?}");
}

#[test]
fn test_forbidden_call_on_a_vcpu_thread_ends_spry_with_148_naming_it() {
    let scratch = Scratch::new();
    // The vCPU keeps its other ioctls: only the request number is forbidden.
    let filters = filter_file_without(&scratch, "vcpu", |r| is_ioctl(r, "KVM_RUN"));

    let out = run_with_filters(&scratch, &running_probe_config(Value::Null), &filters);

    assert_bad_syscall(
        &out,
        "spry: seccomp: the vCPU 0 thread made a forbidden system call: ioctl (16); stopping \
         with exit code 148",
    );
    assert!(out.probe_lines().is_empty(), "the guest ran: {out}");
}

#[test]
fn test_forbidden_call_on_the_vmm_thread_ends_spry_with_148_naming_it() {
    let scratch = Scratch::new();
    let filters = filter_file_without(&scratch, "vmm", |r| {
        is_syscall(r, "epoll_wait") || is_syscall(r, "epoll_pwait")
    });

    let out = run_with_filters(&scratch, &running_probe_config(Value::Null), &filters);

    assert_bad_syscall(
        &out,
        "spry: seccomp: the VMM thread made a forbidden system call: epoll_wait (232); stopping \
         with exit code 148",
    );
}

#[test]
fn test_forbidden_call_on_the_api_thread_ends_spry_with_148_naming_it() {
    let scratch = Scratch::new();
    let filters = filter_file_without(&scratch, "api", |r| is_syscall(r, "accept4"));
    let filters = filters.to_str().expect("a UTF-8 path");

    // Waiting for the socket connects, which the API thread then tries to accept.
    let mut spry = SpryApi::start(&scratch.path("api.sock"), &["--seccomp-filter", filters]);
    let code = spry.wait_exit(Duration::from_secs(10));

    assert_eq!(code, Some(EXIT_BAD_SYSCALL), "{}", spry.stderr());
    assert_eq!(
        spry.stderr().trim_end(),
        "spry: seccomp: the API thread made a forbidden system call: accept4 (288); stopping \
         with exit code 148"
    );
}

#[test]
fn test_forbidden_call_is_logged_to_the_log_file_and_counted_in_the_metrics() {
    let scratch = Scratch::new();
    let filters = filter_file_without(&scratch, "vcpu", |r| is_ioctl(r, "KVM_RUN"));
    let log = scratch.path("spry.log");
    let metrics = scratch.path("metrics.json");
    let config = running_probe_config(serde_json::json!({
        "logger": {"log_path": log},
        "metrics": {"metrics_path": metrics},
    }));

    let out = run_with_filters(&scratch, &config, &filters);

    assert_eq!(out.code(), Some(EXIT_BAD_SYSCALL), "{out}");
    let log = std::fs::read_to_string(&log).expect("read the log");
    assert!(
        log.lines()
            .any(|l| l.starts_with("spry: seccomp: the vCPU 0 thread made a forbidden")),
        "{log}"
    );
    let metrics = std::fs::read_to_string(&metrics).expect("read the metrics");
    let last: Value = serde_json::from_str(metrics.lines().last().unwrap_or_default())
        .expect("the last metrics line is JSON");
    assert_eq!(last["seccomp"]["num_faults"], 1, "{metrics}");
}

#[test]
fn test_builtin_filters_as_a_custom_file_boot_the_probe() {
    let scratch = Scratch::new();
    let filters = scratch.write("filters.json", builtin_filters().to_string().as_bytes());
    let config = config(&probe_vmlinux(), &probe_args(""), None, 2, 128);

    let out = run_with_filters(&scratch, &config, &filters);

    out.assert_probe_all_ok();
}

#[test]
fn test_bad_filter_file_is_one_line_before_the_vm_starts() {
    let scratch = Scratch::new();
    let mut filters = builtin_filters();
    filters["vcpu"]["filter"][0]["syscall"] = Value::from("no_such_call");
    let filters = scratch.write("filters.json", filters.to_string().as_bytes());
    let config = config(&probe_vmlinux(), &probe_args(""), None, 1, 128);

    let out = run_with_filters(&scratch, &config, &filters);

    assert_eq!(out.code(), Some(2), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(
        out.stderr.starts_with(&format!(
            "spry: seccomp filters from {}: ",
            filters.display()
        )) && out.stderr.contains("no_such_call"),
        "{out}"
    );
    assert!(out.stdout.is_empty(), "the guest ran: {out}");
}

#[test]
fn test_missing_filter_file_is_refused() {
    let scratch = Scratch::new();
    let config = config(&probe_vmlinux(), &probe_args(""), None, 1, 128);

    let out = run_with_filters(&scratch, &config, Path::new("/nonexistent/filters.json"));

    assert_eq!(out.code(), Some(2), "{out}");
    assert_eq!(
        out.stderr.trim_end(),
        "spry: --seccomp-filter /nonexistent/filters.json: cannot read it: No such file or \
         directory (os error 2)"
    );
}

#[test]
fn test_no_seccomp_and_a_filter_file_together_are_refused() {
    let out = Spry::new()
        .arg("--no-seccomp")
        .arg("--seccomp-filter")
        .arg("filters.json")
        .arg("--config-file")
        .arg("vm.json")
        .run();

    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stderr.contains("cannot be used with"), "{out}");
}

#[test]
fn test_a_sigsys_sent_by_another_process_is_ignored() {
    let scratch = Scratch::new();
    let mut spry = booted_over_api(&scratch, &[]);
    let pid = libc::pid_t::try_from(spry.child.id()).expect("pid");

    // SAFETY: kill(2) on our own child process; no memory is involved.
    unsafe { libc::kill(pid, libc::SIGSYS) };

    let info = spry.call("GET", "/", "");
    assert_eq!(info.status, 200, "{}", spry.stderr());
    assert_eq!(
        spry.terminate(),
        Some(128 + libc::SIGTERM),
        "{}",
        spry.stderr()
    );
}
